//! `[optim]` and `[schedule]`: the optimizer, its hyperparameters and parameter groups, and
//! the learning-rate schedule. [`super::OptimSpec::from_config`] and
//! [`ScheduleConfig::resolve`] turn them into what the trainer uses.

use super::{PlateauRule, Schedule};
use crate::config::check;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The learning-rate schedule's shape (all with linear warmup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine decay to `min_lr_ratio`.
    Cosine,
    /// Linear decay to `min_lr_ratio`.
    Linear,
    Constant,
    /// 1 / sqrt(step), with the warmup length as the timescale.
    InverseSqrt,
    /// Warmup, stable, then a cosine decay over the last `decay_fraction` of the steps.
    Wsd,
    /// Flat after warmup; reduced when validation loss stops improving.
    Plateau,
}

/// The optimizer and its hyperparameters. Keys every optimizer reads are plain values; keys
/// only some optimizers read are `Option`s, resolved per optimizer (defaults, ranges, and a
/// key set for an optimizer that does not read it is an error) by `optim::OptimSpec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// "adamw" | "adam" | "sgd" | "adafactor" | "lamb" | "lion" | "muon".
    pub name: String,
    pub lr: f64,
    // Field order as before the optimizer suite, so a config.toml written then (which spells out
    // beta1, beta2, eps) serialises, and hashes, the same: such runs still resume.
    /// adamw, adam, lamb, lion, muon (its AdamW part), adafactor (unset there: no first moment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// adamw, adam, lamb, lion, muon (its AdamW part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// adamw, adam, lamb, muon (its AdamW part), adafactor (the squared-gradient regulariser).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Weight decay for the parameters that decay (matrices; see `decay_embeddings` and
    /// `groups`): decoupled for adamw, adafactor, lion, muon; added to the gradient (L2) for
    /// adam and sgd, as torch does; added to the Adam step for lamb.
    pub weight_decay: f64,
    /// Whether embeddings (token and position) are decayed too.
    pub decay_embeddings: bool,
    /// Global-norm gradient clipping threshold; 0 disables clipping.
    pub grad_clip: f64,
    /// adamw, adam: keep the running maximum of the second moment (AMSGrad).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amsgrad: Option<bool>,
    /// sgd, muon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// sgd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
    /// sgd, muon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// adafactor: the parameter-scale floor (HF `eps[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps2: Option<f64>,
    /// adafactor: second-moment decay exponent (beta2ₜ = 1 − t^decay_rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_rate: Option<f64>,
    /// adafactor: the update's RMS is clipped to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_threshold: Option<f64>,
    /// adafactor: ignore `lr` and the schedule; use min(1e-2, 1/√t) (or min(1e-6·t, 1/√t)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_step: Option<bool>,
    /// adafactor: scale the step by max(eps2, RMS(p)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_parameter: Option<bool>,
    /// adafactor (with relative_step): the relative step grows as 1e-6·t.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_init: Option<bool>,
    /// lamb: the weight norm in the trust ratio is clamped to [0, clamp_value].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamp_value: Option<f64>,
    /// lamb: bias-correct the moments (torch_optimizer's `debias`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debias: Option<bool>,
    /// muon: Newton–Schulz iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_steps: Option<usize>,
    /// muon: learning rate of the AdamW-updated parameters (embeddings, head, norms, biases)
    /// as a fraction of `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_lr_ratio: Option<f64>,
    /// Parameter groups by name pattern; the first matching group wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<ParamGroupConfig>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: "adamw".into(),
            lr: 6e-4,
            weight_decay: 0.1,
            decay_embeddings: false,
            grad_clip: 1.0,
            beta1: None,
            beta2: None,
            eps: None,
            amsgrad: None,
            momentum: None,
            dampening: None,
            nesterov: None,
            eps2: None,
            decay_rate: None,
            clip_threshold: None,
            relative_step: None,
            scale_parameter: None,
            warmup_init: None,
            clamp_value: None,
            debias: None,
            ns_steps: None,
            adam_lr_ratio: None,
            groups: Vec::new(),
        }
    }
}

/// One `[[optim.groups]]` table: parameters whose Hugging Face name matches `pattern` (a
/// substring, or a glob where `*` matches any run of characters) get this learning-rate
/// multiplier and weight decay. Unset fields keep the default rule's values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupConfig {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// "cosine" | "linear" | "constant" | "inverse_sqrt" | "wsd" | "plateau".
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    /// Cosine decays to `min_lr_ratio * lr` (0 = to zero).
    pub min_lr_ratio: f64,
    /// WSD: fraction of the steps spent in the final (cosine) decay.
    pub decay_fraction: f64,
    /// plateau: multiply the LR by this when validation loss stops improving (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_factor: Option<f64>,
    /// plateau: validations without improvement tolerated before a reduction (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_patience: Option<u64>,
    /// plateau: relative improvement that counts (loss < best·(1 − threshold); default 1e-4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_threshold: Option<f64>,
    /// plateau: validations to wait after a reduction before counting again (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_cooldown: Option<u64>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            decay_fraction: 0.2,
            plateau_factor: None,
            plateau_patience: None,
            plateau_threshold: None,
            plateau_cooldown: None,
        }
    }
}

impl ScheduleConfig {
    /// The schedule over `total` optimizer steps, after range checks. Plateau's keys are read
    /// by the plateau schedule only; another kind with one of them set is an error naming it.
    pub fn resolve(&self, total: u64) -> Result<Schedule> {
        let plateau_keys = [
            ("schedule.plateau_factor", self.plateau_factor.is_some()),
            ("schedule.plateau_patience", self.plateau_patience.is_some()),
            ("schedule.plateau_threshold", self.plateau_threshold.is_some()),
            ("schedule.plateau_cooldown", self.plateau_cooldown.is_some()),
        ];
        if self.kind == ScheduleKind::Plateau {
            let r = PlateauRule::from_config(self);
            check(r.factor > 0.0 && r.factor < 1.0, "schedule.plateau_factor", r.factor, "0 < factor < 1")?;
            check(r.threshold >= 0.0, "schedule.plateau_threshold", r.threshold, ">= 0")?;
        } else if let Some((key, _)) = plateau_keys.iter().find(|(_, set)| *set) {
            return Err(Error::config(
                *key,
                format!("is only read by schedule.kind = \"plateau\", not {:?}", kind_name(self.kind)),
            ));
        }
        check((0.0..=1.0).contains(&self.min_lr_ratio), "schedule.min_lr_ratio", self.min_lr_ratio, "0 <= ratio <= 1")?;
        check(
            (0.0..=1.0).contains(&self.decay_fraction),
            "schedule.decay_fraction",
            self.decay_fraction,
            "0 <= fraction <= 1",
        )?;
        Ok(Schedule::new(self, total))
    }
}

/// The kind as it is written in a config.
pub fn kind_name(kind: ScheduleKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

impl OptimConfig {
    /// Range checks of the keys every optimizer reads.
    pub fn check_common(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, "optim.lr", self.lr, "a positive number")?;
        check(self.weight_decay >= 0.0, "optim.weight_decay", self.weight_decay, ">= 0")?;
        check(self.grad_clip >= 0.0, "optim.grad_clip", self.grad_clip, ">= 0 (0 disables)")
    }
}
