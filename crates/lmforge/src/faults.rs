//! What the trainer does when a step goes wrong: a non-finite loss or gradient norm (skip the
//! update, or roll back to the last checkpoint with a lower LR), a loss spike (recorded), too
//! many faults in a row (stop with a clear error), a checkpoint that cannot be written (stop,
//! or continue and retry at the next one). The policy comes from the config; the decisions are
//! pure functions of the policy and a small [`FaultState`] saved in every checkpoint, so a
//! resumed run decides exactly as the uninterrupted one would have.

use crate::config::check;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// What to do with a step whose loss or gradient norm is NaN or infinite
/// (`train.on_nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Drop the update; the step counter and the data move on.
    Skip,
    /// Reload the newest intact checkpoint and multiply the LR by `rollback_lr_factor`.
    Rollback,
}

/// The resolved `train.on_nonfinite`, `train.max_consecutive_faults`,
/// `train.rollback_lr_factor`, `train.spike_ratio` and `checkpoint.on_write_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPolicy {
    pub on_nonfinite: OnNonFinite,
    pub max_consecutive: u32,
    pub rollback_lr_factor: f64,
    /// 0 = spike detection off.
    pub spike_ratio: f64,
    pub continue_on_write_error: bool,
}

/// What to do when a checkpoint cannot be written (`checkpoint.on_write_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnWriteError {
    /// Stop with an error naming the intact earlier checkpoint.
    Stop,
    /// Keep training and try again at the next checkpoint.
    Continue,
}

/// The fault keys as a config gives them (None: the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    pub on_nonfinite: Option<OnNonFinite>,
    pub max_consecutive_faults: Option<u32>,
    pub rollback_lr_factor: Option<f64>,
    pub spike_ratio: Option<f64>,
    pub on_write_error: Option<OnWriteError>,
}

impl FaultPolicy {
    /// Defaults filled in, ranges checked (errors name the key).
    pub fn resolve(c: &FaultConfig) -> Result<Self> {
        let max_consecutive = c.max_consecutive_faults.unwrap_or(5);
        check(max_consecutive >= 1, "train.max_consecutive_faults", max_consecutive, ">= 1")?;
        let rollback_lr_factor = c.rollback_lr_factor.unwrap_or(0.5);
        check(
            rollback_lr_factor > 0.0 && rollback_lr_factor <= 1.0,
            "train.rollback_lr_factor",
            rollback_lr_factor,
            "0 < factor <= 1",
        )?;
        let spike_ratio = c.spike_ratio.unwrap_or(1.5);
        check(
            spike_ratio == 0.0 || (spike_ratio.is_finite() && spike_ratio > 1.0),
            "train.spike_ratio",
            spike_ratio,
            "0 (off) or a number > 1",
        )?;
        Ok(Self {
            on_nonfinite: c.on_nonfinite.unwrap_or(OnNonFinite::Skip),
            max_consecutive,
            rollback_lr_factor,
            spike_ratio,
            continue_on_write_error: c.on_write_error == Some(OnWriteError::Continue),
        })
    }
}

/// Fault bookkeeping carried from step to step and saved in `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultState {
    /// Faulty steps since training last got past a fault.
    pub consecutive: u32,
    pub total: u64,
    /// Product of the rollback LR factors so far (1 without rollbacks).
    pub lr_scale: f64,
    /// Running mean (EMA, weight 0.1) of the finite training losses, for spike detection.
    pub loss_mean: Option<f64>,
    /// Step of the latest fault: only a good step beyond it clears `consecutive`, so a fault
    /// that recurs at the same step after every rollback still counts toward the limit.
    pub last_fault_step: Option<u64>,
}

impl Default for FaultState {
    fn default() -> Self {
        Self { consecutive: 0, total: 0, lr_scale: 1.0, loss_mean: None, last_fault_step: None }
    }
}

/// What to do with a finished forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Apply the update. `spike`: the loss rose above `spike_ratio` x its running mean.
    Apply {
        spike: bool,
    },
    Skip,
    Rollback,
}

impl FaultState {
    /// Judges step `step` (1-based) from its loss and gradient norm. An `Err` is the message to
    /// stop with: `max_consecutive` faulty steps in a row.
    pub fn judge(
        &mut self,
        step: u64,
        loss: f64,
        grad_norm: f64,
        policy: &FaultPolicy,
    ) -> std::result::Result<Verdict, String> {
        if loss.is_finite() && grad_norm.is_finite() {
            if self.last_fault_step.is_none_or(|f| step > f) {
                self.consecutive = 0;
            }
            let spike = policy.spike_ratio > 0.0 && self.loss_mean.is_some_and(|m| loss > policy.spike_ratio * m);
            self.loss_mean = Some(self.loss_mean.map_or(loss, |m| 0.9 * m + 0.1 * loss));
            return Ok(Verdict::Apply { spike });
        }
        self.consecutive += 1;
        self.total += 1;
        self.last_fault_step = Some(step);
        if self.consecutive >= policy.max_consecutive {
            return Err(format!(
                "stopping: {} faulty steps in a row (the last, step {step}, had loss {loss} and gradient norm \
                 {grad_norm}). Training is not recovering: lower optim.lr or raise schedule.warmup_steps, check \
                 the data, or raise train.max_consecutive_faults. The checkpoints written so far are intact.",
                self.consecutive
            ));
        }
        Ok(match policy.on_nonfinite {
            OnNonFinite::Skip => Verdict::Skip,
            OnNonFinite::Rollback => Verdict::Rollback,
        })
    }

