//! Optimization: one [`Optimizer`] (an enum over the concrete update rules, each in its own
//! file below `optim/`), parameter groups, global-norm gradient clipping, and learning-rate
//! schedules written as pure functions of the step.
//!
//! | `optim.name` | update rule (file)                         | reference it is tested against      |
//! | ------------ | ------------------------------------------ | ----------------------------------- |
//! | adamw, adam  | `adam.rs` (decoupled / L2 decay, AMSGrad)   | `torch.optim.AdamW` / `Adam`        |
//! | sgd          | `sgd.rs` (momentum, dampening, Nesterov)   | `torch.optim.SGD`                   |
//! | adafactor    | `adafactor.rs` (factored second moments)   | `transformers.optimization.Adafactor` |
//! | lamb         | `lamb.rs` (layer-wise trust ratio)         | `torch_optimizer.Lamb`              |
//! | lion         | `lion.rs` (sign of interpolated momentum)  | Chen et al. 2023, hand-computed     |
//! | muon         | `muon.rs` (Newton–Schulz orthogonalised momentum + AdamW) | Keller Jordan's reference, hand-computed |
//!
//! State lives in one [`State`] map keyed `PARAM.SLOT` (the checkpoint's tensor names), so
//! saving, restoring and sizing it is the same code for every optimizer. Parameters are updated
//! in place (`Var::set` copies into the existing buffer, so the model's views see the update);
//! candle has no in-place arithmetic, so each update computes temporaries and each state
//! tensor is replaced by its successor (the old buffer is freed at once).
//! Clipping follows `torch.nn.utils.clip_grad_norm_` and the schedules the Hugging Face
//! `get_*_schedule_with_warmup` family.

pub mod adafactor;
pub mod adam;
pub mod config;
pub mod groups;
pub mod lamb;
pub mod lion;
pub mod muon;
pub mod sgd;
pub mod spec;

pub use config::{OptimConfig, ParamGroupConfig, ScheduleConfig, ScheduleKind};
pub use groups::{param_groups, ParamGroup, ParamRole};
pub use spec::OptimSpec;

use crate::error::{Error, Result};
use crate::patience::{Patience, PatienceRule, Threshold, Verdict};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

/// Learning-rate multiplier for optimizer step `step` (0-based) of `total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
    pub decay_fraction: f64,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, total: u64) -> Self {
        Self {
            kind: cfg.kind,
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
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => floor(((n - s) / (n - w).max(1.0)).max(0.0)),
            ScheduleKind::InverseSqrt => {
                let timescale = if self.warmup > 0 { w } else { 10_000.0 };
                1.0 / ((s + timescale - w) / timescale).max(1e-12).sqrt()
            }
            ScheduleKind::Wsd => {
                let decay = (self.decay_fraction * n).round();
                let stable_end = n - decay;
                if s < stable_end {
                    1.0
                } else {
                    floor(cosine((s - stable_end) / decay.max(1.0)))
                }
            }
            // Warmup, then 1 times the plateau scale (applied by the trainer, see [`Plateau`]).
            ScheduleKind::Plateau => 1.0,
            ScheduleKind::Cosine => floor(cosine((s - w) / (n - w).max(1.0))),
        }
    }
}

/// Reduce-on-plateau's settings (`schedule.plateau_*`, floor `schedule.min_lr_ratio`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateauRule {
    pub factor: f64,
    pub patience: u64,
    pub threshold: f64,
    pub cooldown: u64,
    pub min_scale: f64,
}

impl PlateauRule {
    /// torch's defaults (factor 0.1, patience 10, threshold 1e-4, cooldown 0) where unset.
    pub fn from_config(cfg: &ScheduleConfig) -> Self {
        Self {
            factor: cfg.plateau_factor.unwrap_or(0.1),
            patience: cfg.plateau_patience.unwrap_or(10),
            threshold: cfg.plateau_threshold.unwrap_or(1e-4),
            cooldown: cfg.plateau_cooldown.unwrap_or(0),
            min_scale: cfg.min_lr_ratio,
        }
    }
}

