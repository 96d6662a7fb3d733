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

use super::cpu::{slice, slice_u32, tensor, Read};
use candle_core::{bail, CpuStorage, CustomOp2, InplaceOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Logits per chunk of [`lm_head_cross_entropy`] (2M floats, 8 MB).
const CHUNK_LOGITS: usize = 1 << 21;

/// Fused mean cross-entropy of logits (N, V) against u32 targets (N).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

/// log Σ exp(x) − x[target] of one row, in f64 for the sum over rows.
fn row_loss(x: &[f32], target: u32, op: &str) -> Result<f64> {
    let Some(&picked) = x.get(target as usize) else { bail!("{op}: target {target} >= vocab {}", x.len()) };
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    Ok((max + sum.ln() - picked) as f64)
}

/// Writes scale · (softmax(x) − onehot(target)) into `dx`.
fn row_grad(x: &[f32], target: u32, scale: f32, dx: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for (d, &v) in dx.iter_mut().zip(x) {
        *d = (v - max).exp();
        sum += *d;
    }
    let k = scale / sum;
    dx.iter_mut().for_each(|d| *d *= k);
    dx[target as usize] -= scale;
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
        let (x, t) = (slice(xs, xl, self.name())?, slice_u32(ts, tl, self.name())?);
        let (n, v) = check_targets(self.name(), xl, t.len())?;
        let total =
            x.par_chunks(v).zip(t.par_iter()).map(|(x, &t)| row_loss(x, t, self.name())).sum::<Result<f64>>()?;
        Ok((CpuStorage::F32(vec![(total / n.max(1) as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, t: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = x.dims2()?;
        let scale = g.to_scalar::<f32>()? / n.max(1) as f32;
        let targets = t.to_vec1::<u32>()?;
        let xr = Read::new(x, self.name())?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v).zip(xr.f32()?.par_chunks(v)).zip(targets.par_iter()).for_each(|((dx, x), &t)| {
            row_grad(x, t, scale, dx);
        });
        Ok((Some(tensor(dx, &[n, v])?), None))
    }
}

/// Mean cross-entropy of `hidden` (N, C) · `head` (V, C)ᵀ against u32 `targets` (N), in row
/// chunks (see the module docs).
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
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
    // The graph gets one node (below); the chunk products are plain computations.
    let (h, w) = (hidden.detach(), head.detach());
    let rows = (CHUNK_LOGITS / v).clamp(1, n.max(1));
    let mut loss_sum = 0f64;
    let mut dh_parts = Vec::new();
    let mut dw: Option<Tensor> = None;
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        let hc = h.narrow(0, start, len)?;
        let logits = hc.matmul(&w.t()?)?; // (len, V), fresh and contiguous
        let op = XentInPlace {
            targets: &targets[start..start + len],
            grad_scale: train.then_some(1.0 / n as f32),
            loss: Mutex::new(0.0),
        };
        logits.inplace_op1(&op)?;
        loss_sum += *op.loss.lock().expect("not poisoned");
        if train {
            // logits now hold d logits for g = 1.
            dh_parts.push(logits.matmul(&w)?); // (len, C)
            let part = logits.t()?.matmul(&hc)?; // (V, C)
            dw = Some(match dw {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
    }
    let loss = (loss_sum / n.max(1) as f64) as f32;
    match dw {
        Some(dw) if train => {
            let dh = Tensor::cat(&dh_parts, 0)?;
            hidden.apply_op2(head, LmHeadXent { loss, dh, dw })
        }
        _ => Tensor::new(loss, hidden.device()),
    }
}

/// Per row of a chunk of logits, in place: adds the row's loss to `loss` and, when training,
/// overwrites the row with grad_scale · (softmax − onehot).
struct XentInPlace<'a> {
    targets: &'a [u32],
    grad_scale: Option<f32>,
    loss: Mutex<f64>,
}

impl InplaceOp1 for XentInPlace<'_> {
    fn name(&self) -> &'static str {
        "lmforge-xent-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((start, end)) = l.contiguous_offsets() else { bail!("{}: logits must be contiguous", self.name()) };
        let CpuStorage::F32(data) = s else { bail!("{}: logits must be f32", self.name()) };
        let x = &mut data[start..end];
        let v = x.len() / self.targets.len().max(1);
        let total = x
            .par_chunks_mut(v)
            .zip(self.targets.par_iter())
            .map(|(x, &t)| {
                let loss = row_loss(x, t, self.name())?;
                if let Some(scale) = self.grad_scale {
                    softmax_minus_onehot_in_place(x, t, scale);
                }
                Ok(loss)
            })
            .sum::<Result<f64>>()?;
        *self.loss.lock().expect("not poisoned") += total;
        Ok(())
    }
}

/// In place: x ← scale · (softmax(x) − onehot(target)).
fn softmax_minus_onehot_in_place(x: &mut [f32], target: u32, scale: f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let k = scale / sum;
    x.iter_mut().for_each(|v| *v *= k);
    x[target as usize] -= scale;
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
        let g = g.to_scalar::<f32>()?;
        if g == 1.0 {
            return Ok((Some(self.dh.clone()), Some(self.dw.clone())));
        }
        Ok((Some((&self.dh * g as f64)?), Some((&self.dw * g as f64)?)))
    }
}
