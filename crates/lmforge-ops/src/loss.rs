//! Fused cross-entropy, forward and backward, rows over the rayon pool.
//!
//! - [`cross_entropy`]: from logits (N, V); the backward recomputes the softmax from the
//!   logits: d logits = g/N · (softmax − onehot).
//! - [`lm_head_cross_entropy`]: from the hidden states and the LM head, never holding the
//!   (N, V) logits at once (67 MB at the bench shapes, and ~6 such temporaries in the
//!   reference). Rows go through in chunks of ~8 MB of logits; each chunk's logits are turned
//!   into their gradient in place and multiplied straight into d hidden and d head, during the
//!   forward (the loss is the graph's last node, so its incoming gradient is a scalar g and the
//!   backward only scales by it; the Liger-kernel approach). Without a graph to train (eval),
//!   the gradient matmuls are skipped.

use super::cpu::{gemm_into as mm, slice, slice_u32, tensor, Read};
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Logits per chunk of [`lm_head_cross_entropy`] (2M floats, 8 MB).
const CHUNK_LOGITS: usize = 1 << 21;

/// Fused mean cross-entropy of logits (N, V) against u32 targets (N).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

/// log Σ exp(x) − x[target] of one row, in f64 for the sum over rows.
#[inline(always)]
fn row_loss(x: &[f32], target: u32, op: &str) -> Result<f64> {
    let picked = picked(x, target, op)?;
    let max = vmath::max(x);
    Ok((max + vmath::sum_exp(x, max).ln() - picked) as f64)
}

fn picked(x: &[f32], target: u32, op: &str) -> Result<f32> {
    match x.get(target as usize) {
        Some(&v) => Ok(v),
        None => bail!("{op}: target {target} >= vocab {}", x.len()),
    }
}

/// Writes scale · (softmax(x) − onehot(target)) into `dx`.
#[inline(always)]
fn row_grad(x: &[f32], target: u32, scale: f32, dx: &mut [f32], op: &str) -> Result<()> {
    dx.copy_from_slice(x);
    softmax_minus_onehot_in_place(dx, target, scale, op).map(drop)
}

struct CrossEntropy;

