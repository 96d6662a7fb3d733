//! What the head front ends (sequence classification and regression in `mod.rs`, token
//! classification in `token_run`, question answering in `qa_run`) share around the loop: the
//! step counts, the optimizer groups of the head's parameters, the loop plan and the parameter
//! report; the task built on the prepared base and driven through the loop; at a finished run's
//! end on the writing process, the last model kept when there is no validation split (else the
//! best is logged); and the common part of `results.json`.

use super::config::FinetuneConfig;
use super::dataset::BadRows;
use super::task::HeadParts;
use super::{drive, loop_plan, model, optimizer_groups, param_report, step_counts, Drive, FinetuneSummary};
use crate::device::Precision;
use crate::error::Result;
use crate::models::HeadKind;
use crate::observe::Observers;
use crate::train::{Task, TrainOptions, TrainSummary};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Where a head run runs.
pub(super) struct HeadRun<'a> {
    pub cfg: &'a FinetuneConfig,
    pub run_dir: &'a Path,
    pub opts: &'a TrainOptions,
    pub resuming: bool,
    pub precision: Precision,
    pub kind: HeadKind,
}

/// A head run after the loop: its summaries and whether this process writes the final part
/// (the run finished, on rank 0).
pub(super) struct HeadRunEnd {
    pub summary: TrainSummary,
    pub out: FinetuneSummary,
    pub finish: bool,
}

impl<'a> HeadRun<'a> {
    /// Plans the loop for `n_train` training items, builds the task with `make` and drives it;
    /// `announce(total_steps)` writes the start of the log.
    pub fn run<T: Task>(
        &self,
        parts: HeadParts<'a>,
        n_train: usize,
        has_validation: bool,
        observers: &mut Observers,
        announce: &dyn Fn(u64),
        make: impl FnOnce(HeadParts<'a>) -> Result<T>,
    ) -> Result<HeadRunEnd> {
        let (cfg, kind) = (self.cfg, self.kind);
        let HeadParts { spec, labels, store, .. } = &parts;
        let comm = self.opts.collective();
        let (per_epoch, total_steps) = step_counts(cfg, n_train, comm.world_size())?;
        let mut known = model::backbone_params(spec, kind);
        known.extend(model::head_params(spec, kind, labels.len()));
        let groups = optimizer_groups(cfg, known, store)?;
        let lp = loop_plan(cfg, groups, total_steps)?;
        let report = param_report(cfg, store, &lp.groups, &lp.optim);
        let store = parts.store.with_precision(self.precision);
        let task = make(HeadParts { store, ..parts })?;
        let d = Drive { cfg, run_dir: self.run_dir, opts: self.opts, resuming: self.resuming, total_steps };
        let summary = drive(&task, &lp, d, observers, &|| announce(total_steps))?;
        let out = FinetuneSummary::new(cfg, self.run_dir, &summary, total_steps, per_epoch, report);
        let finish = out.finished && comm.rank() == 0;
        if finish {
            if !has_validation {
                // Without validation there is no best: the last model is the run's.
                task.keep_best(self.run_dir)?;
            } else if let Some((value, at)) = summary.best {
                tracing::info!("the best model: step {at}, validation {} {value:.4}", cfg.metric());
            }
        }
        Ok(HeadRunEnd { summary, out, finish })
    }
}

/// The part of `results.json` every fine-tuning front end writes: task, base, method,
/// parameters, the training (`train`'s fields first), bad rows, the best validation value, the
/// final split's `metrics` and the model folder. Front ends add their own keys.
pub(super) fn results(
    cfg: &FinetuneConfig,
    s: &FinetuneSummary,
    train: Value,
    bad: &BadRows,
    metrics: Option<Value>,
) -> Map<String, Value> {
    let mut training = match train {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in [
        ("steps", json!(s.steps)),
        ("total_steps", json!(s.total_steps)),
        ("epochs", json!(s.epochs)),
        ("seconds", json!(s.train_seconds)),
        ("stopped_early", json!(s.stopped_early)),
        ("interrupted", json!(s.interrupted)),
    ] {
        training.insert(k.into(), v);
    }
    let results = json!({
        "task": cfg.task.kind.name(),
        "base": cfg.model.base,
        "method": cfg.finetune.method,
        "params": s.params,
        "train": training,
        "bad_rows": bad,
        "best": s.best.map(|(value, step)| json!({"metric": cfg.metric(), "value": value, "step": step})),
        "final": metrics.map(|e| json!({
            "split": s.final_split,
            "file": final_file(cfg, s.final_split.as_deref() == Some("test")),
            "metrics": e,
        })),
        "model": s.model_dir,
    });
    match results {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// The file the final split was read from: its own, or the train file it was carved from
/// (`data.test_fraction` / `validation_fraction`, folds).
fn final_file(cfg: &FinetuneConfig, test: bool) -> &std::path::Path {
    let d = &cfg.data;
    let (file, carved) = if test {
        (&d.test, d.test_fraction > 0.0)
    } else {
        (&d.validation, d.validation_fraction > 0.0 || d.folds > 0)
    };
    if carved {
        &d.train
    } else {
        file
    }
}
