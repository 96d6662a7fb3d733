//! Fine-tuning a pretrained model for text classification (`lmforge finetune`): labelled files
//! ([`dataset`]) become length-bucketed, dynamically padded batches ([`batching`]); a
//! [`model::Classifier`] (the backbone's pooled features and a head) trains fully, with LoRA or
//! with bottleneck adapters (`nn::peft`) under the shared optimizers and schedules; the
//! validation metric is tracked after each evaluation, the best model is kept (written to
//! `RUN_DIR/model/` and restored at the end) and early stopping ends the run after `patience`
//! evaluations without improvement; final test metrics go to `RUN_DIR/results.json`.
//! [`predict`] runs a trained classifier over files.
//!
//! The loop is its own (epochs over a labelled set, evaluation by classification metrics, best
//! restore) but every step piece is the pretraining trainer's: `named_grads`, clipping, the
//! `Optimizer`, the `Schedule`, `MetricsLog`, `Progress`, the run lock.

pub mod batching;
pub mod config;
pub mod dataset;
pub mod model;
pub mod predict;

pub use config::FinetuneConfig;

use crate::checkpoint::RunLock;
use crate::error::{Error, IoContext, Result};
use crate::metrics::ClassificationMetrics;
use crate::models::ParamInfo;
use crate::nn::{seed_for, DropoutRng};
use crate::observe::{Observers, RunEnd, RunStart};
use crate::optim::{clip_grad_norm, named_grads, param_groups, Optimizer, ParamRole, Schedule};
use crate::progress::{Progress, ProgressMode};
use crate::train::{param_role, MetricsLog};
use batching::{collate, encode, epoch_batches, Encoded};
use candle_core::{Device, Tensor};
use dataset::{read_examples, BadRows, Example, LabelMap};
use predict::Evaluation;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Early stopping's verdict on one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: keep this model.
    Improved,
    NotImproved,
    /// `patience` evaluations in a row without improvement: stop.
    Stop,
}

/// Tracks the best value of the selection metric. An evaluation improves on the best when it
/// beats it by more than `min_delta` (higher is better, or lower for `loss`); `patience`
/// non-improving evaluations in a row stop the run (0: never), as Keras' / HF's
/// `EarlyStopping`.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    pub lower_is_better: bool,
    pub patience: u64,
    pub min_delta: f64,
    pub best: Option<f64>,
    pub bad_evals: u64,
}

impl EarlyStopping {
    pub fn new(metric: &str, patience: u64, min_delta: f64) -> Self {
        Self { lower_is_better: metric == "loss", patience, min_delta, best: None, bad_evals: 0 }
    }

    pub fn observe(&mut self, value: f64) -> Verdict {
        let improved = match self.best {
            None => true,
            Some(b) if self.lower_is_better => value < b - self.min_delta,
            Some(b) => value > b + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.bad_evals = 0;
            return Verdict::Improved;
        }
        self.bad_evals += 1;
        if self.patience > 0 && self.bad_evals >= self.patience {
            Verdict::Stop
        } else {
            Verdict::NotImproved
        }
    }
}

/// Should this step evaluate? Every `every` steps when set, else at each epoch's end; and at
/// the last step.
pub fn eval_due(step: u64, every: u64, epoch_end: bool, last: bool) -> bool {
    last || if every > 0 { step % every == 0 } else { epoch_end }
}

#[derive(Default, Clone)]
pub struct FinetuneOptions {
    /// Set by a signal handler: stop after the current step, keep the best model, report.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Told about the run's start, every metrics row and its end (the experiment store); a
    /// TensorBoard writer for `RUN_DIR/tb/` is always added.
    pub observers: Observers,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSummary {
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: f64,
    pub stopped_early: bool,
    pub interrupted: bool,
    pub params: model::ParamReport,
    /// The selection metric's best validation value and its step.
    pub best: Option<(f64, u64)>,
    /// The final split's name ("test" or "validation") and its evaluation, with the best model.
    pub final_split: Option<String>,
    pub final_eval: Option<Evaluation>,
    pub train_seconds: f64,
}

/// One split, read and encoded.
struct Split {
    file: PathBuf,
    examples: Vec<Example>,
    encoded: Vec<Encoded>,
    bad: BadRows,
}

impl Split {
    fn gold(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.label.expect("labelled split")).collect()
    }
}

/// Fine-tunes `cfg.model.base` into `run_dir` (which must not hold a run).
pub fn finetune(cfg: &FinetuneConfig, run_dir: &Path, opts: &FinetuneOptions) -> Result<FinetuneSummary> {
    let mut observers = opts.observers.clone();
    let result = finetune_run(cfg, run_dir, opts, &mut observers);
    observers.end(&match &result {
        // Early stopping on patience is a normal end.
        Ok(s) if !s.interrupted => RunEnd::Finished { step: s.steps },
        Ok(s) => RunEnd::Stopped { step: s.steps, reason: "interrupted by a signal".into() },
        Err(e) => RunEnd::Failed { error: e.to_string() },
    });
    result
}

