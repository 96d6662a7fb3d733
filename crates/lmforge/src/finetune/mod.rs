//! Fine-tuning a pretrained model for text classification (`lmforge finetune`): the front end
//! that builds the task and hands it to the one training loop (`crate::train`). Labelled files
//! ([`dataset`]) become length-bucketed, dynamically padded batches ([`batching`]); a
//! [`model::Classifier`] (the backbone's pooled features and a head) trains fully, with LoRA or
//! with bottleneck adapters (`nn::peft`) — [`task::Classification`] is what the loop sees. The
//! loop brings everything pretraining has: gradient accumulation, several processes (`mpirun`,
//! ZeRO-1), the fault policy, activation checkpointing, checkpoints with manifests and an
//! exact `--resume`, and the patience rule that picks the best model and stops early. The best
//! model is written to `RUN_DIR/model/` as it improves; at the end the front end evaluates that
//! saved model on the test split (or the validation split) into `RUN_DIR/results.json`.
//! [`predict`] runs a trained classifier over files. The other tasks are front ends of their
//! own over the same loop: token classification ([`tagged`] data, [`token_task`],
//! [`token_run`]), extractive question answering ([`qa_data`], [`qa_task`], [`qa_run`]) and
//! causal-LM fine-tuning ([`sft_data`], [`causal`], [`causal_run`]).

pub mod augment;
pub mod batching;
pub mod causal;
pub mod causal_run;
pub mod config;
pub mod dataset;
pub mod folds;
mod head_run;
pub mod model;
pub mod predict;
pub mod qa_data;
pub mod qa_run;
pub mod qa_task;
pub mod sft_data;
pub mod splits;
pub mod tagged;
pub mod task;
pub mod token_run;
pub mod token_task;

pub use config::{FinetuneConfig, TaskKind};

use crate::checkpoint::RunLock;
use crate::distributed;
use crate::error::{Error, Result};
use crate::models::{HeadKind, ParamInfo};
use crate::nn::seed_for;
use crate::observe::{Observers, RunStart};
use crate::optim::{param_groups, OptimSpec, ParamGroup, ParamRole};
use crate::patience::{self, Patience, PatienceRule, Threshold};
use crate::train::{self, param_role, Cadence, LoopPlan, MetricsLog, Start, Task, TrainOptions, TrainSummary};
use batching::{encode, Encoded};
use dataset::{read_examples, BadRows, Example, LabelMap};
use predict::Evaluation;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use task::{Classification, EncodedSplit, Gold};

/// Early stopping as Keras' / Hugging Face's `EarlyStopping`: an evaluation improves on the
/// best when it beats it by more than `min_delta` (higher is better, or lower for `loss`);
/// `patience` non-improving evaluations in a row stop the run (0: never). The waiting is
/// [`Patience`], the rule reduce-on-plateau uses too.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    pub rule: PatienceRule,
    pub state: Patience,
}

/// Early stopping's verdict on one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: keep this model.
    Improved,
    NotImproved,
    /// `patience` evaluations in a row without improvement: stop.
    Stop,
}

impl EarlyStopping {
    pub fn new(metric: &str, patience: u64, min_delta: f64) -> Self {
        Self { rule: Self::rule(metric, patience, min_delta), state: Patience::default() }
    }

    /// The rule: `metric` higher is better (`loss`, `ppl` and the regression errors `mse`,
    /// `rmse`, `mae` lower), improving by more than `min_delta`;
    /// `patience` evaluations without stop (0: `tolerate` everything).
    pub fn rule(metric: &str, patience: u64, min_delta: f64) -> PatienceRule {
        PatienceRule {
            higher_is_better: !crate::metrics::regression::lower_is_better(metric),
            threshold: Threshold::Absolute(min_delta),
            tolerate: if patience == 0 { u64::MAX } else { patience - 1 },
            cooldown: 0,
        }
    }

    pub fn observe(&mut self, value: f64) -> Verdict {
        match self.state.observe(value, &self.rule) {
            patience::Verdict::Improved => Verdict::Improved,
            patience::Verdict::NotImproved => Verdict::NotImproved,
            patience::Verdict::Exhausted => Verdict::Stop,
        }
    }
}