impl PlateauRule {
    /// The patience part of the rule: lower loss is better by a relative `threshold`, more than
    /// `patience` validations without it reduce the LR, then `cooldown` validations pass.
    pub fn patience(&self) -> PatienceRule {
        PatienceRule {
            higher_is_better: false,
            threshold: Threshold::Relative(self.threshold),
            tolerate: self.patience,
            cooldown: self.cooldown,
        }
    }
}

/// Reduce-on-plateau state, as `torch.optim.lr_scheduler.ReduceLROnPlateau` (mode "min",
/// relative threshold), stepped once per validation. The LR is `lr · warmup · scale`. Saved in
/// `trainer_state.json` so a resumed run reduces exactly when the uninterrupted one does. The
/// waiting is [`Patience`], the same rule early stopping uses.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plateau {
    pub scale: f64,
    /// Best validation loss so far and the validations since it improved.
    #[serde(flatten)]
    pub patience: Patience,
}

impl Default for Plateau {
    fn default() -> Self {
        Self { scale: 1.0, patience: Patience::default() }
    }
}

impl std::ops::Deref for Plateau {
    type Target = Patience;
    fn deref(&self) -> &Patience {
        &self.patience
    }
}

impl Plateau {
    /// Records one validation loss; reduces `scale` (floored at `min_scale`) when the patience
    /// runs out.
    pub fn observe(&mut self, loss: f64, rule: &PlateauRule) {
        if self.patience.observe(loss, &rule.patience()) == Verdict::Exhausted {
            self.scale = (self.scale * rule.factor).max(rule.min_scale);
        }
    }
}

/// Clips gradients in place to a global L2 norm of `max_norm` (as `clip_grad_norm_`:
/// scale = max_norm / (norm + 1e-6) when that is below 1). Returns the norm before clipping.
/// (The trainer folds the scale into the update instead: [`Optimizer::step_scaled`].)
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = sum_of_squares(grads)?.sqrt();
    let scale = clip_scale(norm, max_norm);
    if scale != 1.0 {
        for g in grads.values_mut() {
            *g = crate::ops::scale(g, scale)?;
        }
    }
    Ok(norm)
}

/// Σ g² over every gradient (the squared global norm of this process's `grads`).
pub fn sum_of_squares(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    Ok(crate::ops::sum_squares_all(grads.values())?)
}

/// The factor that clips gradients whose global norm (over every process's share) is `norm`
/// to `max_norm` (`clip_grad_norm_`'s max_norm / (norm + 1e-6) when below 1); 1 when they are
/// within it, without clipping (`max_norm` 0) and for a non-finite norm (the fault policy's
/// case).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    let scale = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && norm.is_finite() && scale < 1.0 {
        scale
    } else {
        1.0
    }
}

/// Collects the gradient of every variable, by name. A parameter the loss does not reach gets
/// zeros, so the optimizer treats every parameter alike. Gradients are detached: they are
/// outputs of backward ops and would otherwise keep the step's whole graph alive through the
/// optimizer moments computed from them (memory growing every step).
pub fn named_grads(vars: &BTreeMap<String, Var>, store: &GradStore) -> Result<BTreeMap<String, Tensor>> {
    with_held_grads(vars, store_grads(vars, store))
}

/// The gradients `store` holds for `vars`, by name (none for a parameter without one): those
/// beside the store, in `param_grads`, stay there.
pub fn store_grads(vars: &BTreeMap<String, Var>, store: &GradStore) -> BTreeMap<String, Tensor> {
    vars.iter().filter_map(|(name, v)| Some((name.clone(), store.get(v.as_tensor())?.detach()))).collect()
}

/// Every parameter's gradient: `from_store` (one store's, or several summed) plus what fused
/// sublayers and checkpointed blocks left beside the store (taken), zeros for a parameter
/// without either.
pub fn with_held_grads(
    vars: &BTreeMap<String, Var>,
    mut from_store: BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    vars.iter()
        .map(|(name, v)| {
            let held = crate::ops::param_grads::take(v.as_tensor());
            let g = match (from_store.remove(name), held) {
                (Some(a), Some(b)) => (a + b.detach())?,
                (a, b) => match a.or(b) {
                    Some(g) => g.detach(),
                    None => v.as_tensor().zeros_like()?,
                },
            };
            Ok((name.clone(), g))
        })
        .collect()
}

