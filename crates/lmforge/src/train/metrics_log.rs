//! `metrics.jsonl`: the run's record of measurements, one JSON object per line, passed on to
//! the run's observers as it is written.

use crate::error::{IoContext, Result};
use crate::observe::{MetricsRow, Observers};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Append-only `metrics.jsonl`. Opened for a resume, it first drops rows past the checkpoint
/// (written after it by the run that died), rewriting the file atomically. Every row written
/// is passed on to the run's observers.
pub struct MetricsLog {
    /// None: rows are dropped (the processes of a distributed run other than rank 0).
    file: Option<std::fs::File>,
    path: PathBuf,
    observers: Observers,
}

impl MetricsLog {
    pub fn open(path: &Path, keep_up_to_step: Option<u64>, observers: Observers) -> Result<Self> {
        if let (Some(limit), true) = (keep_up_to_step, path.exists()) {
            let text = std::fs::read_to_string(path).at(path)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64())
                        .is_some_and(|s| s <= limit)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::fsio::write_atomic(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).at(path)?;
        Ok(Self { file: Some(file), path: path.to_path_buf(), observers })
    }

    /// The same log with the rows past `step` dropped (a rollback to that step's checkpoint).
    pub fn reopen(self, step: u64) -> Result<Self> {
        if self.file.is_none() {
            return Ok(self);
        }
        Self::open(&self.path, Some(step), self.observers)
    }

    /// A log that writes nothing.
    pub fn discard() -> Self {
        Self { file: None, path: PathBuf::new(), observers: Observers::default() }
    }

    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        let Some(f) = &mut self.file else { return Ok(()) };
        writeln!(f, "{row}").at(&self.path)?;
        if let Some(row) = MetricsRow::from_json(row) {
            self.observers.row(&row);
        }
        Ok(())
    }
}
