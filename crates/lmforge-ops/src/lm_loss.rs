//! The LM head and cross-entropy as one node for any device and dtype (the GPU's, and bf16 on
//! the CPU): rows of `hidden` go through the head a chunk at a time, so the (N, V) logits never
//! exist at once — at GPT-2's vocabulary and 16 × 1024 tokens they would be 3.3 GB in f32, at
//! Llama's 128k vocabulary several times that. Each chunk's logits are formed in the compute
//! dtype (bf16 under mixed precision) and normalised in f32; the gradients of hidden and head
//! are computed in the same pass and handed to the backward (the fused CPU kernel's trade,
//! [`crate::loss`], composed from candle ops through [`crate::node`]).
//!
//! On a GPU each chunk's log-sum-exp and logit gradient are loss.cu's kernels (one pass each,
//! the gradient in the compute dtype); elsewhere composed in f32.
//!
//! d logits = (softmax − onehot(target)) / N per chunk; d hidden = d logits · head (in the
//! compute dtype), d head = Σ over chunks d logitsᵀ · hidden, each chunk's product formed in f32
//! and added into the sum by the product itself ([`crate::weight_grad`]; composed — a product
//! in the compute dtype, cast, added — where its ops do not apply).

use crate::node;
use crate::profile::{timed, weight_cast, Pass::Forward};
use crate::reference::matmul;
use candle_core::{DType, Result, Tensor, D};

/// Logit elements per chunk: on the CPU 16M (64 MB in f32); on a GPU 128M (256 MB in bf16),
/// since each chunk also adds its (V, C) share into the f32 d head — 8 bytes an element through
/// the product's β = 1 (composed, 20: a bf16 product, its f32 copy, the sum), at GPT-2's
/// vocabulary and 16 × 1024 tokens ~2 GB a step in 7 chunks of 128M, where 50 of 16M would move
/// ~15 GB — and its products' inner dimension is the chunk's rows.
pub fn chunk_elements(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        1 << 24
    } else {
        GPU_CHUNK_ELEMENTS
    }
}

/// [`chunk_elements`] on a GPU.
pub const GPU_CHUNK_ELEMENTS: usize = 1 << 27;

/// Mean cross-entropy (f32 scalar) of `hidden` (N, C) · `head` (V, C)ᵀ against `targets` (N).
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = head.dim(0)?;
    lm_head_cross_entropy_in(hidden, head, targets, (chunk_elements(hidden.device()) / v.max(1)).max(1))
}

/// One chunk's summed loss (f32 scalar) from its logits z (len, V) and targets t (len, 1), and
/// when `grad` its logits' gradient (softmax − onehot) · `scale`: by loss.cu's two kernels on
/// a GPU (one pass each over the logits, the gradient in their dtype), else composed in f32.
fn chunk(z: &Tensor, t: &Tensor, scale: f64, grad: bool) -> Result<(Tensor, Option<Tensor>)> {
    #[cfg(feature = "cuda")]
    if crate::cuda_kernels(z) {
        use crate::cuda::loss::{RowLse, SoftmaxMinusOnehot};
        let targets = t.flatten_all()?;
        let lse = z.apply_op2_no_bwd(&targets, &RowLse)?; // (len)
        let picked = z.gather(t, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
        let loss = (lse.clone() - picked)?.sum_all()?;
        let dz = grad.then(|| z.apply_op3_no_bwd(&targets, &lse, &SoftmaxMinusOnehot { scale: scale as f32 }));
        return Ok((loss, dz.transpose()?));
    }
    let z = z.to_dtype(DType::F32)?;
    let max = z.max_keepdim(D::Minus1)?;
    let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?; // (len, 1)
    let loss = (&lse - z.gather(t, 1)?)?.sum_all()?;
    if !grad {
        return Ok((loss, None));
    }
    let p = z.broadcast_sub(&lse)?.exp()?;
    let minus_one = Tensor::full(-1f32, (z.dim(0)?, 1), z.device())?;
    Ok((loss, Some((p.scatter_add(t, &minus_one, 1)? * scale)?)))
}

/// [`lm_head_cross_entropy`] with `rows` rows per chunk.
pub fn lm_head_cross_entropy_in(hidden: &Tensor, head: &Tensor, targets: &Tensor, rows: usize) -> Result<Tensor> {
    let (n, c) = hidden.dims2()?;
    let tracked = hidden.track_op() || head.track_op();
    let w = weight_cast(&head.detach(), hidden.dtype(), Forward)?; // (V, C) in the compute dtype
    let mut loss_sum = Tensor::zeros((), DType::F32, hidden.device())?;
    let mut d_hidden = Vec::new();
    // d head's f32 sum, added to by each chunk's product itself where `weight_grad` applies.
    let mut d_head: Option<Tensor> = None;
    let inv_n = 1.0 / n.max(1) as f64;
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        let h = hidden.detach().narrow(0, start, len)?;
        let t = targets.narrow(0, start, len)?.unsqueeze(1)?;
        // The head's gradients are made here, in the forward: their spans are the forward's.
        let z = timed("lm head matmul", Forward, || matmul(&h, &w.t()?))?; // (len, V) in the compute dtype
        let (chunk_loss, dz) = timed("cross-entropy", Forward, || chunk(&z, &t, inv_n, tracked))?;
        loss_sum = (loss_sum + chunk_loss)?;
        if let Some(dz) = dz {
            let dz_c = dz.to_dtype(hidden.dtype())?;
            d_hidden.push(timed("lm head matmul", Forward, || matmul(&dz_c, &w))?); // (len, C)
            d_head = Some(timed("weight gradient", Forward, || crate::weight_grad::add_to(d_head.take(), &dz_c, &h))?);
        }
    }
    let loss = (loss_sum * inv_n)?;
    if !tracked {
        return Ok(loss);
    }
    let d_hidden = if d_hidden.is_empty() { hidden.zeros_like()? } else { Tensor::cat(&d_hidden, 0)? };
    debug_assert_eq!(d_hidden.dims(), &[n, c]);
    let d_head = match d_head {
        Some(d) => d.to_dtype(head.dtype())?,
        None => head.zeros_like()?,
    };
    node::node2(hidden, head, loss, move |_, _, dy| {
        let dy = dy.to_dtype(DType::F32)?;
        let scale = |g: &Tensor| g.broadcast_mul(&dy.to_dtype(g.dtype())?);
        Ok((Some(scale(&d_hidden)?), Some(scale(&d_head)?)))
    })
}