/// Optimizer state: every state tensor of every parameter, keyed `PARAM.SLOT`
/// (e.g. `transformer.h.0.attn.c_attn.weight.exp_avg`), exactly as saved in checkpoints.
#[derive(Default)]
pub struct State(BTreeMap<String, Tensor>);

impl State {
    /// State slot `slot` of parameter `name`.
    pub fn get(&self, name: &str, slot: &str) -> Result<&Tensor> {
        self.0
            .get(&format!("{name}.{slot}"))
            .ok_or_else(|| Error::Invalid(format!("no optimizer state `{name}.{slot}`")))
    }

    /// Creates or replaces a slot. Values are detached: state never holds a graph.
    pub fn set(&mut self, name: &str, slot: &str, value: Tensor) {
        self.0.insert(format!("{name}.{slot}"), value.detach());
    }

    pub fn bytes(&self) -> usize {
        self.0.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }
}

/// One parameter as an update rule sees it.
#[derive(Clone, Copy)]
pub struct Param<'a> {
    pub name: &'a str,
    pub var: &'a Var,
    /// Same shape as `var`; detached; not yet multiplied by `grad_scale`.
    pub grad: &'a Tensor,
    /// The factor the update takes the gradient with (clipping's; 1 for none).
    pub grad_scale: f64,
    pub group: &'a ParamGroup,
}

impl Param<'_> {
    /// The gradient times `grad_scale` (the gradient itself when that is 1), for the updates
    /// that do not fold the factor into a kernel.
    pub fn scaled_grad(&self) -> Result<Tensor> {
        if self.grad_scale == 1.0 {
            Ok(self.grad.clone())
        } else {
            Ok(crate::ops::scale(self.grad, self.grad_scale)?)
        }
    }
}

/// The optimizer the trainer uses, whichever `optim.name` chose.
pub struct Optimizer {
    pub spec: OptimSpec,
    groups: BTreeMap<String, ParamGroup>,
    state: State,
    /// Completed steps (t in bias corrections and Adafactor's relative step).
    pub t: u64,
}

impl Optimizer {
    /// `groups` must hold every variable (see [`param_groups`]).
    pub fn new(spec: OptimSpec, vars: &BTreeMap<String, Var>, groups: BTreeMap<String, ParamGroup>) -> Result<Self> {
        let mut state = State::default();
        for (name, var) in vars {
            let group =
                groups.get(name).ok_or_else(|| Error::Invalid(format!("parameter `{name}` has no optimizer group")))?;
            let p = Param { name, var, grad: var.as_tensor(), grad_scale: 1.0, group };
            match &spec {
                OptimSpec::Adam(h) => adam::init(h, &p, &mut state)?,
                OptimSpec::Sgd(h) => sgd::init(h, &p, &mut state)?,
                OptimSpec::Adafactor(h) => adafactor::init(h, &p, &mut state)?,
                OptimSpec::Lamb(_) => lamb::init(&p, &mut state)?,
                OptimSpec::Lion(_) => lion::init(&p, &mut state)?,
                OptimSpec::Muon(h) => muon::init(h, &p, &mut state)?,
            }
        }
        Ok(Self { spec, groups, state, t: 0 })
    }

    /// Resolves `cfg` (see [`OptimSpec::from_config`]) and builds the optimizer.
    pub fn from_config(
        cfg: &OptimConfig,
        vars: &BTreeMap<String, Var>,
        groups: BTreeMap<String, ParamGroup>,
    ) -> Result<Self> {
        Self::new(OptimSpec::from_config(cfg)?, vars, groups)
    }

