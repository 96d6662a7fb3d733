//! Adam and AdamW exactly as `torch.optim.Adam` / `torch.optim.AdamW` (single-tensor path):
//!
//! ```text
//! adam:  g ← g + wd·p                 adamw: p ← p·(1 − lr·wd)
//! m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  v̂ ← max(v̂, v) with amsgrad, else v
//! p ← p − lr/(1−β1ᵗ) · m / (√v̂/√(1−β2ᵗ) + ε)
//! ```
//! State: `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq` with amsgrad): 8 (12) bytes per
//! parameter. Muon uses [`update`] for the parameters it does not orthogonalise. AdamW (without
//! AMSGrad) runs in place through `ops::adamw_in_place_all` when the fused kernels apply (on a
//! GPU every parameter in one kernel launch, [`update_all`]); the composed update below is its
//! reference.

use super::{Param, State};
use crate::error::Result;
use crate::ops::{self, adamw::AdamWStep};

#[derive(Debug, Clone, PartialEq)]
pub struct AdamHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub amsgrad: bool,
    /// AdamW's decoupled decay (true) or Adam's L2 term added to the gradient (false).
    pub decoupled: bool,
}

pub fn init(h: &AdamHyper, p: &Param, st: &mut State) -> Result<()> {
    // A buffer each: the fused update writes the moments in place.
    st.set(p.name, "exp_avg", p.var.as_tensor().zeros_like()?);
    st.set(p.name, "exp_avg_sq", p.var.as_tensor().zeros_like()?);
    if h.amsgrad {
        st.set(p.name, "max_exp_avg_sq", p.var.as_tensor().zeros_like()?);
    }
    Ok(())
}

/// AdamW's step `t` of every parameter of `params` at once through the fused kernels, when
/// they apply to all of them (false: nothing done, update them one by one). The GPU kernel
/// applies each gradient's `grad_scale` as it reads it; the CPU kernel takes unscaled ones.
pub fn update_all(h: &AdamHyper, params: &[Param], lr: f64, t: u64, st: &State) -> Result<bool> {
    if !h.decoupled || h.amsgrad {
        return Ok(false);
    }
    let updates = params
        .iter()
        .map(|p| {
            Ok(ops::adamw::AdamWUpdate {
                param: p.var.as_tensor(),
                grad: p.grad,
                m: st.get(p.name, "exp_avg")?,
                v: st.get(p.name, "exp_avg_sq")?,
                step: fused_step(h, p, lr, t),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ops::adamw_in_place_all(&updates)?)
}

/// The fused kernels' scalars for parameter `p`'s step `t`.
fn fused_step(h: &AdamHyper, p: &Param, lr: f64, t: u64) -> AdamWStep {
    let (lr, wd) = (lr * p.group.lr_scale, p.group.weight_decay);
    AdamWStep { lr, weight_decay: wd, beta1: h.beta1, beta2: h.beta2, eps: h.eps, t, grad_scale: p.grad_scale }
}

/// Step `t` (1-based) of one parameter at learning rate `lr` (before the group's scale).
pub fn update(h: &AdamHyper, p: &Param, lr: f64, t: u64, st: &mut State) -> Result<()> {
    if update_all(h, std::slice::from_ref(p), lr, t, st)? {
        return Ok(());
    }
    if p.grad_scale != 1.0 {
        // Kernels that take the gradient as it is (the CPU's): scaled first, then as usual.
        let grad = &p.scaled_grad()?;
        return update(h, &Param { grad, grad_scale: 1.0, ..*p }, lr, t, st);
    }
    let (lr, wd) = (lr * p.group.lr_scale, p.group.weight_decay);
    let mut param = p.var.as_tensor().clone();
    let mut g = p.grad.clone();
    if wd != 0.0 {
        if h.decoupled {
            param = (param * (1.0 - lr * wd))?;
        } else {
            g = (g + (&param * wd)?)?;
        }
    }
    let m = ((st.get(p.name, "exp_avg")? * h.beta1)? + (&g * (1.0 - h.beta1))?)?;
    let v = ((st.get(p.name, "exp_avg_sq")? * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let bc1 = 1.0 - h.beta1.powi(t as i32);
    let bc2_sqrt = (1.0 - h.beta2.powi(t as i32)).sqrt();
    let v_hat = if h.amsgrad {
        let max = st.get(p.name, "max_exp_avg_sq")?.maximum(&v)?;
        st.set(p.name, "max_exp_avg_sq", max.clone());
        max
    } else {
        v.clone()
    };
    let denom = ((v_hat.sqrt()? / bc2_sqrt)? + h.eps)?;
    let step = (m.div(&denom)? * (lr / bc1))?;
    p.var.set(&(param - step)?)?;
    st.set(p.name, "exp_avg", m);
    st.set(p.name, "exp_avg_sq", v);
    Ok(())
}