/// A fine-tune's best-model rule: `train.metric` (higher is better, `loss` / `ppl` lower),
/// improving by more than `train.min_delta`; `train.patience` evaluations without stop the
/// run (0: never).
pub fn selection(cfg: &FinetuneConfig) -> train::Selection {
    let t = &cfg.train;
    let metric = cfg.metric();
    train::Selection { metric: metric.into(), rule: EarlyStopping::rule(metric, t.patience, t.min_delta) }
}

impl std::ops::Deref for EarlyStopping {
    type Target = Patience;
    fn deref(&self) -> &Patience {
        &self.state
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSummary {
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: f64,
    pub stopped_early: bool,
    /// Stopped by a signal with a checkpoint: continue with `--resume`.
    pub interrupted: bool,
    /// Reached the last step or stopped early: the final evaluation and `results.json` are
    /// written (not after a signal or `--stop-after`).
    pub finished: bool,
    pub params: model::ParamReport,
    /// The selection metric (`train.metric`), its best validation value and that step.
    pub metric: String,
    pub best: Option<(f64, u64)>,
    /// The final split's name ("test" or "validation") and its evaluation, with the best model.
    pub final_split: Option<String>,
    pub final_eval: Option<Evaluation>,
    /// Causal LM: the final split's loss, perplexity and generation metrics, with the best model.
    pub final_causal: Option<causal_run::CausalEval>,
    /// Token classification: the final split's loss and entity metrics, with the best model.
    pub final_tokens: Option<token_task::TokenEvaluation>,
    /// Regression: the final split's errors and correlations, with the best model.
    pub final_regression: Option<predict::RegressionEvaluation>,
    /// Question answering: the final split's loss and SQuAD metrics, with the best model.
    pub final_qa: Option<qa_task::QaEvaluation>,
    pub train_seconds: f64,
}

impl FinetuneSummary {
    /// The summary of the loop's `summary`, before any final evaluation.
    fn new(
        cfg: &FinetuneConfig,
        run_dir: &Path,
        summary: &TrainSummary,
        total_steps: u64,
        per_epoch: u64,
        params: model::ParamReport,
    ) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            model_dir: run_dir.join("model"),
            steps: summary.step,
            total_steps,
            epochs: summary.step as f64 / per_epoch.max(1) as f64,
            stopped_early: summary.stopped_early,
            interrupted: summary.interrupted,
            finished: summary.step >= total_steps || summary.stopped_early,
            params,
            metric: cfg.metric().to_string(),
            best: summary.best,
            final_split: None,
            final_eval: None,
            final_causal: None,
            final_tokens: None,
            final_regression: None,
            final_qa: None,
            train_seconds: summary.train_seconds,
        }
    }
}

/// One split, read and encoded.
struct Split {
    file: PathBuf,
    examples: Vec<Example>,
    encoded: Vec<Encoded>,
    bad: BadRows,
}

impl Split {
    fn gold(&self) -> Gold {
        match self.examples.first().is_some_and(|e| e.value.is_some()) {
            true => Gold::Values(self.examples.iter().map(|e| e.value.expect("a scored split")).collect()),
            false => Gold::Classes(self.examples.iter().map(|e| e.label.expect("a labelled split")).collect()),
        }
    }

    /// Regression targets of the examples (empty for classes).
    fn values(&self) -> Vec<f64> {
        self.examples.iter().filter_map(|e| e.value).collect()
    }
}

/// Fine-tunes `cfg.model.base` into `run_dir` (which must not hold a run).
pub fn finetune(cfg: &FinetuneConfig, run_dir: &Path, opts: &TrainOptions) -> Result<FinetuneSummary> {
    run(cfg, run_dir, opts, false)
}

/// Continues the fine-tuning run in `run_dir` from its newest intact checkpoint, exactly.
pub fn resume(run_dir: &Path, opts: &TrainOptions) -> Result<FinetuneSummary> {
    let path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let cfg = FinetuneConfig::from_toml_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    run(&cfg, run_dir, opts, true)
}

