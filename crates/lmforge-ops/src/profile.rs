//! Opt-in wall-clock accounting of the fused kernels, for `lmforge bench train --profile`:
//! each kernel's forward and backward opens a [`span`] under its name, and the bench divides
//! the step into what the kernels took and what they did not (candle's own ops, its gradient
//! bookkeeping, allocation). Off by default, a span costs one relaxed atomic load; on the
//! CPU every op runs synchronously, so a span's wall time is the op's time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<OpTime>> = Mutex::new(Vec::new());

/// Which pass of an op a span times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Forward,
    Backward,
    /// An optimizer's in-place update.
    Update,
}

/// Calls and summed wall time of one op's pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub name: &'static str,
    pub pass: Pass,
    pub calls: u64,
    pub seconds: f64,
}

/// Turns recording on or off (process-wide) and clears what was recorded.
pub fn set_enabled(on: bool) {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// What was recorded since [`set_enabled`] or the last `take`, in first-seen order; clears it.
pub fn take() -> Vec<OpTime> {
    std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times from now until dropped as `name`'s `pass`, when recording is on.
pub fn span(name: &'static str, pass: Pass) -> Span {
    Span { name, pass, started: ENABLED.load(Ordering::Relaxed).then(Instant::now) }
}

pub struct Span {
    name: &'static str,
    pass: Pass,
    started: Option<Instant>,
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some(started) = self.started else { return };
        let seconds = started.elapsed().as_secs_f64();
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|t| t.name == self.name && t.pass == self.pass) {
            Some(t) => {
                t.calls += 1;
                t.seconds += seconds;
            }
            None => totals.push(OpTime { name: self.name, pass: self.pass, calls: 1, seconds }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_counted_only_while_enabled() {
        // The only test touching the process-wide switch, so no other test races it.
        // Other tests' kernels may record while it is on: only this test's names are checked.
        let ours = |t: &OpTime| t.name.starts_with("profile-test");
        set_enabled(true);
        for _ in 0..3 {
            let _s = span("profile-test a", Pass::Forward);
        }
        drop(span("profile-test a", Pass::Backward));
        drop(span("profile-test b", Pass::Forward));
        let got: Vec<_> = take().into_iter().filter(ours).collect();
        assert_eq!(
            got.iter().map(|t| (t.name, t.pass, t.calls)).collect::<Vec<_>>(),
            [
                ("profile-test a", Pass::Forward, 3),
                ("profile-test a", Pass::Backward, 1),
                ("profile-test b", Pass::Forward, 1)
            ]
        );
        assert!(got.iter().all(|t| t.seconds >= 0.0));
        set_enabled(false);
        drop(span("profile-test a", Pass::Forward));
        assert!(!take().iter().any(ours));
    }
}
