//! Continuous batching's forward ([`Decoder::forward_pieces`]): the new tokens of several
//! sequences, each at its own positions with its own KV cache, in one pass.

use super::Decoder;
use crate::error::Result;
use crate::models::KvCache;
use candle_core::Tensor;

/// One sequence's share of a continuous batch ([`Decoder::forward_pieces`]): its new tokens,
/// at positions `start..start + tokens.len()`, and its KV cache (which holds `start` positions).
pub struct Piece<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub cache: &'a mut KvCache,
}

impl Decoder {
    /// Continuous batching's forward: the new tokens of several sequences, each at its own
    /// positions with its own KV cache, in one pass — embeddings, norms, projections and MLPs
    /// over all N tokens at once, attention per sequence over its cache — giving the logits of
    /// each piece's last token, (P, V). For one piece this is `forward` with a cache, op for op.
    pub fn forward_pieces(&self, pieces: &mut [Piece]) -> Result<Tensor> {
        if self.layer_source.is_some() {
            return Err(crate::Error::Invalid("a decoder with sharded layers (ZeRO-3) keeps no KV cache".into()));
        }
        let device = self.wte.device();
        let virtual_tokens = self.prefix_len();
        if let Some(prefix) = &self.prefix {
            let host = device.is_cpu();
            for p in pieces.iter_mut().filter(|p| p.cache.held() == 0) {
                p.cache.prefill(&prefix.layers(1, self.compute)?, self.spec.n_kv_head, host)?;
            }
        }
        let (mut ids, mut positions, mut last) = (Vec::new(), Vec::new(), Vec::new());
        for p in pieces.iter() {
            let end = p.start + p.tokens.len() + virtual_tokens;
            if p.tokens.is_empty() || end > self.spec.context || p.cache.len() != p.start {
                return Err(crate::Error::Invalid(format!(
                    "a piece of {} tokens at {} (cache {}) does not fit the context of {}",
                    p.tokens.len(),
                    p.start,
                    p.cache.len(),
                    self.spec.context
                )));
            }
            ids.extend_from_slice(p.tokens);
            positions.extend((p.start + virtual_tokens..end).map(|i| i as u32));
            last.push(ids.len() as u32 - 1);
        }
        let n = ids.len();
        let mut x = self.wte.rows(&Tensor::from_vec(ids, n, &device)?)?; // (N, C)
        if let Some(wpe) = &self.wpe {
            x = (x + wpe.index_select(&Tensor::from_vec(positions, n, &device)?, 0)?)?;
        }
        let mut x = x.unsqueeze(0)?; // (1, N, C)
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = block.norm1.forward(&x)?;
            let a = match device.is_cpu() {
                true => block.attn.forward_pieces_host(&h, pieces, virtual_tokens, layer, self.rope_host.as_deref())?,
                false => block.attn.forward_pieces(&h, pieces, virtual_tokens, layer, self.rope.as_deref())?,
            };
            x = (x + a)?;
            let m = block.mlp.forward(&block.norm2.forward(&x)?, &mut None)?;
            x = (x + m)?;
        }
        let h = self.norm_f.forward(&x)?.squeeze(0)?; // (N, C)
        let h = h.index_select(&Tensor::from_vec(last, pieces.len(), &device)?, 0)?; // (P, C)
        self.head_logits(&h)
    }
}
