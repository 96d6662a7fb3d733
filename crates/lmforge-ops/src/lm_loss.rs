//! The LM head and cross-entropy as one node for any device and dtype (the GPU's, and bf16 on
//! the CPU): rows of `hidden` go through the head a chunk at a time, so the (N, V) logits never
//! exist at once — at GPT-2's vocabulary and 16 × 1024 tokens they would be 3.3 GB in f32, at
//! Llama's 128k vocabulary several times that. Each chunk's logits are formed in the compute
//! dtype (bf16 under mixed precision) and normalised in f32; the gradients of hidden and head
//! are computed in the same pass and handed to the backward (the fused CPU kernel's trade,
//! [`crate::loss`], composed from candle ops through [`crate::node`]).
//!
//! d logits = (softmax − onehot(target)) / N per chunk; d hidden = d logits · head (in the
//! compute dtype), d head = Σ over chunks d logitsᵀ · hidden (accumulated in f32).

use crate::node;
use crate::reference::{like, matmul};
use candle_core::{DType, Result, Tensor, D};

/// Logit elements per chunk (64 MB in f32).
const CHUNK_ELEMENTS: usize = 1 << 24;

/// Mean cross-entropy (f32 scalar) of `hidden` (N, C) · `head` (V, C)ᵀ against `targets` (N).
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = head.dim(0)?;
    lm_head_cross_entropy_in(hidden, head, targets, (CHUNK_ELEMENTS / v.max(1)).max(1))
}

/// [`lm_head_cross_entropy`] with `rows` rows per chunk.
pub fn lm_head_cross_entropy_in(hidden: &Tensor, head: &Tensor, targets: &Tensor, rows: usize) -> Result<Tensor> {
    let (n, c) = hidden.dims2()?;
    let tracked = hidden.track_op() || head.track_op();
    let w = like(&head.detach(), hidden)?; // (V, C) in the compute dtype
    let mut loss_sum = Tensor::zeros((), DType::F32, hidden.device())?;
    let mut d_hidden = Vec::new();
    let mut d_head = Tensor::zeros(head.dims(), DType::F32, head.device())?;
    let inv_n = 1.0 / n.max(1) as f64;
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        let h = hidden.detach().narrow(0, start, len)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        let z = matmul(&h, &w.t()?)?.to_dtype(DType::F32)?; // (len, V)
        let max = z.max_keepdim(D::Minus1)?;
        let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?; // (len, 1)
        loss_sum = (loss_sum + (&lse - z.gather(&t, 1)?)?.sum_all()?)?;
        if tracked {
            // (softmax − onehot) / N
            let p = z.broadcast_sub(&lse)?.exp()?;
            let minus_one = Tensor::full(-1f32, (len, 1), z.device())?;
            let dz = (p.scatter_add(&t, &minus_one, 1)? * inv_n)?;
            let dz_c = dz.to_dtype(hidden.dtype())?;
            d_hidden.push(matmul(&dz_c, &w)?); // (len, C)
            d_head = (d_head + matmul(&dz_c.t()?, &h)?.to_dtype(DType::F32)?)?;
        }
    }
    let loss = (loss_sum * inv_n)?;
    if !tracked {
        return Ok(loss);
    }
    let d_hidden = if d_hidden.is_empty() { hidden.zeros_like()? } else { Tensor::cat(&d_hidden, 0)? };
    debug_assert_eq!(d_hidden.dims(), &[n, c]);
    let d_head = d_head.to_dtype(head.dtype())?;
    node::node2(hidden, head, loss, move |_, _, dy| {
        let dy = dy.to_dtype(DType::F32)?;
        let scale = |g: &Tensor| g.broadcast_mul(&dy.to_dtype(g.dtype())?);
        Ok((Some(scale(&d_hidden)?), Some(scale(&d_head)?)))
    })
}
