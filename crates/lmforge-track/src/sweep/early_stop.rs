//! Early termination of bad trials, decided at rungs (steps where every trial validates):
//! ASHA — asynchronous successive halving (Li et al. 2020), as Ray Tune's stopping variant
//! applies it: a trial reaching a rung continues only if its metric is within the best
//! 1/reduction_factor of all values recorded at that rung so far — and the median rule (Golovin
//! et al. 2017, Google Vizier): stop a trial whose metric at a rung is worse than the median of
//! the other trials' values there. Both are pure functions of the values recorded at a rung.

use lmforge::error::{Error, Result};

/// Which rule, and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    None,
    Asha { reduction_factor: f64 },
    Median { min_trials: usize },
}

/// The rule's decision for one trial at one rung.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    /// Stopped: the metric and the threshold it did not meet, for the record.
    Stop {
        value: f64,
        threshold: f64,
        among: usize,
    },
}

impl Rule {
    /// `value` is the trial's metric at the rung (lower is better); `others` what the other
    /// trials recorded at the same rung before it.
    pub fn decide(&self, value: f64, others: &[f64]) -> Decision {
        match *self {
            Rule::None => Decision::Continue,
            Rule::Asha { reduction_factor } => {
                let mut all: Vec<f64> = others.iter().copied().chain([value]).filter(|v| v.is_finite()).collect();
                if !value.is_finite() {
                    return Decision::Stop { value, threshold: f64::NAN, among: all.len() + 1 };
                }
                all.sort_by(f64::total_cmp);
                let cutoff = percentile(&all, 1.0 - 1.0 / reduction_factor);
                if value > cutoff {
                    Decision::Stop { value, threshold: cutoff, among: all.len() }
                } else {
                    Decision::Continue
                }
            }
            Rule::Median { min_trials } => {
                let mut rest: Vec<f64> = others.iter().copied().filter(|v| v.is_finite()).collect();
                if rest.len() < min_trials {
                    return Decision::Continue;
                }
                rest.sort_by(f64::total_cmp);
                let median = percentile(&rest, 0.5);
                // Worse than the median, or not a number (a diverged trial).
                if value.partial_cmp(&median).is_none_or(|o| o == std::cmp::Ordering::Greater) {
                    Decision::Stop { value, threshold: median, among: rest.len() }
                } else {
                    Decision::Continue
                }
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Rule::None => "none",
            Rule::Asha { .. } => "asha",
            Rule::Median { .. } => "median",
        }
    }
}

/// The `q`-quantile of sorted values, linearly interpolated (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The rung steps: explicit ones, or `min_steps · rf^k` below `max_steps`. Each must be a
/// validation step of the run (a multiple of `eval_every`), else there is no metric there.
pub fn rungs(
    explicit: &[u64],
    min_steps: u64,
    reduction_factor: f64,
    max_steps: u64,
    eval_every: u64,
) -> Result<Vec<u64>> {
    let rungs: Vec<u64> = if !explicit.is_empty() {
        let mut r = explicit.to_vec();
        r.sort_unstable();
        r.dedup();
        r
    } else {
        if min_steps == 0 {
            return Err(Error::config("early_stop.min_steps", "expected >= 1 (the first rung)"));
        }
        let mut r = Vec::new();
        let mut s = min_steps as f64;
        while (s.round() as u64) < max_steps {
            r.push(s.round() as u64);
            s *= reduction_factor;
        }
        r
    };
    for &r in &rungs {
        if r == 0 || r >= max_steps {
            return Err(Error::config(
                "early_stop.rungs",
                format!("rung {r} must lie in 1..{max_steps} (train.max_steps)"),
            ));
        }
        if eval_every == 0 || r % eval_every != 0 {
            return Err(Error::config(
                "early_stop.rungs",
                format!(
                    "rung {r} is not a validation step: train.eval_every = {eval_every} must divide every rung \
                     (set early_stop.min_steps / rungs or train.eval_every)"
                ),
            ));
        }
    }
    Ok(rungs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asha_keeps_the_top_fraction_at_a_rung() {
        let asha = Rule::Asha { reduction_factor: 3.0 };
        assert_eq!(asha.decide(5.0, &[]), Decision::Continue, "the first trial at a rung always goes on");
        // Three recorded values: the cutoff is the 2/3 quantile; only the best third continues.
        assert_eq!(asha.decide(1.0, &[2.0, 3.0]), Decision::Continue);
        assert!(matches!(asha.decide(3.0, &[1.0, 2.0]), Decision::Stop { among: 3, .. }));
        let Decision::Stop { threshold, .. } = asha.decide(2.5, &[1.0, 2.0]) else { panic!() };
        // Sorted [1, 2, 2.5]: the 2/3 quantile sits a third of the way from 2 to 2.5.
        assert!((threshold - (2.0 + 0.5 / 3.0)).abs() < 1e-12, "cutoff {threshold}");
        assert!(matches!(asha.decide(f64::NAN, &[1.0]), Decision::Stop { .. }), "a diverged trial stops");
        let halving = Rule::Asha { reduction_factor: 2.0 };
        assert_eq!(halving.decide(2.0, &[3.0]), Decision::Continue);
        assert!(matches!(halving.decide(3.0, &[2.0]), Decision::Stop { .. }));
    }

    #[test]
    fn median_rule_waits_for_enough_trials_then_stops_the_worse_half() {
        let median = Rule::Median { min_trials: 2 };
        assert_eq!(median.decide(9.0, &[1.0]), Decision::Continue);
        assert_eq!(median.decide(1.5, &[1.0, 2.0]), Decision::Continue);
        assert_eq!(median.decide(2.0, &[1.0, 2.0, 3.0]), Decision::Continue, "the median itself continues");
        assert!(matches!(median.decide(2.1, &[1.0, 2.0, 3.0]), Decision::Stop { .. }));
    }

    #[test]
    fn rungs_are_geometric_below_max_steps_and_must_be_validation_steps() {
        assert_eq!(rungs(&[], 10, 3.0, 100, 10).unwrap(), vec![10, 30, 90]);
        assert_eq!(rungs(&[], 20, 2.0, 80, 20).unwrap(), vec![20, 40]);
        assert_eq!(rungs(&[40, 20, 20], 0, 3.0, 100, 20).unwrap(), vec![20, 40]);
        let e = rungs(&[], 15, 3.0, 100, 10).unwrap_err().to_string();
        assert!(e.contains("eval_every") && e.contains("15"), "{e}");
        assert!(rungs(&[100], 0, 3.0, 100, 10).is_err(), "a rung at max_steps is the end, not a rung");
    }
}
