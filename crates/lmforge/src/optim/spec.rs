//! `[optim]` resolved into one optimizer's hyperparameters: per-optimizer defaults filled in,
//! ranges checked, and any optimizer-specific key set for an optimizer that does not read it
//! rejected by name (`optim.momentum` with adamw is an error, not silently ignored).

use super::adafactor::AdafactorHyper;
use super::adam::AdamHyper;
use super::lamb::LambHyper;
use super::lion::LionHyper;
use super::muon::MuonHyper;
use super::sgd::SgdHyper;
use super::OptimConfig;
use super::ParamRole;
use crate::config::{bad, check};
use crate::error::{Error, Result};

/// One optimizer with every hyperparameter resolved (no `Option` left but Adafactor's β1).
#[derive(Debug, Clone, PartialEq)]
pub enum OptimSpec {
    /// Adam (`decoupled = false`) or AdamW.
    Adam(AdamHyper),
    Sgd(SgdHyper),
    Adafactor(AdafactorHyper),
    Lamb(LambHyper),
    Lion(LionHyper),
    Muon(MuonHyper),
}

pub const NAMES: [&str; 7] = ["adamw", "adam", "sgd", "adafactor", "lamb", "lion", "muon"];

/// Keys every optimizer reads.
const COMMON: [&str; 6] = ["name", "lr", "weight_decay", "decay_embeddings", "grad_clip", "groups"];

/// The optimizer-specific keys each optimizer reads.
fn own_keys(name: &str) -> &'static [&'static str] {
    match name {
        "adamw" | "adam" => &["beta1", "beta2", "eps", "amsgrad"],
        "sgd" => &["momentum", "dampening", "nesterov"],
        "adafactor" => {
            &["beta1", "eps", "eps2", "decay_rate", "clip_threshold", "relative_step", "scale_parameter", "warmup_init"]
        }
        "lamb" => &["beta1", "beta2", "eps", "clamp_value", "debias"],
        "lion" => &["beta1", "beta2"],
        "muon" => &["momentum", "nesterov", "ns_steps", "beta1", "beta2", "eps", "adam_lr_ratio"],
        _ => &[],
    }
}

/// The optimizer-specific keys this config sets.
fn set_keys(o: &OptimConfig) -> Vec<&'static str> {
    let set = [
        ("beta1", o.beta1.is_some()),
        ("beta2", o.beta2.is_some()),
        ("eps", o.eps.is_some()),
        ("amsgrad", o.amsgrad.is_some()),
        ("momentum", o.momentum.is_some()),
        ("dampening", o.dampening.is_some()),
        ("nesterov", o.nesterov.is_some()),
        ("eps2", o.eps2.is_some()),
        ("decay_rate", o.decay_rate.is_some()),
        ("clip_threshold", o.clip_threshold.is_some()),
        ("relative_step", o.relative_step.is_some()),
        ("scale_parameter", o.scale_parameter.is_some()),
        ("warmup_init", o.warmup_init.is_some()),
        ("clamp_value", o.clamp_value.is_some()),
        ("debias", o.debias.is_some()),
        ("ns_steps", o.ns_steps.is_some()),
        ("adam_lr_ratio", o.adam_lr_ratio.is_some()),
    ];
    set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect()
}

fn beta(key: &str, v: Option<f64>, default: f64) -> Result<f64> {
    let v = v.unwrap_or(default);
    check((0.0..1.0).contains(&v), key, v, "0 <= value < 1")?;
    Ok(v)
}

fn positive(key: &str, v: Option<f64>, default: f64) -> Result<f64> {
    let v = v.unwrap_or(default);
    check(v.is_finite() && v > 0.0, key, v, "a positive number")?;
    Ok(v)
}