fn finetune_run(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &FinetuneOptions,
    observers: &mut Observers,
) -> Result<FinetuneSummary> {
    if run_dir.join("config.toml").exists() || run_dir.join("results.json").exists() {
        return Err(Error::Invalid(format!("{} already holds a run; choose another --run-dir", run_dir.display())));
    }
    let device = Device::Cpu;
    let t = &cfg.train;
    // Everything that can fail on user input happens before anything is written.
    let (mut train_ex, train_bad, labels) = read_examples(&cfg.data.train, &cfg.data, None, true)?;
    if cfg.data.max_train_rows > 0 && train_ex.len() > cfg.data.max_train_rows {
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(t.seed, "finetune/train-subset"));
        let mut keep: Vec<usize> = (0..train_ex.len()).collect();
        keep.shuffle(&mut rng);
        keep.truncate(cfg.data.max_train_rows);
        keep.sort_unstable();
        train_ex = keep.into_iter().map(|i| train_ex[i].clone()).collect();
    }
    let (spec, mut store, tokenizer) = model::load_base(&cfg.model.base, &labels, &device)?;
    let max_len = match cfg.model.max_length {
        0 => spec.context,
        n => n.min(spec.context),
    };
    let read = |path: &Path, limit: usize| -> Result<Option<Split>> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let (mut examples, bad, _) = read_examples(path, &cfg.data, Some(&labels), true)?;
        if limit > 0 {
            examples.truncate(limit);
        }
        let encoded = encode(&examples, &tokenizer, max_len)?;
        Ok(Some(Split { file: path.to_path_buf(), examples, encoded, bad }))
    };
    let train_enc = encode(&train_ex, &tokenizer, max_len)?;
    let train = Split { file: cfg.data.train.clone(), examples: train_ex, encoded: train_enc, bad: train_bad };
    let validation = read(&cfg.data.validation, cfg.data.max_validation_rows)?;
    let test = read(&cfg.data.test, 0)?;
    let lora = model::prepare(&mut store, &spec, cfg, &labels)?;
    let classifier = model::Classifier::new(&spec, &store, cfg.model.dropout)?;
    let groups = optimizer_groups(cfg, &spec, &store, labels.len())?;
    let mut optimizer = Optimizer::from_config(&cfg.optim, store.vars(), groups)?;

    std::fs::create_dir_all(run_dir).at(run_dir)?;
    let _lock = RunLock::acquire(run_dir)?;
    crate::fsio::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let per_epoch = train.encoded.len().div_ceil(t.batch_size) as u64;
    let total_steps = if t.max_steps > 0 { t.max_steps } else { t.epochs * per_epoch };
    observers.start(&RunStart::new(run_dir, cfg, total_steps, None));
    let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), None, observers.clone())?;
    let model_dir = run_dir.join("model");
    let pad = model::pad_id(&tokenizer);

    let schedule = Schedule::new(&cfg.schedule, total_steps);
    let report = model::ParamReport {
        method: cfg.finetune.method.clone(),
        total_params: store.num_params(),
        trainable_params: store.num_trainable(),
        trainable_fraction: store.num_trainable() as f64 / store.num_params().max(1) as f64,
        optimizer_state_bytes: optimizer.state_bytes(),
    };
    let progress = Progress::new(ProgressMode::parse(&cfg.log.progress), "step", 0, total_steps);
    progress.println(&format!(
        "{} fine-tuning of a {:?} model, {} labels: {} of {} parameters trainable ({:.2}%), {} optimizer state {}",
        report.method,
        spec.style,
        labels.len(),
        report.trainable_params,
        report.total_params,
        100.0 * report.trainable_fraction,
        optimizer.name(),
        crate::train::human_bytes(report.optimizer_state_bytes as u64)
    ));
    progress.println(&format!(
        "examples: {} train{}{}; {per_epoch} steps per epoch, {total_steps} in all; max length {max_len}",
        train.encoded.len(),
        validation.as_ref().map(|v| format!(", {} validation", v.encoded.len())).unwrap_or_default(),
        test.as_ref().map(|v| format!(", {} test", v.encoded.len())).unwrap_or_default(),
    ));
    for s in [Some(&train), validation.as_ref(), test.as_ref()].into_iter().flatten() {
        if s.bad.total() > 0 {
            progress.println(&format!("{}: {}", s.file.display(), s.bad.summary()));
        }
    }

    let lengths: Vec<usize> = train.encoded.iter().map(|e| e.ids.len()).collect();
    let mut early = EarlyStopping::new(&t.metric, t.patience, t.min_delta);
    let mut best: Option<(f64, u64, BTreeMap<String, Tensor>)> = None;
    let (mut step, mut epoch) = (0u64, 0u64);
    let (mut stopped_early, mut interrupted) = (false, false);
    let started = Instant::now();
    'epochs: while step < total_steps {
        let batches = epoch_batches(&lengths, t.batch_size, t.bucket_batches, t.seed, epoch);
        let n_batches = batches.len();
        for (bi, idx) in batches.into_iter().enumerate() {
            if opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                interrupted = true;
                break 'epochs;
            }
            let items: Vec<&Encoded> = idx.iter().map(|&i| &train.encoded[i]).collect();
            let batch = collate(&items, pad, &device)?;
            let targets = batch.labels.as_ref().expect("training examples carry labels");
            let lr = cfg.optim.lr * schedule.multiplier(step);
            let mut dropout = DropoutRng::new(cfg.model.dropout, seed_for(t.seed, &format!("finetune/dropout/{step}")));
            let logits = classifier.logits(&batch, Some(&mut dropout))?;
            let loss = model::loss(&logits, targets, t.label_smoothing)?;
            let mut grads = named_grads(store.vars(), &loss.backward()?)?;
            let grad_norm = clip_grad_norm(&mut grads, cfg.optim.grad_clip)?;
            optimizer.step(store.vars(), &grads, lr)?;
            step += 1;
            let loss = loss.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                return Err(Error::Invalid(format!("loss became {loss} at step {step}; lower optim.lr")));
            }
            let epoch_pos = epoch as f64 + (bi + 1) as f64 / n_batches as f64;
            let log_now = step % t.log_every == 0 || step == 1 || step == total_steps;
            if log_now {
                metrics.write(&json!({
                    "step": step, "epoch": epoch_pos, "split": "train", "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "elapsed_s": started.elapsed().as_secs_f64(),
                }))?;
            }
            progress.update(step, &format!("epoch {epoch_pos:.2} loss {loss:.4} lr {lr:.2e}"), log_now);
            let last = step == total_steps;
            if let Some(val) = validation.as_ref().filter(|_| eval_due(step, t.eval_every, bi + 1 == n_batches, last)) {
                let logits = predict::score(&classifier, &val.encoded, t.eval_batch_size, pad, &device)?;
                let ev = predict::evaluate(&logits, &val.gold(), &labels);
                let value = ev.get(&t.metric).ok_or_else(|| {
                    Error::config("train.metric", format!("{:?} needs two classes (binary metrics)", t.metric))
                })?;
                let verdict = early.observe(value);
                let mut row = json!({
                    "step": step, "epoch": epoch_pos, "split": "validation", "loss": ev.loss,
                    "accuracy": ev.metrics.accuracy, "macro_f1": ev.metrics.macro_avg.f1,
                    "weighted_f1": ev.metrics.weighted.f1, "elapsed_s": started.elapsed().as_secs_f64(),
                    "improved": verdict == Verdict::Improved,
                });
                if let Some(b) = ev.metrics.binary {
                    row["binary_f1"] = json!(b.f1);
                }
                metrics.write(&row)?;
                progress.println(&format!(
                    "step {step} (epoch {epoch_pos:.2}) validation loss {:.4} accuracy {:.4} macro F1 {:.4}{}",
                    ev.loss,
                    ev.metrics.accuracy,
                    ev.metrics.macro_avg.f1,
                    if verdict == Verdict::Improved { " (best)" } else { "" }
                ));
                if verdict == Verdict::Improved {
                    let snapshot = store
                        .vars()
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                        .collect::<Result<BTreeMap<_, _>>>()?;
                    best = Some((value, step, snapshot));
                    model::save(&model_dir, &spec, &labels, &store, &tokenizer, cfg, lora.as_ref())?;
                }
                if verdict == Verdict::Stop {
                    stopped_early = true;
                    progress.println(&format!(
                        "early stopping at step {step}: {} evaluations without a {} improvement above {}",
                        t.patience, t.metric, t.min_delta
                    ));
                    break 'epochs;
                }
            }
            if last {
                break 'epochs;
            }
        }
        epoch += 1;
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();

    // The best model (or, without validation, the last one) is the run's model.
    match &best {
        Some((value, at, snapshot)) => {
            for (name, t) in snapshot {
                store.set(name, t)?;
            }
            progress.println(&format!("restored the best model: step {at}, validation {} {value:.4}", t.metric));
        }
        None => {
            model::save(&model_dir, &spec, &labels, &store, &tokenizer, cfg, lora.as_ref())?;
        }
    }
    let final_split = test.as_ref().map(|s| ("test", s)).or(validation.as_ref().map(|s| ("validation", s)));
    let final_eval = match final_split {
        Some((_, split)) => {
            let logits = predict::score(&classifier, &split.encoded, t.eval_batch_size, pad, &device)?;
            Some(predict::evaluate(&logits, &split.gold(), &labels))
        }
        None => None,
    };
    let mut all_bad = BadRows::default();
    for s in [Some(&train), validation.as_ref(), test.as_ref()].into_iter().flatten() {
        dataset::add_bad_rows(&mut all_bad, &s.bad);
    }
    let summary = FinetuneSummary {
        run_dir: run_dir.to_path_buf(),
        model_dir,
        steps: step,
        total_steps,
        epochs: step as f64 / per_epoch.max(1) as f64,
        stopped_early,
        interrupted,
        params: report,
        best: best.as_ref().map(|(v, s, _)| (*v, *s)),
        final_split: final_split.map(|(n, _)| n.to_string()),
        final_eval,
        train_seconds,
    };
    write_results(run_dir, cfg, &labels, &summary, &train, all_bad)?;
    Ok(summary)
}

