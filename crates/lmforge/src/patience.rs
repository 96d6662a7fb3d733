//! One patience rule for everything that waits on validation: reduce-on-plateau
//! (`optim::Plateau`, torch's `ReduceLROnPlateau`), early stopping and the choice of the best
//! model (Keras' / Hugging Face's `EarlyStopping`). A [`Patience`] tracks the best value of a
//! metric and the evaluations since it improved; the [`PatienceRule`] says which direction is
//! better, how much better counts, how many non-improving evaluations are tolerated and how
//! long to wait after the patience runs out. Pure, and saved in `trainer_state.json`, so a
//! resumed run decides exactly as the uninterrupted one.

use serde::{Deserialize, Serialize};

/// How much better a value must be than the best to count as an improvement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// By more than this fraction of the best (torch's "rel" mode).
    Relative(f64),
    /// By more than this amount (Keras' `min_delta`).
    Absolute(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatienceRule {
    pub higher_is_better: bool,
    pub threshold: Threshold,
    /// Non-improving evaluations tolerated; one more runs the patience out.
    pub tolerate: u64,
    /// Evaluations after the patience ran out during which nothing counts.
    pub cooldown: u64,
}

impl PatienceRule {
    /// Whether `value` improves on `best`.
    pub fn improves(&self, value: f64, best: f64) -> bool {
        match (self.threshold, self.higher_is_better) {
            (Threshold::Relative(r), false) => value < best * (1.0 - r),
            (Threshold::Relative(r), true) => value > best * (1.0 + r),
            (Threshold::Absolute(d), false) => value < best - d,
            (Threshold::Absolute(d), true) => value > best + d,
        }
    }
}

/// What one evaluation meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best.
    Improved,
    NotImproved,
    /// One non-improving evaluation more than the rule tolerates: the patience ran out (and
    /// starts again, after the cooldown).
    Exhausted,
}

/// The best value so far and the count of evaluations since it improved.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Patience {
    /// The best value (None before the first evaluation).
    pub best: Option<f64>,
    /// Non-improving evaluations since the best (or since the patience last ran out).
    pub bad_evals: u64,
    #[serde(default)]
    pub cooldown_left: u64,
}

impl Patience {
    /// Records one evaluation.
    pub fn observe(&mut self, value: f64, rule: &PatienceRule) -> Verdict {
        let improved = self.best.is_none_or(|b| rule.improves(value, b));
        if improved {
            self.best = Some(value);
            self.bad_evals = 0;
        } else {
            self.bad_evals += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_evals = 0;
        }
        if self.bad_evals > rule.tolerate {
            self.bad_evals = 0;
            self.cooldown_left = rule.cooldown;
            return Verdict::Exhausted;
        }
        if improved {
            Verdict::Improved
        } else {
            Verdict::NotImproved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvements_follow_direction_and_threshold() {
        let min_rel =
            PatienceRule { higher_is_better: false, threshold: Threshold::Relative(0.01), tolerate: 0, cooldown: 0 };
        assert!(min_rel.improves(0.98, 1.0) && !min_rel.improves(0.995, 1.0));
        let max_abs =
            PatienceRule { higher_is_better: true, threshold: Threshold::Absolute(0.01), tolerate: 0, cooldown: 0 };
        assert!(max_abs.improves(0.82, 0.80) && !max_abs.improves(0.805, 0.80));
    }

    #[test]
    fn the_patience_runs_out_one_evaluation_past_the_tolerance_then_waits_the_cooldown() {
        let rule =
            PatienceRule { higher_is_better: false, threshold: Threshold::Absolute(0.0), tolerate: 1, cooldown: 1 };
        let mut p = Patience::default();
        let got: Vec<Verdict> = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.5].iter().map(|&v| p.observe(v, &rule)).collect();
        use Verdict::*;
        assert_eq!(got, [Improved, NotImproved, Exhausted, NotImproved, NotImproved, Exhausted, Improved]);
    }
}
