//! Fault-injection hooks for the reliability tests, read once from `LMFORGE_TEST_*` environment
//! variables. Every hook is off unless its variable is set, and none changes a result when off;
//! they exist so tests can put a crash, a NaN or a full disk at an exact place instead of
//! hoping a timer lands there.
//!
//! | variable | effect |
//! | --- | --- |
//! | `LMFORGE_TEST_CHECKPOINT_DELAY_MS=N` | sleep N ms after each file written into a staged checkpoint and before its rename, so a test's SIGKILL lands inside checkpoint writes |
//! | `LMFORGE_TEST_NAN_AT_STEPS=5,9` | the loss of those steps (1-based, as logged) becomes NaN, once per step per process |
//! | `LMFORGE_TEST_ENGINE_STEP_DELAY_MS=N` | the serving engine sleeps N ms after each batched step, so a test can disconnect, overload or stop the server mid-stream |
//! | `LMFORGE_TEST_STAGED_COLLECTIVES=1` | the gradient reductions and ZeRO's parameter all-gathers take the device-tensor path (NCCL's on a GPU) on the CPU too, through host-staged MPI (`distributed::tensor_comm::Staged`) |
//! | `LMFORGE_TEST_WRITE_FAULT=KIND@TEXT` | writes (and folder creations) through `fsio` to a path containing TEXT fail with KIND: `enospc` (disk full), `eacces` (permission denied) or `eio` |

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

struct Hooks {
    checkpoint_delay: Option<Duration>,
    engine_step_delay: Option<Duration>,
    nan_steps: Mutex<BTreeSet<u64>>,
    write_fault: Option<(i32, String)>,
    staged_collectives: bool,
}

fn hooks() -> &'static Hooks {
    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    HOOKS.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let checkpoint_delay =
            var("LMFORGE_TEST_CHECKPOINT_DELAY_MS").and_then(|v| v.parse().ok()).map(Duration::from_millis);
        let engine_step_delay =
            var("LMFORGE_TEST_ENGINE_STEP_DELAY_MS").and_then(|v| v.parse().ok()).map(Duration::from_millis);
        let nan_steps = var("LMFORGE_TEST_NAN_AT_STEPS")
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_default();
        let write_fault = var("LMFORGE_TEST_WRITE_FAULT").and_then(|v| {
            let (kind, text) = v.split_once('@')?;
            // Linux errno values (the same on macOS for these three).
            let errno = match kind {
                "enospc" => 28,
                "eacces" => 13,
                "eio" => 5,
                _ => return None,
            };
            Some((errno, text.to_string()))
        });
        let staged_collectives = var("LMFORGE_TEST_STAGED_COLLECTIVES").is_some_and(|v| v == "1");
        Hooks { checkpoint_delay, engine_step_delay, nan_steps: Mutex::new(nan_steps), write_fault, staged_collectives }
    })
}

/// Pauses inside a checkpoint write when `LMFORGE_TEST_CHECKPOINT_DELAY_MS` is set.
pub fn checkpoint_write_pause() {
    if let Some(d) = hooks().checkpoint_delay {
        std::thread::sleep(d);
    }
}

/// Pauses after a serving engine step when `LMFORGE_TEST_ENGINE_STEP_DELAY_MS` is set.
pub fn engine_step_pause() {
    if let Some(d) = hooks().engine_step_delay {
        std::thread::sleep(d);
    }
}

/// Whether CPU runs take the device-tensor collectives (`LMFORGE_TEST_STAGED_COLLECTIVES=1`).
pub fn staged_collectives() -> bool {
    hooks().staged_collectives
}

/// Whether step `step`'s loss is to be replaced by NaN (true once per listed step).
pub fn inject_nan(step: u64) -> bool {
    let h = hooks();
    // An empty set (the normal case) costs one uncontended lock per step.
    h.nan_steps.lock().map(|mut s| s.remove(&step)).unwrap_or(false)
}

/// The error an `fsio` write to `path` is to fail with, if any.
pub fn write_fault(path: &Path) -> std::io::Result<()> {
    match &hooks().write_fault {
        Some((errno, text)) if path.to_string_lossy().contains(text.as_str()) => {
            Err(std::io::Error::from_raw_os_error(*errno))
        }
        _ => Ok(()),
    }
}
