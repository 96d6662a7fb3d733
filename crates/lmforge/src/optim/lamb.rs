//! LAMB (You et al. 2019) exactly as `torch_optimizer.Lamb` (0.3):
//!
//! ```text
//! m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//! s ← lr·√(1−β2ᵗ)/(1−β1ᵗ) with debias, else lr
//! a ← m / (√v + ε) + wd·p                               (decay inside the Adam step)
//! r ← clamp(‖p‖, 0, clamp_value) / ‖a‖, or 1 when either norm is 0   (layer-wise trust ratio)
//! p ← p − s·r·a
//! ```
//! State: `exp_avg`, `exp_avg_sq` (8 bytes per parameter). The two norms are read back to the
//! host per parameter (a sync; the trainer runs on the CPU).

use super::{Param, State};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct LambHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub clamp_value: f64,
    pub debias: bool,
}

pub fn init(p: &Param, st: &mut State) -> Result<()> {
    let zeros = p.var.as_tensor().zeros_like()?;
    st.set(p.name, "exp_avg", zeros.clone());
    st.set(p.name, "exp_avg_sq", zeros);
    Ok(())
}

/// Step `t` (1-based) of one parameter at learning rate `lr` (before the group's scale).
pub fn update(h: &LambHyper, p: &Param, lr: f64, t: u64, st: &mut State) -> Result<()> {
    let (lr, wd) = (lr * p.group.lr_scale, p.group.weight_decay);
    let param = p.var.as_tensor();
    let g = &p.scaled_grad()?;
    let m = ((st.get(p.name, "exp_avg")? * h.beta1)? + (g * (1.0 - h.beta1))?)?;
    let v = ((st.get(p.name, "exp_avg_sq")? * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let step_size =
        if h.debias { lr * (1.0 - h.beta2.powi(t as i32)).sqrt() / (1.0 - h.beta1.powi(t as i32)) } else { lr };
    let mut adam_step = m.div(&(v.sqrt()? + h.eps)?)?;
    if wd != 0.0 {
        adam_step = (adam_step + (param * wd)?)?;
    }
    let weight_norm = (param.norm()?.to_scalar::<f32>()? as f64).clamp(0.0, h.clamp_value);
    let adam_norm = adam_step.norm()?.to_scalar::<f32>()? as f64;
    let trust = if weight_norm == 0.0 || adam_norm == 0.0 { 1.0 } else { weight_norm / adam_norm };
    p.var.set(&(param - (adam_step * (step_size * trust))?)?)?;
    st.set(p.name, "exp_avg", m);
    st.set(p.name, "exp_avg_sq", v);
    Ok(())
}