fn write_results(
    run_dir: &Path,
    cfg: &FinetuneConfig,
    labels: &LabelMap,
    s: &FinetuneSummary,
    train: &Split,
    bad: BadRows,
) -> Result<()> {
    let metrics: Option<(&Evaluation, &ClassificationMetrics)> = s.final_eval.as_ref().map(|e| (e, &e.metrics));
    let results = json!({
        "task": "classification",
        "base": cfg.model.base,
        "method": cfg.finetune.method,
        "labels": labels.labels,
        "params": s.params,
        "train": {
            "examples": train.encoded.len(),
            "steps": s.steps,
            "total_steps": s.total_steps,
            "epochs": s.epochs,
            "seconds": s.train_seconds,
            "stopped_early": s.stopped_early,
            "interrupted": s.interrupted,
        },
        "bad_rows": bad,
        "best": s.best.map(|(value, step)| json!({"metric": cfg.train.metric, "value": value, "step": step})),
        "final": metrics.map(|(e, _)| json!({
            "split": s.final_split,
            "file": if s.final_split.as_deref() == Some("test") { &cfg.data.test } else { &cfg.data.validation },
            "metrics": e,
        })),
        "model": s.model_dir,
    });
    crate::fsio::write_json_atomic(&run_dir.join("results.json"), &results)
}