impl OptimSpec {
    /// Resolves and validates `[optim]` (name, optimizer-specific keys, groups).
    pub fn from_config(o: &OptimConfig) -> Result<Self> {
        o.check_common()?;
        let name = o.name.as_str();
        if !NAMES.contains(&name) {
            return Err(bad("optim.name", name, &NAMES.join(", ")));
        }
        let own = own_keys(name);
        if let Some(key) = set_keys(o).into_iter().find(|k| !own.contains(k)) {
            return Err(Error::config(
                format!("optim.{key}"),
                format!(
                    "is not a hyperparameter of optimizer {name:?}; {name} reads {}, {}",
                    COMMON.join(", "),
                    own.join(", ")
                ),
            ));
        }
        for (i, g) in o.groups.iter().enumerate() {
            check(!g.pattern.is_empty(), &format!("optim.groups[{i}].pattern"), "\"\"", "a non-empty name pattern")?;
            if let Some(s) = g.lr_scale {
                check(s.is_finite() && s >= 0.0, &format!("optim.groups[{i}].lr_scale"), s, ">= 0")?;
            }
            if let Some(wd) = g.weight_decay {
                check(wd.is_finite() && wd >= 0.0, &format!("optim.groups[{i}].weight_decay"), wd, ">= 0")?;
            }
        }
        let adam = |b2: f64, eps: f64, decoupled: bool| -> Result<AdamHyper> {
            Ok(AdamHyper {
                beta1: beta("optim.beta1", o.beta1, 0.9)?,
                beta2: beta("optim.beta2", o.beta2, b2)?,
                eps: positive("optim.eps", o.eps, eps)?,
                amsgrad: o.amsgrad.unwrap_or(false),
                decoupled,
            })
        };
        Ok(match name {
            "adamw" => OptimSpec::Adam(adam(0.95, 1e-8, true)?),
            "adam" => OptimSpec::Adam(adam(0.999, 1e-8, false)?),
            "sgd" => {
                let momentum = o.momentum.unwrap_or(0.0);
                check((0.0..1.0).contains(&momentum), "optim.momentum", momentum, "0 <= momentum < 1")?;
                let dampening = o.dampening.unwrap_or(0.0);
                check((0.0..=1.0).contains(&dampening), "optim.dampening", dampening, "0 <= dampening <= 1")?;
                let nesterov = o.nesterov.unwrap_or(false);
                if nesterov && (momentum == 0.0 || dampening != 0.0) {
                    return Err(Error::config(
                        "optim.nesterov",
                        "Nesterov momentum needs optim.momentum > 0 and optim.dampening = 0",
                    ));
                }
                OptimSpec::Sgd(SgdHyper { momentum, dampening, nesterov })
            }
            "adafactor" => {
                let relative_step = o.relative_step.unwrap_or(false);
                let warmup_init = o.warmup_init.unwrap_or(false);
                if warmup_init && !relative_step {
                    return Err(Error::config(
                        "optim.warmup_init",
                        "warmup_init = true needs optim.relative_step = true",
                    ));
                }
                let decay_rate = o.decay_rate.unwrap_or(-0.8);
                check((-1.0..0.0).contains(&decay_rate), "optim.decay_rate", decay_rate, "-1 <= decay_rate < 0")?;
                OptimSpec::Adafactor(AdafactorHyper {
                    beta1: o.beta1.map(|b| beta("optim.beta1", Some(b), 0.0)).transpose()?,
                    eps1: positive("optim.eps", o.eps, 1e-30)?,
                    eps2: positive("optim.eps2", o.eps2, 1e-3)?,
                    decay_rate,
                    clip_threshold: positive("optim.clip_threshold", o.clip_threshold, 1.0)?,
                    relative_step,
                    scale_parameter: o.scale_parameter.unwrap_or(true),
                    warmup_init,
                })
            }
            "lamb" => OptimSpec::Lamb(LambHyper {
                beta1: beta("optim.beta1", o.beta1, 0.9)?,
                beta2: beta("optim.beta2", o.beta2, 0.999)?,
                eps: positive("optim.eps", o.eps, 1e-6)?,
                clamp_value: positive("optim.clamp_value", o.clamp_value, 10.0)?,
                debias: o.debias.unwrap_or(false),
            }),
            "lion" => OptimSpec::Lion(LionHyper {
                beta1: beta("optim.beta1", o.beta1, 0.9)?,
                beta2: beta("optim.beta2", o.beta2, 0.99)?,
            }),
            _ => {
                // "muon"
                let ns_steps = o.ns_steps.unwrap_or(5);
                check(ns_steps >= 1, "optim.ns_steps", ns_steps, ">= 1")?;
                OptimSpec::Muon(MuonHyper {
                    momentum: beta("optim.momentum", o.momentum, 0.95)?,
                    nesterov: o.nesterov.unwrap_or(true),
                    ns_steps,
                    adam: adam(0.95, 1e-8, true)?,
                    adam_lr_ratio: positive("optim.adam_lr_ratio", o.adam_lr_ratio, 0.015)?,
                })
            }
        })
    }