/// Writes the base of a finished LoRA fine-tune with its best adapter merged in to
/// `RUN_DIR/merged`, a plain Hugging Face folder (what PEFT's `merge_and_unload` gives).
pub fn merge(run_dir: &Path) -> Result<PathBuf> {
    let path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let cfg = FinetuneConfig::from_toml_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    if cfg.task.kind != TaskKind::CausalLm || cfg.finetune.method != config::Method::Lora {
        return Err(Error::Invalid(format!(
            "--merge is for causal_lm LoRA runs; {} is a {} {} run (its model folder is already complete)",
            run_dir.display(),
            cfg.task.kind.name(),
            cfg.finetune.method.name()
        )));
    }
    let m = crate::checkpoint::LoadedModel::load_with_adapter(
        &cfg.model.base,
        Some(&run_dir.join("model")),
        &candle_core::Device::Cpu,
    )?;
    m.export_hf(&run_dir.join("merged"))
}

fn run(cfg: &FinetuneConfig, run_dir: &Path, opts: &TrainOptions, resuming: bool) -> Result<FinetuneSummary> {
    let mut observers = opts.observers.clone();
    let result = run_observed(cfg, run_dir, opts, resuming, &mut observers);
    observers.end(&TrainSummary::run_end(result.as_ref().map(|(s, _)| s)));
    result.map(|(_, f)| f)
}

/// Everything a run reads before it writes: data, base, method.
struct Inputs {
    labels: LabelMap,
    spec: crate::models::ModelSpec,
    store: crate::nn::ParamStore,
    tokenizer: crate::tokenizer::TextTokenizer,
    lora: Option<crate::nn::peft::LoraSpec>,
    train: Split,
    validation: Option<Split>,
    test: Option<Split>,
    augmentation: augment::AugmentReport,
}

/// Reads the labelled files (a seeded subset of the train rows with `data.max_train_rows`),
/// loads the base and sets up the method. Everything that can fail on user input fails here.
fn read_inputs(cfg: &FinetuneConfig, device: &candle_core::Device) -> Result<Inputs> {
    let regression = cfg.task.kind == TaskKind::Regression;
    // A regression's head has one output; its folder names it as transformers does.
    let read_rows = |path: &Path, labels: Option<&LabelMap>| -> Result<(Vec<Example>, BadRows, LabelMap)> {
        if regression {
            let (rows, bad) = dataset::read_scored(path, &cfg.data, true)?;
            Ok((rows, bad, LabelMap { labels: vec!["LABEL_0".into()] }))
        } else {
            read_examples(path, &cfg.data, labels, true)
        }
    };
    let (train_ex, train_bad, labels) = read_rows(&cfg.data.train, None)?;
    // k-fold: fold `i` of the train rows validates (stratified by label for classes).
    let (train_ex, held_out) = match folds::of(cfg) {
        Some((k, fold)) => {
            let strata: Vec<usize> = train_ex.iter().map(|e| e.label.unwrap_or(0)).collect();
            let (train, held) = folds::split(train_ex, &folds::assign(&strata, k, cfg.train.seed), fold);
            (train, Some(held))
        }
        None => (train_ex, None),
    };
    // Held-out fractions of the train file (`data.validation_fraction` / `test_fraction`).
    let (train_ex, carved_val, carved_test) = splits::carve(cfg, train_ex);
    let held_out = held_out.or(carved_val);
    let train_ex = train_subset(cfg, train_ex);
    // Augmented copies of the training rows only, after any subset (a copy's row is trained on).
    let (train_ex, augmentation) = augment::augment(train_ex, &cfg.data.augment, cfg.train.seed)?;
    let (spec, mut store, tokenizer) = model::load_base(&cfg.model.base, &labels, HeadKind::Sequence, device)?;
    let max_len = window(cfg, spec.context);
    let read = |path: &Path, limit: usize| -> Result<Option<Split>> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let (mut examples, bad, _) = read_rows(path, Some(&labels))?;
        if limit > 0 {
            examples.truncate(limit);
        }
        let encoded = encode(&examples, &tokenizer, max_len)?;
        Ok(Some(Split { file: path.to_path_buf(), examples, encoded, bad }))
    };
    let train_enc = encode(&train_ex, &tokenizer, max_len)?;
    let train = Split { file: cfg.data.train.clone(), examples: train_ex, encoded: train_enc, bad: train_bad };
    let validation = match held_out {
        Some(examples) => {
            let encoded = encode(&examples, &tokenizer, max_len)?;
            Some(Split { file: cfg.data.train.clone(), examples, encoded, bad: BadRows::default() })
        }
        None => read(&cfg.data.validation, cfg.data.max_validation_rows)?,
    };
    let test = match carved_test {
        Some(examples) => {
            let encoded = encode(&examples, &tokenizer, max_len)?;
            Some(Split { file: cfg.data.train.clone(), examples, encoded, bad: BadRows::default() })
        }
        None => read(&cfg.data.test, 0)?,
    };
    let lora = model::prepare(&mut store, &spec, cfg, &labels)?;
    Ok(Inputs { labels, spec, store, tokenizer, lora, train, validation, test, augmentation })
}

