//! Adafactor (Shazeer & Stern 2018) exactly as `transformers.optimization.Adafactor`:
//!
//! ```text
//! ρ  ← lr, or min(1e-2, 1/√t) with relative_step (min(1e-6·t, 1/√t) with warmup_init)
//! α  ← ρ · max(ε2, RMS(p)) with scale_parameter, else ρ
//! β2ₜ ← 1 − t^decay_rate
//! u  ← g² + ε1
//! ≥2-D:  R ← β2ₜ·R + (1−β2ₜ)·mean_last(u);  C ← β2ₜ·C + (1−β2ₜ)·mean_second_last(u)
//!        V̂ = (R / mean(R)) ⊗ C                      (rank-1 factored second moment)
//! 1-D:   V̂ ← β2ₜ·V̂ + (1−β2ₜ)·u
//! U  ← g / √V̂;  U ← U / max(1, RMS(U)/d);  U ← α·U    (update clipping, threshold d)
//! with β1: m ← β1·m + (1−β1)·U;  U ← m
//! p  ← p − wd·α·p − U
//! ```
//! With `relative_step` the scheduled `lr` is ignored (the step size comes from t alone), as
//! in Hugging Face; the group's `lr_scale` still multiplies α. State: `exp_avg_sq_row` and
//! `exp_avg_sq_col` for matrices (rows + cols floats instead of rows × cols), `exp_avg_sq` for
//! vectors, `exp_avg` with β1 (4 bytes per parameter). On a GPU the step of a matrix or a
//! vector runs lmforge's fused kernels (`ops::adafactor_in_place`: the same arithmetic, RMS
//! values kept on the device, no full-size temporaries); this composed form is their oracle and
//! runs everywhere else, reading RMS(p) and RMS(U) back to the host per parameter.

use super::{Param, State};
use crate::error::Result;
use crate::ops::{self, adafactor::AdafactorStep, adafactor::AdafactorUpdate, adafactor::SecondMoment};
use candle_core::{Tensor, D};

#[derive(Debug, Clone, PartialEq)]
pub struct AdafactorHyper {
    /// First-moment decay; None: no first moment (Hugging Face's default).
    pub beta1: Option<f64>,
    /// Added to g² (HF `eps[0]`).
    pub eps1: f64,
    /// Floor of the parameter scale (HF `eps[1]`).
    pub eps2: f64,
    pub decay_rate: f64,
    pub clip_threshold: f64,
    pub relative_step: bool,
    pub scale_parameter: bool,
    pub warmup_init: bool,
}

pub fn init(h: &AdafactorHyper, p: &Param, st: &mut State) -> Result<()> {
    let w = p.var.as_tensor();
    if h.beta1.is_some() {
        st.set(p.name, "exp_avg", w.zeros_like()?);
    }
    let dims = w.dims();
    if dims.len() >= 2 {
        let n = dims.len();
        let row: Vec<usize> = dims[..n - 1].to_vec();
        let col: Vec<usize> = dims[..n - 2].iter().chain(&dims[n - 1..]).copied().collect();
        st.set(p.name, "exp_avg_sq_row", Tensor::zeros(row, w.dtype(), w.device())?);
        st.set(p.name, "exp_avg_sq_col", Tensor::zeros(col, w.dtype(), w.device())?);
    } else {
        st.set(p.name, "exp_avg_sq", w.zeros_like()?);
    }
    Ok(())
}

/// Root mean square, read back to the host.
fn rms(t: &Tensor) -> Result<f64> {
    let sq = t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((sq / t.elem_count() as f64).sqrt())
}

/// The step size before the parameter scale (HF `_get_lr`'s `rel_step_sz`): relative to the
/// step, or the learning rate.
fn base_step(h: &AdafactorHyper, lr: f64, t: u64) -> f64 {
    if h.relative_step {
        let min_step = if h.warmup_init { 1e-6 * t as f64 } else { 1e-2 };
        min_step.min(1.0 / (t as f64).sqrt())
    } else {
        lr
    }
}

