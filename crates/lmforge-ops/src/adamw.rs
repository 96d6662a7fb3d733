//! AdamW's update in place: the moments and the parameter are overwritten in their own
//! buffers (three passes, spread over the rayon pool), where the composed update allocates
//! ~10 parameter-sized temporaries per tensor per step. Same formula as `optim/adam.rs`:
//!
//! ```text
//! m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//! p ← p·(1 − lr·wd) − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)
//! ```
//! The moments must own their buffers (not share storage with each other or the parameter).
//! On a GPU (`--features cuda`) every tensor of a step is updated by one CUDA kernel launch,
//! each element in one pass of the same arithmetic ([`adamw_all`], `cuda/adamw.rs`).

use super::cpu::{slice, slice_mut};
use super::vmath::vectorized;
use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// One AdamW step's scalars.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1-based step (bias corrections).
    pub t: u64,
    /// The factor the gradient is used with (gradient clipping's; 1 for none): applied by the
    /// CUDA kernel as it reads the gradient; the CPU kernel takes 1 (the caller scales first).
    pub grad_scale: f64,
}

/// One parameter's AdamW update: its tensors (f32, one shape, contiguous) and the step's
/// scalars.
#[derive(Debug, Clone, Copy)]
pub struct AdamWUpdate<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub step: AdamWStep,
}

/// Every update of `updates` in place: on a GPU one kernel launch for all of them (they must
/// be on one device), on the CPU [`adamw_in_place`] one by one.
pub fn adamw_all(updates: &[AdamWUpdate<'_>]) -> Result<()> {
    match updates.first() {
        None => Ok(()),
        #[cfg(feature = "cuda")]
        Some(u) if u.param.device().is_cuda() => {
            let grads: Vec<Tensor> = updates.iter().map(|u| u.grad.contiguous()).collect::<Result<_>>()?;
            let updates: Vec<AdamWUpdate> =
                updates.iter().zip(&grads).map(|(u, grad)| AdamWUpdate { grad, ..*u }).collect();
            let _span = super::profile::span("adamw", super::profile::Pass::Update);
            super::cuda::adamw::adamw_all(&updates)
        }
        Some(_) => updates.iter().try_for_each(|u| adamw_in_place(u.param, u.grad, u.m, u.v, &u.step)),
    }
}

/// Updates `m`, `v` and `param` in place from `grad` (all one shape), on the CPU.
pub fn adamw_in_place(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, h: &AdamWStep) -> Result<()> {
    if h.grad_scale != 1.0 {
        bail!("adamw_in_place: the CPU kernel takes the gradient as it is (scale {} first)", h.grad_scale);
    }
    let grad = grad.contiguous()?;
    for (name, t) in [("param", param), ("exp_avg", m), ("exp_avg_sq", v)] {
        if t.dims() != grad.dims() || !t.is_contiguous() {
            bail!("adamw_in_place: {name} {:?} is not a contiguous tensor of the gradient's shape", t.dims());
        }
    }
    m.inplace_op2(&grad, &Moment { beta: h.beta1 as f32, square: false })?;
    v.inplace_op2(&grad, &Moment { beta: h.beta2 as f32, square: true })?;
    let bc1 = 1.0 - h.beta1.powi(h.t as i32);
    let bc2_sqrt = (1.0 - h.beta2.powi(h.t as i32)).sqrt();
    param.inplace_op3(
        m,
        v,
        &Apply {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            step_size: (h.lr / bc1) as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: h.eps as f32,
        },
    )
}

/// m ← β·m + (1−β)·g, or with `square` v ← β·v + (1−β)·g².
struct Moment {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "lmforge-adam-moment"
    }

    fn cpu_fwd(&self, ms: &mut CpuStorage, ml: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Update);
        let g = slice(gs, gl, self.name())?;
        let m = slice_mut(ms, ml, self.name())?;
        let (beta, one_minus) = (self.beta, 1.0 - self.beta);
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            vectorized(
                #[inline(always)]
                || {
                    for (m, &g) in m.iter_mut().zip(g) {
                        let g = if self.square { g * g } else { g };
                        *m = *m * beta + g * one_minus;
                    }
                },
            )
        });
        Ok(())
    }
}

/// p ← p·decay − step_size · m / (√v / bc2_sqrt + ε).
struct Apply {
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "lmforge-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Update);
        let (m, v) = (slice(ms, ml, self.name())?, slice(vs, vl, self.name())?);
        let p = slice_mut(ps, pl, self.name())?;
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((p, m), v)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                        *p = *p * self.decay - m / (v.sqrt() / self.bc2_sqrt + self.eps) * self.step_size;
                    }
                },
            )
        });
        Ok(())
    }
}