/// A seeded subset of `data.max_train_rows` training rows, in file order (all rows when 0 or
/// fewer rows).
fn train_subset<T>(cfg: &FinetuneConfig, rows: Vec<T>) -> Vec<T> {
    let limit = cfg.data.max_train_rows;
    if limit == 0 || rows.len() <= limit {
        return rows;
    }
    let mut keep: Vec<usize> = (0..rows.len()).collect();
    keep.shuffle(&mut ChaCha8Rng::seed_from_u64(seed_for(cfg.train.seed, "finetune/train-subset")));
    keep.truncate(limit);
    keep.sort_unstable();
    let mut rows: Vec<Option<T>> = rows.into_iter().map(Some).collect();
    keep.into_iter().map(|i| rows[i].take().expect("distinct")).collect()
}

/// Tokens per example: `model.max_length` within the model's context (0: the context).
fn window(cfg: &FinetuneConfig, context: usize) -> usize {
    match cfg.model.max_length {
        0 => context,
        n => n.min(context),
    }
}

/// (optimizer steps per epoch, steps in all) over `examples` training examples; every process
/// needs a row of each micro-batch.
fn step_counts(cfg: &FinetuneConfig, examples: usize, world: usize) -> Result<(u64, u64)> {
    let t = &cfg.train;
    if t.batch_size < world {
        return Err(Error::config(
            "train.batch_size",
            format!("{} examples per micro-batch cannot be split over {world} processes", t.batch_size),
        ));
    }
    let per_epoch = examples.div_ceil(t.batch_size * t.grad_accum) as u64;
    Ok((per_epoch, if t.max_steps > 0 { t.max_steps } else { t.epochs * per_epoch }))
}

/// The loop's plan for `total` steps over the trainable parameters' `groups`.
fn loop_plan(cfg: &FinetuneConfig, groups: BTreeMap<String, ParamGroup>, total: u64) -> Result<LoopPlan> {
    let t = &cfg.train;
    Ok(LoopPlan {
        max_steps: total,
        batch_size: t.batch_size,
        grad_accum: t.grad_accum,
        seed: t.seed,
        dropout: cfg.model.dropout,
        lr: cfg.optim.lr,
        grad_clip: cfg.optim.grad_clip,
        schedule: cfg.schedule.resolve(total)?,
        plateau: None,
        optim: OptimSpec::from_config(&cfg.optim)?,
        groups,
        faults: cfg.fault_policy()?,
        eval: Cadence { every: t.eval_every, epoch_end: t.eval_every == 0 },
        checkpoint: Cadence { every: t.checkpoint_every, epoch_end: t.checkpoint_every == 0 },
        log_every: t.log_every,
        keep_last: cfg.checkpoint.keep_last,
        keep_best: cfg.checkpoint.keep_best,
        distributed: cfg.distributed.clone(),
        progress: cfg.log.progress,
        config_toml: cfg.to_toml(),
        config_hash: cfg.hash(),
        command: "lmforge finetune",
    })
}

fn run_observed(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    resuming: bool,
    observers: &mut Observers,
) -> Result<(TrainSummary, FinetuneSummary)> {
    match cfg.task.kind {
        TaskKind::Classification | TaskKind::Regression => run_classification(cfg, run_dir, opts, resuming, observers),
        TaskKind::TokenClassification => token_run::run(cfg, run_dir, opts, resuming, observers),
        TaskKind::CausalLm => causal_run::run(cfg, run_dir, opts, resuming, observers),
        TaskKind::QuestionAnswering => qa_run::run(cfg, run_dir, opts, resuming, observers),
    }
}

