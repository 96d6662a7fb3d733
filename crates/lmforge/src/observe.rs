//! Run observers: what besides `metrics.jsonl` wants to hear about a training run. The trainer
//! calls each observer when the run starts (or resumes), with every metrics row (the same rows
//! `metrics.jsonl` gets), and when it ends with its status. The experiment store
//! (`lmforge_track::store::Recorder`) and the TensorBoard writer (`lmforge_track::tensorboard`) are
//! observers; the training loop knows nothing about either. An observer that fails is
//! reported once and dropped: bookkeeping never stops a run that is otherwise healthy.

use crate::error::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One measurement row: its step, its split ("train" or "val") and its scalar fields.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub step: u64,
    pub split: String,
    /// Every numeric field of the row except `step`, in the row's order.
    pub values: Vec<(String, f64)>,
}

impl MetricsRow {
    /// The row a `metrics.jsonl` line holds; None where it has no step or split.
    pub fn from_json(row: &serde_json::Value) -> Option<Self> {
        let obj = row.as_object()?;
        let step = obj.get("step")?.as_u64()?;
        let split = obj.get("split")?.as_str()?.to_string();
        let values = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
        Some(Self { step, split, values })
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// What an observer learns when a run starts: its config in forms any config kind (pretraining,
/// fine-tuning) provides.
pub struct RunStart<'a> {
    pub run_dir: &'a Path,
    /// The resolved config, TOML.
    pub config_toml: String,
    pub config_hash: String,
    /// Dotted key → value, and the same for the config kind's defaults.
    pub flat: BTreeMap<String, toml::Value>,
    pub default_flat: BTreeMap<String, toml::Value>,
    pub max_steps: u64,
    /// The checkpoint step a resumed run continues from; None for a fresh run.
    pub resumed_from: Option<u64>,
}

impl<'a> RunStart<'a> {
    pub fn new<C: Serialize + Default>(run_dir: &'a Path, cfg: &C, max_steps: u64, resumed_from: Option<u64>) -> Self {
        Self {
            run_dir,
            config_toml: toml::to_string_pretty(cfg).expect("a config always serialises to TOML"),
            config_hash: crate::config::config_hash(cfg),
            flat: crate::config::flatten(cfg),
            default_flat: crate::config::flatten(&C::default()),
            max_steps,
            resumed_from,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// Reached `train.max_steps`.
    Finished { step: u64 },
    /// Stopped before the end with a checkpoint (a signal, `--stop-after`); resumable.
    Stopped { step: u64, reason: String },
    /// An error ended it.
    Failed { error: String },
}

pub trait RunObserver: Send {
    fn start(&mut self, start: &RunStart) -> Result<()>;
    fn row(&mut self, row: &MetricsRow) -> Result<()>;
    fn end(&mut self, end: &RunEnd) -> Result<()>;
    /// A short name for warnings ("experiment store", "tensorboard").
    fn name(&self) -> &str;
}

/// The observers of one run. Cheap to clone (shared handles), so it travels in `TrainOptions`.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<Mutex<dyn RunObserver>>>);

impl Observers {
    pub fn push(&mut self, observer: impl RunObserver + 'static) {
        self.0.push(Arc::new(Mutex::new(observer)));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn start(&mut self, start: &RunStart) {
        self.each(|o| o.start(start));
    }

    pub fn row(&mut self, row: &MetricsRow) {
        self.each(|o| o.row(row));
    }

    pub fn end(&mut self, end: &RunEnd) {
        self.each(|o| o.end(end));
    }

    /// Calls `f` on every observer; one that errs (or panicked earlier) is warned about and
    /// dropped, so a full disk or a locked database costs its records, not the run.
    fn each(&mut self, mut f: impl FnMut(&mut dyn RunObserver) -> Result<()>) {
        self.0.retain(|o| {
            let Ok(mut o) = o.lock() else { return false };
            match f(&mut *o) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{} stopped recording this run: {e}", o.name());
                    false
                }
            }
        });
    }
}

/// This machine's name (stored with runs, in TensorBoard file names); "localhost" if unknown.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_line_becomes_a_row_of_its_numeric_fields() {
        let v = serde_json::json!({"step": 5, "split": "val", "loss": 2.5, "ppl": 12.0, "note": "x"});
        let r = MetricsRow::from_json(&v).unwrap();
        assert_eq!(r.step, 5);
        assert_eq!(r.split, "val");
        assert_eq!(r.get("loss"), Some(2.5));
        assert_eq!(r.get("ppl"), Some(12.0));
        assert_eq!(r.get("note"), None);
        assert!(MetricsRow::from_json(&serde_json::json!({"split": "val"})).is_none());
    }

    struct Failing(u32);
    impl RunObserver for Failing {
        fn start(&mut self, _: &RunStart) -> Result<()> {
            Ok(())
        }
        fn row(&mut self, _: &MetricsRow) -> Result<()> {
            self.0 += 1;
            Err(crate::Error::Invalid("disk full".into()))
        }
        fn end(&mut self, _: &RunEnd) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "failing"
        }
    }

    #[test]
    fn a_failing_observer_is_dropped_after_its_first_error() {
        let mut obs = Observers::default();
        obs.push(Failing(0));
        let row = MetricsRow { step: 1, split: "train".into(), values: vec![] };
        obs.row(&row);
        assert!(obs.is_empty());
        obs.row(&row);
    }
}
