//! Fused LayerNorm and RMSNorm over the last dim, forward and backward, one pass per row,
//! rows spread over the rayon pool. The backward recomputes each row's mean and 1/std from x
//! (one cheap pass) instead of keeping them, and returns the weight / bias gradients summed
//! over rows (per-task partial sums, then added).
//!
//! With x̂ = (x − mean)·rstd, dx̂ = dy·w (LayerNorm; rows of C):
//!   dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)),  dw = Σ dy·x̂,  db = Σ dy
//! RMSNorm is the same without the centring: x̂ = x·r, dx = r · (dx̂ − x̂ · mean(dx̂ · x̂)).
//!
//! On a GPU (`--features cuda`) the same ops run lmforge's CUDA kernels (module `cuda`),
//! for f32 or bf16 activations with f32 weights.

use super::cpu::{assume_init, rows_per_task, slice, sum_in_order, tensor, uninit, Read};
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Fused LayerNorm; x (..., C), weight and bias (C) (made f32 for the kernel: bf16
/// activations on a GPU keep f32 parameters).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&f32_param(weight)?, &f32_param(bias)?, LayerNorm { eps: eps as f32 })
}

/// Fused RMSNorm; x (..., C), weight (C).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&f32_param(weight)?, RmsNorm { eps: eps as f32 })
}

pub(super) fn f32_param(p: &Tensor) -> Result<Tensor> {
    p.to_dtype(candle_core::DType::F32)?.contiguous()
}

/// The ops over (x, weight, bias) and (x, weight), f32 parameters.
pub(super) struct LayerNorm {
    pub eps: f32,
}

pub(super) struct RmsNorm {
    pub eps: f32,
}

/// (mean, 1/sqrt(var + eps)) of one row, biased variance, two passes as the reference.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = vmath::sum(x) / n;
    let mut dev = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in chunks {
        for l in 0..8 {
            dev[l] += (c[l] - mean) * (c[l] - mean);
        }
    }
    let var = (vmath::sum(&dev) + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// 1/sqrt(mean(x²) + eps) of one row.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = vmath::dot(x, x) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

fn check_rows(op: &str, x: &Layout, c: usize) -> Result<()> {
    if x.dims().last() != Some(&c) {
        bail!("{op}: input {:?} does not end in the weight's {c} features", x.dims());
    }
    Ok(())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "lmforge-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let (x, w, b) = (slice(xs, xl, self.name())?, slice(ws, wl, self.name())?, slice(bs, bl, self.name())?);
        check_rows(self.name(), xl, w.len())?;
        Ok((CpuStorage::F32(layer_norm_rows(x, w, b, self.eps)), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::norm_forward(self.name(), (xs, xl), (ws, wl), Some((bs, bl)), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, b, dy, None)
    }
}

impl LayerNorm {
    /// (dx, dw, db) for `dy`, with `residual` (a gradient of x's shape) added into dx: a
    /// pre-norm sublayer's x also feeds its residual, and on a GPU the sum is the dx kernel's.
    pub(super) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dy: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = CustomOp3::name(self);
        let _span = super::profile::span(name, super::profile::Pass::Backward);
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let trained = w.track_op() || b.track_op();
            let (dx, dw, db) = super::cuda::norm_backward(x, w, dy, residual, self.eps, true, trained)?;
            let (dw, db) = (dw.filter(|_| w.track_op()), db.filter(|_| b.track_op()));
            return Ok((tracked(x, || Ok(dx))?, dw, db));
        }
        let dy = dy.contiguous()?;
        let (xr, wr, dyr) = (Read::new(x, name)?, Read::new(w, name)?, Read::new(&dy, name)?);
        let (xs, ws, dys) = (xr.f32()?, wr.f32()?, dyr.f32()?);
        let c = ws.len();
        let (dx, dw, db) = layer_norm_backward_rows(xs, ws, dys, self.eps);
        // A frozen norm (fine-tuning) gets no gradient: its sums were cheap, but storing them
        // in the gradient store is what "frozen" rules out.
        let (dw, db) = (tracked(w, || tensor(dw, &[c]))?, tracked(b, || tensor(db, &[c]))?);
        Ok((tracked(x, || plus(tensor(dx, x.dims())?, residual))?, dw, db))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "lmforge-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let (x, w) = (slice(xs, xl, self.name())?, slice(ws, wl, self.name())?);
        check_rows(self.name(), xl, w.len())?;
        Ok((CpuStorage::F32(rms_norm_rows(x, w, self.eps)), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::norm_forward(self.name(), (xs, xl), (ws, wl), None, self.eps)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, dy, None)
    }
}

impl RmsNorm {
    /// (dx, dw) for `dy`, with `residual` added into dx (as [`LayerNorm::grads`]).
    pub(super) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = CustomOp2::name(self);
        let _span = super::profile::span(name, super::profile::Pass::Backward);
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw, _) = super::cuda::norm_backward(x, w, dy, residual, self.eps, false, w.track_op())?;
            return Ok((tracked(x, || Ok(dx))?, dw));
        }
        let dy = dy.contiguous()?;
        let (xr, wr, dyr) = (Read::new(x, name)?, Read::new(w, name)?, Read::new(&dy, name)?);
        let (xs, ws, dys) = (xr.f32()?, wr.f32()?, dyr.f32()?);
        let c = ws.len();
        let (dx, dw) = rms_norm_backward_rows(xs, ws, dys, self.eps);
        Ok((tracked(x, || plus(tensor(dx, x.dims())?, residual))?, tracked(w, || tensor(dw, &[c]))?))
    }
}

