//! Progress for long work: an `indicatif` bar (rate, ETA) on a terminal, plain log lines
//! otherwise (CI, files, pipes; through `tracing`), or nothing. Progress goes to stderr so stdout carries only
//! results (samples, JSON).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// How progress shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bar,
    Lines,
    Off,
}

/// `log.progress` as written: a mode, or "auto".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressChoice {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    Off,
}

impl ProgressChoice {
    /// The mode on this process: "auto" picks a bar when stderr is a terminal.
    pub fn mode(self) -> ProgressMode {
        match self {
            Self::Bar => ProgressMode::Bar,
            Self::Lines => ProgressMode::Lines,
            Self::Off => ProgressMode::Off,
            Self::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            Self::Auto => ProgressMode::Lines,
        }
    }
}

/// `[log]`: how a run reports progress.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "auto" (a bar on a terminal, lines otherwise) | "bar" | "lines" | "off".
    pub progress: ProgressChoice,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { progress: ProgressChoice::Auto }
    }
}

/// A line said before (or without) a bar: a log line unless progress is off.
pub fn note(mode: ProgressMode, line: &str) {
    if mode != ProgressMode::Off {
        tracing::info!("{line}");
    }
}

pub struct Progress {
    mode: ProgressMode,
    label: String,
    bar: Option<ProgressBar>,
    total: u64,
    start_pos: u64,
    start: Instant,
}

impl Progress {
    pub fn new(mode: ProgressMode, label: &str, start_pos: u64, total: u64) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}")
                    .expect("valid template"),
            );
            b.set_prefix(label.to_string());
            b.set_position(start_pos);
            b
        });
        Self { mode, label: label.to_string(), bar, total, start_pos, start: Instant::now() }
    }

    /// Moves to `pos`; `msg` is shown on the bar, or printed as a line when `log_line` is set.
    pub fn update(&self, pos: u64, msg: &str, log_line: bool) {
        match (&self.bar, self.mode) {
            (Some(b), _) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            (None, ProgressMode::Lines) if log_line => {
                let done = pos.saturating_sub(self.start_pos) as f64;
                let secs = self.start.elapsed().as_secs_f64();
                let eta = if done > 0.0 { (self.total - pos) as f64 * secs / done } else { 0.0 };
                tracing::info!("{} {pos}/{} {msg} eta {:.0}s", self.label, self.total, eta);
            }
            _ => {}
        }
    }

    /// A line that stays (validation results, warnings).
    pub fn println(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(b), _) => b.println(line),
            (None, ProgressMode::Off) => {}
            (None, _) => tracing::info!("{line}"),
        }
    }

    /// A warning, shown whatever the mode (above the bar on a terminal).
    pub fn warn(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("warning: {line}")),
            None => tracing::warn!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
