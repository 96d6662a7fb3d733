//! Fused causal softmax for attention: scale, causal mask and softmax in one pass over the
//! scores (..., T, S), forward and backward, rows over the rayon pool. Query row i (of the
//! newest T positions of S) sees keys 0..=i + S − T; the masked tail is written as exact zeros
//! and skipped, so the upper triangle costs nothing but the zero fill.
//!
//! The reference spends ~6 temporaries of (B, H, T, S) each way on this (scale, mask add,
//! max, subtract, exp, sum, divide). The backward here uses the saved probabilities p (they
//! are kept anyway for p·V's backward): d scores = scale · p ⊙ (dp − Σ p·dp).

use super::cpu::{rows_per_task, slice, tensor, Read};
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Fused softmax(scale · scores + causal mask) over the last dim of scores (..., T, S), S ≥ T.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32 })
}

struct CausalSoftmax {
    scale: f32,
}

/// (T, S) of scores, checked.
fn dims_ts(op: &str, dims: &[usize]) -> Result<(usize, usize)> {
    let n = dims.len();
    if n < 2 || dims[n - 2] > dims[n - 1] || dims[n - 2] == 0 {
        bail!("{op}: scores {dims:?} are not (..., T, S) with 0 < T <= S");
    }
    Ok((dims[n - 2], dims[n - 1]))
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lmforge-causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let x = slice(st, l, self.name())?;
        let (t, s) = dims_ts(self.name(), l.dims())?;
        let mut p = vec![0f32; x.len()];
        let rows = rows_per_task(x.len() / s);
        p.par_chunks_mut(rows * s).zip(x.par_chunks(rows * s)).enumerate().for_each(|(task, (p, x))| {
            for (r, (p, x)) in p.chunks_exact_mut(s).zip(x.chunks_exact(s)).enumerate() {
                let i = (task * rows + r) % t;
                let n = i + (s - t) + 1; // visible keys
                let (p, x) = (&mut p[..n], &x[..n]);
                vectorized(
                    #[inline(always)]
                    || {
                        let max = vmath::max(x) * self.scale;
                        for (p, &x) in p.iter_mut().zip(x) {
                            *p = x * self.scale;
                        }
                        let sum = vmath::exp_sum(p, max);
                        vmath::scale(p, 1.0 / sum);
                    },
                );
            }
        });
        Ok((CpuStorage::F32(p), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, dp: &Tensor) -> Result<Option<Tensor>> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dp = dp.contiguous()?;
        let (t, s) = dims_ts(self.name(), p.dims())?;
        let (pr, dpr) = (Read::new(p, self.name())?, Read::new(&dp, self.name())?);
        let (ps, dps) = (pr.f32()?, dpr.f32()?);
        let mut dx = vec![0f32; ps.len()];
        let rows = rows_per_task(ps.len() / s);
        dx.par_chunks_mut(rows * s).zip(ps.par_chunks(rows * s)).zip(dps.par_chunks(rows * s)).enumerate().for_each(
            |(task, ((dx, p), dp))| {
                for (r, ((dx, p), dp)) in
                    dx.chunks_exact_mut(s).zip(p.chunks_exact(s)).zip(dp.chunks_exact(s)).enumerate()
                {
                    let n = (task * rows + r) % t + (s - t) + 1;
                    let dot = vmath::dot(&p[..n], &dp[..n]);
                    for j in 0..n {
                        dx[j] = self.scale * p[j] * (dp[j] - dot);
                    }
                }
            },
        );
        Ok(Some(tensor(dx, p.dims())?))
    }
}