/// Optimizer groups of the trainable parameters: base and head roles from their specs, LoRA
/// factors as matrices, then the `[[optim.groups]]` overrides.
fn optimizer_groups(
    cfg: &FinetuneConfig,
    spec: &crate::models::ModelSpec,
    store: &crate::nn::ParamStore,
    num_labels: usize,
) -> Result<BTreeMap<String, crate::optim::ParamGroup>> {
    let mut known: BTreeMap<String, ParamInfo> =
        model::backbone_params(spec).into_iter().map(|p| (p.name.clone(), p)).collect();
    known.extend(model::head_params(spec, num_labels).into_iter().map(|p| (p.name.clone(), p)));
    let roles = store.vars().iter().map(|(name, v)| {
        let role = match known.get(name) {
            Some(p) => param_role(p),
            None => ParamRole::from_shape(v.dims()),
        };
        (name.clone(), role)
    });
    param_groups(&cfg.optim, roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted validation-accuracy sequence: improvements at evaluations 1, 2 and 4 (0.805
    /// is not above 0.80 + min_delta 0.01), then three without: patience 3 stops at the 7th.
    #[test]
    fn early_stopping_stops_at_the_right_evaluation() {
        let seq = [0.70, 0.80, 0.805, 0.82, 0.81, 0.829, 0.75, 0.99];
        let mut e = EarlyStopping::new("accuracy", 3, 0.01);
        let verdicts: Vec<Verdict> = seq.iter().map(|&v| e.observe(v)).take_while(|v| *v != Verdict::Stop).collect();
        assert_eq!(verdicts.len(), 6, "stops at the 7th evaluation");
        use Verdict::*;
        assert_eq!(verdicts, [Improved, Improved, NotImproved, Improved, NotImproved, NotImproved]);
        assert_eq!(e.best, Some(0.82));
        // Loss: lower is better; patience 0 never stops.
        let mut e = EarlyStopping::new("loss", 0, 0.0);
        assert_eq!(e.observe(1.0), Improved);
        for _ in 0..10 {
            assert_eq!(e.observe(1.5), NotImproved);
        }
        assert_eq!(e.observe(0.9), Improved);
    }

    #[test]
    fn evaluation_cadence() {
        assert!(eval_due(10, 0, true, false));
        assert!(!eval_due(10, 0, false, false));
        assert!(eval_due(10, 5, false, false) && !eval_due(11, 5, true, false));
        assert!(eval_due(11, 5, false, true));
    }
}