fn check_targets(op: &str, logits: &Layout, n_targets: usize) -> Result<(usize, usize)> {
    match logits.dims() {
        &[n, v] if n == n_targets && v > 0 => Ok((n, v)),
        d => bail!("{op}: logits {d:?} are not (N, V) for {n_targets} targets"),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "lmforge-cross-entropy"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ts: &CpuStorage, tl: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let (x, t) = (slice(xs, xl, self.name())?, slice_u32(ts, tl, self.name())?);
        let (n, v) = check_targets(self.name(), xl, t.len())?;
        let total = x
            .par_chunks(v)
            .zip(t.par_iter())
            .map(|(x, &t)| {
                vectorized(
                    #[inline(always)]
                    || row_loss(x, t, self.name()),
                )
            })
            .collect::<Result<Vec<f64>>>()?
            .iter()
            .sum::<f64>(); // in row order: a rayon sum's order depends on work stealing
        Ok((CpuStorage::F32(vec![(total / n.max(1) as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, t: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let (n, v) = x.dims2()?;
        let scale = g.to_scalar::<f32>()? / n.max(1) as f32;
        let targets = t.to_vec1::<u32>()?;
        let xr = Read::new(x, self.name())?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v).zip(xr.f32()?.par_chunks(v)).zip(targets.par_iter()).try_for_each(|((dx, x), &t)| {
            vectorized(
                #[inline(always)]
                || row_grad(x, t, scale, dx, self.name()),
            )
        })?;
        Ok((Some(tensor(dx, &[n, v])?), None))
    }
}

/// Mean cross-entropy of `hidden` (N, C) · `head` (V, C)ᵀ against u32 `targets` (N), in row
/// chunks (see the module docs).
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // The work is done here, not in the graph node's forward: time it here.
    let _span = super::profile::span(XentInPlace::NAME, super::profile::Pass::Forward);
    let (n, c) = hidden.dims2()?;
    let (v, c2) = head.dims2()?;
    if c != c2 {
        bail!("lm_head_cross_entropy: hidden {:?} and head {:?} disagree in C", hidden.dims(), head.dims());
    }
    let targets = targets.flatten_all()?.to_vec1::<u32>()?;
    if targets.len() != n {
        bail!("lm_head_cross_entropy: {} targets for {n} rows", targets.len());
    }
    let train = hidden.track_op() || head.track_op();
    // The graph gets one node (below); the chunk products are plain computations into
    // buffers owned here: one logits chunk reused throughout, d hidden written row block by
    // row block, d head accumulated by the product itself.
    let (h, w) = (hidden.detach().contiguous()?, head.detach().contiguous()?);
    let (hr, wr) = (Read::new(&h, "lm_head_cross_entropy")?, Read::new(&w, "lm_head_cross_entropy")?);
    let (hs, ws) = (hr.f32()?, wr.f32()?);
    let rows = (CHUNK_LOGITS / v).clamp(1, n.max(1));
    let mut logits = vec![0f32; rows.min(n) * v];
    let (mut dh, mut dw) = if train { (vec![0f32; n * c], vec![0f32; v * c]) } else { (Vec::new(), Vec::new()) };
    let mut loss_sum = 0f64;
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        let (lg, hc) = (&mut logits[..len * v], &hs[start * c..(start + len) * c]);
        // logits (len, V) = h (len, C) · headᵀ (C, V)
        mm(len, v, c, lg, false, hc, (c, 1), ws, (1, c));
        let op = XentInPlace { targets: &targets[start..start + len], grad_scale: train.then_some(1.0 / n as f32) };
        loss_sum += op.run(lg, v)?;
        if train {
            // lg now holds d logits for g = 1.
            // d hidden rows (len, C) = d logits (len, V) · head (V, C)
            mm(len, c, v, &mut dh[start * c..(start + len) * c], false, lg, (v, 1), ws, (c, 1));
            // d head (V, C) += d logitsᵀ (V, len) · h (len, C)
            mm(v, c, len, &mut dw, start > 0, lg, (1, v), hc, (c, 1));
        }
    }
    drop((hr, wr));
    let loss = (loss_sum / n.max(1) as f64) as f32;
    if train {
        let (dh, dw) = (tensor(dh, &[n, c])?, tensor(dw, &[v, c])?);
        hidden.apply_op2(head, LmHeadXent { loss, dh, dw })
    } else {
        Tensor::new(loss, hidden.device())
    }
}

/// Per row of a chunk of logits, in place: the rows' summed loss and, when training, each
/// row overwritten with grad_scale · (softmax − onehot).
struct XentInPlace<'a> {
    targets: &'a [u32],
    grad_scale: Option<f32>,
}

impl XentInPlace<'_> {
    const NAME: &'static str = "lmforge-lm-head-cross-entropy";

    fn run(&self, x: &mut [f32], v: usize) -> Result<f64> {
        x.par_chunks_mut(v)
            .zip(self.targets.par_iter())
            .map(|(x, &t)| {
                vectorized(
                    #[inline(always)]
                    || match self.grad_scale {
                        None => row_loss(x, t, Self::NAME),
                        Some(scale) => softmax_minus_onehot_in_place(x, t, scale, Self::NAME),
                    },
                )
            })
            .collect::<Result<Vec<f64>>>()
            .map(|rows| rows.iter().sum::<f64>()) // in row order (see above)
    }
}

/// In place: x ← scale · (softmax(x) − onehot(target)); returns the row's loss (one pass of
/// `exp` serves both).
#[inline(always)]
fn softmax_minus_onehot_in_place(x: &mut [f32], target: u32, scale: f32, op: &str) -> Result<f64> {
    let picked = picked(x, target, op)?;
    let max = vmath::max(x);
    let sum = vmath::exp_sum(x, max);
    vmath::scale(x, scale / sum);
    x[target as usize] -= scale;
    Ok((max + sum.ln() - picked) as f64)
}

/// The graph node of [`lm_head_cross_entropy`]: its forward is the loss computed above, its
/// backward the gradients computed with it, scaled by the incoming scalar gradient.
struct LmHeadXent {
    loss: f32,
    dh: Tensor, // (N, C)
    dw: Tensor, // (V, C)
}

impl CustomOp2 for LmHeadXent {
    fn name(&self) -> &'static str {
        "lmforge-lm-head-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(&self, _h: &Tensor, _w: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let g = g.to_scalar::<f32>()?;
        if g == 1.0 {
            return Ok((Some(self.dh.clone()), Some(self.dw.clone())));
        }
        Ok((Some((&self.dh * g as f64)?), Some((&self.dw * g as f64)?)))
    }
}