    /// The state to continue with after rolling back to a checkpoint that saved `restored`:
    /// its loss statistics, but this run's fault counts and a further-reduced LR.
    pub fn after_rollback(&self, restored: &FaultState, policy: &FaultPolicy) -> FaultState {
        FaultState {
            consecutive: self.consecutive,
            total: self.total,
            lr_scale: self.lr_scale * policy.rollback_lr_factor,
            loss_mean: restored.loss_mean,
            last_fault_step: self.last_fault_step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::RunConfig;

    fn policy(sets: &[&str]) -> FaultPolicy {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        FaultPolicy::from_config(&RunConfig::from_toml_str("", &sets).unwrap()).unwrap()
    }

    #[test]
    fn skip_then_stop_after_the_limit() {
        let p = policy(&["train.max_consecutive_faults=3"]);
        let mut s = FaultState::default();
        assert_eq!(s.judge(1, 5.0, 1.0, &p), Ok(Verdict::Apply { spike: false }));
        assert_eq!(s.judge(2, f64::NAN, 1.0, &p), Ok(Verdict::Skip));
        assert_eq!(s.judge(3, 5.0, f64::INFINITY, &p), Ok(Verdict::Skip));
        let e = s.judge(4, f64::NAN, f64::NAN, &p).unwrap_err();
        assert!(e.contains("3 faulty steps in a row") && e.contains("step 4"), "{e}");
        // A good step in between clears the count.
        let mut s = FaultState::default();
        for step in 1..20 {
            let loss = if step % 2 == 0 { f64::NAN } else { 4.0 };
            assert!(s.judge(step, loss, 1.0, &p).is_ok());
        }
        assert_eq!((s.consecutive, s.total), (0, 9));
    }

    #[test]
    fn a_fault_that_recurs_after_each_rollback_still_stops() {
        let p = policy(&["train.on_nonfinite=rollback", "train.max_consecutive_faults=3"]);
        let mut s = FaultState::default();
        let saved = FaultState::default();
        for round in 1..=3 {
            // Steps 1..=4 are fine, step 5 faults, we roll back to step 0.
            for step in 1..=4 {
                assert!(matches!(s.judge(step, 4.0, 1.0, &p), Ok(Verdict::Apply { .. })));
            }
            let v = s.judge(5, f64::NAN, f64::NAN, &p);
            if round < 3 {
                assert_eq!(v, Ok(Verdict::Rollback));
                s = s.after_rollback(&saved, &p);
                assert_eq!(s.lr_scale, 0.5f64.powi(round));
            } else {
                assert!(v.is_err());
            }
        }
    }

    #[test]
    fn spikes_are_flagged_against_the_running_mean() {
        let p = policy(&[]);
        let mut s = FaultState::default();
        assert_eq!(s.judge(1, 4.0, 1.0, &p), Ok(Verdict::Apply { spike: false }));
        assert_eq!(s.judge(2, 3.9, 1.0, &p), Ok(Verdict::Apply { spike: false }));
        assert_eq!(s.judge(3, 9.0, 1.0, &p), Ok(Verdict::Apply { spike: true }));
        let off = policy(&["train.spike_ratio=0"]);
        let mut s = FaultState::default();
        s.judge(1, 1.0, 1.0, &off).unwrap();
        assert_eq!(s.judge(2, 100.0, 1.0, &off), Ok(Verdict::Apply { spike: false }));
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (set, key) in [
            ("train.on_nonfinite=retry", "train.on_nonfinite"),
            ("train.max_consecutive_faults=0", "train.max_consecutive_faults"),
            ("train.rollback_lr_factor=2.0", "train.rollback_lr_factor"),
            ("train.spike_ratio=0.5", "train.spike_ratio"),
            ("checkpoint.on_write_error=ignore", "checkpoint.on_write_error"),
        ] {
            let e = RunConfig::from_toml_str("", &[set.to_string()]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn unset_fault_keys_leave_the_config_hash_as_before() {
        let cfg = RunConfig::from_toml_str("", &[]).unwrap();
        let toml = cfg.to_toml();
        assert!(!toml.contains("on_nonfinite") && !toml.contains("on_write_error"), "{toml}");
    }
}