/// `dx`, plus `residual` where there is one.
fn plus(dx: Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    match residual {
        Some(r) => {
            let r = r.to_dtype(dx.dtype())?;
            dx + r
        }
        None => Ok(dx),
    }
}

/// y = norm(x) row by row (rows of C) over the pool, each output row written whole by `row`
/// (y is never zeroed first); `row` must be `#[inline(always)]` to run vectorised.
fn map_rows(x: &[f32], c: usize, row: impl Fn(&mut [MaybeUninit<f32>], &[f32]) + Sync) -> Vec<f32> {
    assert!(x.len() % c.max(1) == 0, "norm: {} values are not rows of {c}", x.len());
    let mut y = uninit(x.len());
    let chunk = rows_per_task(x.len() / c.max(1)) * c;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
        vectorized(
            #[inline(always)]
            || y.chunks_exact_mut(c).zip(x.chunks_exact(c)).for_each(|(y, x)| row(y, x)),
        )
    });
    // SAFETY: x is whole rows of C (asserted), and `row` writes each output row whole.
    unsafe { assume_init(y) }
}

/// LayerNorm rows of x (rows of C = w.len()): y = x̂·w + b.
pub(super) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    map_rows(
        x,
        w.len(),
        #[inline(always)]
        |y, x| {
            let (mean, rstd) = moments(x, eps);
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                y.write((x - mean) * rstd * w + b);
            }
        },
    )
}

/// (dx, dw, db) of LayerNorm rows for dy.
pub(super) fn layer_norm_backward_rows(
    xs: &[f32],
    ws: &[f32],
    dys: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = ws.len();
    let mut dx = vec![0f32; xs.len()];
    let chunk = rows_per_task(xs.len() / c.max(1)) * c;
    // Each task returns its rows' [dw | db] partial sums.
    let sums = dx
        .par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk))
        .zip(dys.par_chunks(chunk))
        .map(|((dx, x), dy)| {
            let mut acc = vec![0f32; 2 * c];
            let (dw, db) = acc.split_at_mut(c);
            // Per row: x̂ into dx (scratch), then the sums, then dx over it.
            vectorized(
                #[inline(always)]
                || {
                    for ((dx, x), dy) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
                        let (mean, rstd) = moments(x, eps);
                        for ((xh, &x), ((dw, db), &dy)) in
                            dx.iter_mut().zip(x).zip(dw.iter_mut().zip(db.iter_mut()).zip(dy))
                        {
                            *xh = (x - mean) * rstd;
                            *dw += dy * *xh;
                            *db += dy;
                        }
                        // Σ dy·w and Σ dy·w·x̂ over 8 lanes.
                        let (mut sd, mut sdx) = ([0f32; 8], [0f32; 8]);
                        let mut j = 0;
                        while j + 8 <= c {
                            for l in 0..8 {
                                let d = dy[j + l] * ws[j + l];
                                sd[l] += d;
                                sdx[l] += d * dx[j + l];
                            }
                            j += 8;
                        }
                        let (mut sum_d, mut sum_dx) = (vmath::sum(&sd), vmath::sum(&sdx));
                        for j in j..c {
                            sum_d += dy[j] * ws[j];
                            sum_dx += dy[j] * ws[j] * dx[j];
                        }
                        let (mean_d, mean_dx) = (sum_d / c as f32, sum_dx / c as f32);
                        for ((dx, &dy), &w) in dx.iter_mut().zip(dy).zip(ws) {
                            *dx = rstd * (dy * w - mean_d - *dx * mean_dx);
                        }
                    }
                },
            );
            acc
        })
        .collect();
    let mut sums = sum_in_order(sums, 2 * c);
    let db = sums.split_off(c);
    (dx, sums, db)
}

/// RMSNorm rows of x (rows of C = w.len()): y = x·r·w.
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    map_rows(
        x,
        w.len(),
        #[inline(always)]
        |y, x| {
            let r = inv_rms(x, eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                y.write(x * r * w);
            }
        },
    )
}

/// (dx, dw) of RMSNorm rows for dy.
pub(super) fn rms_norm_backward_rows(xs: &[f32], ws: &[f32], dys: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let c = ws.len();
    let mut dx = vec![0f32; xs.len()];
    let chunk = rows_per_task(xs.len() / c.max(1)) * c;
    let dw = dx
        .par_chunks_mut(chunk)
        .zip(xs.par_chunks(chunk))
        .zip(dys.par_chunks(chunk))
        .map(|((dx, x), dy)| {
            let mut dw = vec![0f32; c];
            vectorized(
                #[inline(always)]
                || {
                    for ((dx, x), dy) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
                        let r = inv_rms(x, eps);
                        // dy·w into dx (scratch) for the sum, then dx over it.
                        for ((d, &dy), (&w, (dw, &x))) in dx.iter_mut().zip(dy).zip(ws.iter().zip(dw.iter_mut().zip(x)))
                        {
                            *d = dy * w;
                            *dw += dy * x * r;
                        }
                        let mean_dx = vmath::dot(dx, x) * r / c as f32;
                        for (d, &x) in dx.iter_mut().zip(x) {
                            *d = r * (*d - x * r * mean_dx);
                        }
                    }
                },
            );
            dw
        })
        .collect();
    let dw = sum_in_order(dw, c);
    (dx, dw)
}

/// The gradient `make` builds, for an input that leads to a trained variable; None otherwise.
fn tracked(input: &Tensor, make: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if input.track_op() {
        make().map(Some)
    } else {
        Ok(None)
    }
}