    pub fn name(&self) -> &'static str {
        self.spec.name()
    }

    pub fn group(&self, name: &str) -> Option<&ParamGroup> {
        self.groups.get(name)
    }

    /// One update of every variable; `lr` is the scheduled learning rate (times each group's
    /// `lr_scale`; Adafactor with `relative_step` ignores it).
    pub fn step(&mut self, vars: &BTreeMap<String, Var>, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step_scaled(vars, grads, 1.0, lr)
    }

    /// One update from the gradients times `grad_scale` (gradient clipping's factor,
    /// [`clip_scale`]). The GPU kernels of AdamW and Adafactor apply it as they read each
    /// gradient, so clipping costs no pass over the gradients of its own; the other updates
    /// scale a parameter's gradient as they take it ([`Param::scaled_grad`]), one tensor at a
    /// time — the same f32 products as `clip_grad_norm_`'s in-place scaling.
    pub fn step_scaled(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        grad_scale: f64,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let (t, st) = (self.t, &mut self.state);
        let params = vars
            .iter()
            .map(|(name, var)| {
                let grad = grads.get(name).ok_or_else(|| Error::Invalid(format!("no gradient for `{name}`")))?;
                let group = self
                    .groups
                    .get(name)
                    .ok_or_else(|| Error::Invalid(format!("parameter `{name}` has no optimizer group")))?;
                Ok(Param { name, var, grad, grad_scale, group })
            })
            .collect::<Result<Vec<_>>>()?;
        // AdamW through the fused kernels: on a GPU one launch for every parameter.
        if let OptimSpec::Adam(h) = &self.spec {
            if adam::update_all(h, &params, lr, t, st)? {
                return Ok(());
            }
        }
        for p in &params {
            match &self.spec {
                OptimSpec::Adam(h) => adam::update(h, p, lr, t, st)?,
                OptimSpec::Sgd(h) => sgd::update(h, p, lr, t, st)?,
                OptimSpec::Adafactor(h) => adafactor::update(h, p, lr, t, st)?,
                OptimSpec::Lamb(h) => lamb::update(h, p, lr, t, st)?,
                OptimSpec::Lion(h) => lion::update(h, p, lr, st)?,
                OptimSpec::Muon(h) => muon::update(h, p, lr, t, st)?,
            }
        }
        Ok(())
    }

    /// Optimizer state as named tensors (`PARAM.SLOT`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.state.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Restores state saved by `state_tensors`; `t` (completed steps) comes from the trainer
    /// state. Every slot must be present with its shape, and nothing else (state written by
    /// another optimizer is refused).
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (key, slot) in self.state.0.iter_mut() {
            let saved = tensors
                .remove(key)
                .ok_or_else(|| Error::Invalid(format!("{} optimizer state has no `{key}`", self.spec.name())))?;
            if saved.dims() != slot.dims() || saved.dtype() != slot.dtype() {
                return Err(Error::Invalid(format!(
                    "optimizer state `{key}` is {:?} {:?}, expected {:?} {:?}",
                    saved.dtype(),
                    saved.dims(),
                    slot.dtype(),
                    slot.dims()
                )));
            }
            *slot = saved;
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::Invalid(format!(
                "optimizer state holds `{extra}`, which {} does not use (saved by another optimizer?)",
                self.spec.name()
            )));
        }
        self.t = t;
        Ok(())
    }

    /// Bytes of optimizer state in total (e.g. 8 per parameter for AdamW; Adafactor keeps
    /// only row and column statistics for matrices).
    pub fn state_bytes(&self) -> usize {
        self.state.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence worked by hand through torch's ReduceLROnPlateau rules (factor 0.5,
    /// patience 2, threshold 1%, cooldown 1, floor 0.1).
    #[test]
    fn plateau_follows_torch_reduce_lr_on_plateau() {
        let rule = PlateauRule { factor: 0.5, patience: 2, threshold: 0.01, cooldown: 1, min_scale: 0.1 };
        let mut p = Plateau::default();
        let losses = [1.0, 0.995, 0.999, 0.98, 0.985, 0.99, 0.99, 0.99, 0.99, 0.5];
        // 0.995 is not 1% better than 1.0 (bad 1, 2); 0.98 is (best); then bad 1, 2, 3 > 2 →
        // halve, cooldown swallows the next bad count; 0.5 is a new best.
        let want = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5];
        for (loss, want) in losses.iter().zip(want) {
            p.observe(*loss, &rule);
            assert_eq!(p.scale, want, "after loss {loss}: {p:?}");
        }
        assert_eq!(p.best, Some(0.5));
        for _ in 0..20 {
            p.observe(0.6, &rule);
        }
        assert_eq!(p.scale, 0.1, "floored at min_lr_ratio");
    }

    /// Clipping's factor: `clip_grad_norm_`'s max_norm / (norm + 1e-6) below 1, else 1; 1
    /// without clipping and for a non-finite norm (left to the fault policy).
    #[test]
    fn clip_scale_follows_clip_grad_norm() {
        assert_eq!(clip_scale(3.0, 1.0), 1.0 / (3.0 + 1e-6));
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(1.0, 1.0), 1.0 / (1.0 + 1e-6));
        assert_eq!(clip_scale(3.0, 0.0), 1.0);
        assert_eq!(clip_scale(f64::NAN, 1.0), 1.0);
        assert_eq!(clip_scale(f64::INFINITY, 1.0), 1.0);
    }

    /// The trainer folds clipping's factor into the update ([`Optimizer::step_scaled`]): every
    /// optimizer then moves exactly as from the gradients scaled first (what `clip_grad_norm`
    /// does), to the bit, over three steps, with the fused and the reference kernels.
    #[test]
    fn a_folded_gradient_scale_equals_the_gradients_scaled_first() {
        use crate::ops::{Kernels, KernelsGuard};
        use crate::train::RunConfig;
        let dev = candle_core::Device::Cpu;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * 0.7).collect()
        };
        let vars = || -> BTreeMap<String, Var> {
            BTreeMap::from([
                ("w".to_string(), Var::from_vec(values(128, 1), (8, 16), &dev).unwrap()),
                ("b".to_string(), Var::from_vec(values(16, 2), 16, &dev).unwrap()),
            ])
        };
        let grads = |step: usize| -> BTreeMap<String, Tensor> {
            BTreeMap::from([
                ("w".to_string(), Tensor::from_vec(values(128, 3 + step), (8, 16), &dev).unwrap()),
                ("b".to_string(), Tensor::from_vec(values(16, 9 + step), 16, &dev).unwrap()),
            ])
        };
        let scale = 0.3;
        for name in ["adamw", "adam", "sgd", "adafactor", "lamb", "lion", "muon"] {
            let cfg = RunConfig::from_toml_str(&format!("[optim]\nname = \"{name}\""), &[]).unwrap().optim;
            for kernels in [Kernels::Fused, Kernels::Reference] {
                let _k = KernelsGuard::set(kernels);
                let run = |folded: bool| -> Vec<Vec<f32>> {
                    let vars = vars();
                    let mut opt = Optimizer::from_config(&cfg, &vars, groups::uniform_groups(&vars, 0.1)).unwrap();
                    for step in 0..3 {
                        let g = grads(step);
                        if folded {
                            opt.step_scaled(&vars, &g, scale, 1e-2).unwrap();
                        } else {
                            let scaled =
                                g.iter().map(|(k, g)| (k.clone(), crate::ops::scale(g, scale).unwrap())).collect();
                            opt.step(&vars, &scaled, 1e-2).unwrap();
                        }
                    }
                    vars.values().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
                };
                let (folded, scaled_first) = (run(true), run(false));
                assert_eq!(folded, scaled_first, "{name} with the {kernels:?} kernels");
                assert_ne!(
                    folded,
                    vars()
                        .values()
                        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                        .collect::<Vec<_>>(),
                    "{name} moved"
                );
            }
        }
    }

    #[test]
    fn plateau_schedule_is_warmup_then_flat() {
        let cfg = ScheduleConfig { kind: ScheduleKind::Plateau, warmup_steps: 4, ..Default::default() };
        let s = Schedule::new(&cfg, 100);
        assert_eq!((s.multiplier(2), s.multiplier(4), s.multiplier(99)), (0.5, 1.0, 1.0));
    }
}
