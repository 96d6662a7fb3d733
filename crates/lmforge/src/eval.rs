//! Perplexity evaluation of a text under a model: the text is encoded with the model's own
//! tokenizer (no special tokens) and every token after the first is predicted once. Texts
//! longer than the context use a sliding window: each window predicts at most `stride` new
//! tokens, conditioning them on up to `context - 1` tokens before (Hugging Face's
//! "perplexity of fixed-length models" recipe). A smaller stride gives each token more
//! context and costs more compute.

use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::ops;
use candle_core::Tensor;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PplResult {
    /// Tokens in the encoded text (the first one is context only).
    pub tokens: usize,
    /// Tokens predicted (tokens - 1).
    pub predicted: usize,
    /// UTF-8 bytes of the text.
    pub bytes: usize,
    /// Mean next-token cross-entropy, nats.
    pub loss: f64,
    pub ppl: f64,
    pub bits_per_byte: f64,
    pub stride: usize,
}

/// Default stride: half the context.
pub fn default_stride(context: usize) -> usize {
    (context / 2).max(1)
}

pub fn perplexity(model: &LoadedModel, text: &str, stride: Option<usize>) -> Result<PplResult> {
    let ids = model.tokenizer.encode(text)?;
    let n = ids.len();
    if n < 2 {
        return Err(Error::Invalid(format!("the text encodes to {n} token(s); perplexity needs at least 2")));
    }
    let ctx = model.spec.context;
    let stride = stride.unwrap_or_else(|| default_stride(ctx));
    if stride == 0 || stride >= ctx {
        return Err(Error::Invalid(format!("stride must be between 1 and context - 1 = {}", ctx - 1)));
    }
    let device = model.params.device();
    let mut nll = 0.0f64;
    let mut t0 = 1; // first target of the next window
    while t0 < n {
        let t1 = (t0 + stride).min(n);
        let start = t1.saturating_sub(ctx);
        let input = Tensor::from_slice(&ids[start..t1], (1, t1 - start), device)?;
        let logits = model.decoder()?.forward(&input, 0, None)?.squeeze(0)?; // (L, V)
                                                                             // Logits row j-1-start predicts target j.
        let rows = logits.narrow(0, t0 - 1 - start, t1 - t0)?;
        let targets = Tensor::from_slice(&ids[t0..t1], t1 - t0, device)?;
        let per = ops::cross_entropy_per_row(&rows, &targets)?.to_vec1::<f32>()?;
        nll += per.iter().map(|&x| x as f64).sum::<f64>();
        t0 = t1;
    }
    let predicted = n - 1;
    let loss = nll / predicted as f64;
    Ok(PplResult {
        tokens: n,
        predicted,
        bytes: text.len(),
        loss,
        ppl: loss.exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / text.len() as f64,
        stride,
    })
}