    /// Elements of optimizer state a parameter of `shape` and `role` gets: the slots each
    /// optimizer's `init` allocates (see the `State:` line of its file), without allocating.
    /// Tested against [`super::Optimizer::state_bytes`]; `lmforge plan` and the trainer's
    /// fits-in-memory check size the state with it.
    pub fn state_elems(&self, shape: &[usize], role: ParamRole) -> usize {
        let n: usize = shape.iter().product();
        let adam = |h: &AdamHyper| if h.amsgrad { 3 * n } else { 2 * n };
        match self {
            OptimSpec::Adam(h) => adam(h),
            OptimSpec::Sgd(h) => {
                if h.momentum != 0.0 {
                    n
                } else {
                    0
                }
            }
            OptimSpec::Adafactor(h) => {
                let first = if h.beta1.is_some() { n } else { 0 };
                let second = match shape {
                    [lead @ .., rows, cols] => {
                        let lead: usize = lead.iter().product();
                        lead * rows + lead * cols
                    }
                    _ => n,
                };
                first + second
            }
            OptimSpec::Lamb(_) => 2 * n,
            OptimSpec::Lion(_) => n,
            OptimSpec::Muon(h) => {
                if matches!(role, ParamRole::Matrix { .. }) && shape.len() == 2 {
                    n
                } else {
                    adam(&h.adam)
                }
            }
        }
    }

