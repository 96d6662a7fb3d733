//! Optimization: AdamW with decoupled weight decay and per-parameter decay groups, global-norm
//! gradient clipping, and learning-rate schedules written as pure functions of the step.
//! Formulas follow `torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_` and the Hugging Face
//! `get_*_schedule_with_warmup` family, and are tested against their recorded trajectories.

use crate::config::{OptimConfig, ScheduleConfig};
use crate::error::{Error, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

/// Learning-rate multiplier for optimizer step `step` (0-based) of `total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: String,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
    pub decay_fraction: f64,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, total: u64) -> Self {
        Self {
            kind: cfg.kind.clone(),
            warmup: cfg.warmup_steps,
            total,
            min_ratio: cfg.min_lr_ratio,
            decay_fraction: cfg.decay_fraction,
        }
    }

    pub fn multiplier(&self, step: u64) -> f64 {
        let (s, w, n) = (step as f64, self.warmup as f64, self.total as f64);
        if step < self.warmup {
            return s / w;
        }
        let floor = |x: f64| self.min_ratio + (1.0 - self.min_ratio) * x;
        let cosine = |p: f64| 0.5 * (1.0 + (std::f64::consts::PI * p.clamp(0.0, 1.0)).cos());
        match self.kind.as_str() {
            "constant" => 1.0,
            "linear" => floor(((n - s) / (n - w).max(1.0)).max(0.0)),
            "inverse_sqrt" => {
                let timescale = if self.warmup > 0 { w } else { 10_000.0 };
                1.0 / ((s + timescale - w) / timescale).max(1e-12).sqrt()
            }
            "wsd" => {
                let decay = (self.decay_fraction * n).round();
                let stable_end = n - decay;
                if s < stable_end {
                    1.0
                } else {
                    floor(cosine((s - stable_end) / decay.max(1.0)))
                }
            }
            // "cosine" (validated config allows nothing else)
            _ => floor(cosine((s - w) / (n - w).max(1.0))),
        }
    }
}

/// Clips gradients in place to a global L2 norm of `max_norm` (as `clip_grad_norm_`:
/// scale = max_norm / (norm + 1e-6) when that is below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.values() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm.is_finite() {
        let scale = max_norm / (norm + 1e-6);
        if scale < 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * scale)?;
            }
        }
    }
    Ok(norm)
}

/// Collects the gradient of every variable, by name. A parameter the loss does not reach gets
/// zeros, so the optimizer treats every parameter alike. Gradients are detached: they are
/// outputs of backward ops and would otherwise keep the step's whole graph alive through the
/// optimizer moments computed from them (memory growing every step).
pub fn named_grads(vars: &BTreeMap<String, Var>, store: &GradStore) -> Result<BTreeMap<String, Tensor>> {
    vars.iter()
        .map(|(name, v)| {
            let g = match store.get(v.as_tensor()) {
                Some(g) => g.detach(),
                None => v.as_tensor().zeros_like()?,
            };
            Ok((name.clone(), g))
        })
        .collect()
}

/// The default decay groups: matrices decay; norm weights and biases (1-D) do not, since
/// decaying them pulls normalisation towards zero; embedding tables (`embeddings`) decay only
/// when `decay_embeddings` is set.
pub fn default_decay<'a>(embeddings: &'a [&'a str], decay_embeddings: bool) -> impl Fn(&str, &Var) -> bool + 'a {
    move |name, var| var.rank() >= 2 && (decay_embeddings || !embeddings.contains(&name))
}

/// AdamW (Loshchilov & Hutter) exactly as `torch.optim.AdamW` with amsgrad off:
/// p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε).
pub struct AdamW {
    pub cfg: OptimConfig,
    /// Parameters that receive weight decay.
    decay: HashMap<String, bool>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// Completed steps (t in the bias corrections).
    pub t: u64,
}

impl AdamW {
    /// `decays(name, var)` says which parameters get weight decay (see [`default_decay`]).
    pub fn new(cfg: &OptimConfig, vars: &BTreeMap<String, Var>, decays: impl Fn(&str, &Var) -> bool) -> Result<Self> {
        let mut decay = HashMap::new();
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in vars {
            decay.insert(name.clone(), decays(name, var));
            m.insert(name.clone(), var.as_tensor().zeros_like()?);
            v.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self { cfg: cfg.clone(), decay, m, v, t: 0 })
    }

    pub fn decays(&self, name: &str) -> bool {
        self.decay.get(name).copied().unwrap_or(false)
    }

    /// One update of every variable with learning rate `lr`.
    pub fn step(&mut self, vars: &BTreeMap<String, Var>, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        for (name, var) in vars {
            let g = grads.get(name).ok_or_else(|| Error::Invalid(format!("no gradient for `{name}`")))?;
            let m = self.m.get_mut(name).expect("state exists for every var");
            let v = self.v.get_mut(name).expect("state exists for every var");
            *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mut p = var.as_tensor().clone();
            if self.decay[name] && self.cfg.weight_decay > 0.0 {
                p = (p * (1.0 - lr * self.cfg.weight_decay))?;
            }
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let update = (m.div(&denom)? * (lr / bc1))?;
            var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// Optimizer state as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.m.len());
        for (name, m) in &self.m {
            out.push((format!("{name}.exp_avg"), m.clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[name].clone()));
        }
        out
    }

    /// Restores state saved by `state_tensors`; `t` comes from the trainer state.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (name, m) in self.m.iter_mut() {
            for (suffix, slot) in [("exp_avg", &mut *m), ("exp_avg_sq", self.v.get_mut(name).expect("state"))] {
                let key = format!("{name}.{suffix}");
                let saved =
                    tensors.remove(&key).ok_or_else(|| Error::Invalid(format!("optimizer state has no `{key}`")))?;
                if saved.dims() != slot.dims() {
                    return Err(Error::Invalid(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        saved.dims(),
                        slot.dims()
                    )));
                }
                *slot = saved;
            }
        }
        self.t = t;
        Ok(())
    }

    /// Bytes of optimizer state per parameter (two fp32 moments).
    pub const STATE_BYTES_PER_PARAM: usize = 8;
}