fn run_classification(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    resuming: bool,
    observers: &mut Observers,
) -> Result<(TrainSummary, FinetuneSummary)> {
    let t = &cfg.train;
    let placement = opts.placement(t.device, t.precision)?;
    cfg.check_paths()?;
    let inputs = read_inputs(cfg, &placement.device)?;
    let Inputs { labels, spec, store, tokenizer, lora, train, validation, test, augmentation } = inputs;
    if augmentation.rows_added > 0 {
        let ops: Vec<String> = augmentation.by_operation.iter().map(|(o, n)| format!("{o} {n}")).collect();
        crate::progress::note(
            cfg.log.progress.mode(),
            &format!("augmentation: {} rows added ({})", augmentation.rows_added, ops.join(", ")),
        );
    }
    let report = splits::reports(
        cfg,
        &labels,
        [
            Some(&train.examples[..]),
            validation.as_ref().map(|v| &v.examples[..]),
            test.as_ref().map(|t| &t.examples[..]),
        ],
    );
    let validation_split = validation.as_ref().map(|v| EncodedSplit { encoded: &v.encoded, gold: v.gold() });
    let train_values = train.values();
    let head =
        head_run::HeadRun { cfg, run_dir, opts, resuming, precision: placement.precision, kind: HeadKind::Sequence };
    let parts = task::HeadParts { cfg, spec, labels: &labels, store, tokenizer: &tokenizer, lora };
    let announce = |total| announce(cfg, &train, validation.as_ref(), test.as_ref(), total);
    let head_run::HeadRunEnd { summary, mut out, finish } =
        head.run(parts, train.encoded.len(), validation.is_some(), observers, &announce, |parts| {
            let task = Classification::new(parts, &train.encoded, validation_split)?;
            Ok(if cfg.task.kind == TaskKind::Regression { task.with_targets(&train_values) } else { task })
        })?;
    if !finish {
        return Ok((summary, out));
    }
    let model_dir = out.model_dir.clone();
    // The final metrics are the saved model's, read back as `predict` and `eval` read it.
    let final_split = test.as_ref().map(|s| ("test", s)).or(validation.as_ref().map(|s| ("validation", s)));
    if let Some((name, split)) = final_split {
        let saved = model::LoadedClassifier::load(&model_dir, &placement.device)?;
        let pad = model::pad_id(&saved.tokenizer);
        let logits = predict::score(&saved.classifier, &split.encoded, t.eval_batch_size, pad, &placement.device)?;
        out.final_split = Some(name.to_string());
        match split.gold() {
            Gold::Classes(gold) => out.final_eval = Some(predict::evaluate(&logits, &gold, &labels)),
            Gold::Values(gold) => out.final_regression = Some(predict::evaluate_regression(&logits, &gold)),
        }
    }
    let mut all_bad = BadRows::default();
    for s in [Some(&train), validation.as_ref(), test.as_ref()].into_iter().flatten() {
        dataset::add_bad_rows(&mut all_bad, &s.bad);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("splits".into(), json!(report));
    if augmentation.copies > 0 {
        extra.insert("augmentation".into(), json!(augmentation));
    }
    write_results(run_dir, cfg, &labels, &out, &train, all_bad, extra)?;
    Ok((summary, out))
}

/// Where and how a front end runs its task.
struct Drive<'a> {
    cfg: &'a FinetuneConfig,
    run_dir: &'a Path,
    opts: &'a TrainOptions,
    resuming: bool,
    total_steps: u64,
}

