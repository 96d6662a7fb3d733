//! SGD exactly as `torch.optim.SGD` (single-tensor path):
//!
//! ```text
//! g ← g + wd·p
//! b ← g at the first step, else μ·b + (1−τ)·g        (momentum μ > 0, dampening τ)
//! g ← g + μ·b with Nesterov, else b
//! p ← p − lr·g
//! ```
//! State: `momentum_buffer` (4 bytes per parameter) only when μ > 0.

use super::{Param, State};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct SgdHyper {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

pub fn init(h: &SgdHyper, p: &Param, st: &mut State) -> Result<()> {
    if h.momentum != 0.0 {
        st.set(p.name, "momentum_buffer", p.var.as_tensor().zeros_like()?);
    }
    Ok(())
}

/// Step `t` (1-based) of one parameter at learning rate `lr` (before the group's scale).
pub fn update(h: &SgdHyper, p: &Param, lr: f64, t: u64, st: &mut State) -> Result<()> {
    let (lr, wd) = (lr * p.group.lr_scale, p.group.weight_decay);
    let param = p.var.as_tensor();
    let mut g = p.scaled_grad()?;
    if wd != 0.0 {
        g = (g + (param * wd)?)?;
    }
    if h.momentum != 0.0 {
        // torch creates the buffer from the first gradient, undamped.
        let buf = if t == 1 {
            g.copy()?
        } else {
            ((st.get(p.name, "momentum_buffer")? * h.momentum)? + (&g * (1.0 - h.dampening))?)?
        };
        g = if h.nesterov { (g + (&buf * h.momentum)?)? } else { buf.clone() };
        st.set(p.name, "momentum_buffer", buf);
    }
    p.var.set(&(param - (g * lr)?)?)?;
    Ok(())
}
