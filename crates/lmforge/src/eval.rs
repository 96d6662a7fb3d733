//! Perplexity evaluation of a text under a model: the text is encoded with the model's own
//! tokenizer (no special tokens) and every token after the first is predicted once. Texts
//! longer than the context use a sliding window: each window predicts at most `stride` new
//! tokens, conditioning them on up to `context - 1` tokens before (Hugging Face's
//! "perplexity of fixed-length models" recipe). A smaller stride gives each token more
//! context and costs more compute.
//!
//! Masked LMs (BERT) are scored by [`masked_lm`]: a deterministic masking (every N-th token
//! replaced by [MASK]) that another implementation can reproduce exactly, so the numbers compare
//! across tools and checkpoints.

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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MlmEvalResult {
    /// Tokens in the encoded text.
    pub tokens: usize,
    /// Of them, masked and predicted.
    pub masked: usize,
    /// Sequences (`[CLS] chunk [SEP]`) the text was cut into.
    pub sequences: usize,
    /// Mean cross-entropy at the masked positions, nats.
    pub loss: f64,
    /// Fraction of masked positions whose top prediction is the original token.
    pub accuracy: f64,
    pub every: usize,
}

/// Masked-LM loss and accuracy of a text: encoded without special tokens, cut into chunks of
/// `context − 2` tokens, each run as `[CLS] chunk [SEP]` with chunk tokens 0, N, 2N, ...
/// replaced by [MASK] and predicted.
pub fn masked_lm(model: &LoadedModel, text: &str, every: usize) -> Result<MlmEvalResult> {
    let enc = model.encoder()?;
    if every == 0 {
        return Err(Error::Invalid("--every must be >= 1".into()));
    }
    let id =
        |t: &str| model.tokenizer.token_id(t).ok_or_else(|| Error::Invalid(format!("the tokenizer has no {t} token")));
    let (cls, sep, mask) = (id("[CLS]")?, id("[SEP]")?, id("[MASK]")?);
    let ids = model.tokenizer.encode(text)?;
    if ids.is_empty() {
        return Err(Error::Invalid("the text encodes to no tokens".into()));
    }
    let chunk = enc.spec.context.saturating_sub(2).max(1);
    let device = model.params.device();
    let (mut sum, mut hits, mut n, mut sequences) = (0.0f64, 0usize, 0usize, 0usize);
    for part in ids.chunks(chunk) {
        let mut input = Vec::with_capacity(part.len() + 2);
        input.push(cls);
        input.extend_from_slice(part);
        input.push(sep);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for i in (0..part.len()).step_by(every) {
            positions.push((i + 1) as u32);
            targets.push(part[i]);
            input[i + 1] = mask;
        }
        let t = input.len();
        let x = crate::models::EncoderInput::new(&input, &vec![0; t], vec![t], t, device)?;
        let hidden = enc.hidden(&x, None)?;
        let k = positions.len();
        let pos = Tensor::from_vec(positions, k, device)?;
        let tgt = Tensor::from_vec(targets.clone(), k, device)?;
        let logits = enc.mlm_logits(&crate::models::Encoder::select_rows(&hidden, &pos)?)?;
        sum += ops::cross_entropy_per_row(&logits, &tgt)?.sum_all()?.to_scalar::<f32>()? as f64;
        let pred = crate::models::encoder::argmax_last(&logits)?;
        hits += pred.iter().zip(&targets).filter(|(p, t)| p == t).count();
        n += k;
        sequences += 1;
    }
    Ok(MlmEvalResult {
        tokens: ids.len(),
        masked: n,
        sequences,
        loss: sum / n as f64,
        accuracy: hits as f64 / n as f64,
        every,
    })
}

/// How close a quantized model is to its reference, as llama.cpp's `perplexity --kl-divergence`
/// reports it: both perplexities and their ratio, the mean KL divergence of the next-token
/// distributions (reference ‖ quantized) and the share of positions with the same top token.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuantQuality {
    pub tokens: usize,
    pub predicted: usize,
    pub ppl_reference: f64,
    pub ppl_quantized: f64,
    pub ppl_ratio: f64,
    pub mean_kl: f64,
    pub same_top_token: f64,
}

/// [`QuantQuality`] of `quantized` against `reference` on `text` (same tokenizer required),
/// over non-overlapping windows of the context.
pub fn quant_quality(reference: &LoadedModel, quantized: &LoadedModel, text: &str) -> Result<QuantQuality> {
    let ids = reference.tokenizer.encode(text)?;
    if quantized.tokenizer.encode(text)? != ids {
        return Err(Error::Invalid("the two models tokenize the text differently".into()));
    }
    if ids.len() < 2 {
        return Err(Error::Invalid(format!("the text encodes to {} token(s); at least 2 are needed", ids.len())));
    }
    let ctx = reference.spec.context.min(quantized.spec.context);
    let log_probs = |m: &LoadedModel, window: &[u32]| -> Result<Vec<Vec<f32>>> {
        let x = Tensor::from_slice(window, (1, window.len()), m.params.device())?;
        let logits = m.decoder()?.forward(&x, 0, None)?.squeeze(0)?;
        Ok(ops::log_softmax_last_dim(&logits)?.to_vec2()?)
    };
    let (mut nll_r, mut nll_q, mut kl, mut same, mut n) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        let (r, q) = (log_probs(reference, window)?, log_probs(quantized, window)?);
        for t in 0..window.len() - 1 {
            let target = window[t + 1] as usize;
            nll_r -= r[t][target] as f64;
            nll_q -= q[t][target] as f64;
            kl += r[t].iter().zip(&q[t]).map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64)).sum::<f64>();
            same += (crate::generate::argmax(&r[t]) == crate::generate::argmax(&q[t])) as usize;
            n += 1;
        }
    }
    let (ppl_r, ppl_q) = ((nll_r / n as f64).exp(), (nll_q / n as f64).exp());
    Ok(QuantQuality {
        tokens: ids.len(),
        predicted: n,
        ppl_reference: ppl_r,
        ppl_quantized: ppl_q,
        ppl_ratio: ppl_q / ppl_r,
        mean_kl: kl / n as f64,
        same_top_token: same as f64 / n as f64,
    })
}