/// Runs `task` in the one loop: the run dir and its lock (new or resumed), the start (a fresh
/// state or the newest intact checkpoint's), `metrics.jsonl` and the observers, then the loop.
fn drive(
    task: &dyn Task,
    lp: &LoopPlan,
    d: Drive,
    observers: &mut Observers,
    announce: &dyn Fn(),
) -> Result<TrainSummary> {
    let comm = d.opts.collective();
    let writer = comm.rank() == 0;
    let (_lock, start) = distributed::rank0_first(comm.as_ref(), || {
        let lock = match (writer, d.resuming) {
            (false, _) => None,
            (true, false) => Some(train::start_run_dir(d.run_dir, &lp.config_toml, lp.command)?),
            (true, true) => Some(RunLock::acquire(d.run_dir)?),
        };
        let start = if d.resuming {
            train::find_start(d.run_dir, lp, writer)?
        } else {
            Start { state: lp.fresh_state(), checkpoint: None }
        };
        Ok((lock, start))
    })?;
    if start.checkpoint.is_some() {
        task.restore_weights(start.checkpoint.as_deref())?;
    }
    let resumed_from = d.resuming.then_some(start.state.step);
    let metrics = if writer {
        observers.start(&RunStart::new(d.run_dir, d.cfg, d.total_steps, resumed_from));
        MetricsLog::open(&d.run_dir.join("metrics.jsonl"), resumed_from, observers.clone())?
    } else {
        MetricsLog::discard()
    };
    if writer {
        announce();
    }
    train::run_loop(task, lp, d.run_dir, start, metrics, d.opts)
}

/// The run's data, as the start of the log says it.
fn announce(cfg: &FinetuneConfig, train: &Split, validation: Option<&Split>, test: Option<&Split>, total: u64) {
    let mode = cfg.log.progress.mode();
    crate::progress::note(
        mode,
        &format!(
            "examples: {} train{}{}; {total} steps in all",
            train.encoded.len(),
            validation.map(|v| format!(", {} validation", v.encoded.len())).unwrap_or_default(),
            test.map(|v| format!(", {} test", v.encoded.len())).unwrap_or_default(),
        ),
    );
    for s in [Some(train), validation, test].into_iter().flatten() {
        if s.bad.total() > 0 {
            crate::progress::note(mode, &format!("{}: {}", s.file.display(), s.bad.summary()));
        }
    }
}

/// What the method trains, and the optimizer state it costs (all processes together).
fn param_report(
    cfg: &FinetuneConfig,
    store: &crate::nn::ParamStore,
    groups: &BTreeMap<String, ParamGroup>,
    optim: &OptimSpec,
) -> model::ParamReport {
    let state_elems: usize = store.vars().iter().map(|(name, v)| optim.state_elems(v.dims(), groups[name].role)).sum();
    model::ParamReport {
        method: cfg.finetune.method.name().to_string(),
        total_params: store.num_params(),
        trainable_params: store.num_trainable(),
        trainable_fraction: store.num_trainable() as f64 / store.num_params().max(1) as f64,
        optimizer_state_bytes: 4 * state_elems,
    }
}

fn write_results(
    run_dir: &Path,
    cfg: &FinetuneConfig,
    labels: &LabelMap,
    s: &FinetuneSummary,
    train: &Split,
    bad: BadRows,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let metrics = match (&s.final_eval, &s.final_regression) {
        (Some(e), _) => Some(serde_json::to_value(e).expect("json")),
        (_, Some(e)) => Some(serde_json::to_value(e).expect("json")),
        _ => None,
    };
    let mut results = head_run::results(cfg, s, json!({"examples": train.encoded.len()}), &bad, metrics);
    results.insert("labels".into(), json!(labels.labels));
    // The splits' per-class counts and the augmentation report.
    results.extend(extra);
    crate::fsio::write_json_atomic(&run_dir.join("results.json"), &results)
}

/// Optimizer groups of the trainable parameters: roles from the `known` specs (the model's
/// and head's), others (LoRA factors, adapters) by shape, then the `[[optim.groups]]` overrides.
fn optimizer_groups(
    cfg: &FinetuneConfig,
    known: Vec<ParamInfo>,
    store: &crate::nn::ParamStore,
) -> Result<BTreeMap<String, ParamGroup>> {
    let known: BTreeMap<String, ParamInfo> = known.into_iter().map(|p| (p.name.clone(), p)).collect();
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
        let epochs = Cadence { every: 0, epoch_end: true };
        assert!(epochs.due(10, 100, Some(10)));
        assert!(!epochs.due(11, 100, Some(10)));
        let every5 = Cadence { every: 5, epoch_end: false };
        assert!(every5.due(10, 100, Some(3)) && !every5.due(11, 100, Some(11)));
        assert!(every5.due(11, 11, Some(3)));
    }
}