    /// Full-size f32 temporaries of one parameter alive at once on a GPU while the optimizer
    /// updates it, besides the parameter, its gradient and its state, in copies of that
    /// parameter — counted from each update's code, on a device where freed buffers are reused
    /// (CUDA's pool): AdamW's multi-tensor kernel updates in place (none); Adafactor's fused
    /// matrix kernels keep per-tile partial sums only (a 64-row tile's column sums, a
    /// 256-column tile's row sums: 1/64 + 1/256); the composed updates build each new state
    /// tensor beside the old and a few intermediates. `lmforge plan` counts them for the
    /// largest parameter.
    pub fn update_temporaries(&self) -> f64 {
        match self {
            OptimSpec::Adam(h) if h.decoupled && !h.amsgrad => 0.0,
            OptimSpec::Adam(_) => 4.0,
            OptimSpec::Sgd(_) => 3.0,
            OptimSpec::Adafactor(_) => 1.0 / 64.0 + 1.0 / 256.0,
            OptimSpec::Lamb(_) => 5.0,
            OptimSpec::Lion(_) => 4.0,
            OptimSpec::Muon(_) => 5.0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptimSpec::Adam(h) if h.decoupled => "adamw",
            OptimSpec::Adam(_) => "adam",
            OptimSpec::Sgd(_) => "sgd",
            OptimSpec::Adafactor(_) => "adafactor",
            OptimSpec::Lamb(_) => "lamb",
            OptimSpec::Lion(_) => "lion",
            OptimSpec::Muon(_) => "muon",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::optim::OptimSpec;
    use crate::train::RunConfig;

    fn spec(overrides: &[&str]) -> Result<OptimSpec, String> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml_str("", &o).map(|c| OptimSpec::from_config(&c.optim).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_optimizer_resolves_with_its_defaults() {
        for name in super::NAMES {
            let s = spec(&[&format!("optim.name={name}")]).unwrap();
            assert_eq!(s.name(), name);
        }
        let OptimSpec::Adam(h) = spec(&[]).unwrap() else { panic!("adamw is the default") };
        assert_eq!((h.beta1, h.beta2, h.eps, h.decoupled), (0.9, 0.95, 1e-8, true));
    }

    #[test]
    fn a_key_the_optimizer_does_not_read_is_rejected_by_name() {
        let e = spec(&["optim.momentum=0.9"]).unwrap_err();
        assert!(e.contains("optim.momentum") && e.contains("\"adamw\"") && e.contains("amsgrad"), "{e}");
        let e = spec(&["optim.name=sgd", "optim.beta2=0.99"]).unwrap_err();
        assert!(e.contains("optim.beta2") && e.contains("\"sgd\"") && e.contains("nesterov"), "{e}");
        let e = spec(&["optim.name=lion", "optim.eps=1e-8"]).unwrap_err();
        assert!(e.contains("optim.eps") && e.contains("\"lion\""), "{e}");
        let e = spec(&["optim.name=adamw", "optim.relative_step=true"]).unwrap_err();
        assert!(e.contains("optim.relative_step"), "{e}");
        let e = spec(&["optim.name=rmsprop"]).unwrap_err();
        assert!(e.contains("optim.name") && e.contains("rmsprop") && e.contains("muon"), "{e}");
        // Unknown keys stay unknown (serde), wrong types name the key.
        let e = spec(&["optim.momentun=0.9"]).unwrap_err();
        assert!(e.contains("momentun"), "{e}");
        let e = spec(&["optim.name=sgd", "optim.nesterov=3"]).unwrap_err();
        assert!(e.contains("optim.nesterov"), "{e}");
    }

    #[test]
    fn ranges_and_combinations_are_checked() {
        let e = spec(&["optim.beta1=1.5"]).unwrap_err();
        assert!(e.contains("optim.beta1") && e.contains("1.5"), "{e}");
        let e = spec(&["optim.name=sgd", "optim.nesterov=true"]).unwrap_err();
        assert!(e.contains("optim.nesterov") && e.contains("momentum"), "{e}");
        let e = spec(&["optim.name=adafactor", "optim.warmup_init=true"]).unwrap_err();
        assert!(e.contains("optim.warmup_init") && e.contains("relative_step"), "{e}");
        let e = spec(&["optim.name=muon", "optim.ns_steps=0"]).unwrap_err();
        assert!(e.contains("optim.ns_steps"), "{e}");
        let cfg = RunConfig::from_toml_str("[[optim.groups]]\npattern = \"ln_\"\nlr_scale = -1.0\n", &[]);
        let e = cfg.unwrap_err().to_string();
        assert!(e.contains("optim.groups[0].lr_scale"), "{e}");
        let cfg = RunConfig::from_toml_str("[[optim.groups]]\npattern = \"ln_\"\nlr_scal = 2.0\n", &[]);
        let e = cfg.unwrap_err().to_string();
        assert!(e.contains("lr_scal"), "{e}");
    }

    #[test]
    fn optimizer_keys_round_trip_through_the_saved_config() {
        let text = "[optim]\nname = \"adafactor\"\nrelative_step = true\nwarmup_init = true\nbeta1 = 0.9\n\n\
                    [[optim.groups]]\npattern = \"*.bias\"\nweight_decay = 0.0\n";
        let cfg = RunConfig::from_toml_str(text, &[]).unwrap();
        let back = RunConfig::from_toml_str(&cfg.to_toml(), &[]).unwrap();
        assert_eq!(cfg, back);
        // Keys left unset are not written (so they cannot trip the per-optimizer check).
        assert!(!RunConfig::default().to_toml().contains("momentum"));
    }
}