/// The step size α (HF `_get_lr`): relative or fixed, times the parameter scale.
pub fn step_size(h: &AdafactorHyper, lr: f64, t: u64, param_rms: f64) -> f64 {
    let scale = if h.scale_parameter { h.eps2.max(param_rms) } else { 1.0 };
    scale * base_step(h, lr, t)
}

/// A matrix's or a vector's step through the fused kernels where they apply (false: nothing
/// done).
fn fused(h: &AdafactorHyper, p: &Param, lr: f64, t: u64, beta2t: f64, st: &State) -> Result<bool> {
    let moment = match p.var.as_tensor().rank() {
        2 => SecondMoment::Factored { row: st.get(p.name, "exp_avg_sq_row")?, col: st.get(p.name, "exp_avg_sq_col")? },
        1 => SecondMoment::Full(st.get(p.name, "exp_avg_sq")?),
        _ => return Ok(false),
    };
    let step = AdafactorStep {
        eps1: h.eps1,
        eps2: h.eps2,
        beta2t,
        rel: base_step(h, lr, t),
        lr_scale: p.group.lr_scale,
        scale_parameter: h.scale_parameter,
        clip_threshold: h.clip_threshold,
        weight_decay: p.group.weight_decay,
        beta1: h.beta1,
        grad_scale: p.grad_scale,
    };
    let exp_avg = if h.beta1.is_some() { Some(st.get(p.name, "exp_avg")?) } else { None };
    let update = AdafactorUpdate { param: p.var.as_tensor(), grad: p.grad, moment, exp_avg, step };
    Ok(ops::adafactor_in_place(&update)?)
}

/// Step `t` (1-based) of one parameter at learning rate `lr` (ignored with relative_step).
pub fn update(h: &AdafactorHyper, p: &Param, lr: f64, t: u64, st: &mut State) -> Result<()> {
    let beta2t = 1.0 - (t as f64).powf(h.decay_rate);
    if fused(h, p, lr, t, beta2t, st)? {
        return Ok(());
    }
    let param = p.var.as_tensor();
    let g = &p.scaled_grad()?;
    let param_rms = if h.scale_parameter { rms(param)? } else { 0.0 };
    let alpha = step_size(h, lr, t, param_rms) * p.group.lr_scale;
    let u = (g.sqr()? + h.eps1)?;
    let mut update = if param.rank() >= 2 {
        let row = ((st.get(p.name, "exp_avg_sq_row")? * beta2t)? + (u.mean(D::Minus1)? * (1.0 - beta2t))?)?;
        let col = ((st.get(p.name, "exp_avg_sq_col")? * beta2t)? + (u.mean(D::Minus2)? * (1.0 - beta2t))?)?;
        // HF `_approx_sq_grad`: rsqrt(R / mean(R)) ⊗ rsqrt(C).
        let r = row.broadcast_div(&row.mean_keepdim(D::Minus1)?)?.sqrt()?.recip()?.unsqueeze(row.rank())?;
        let c = col.unsqueeze(col.rank() - 1)?.sqrt()?.recip()?;
        // g² + ε is spent: freed before the full-size preconditioner and update exist (fewer
        // full-size temporaries at once).
        drop(u);
        let approx = r.broadcast_mul(&c)?;
        st.set(p.name, "exp_avg_sq_row", row);
        st.set(p.name, "exp_avg_sq_col", col);
        (approx * g)?
    } else {
        let v = ((st.get(p.name, "exp_avg_sq")? * beta2t)? + (u * (1.0 - beta2t))?)?;
        let out = (v.sqrt()?.recip()? * g)?;
        st.set(p.name, "exp_avg_sq", v);
        out
    };
    let clip = (rms(&update)? / h.clip_threshold).max(1.0);
    update = (update * (alpha / clip))?;
    if let Some(b1) = h.beta1 {
        let m = ((st.get(p.name, "exp_avg")? * b1)? + (update * (1.0 - b1))?)?;
        st.set(p.name, "exp_avg", m.clone());
        update = m;
    }
    let wd = p.group.weight_decay;
    let decayed = if wd != 0.0 { (param + (param * (-wd * alpha))?)? } else { param.clone() };
    p.var.set(&(decayed - update)?)?;
    Ok(())
}
