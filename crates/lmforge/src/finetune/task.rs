//! Sequence classification as a [`Task`] of the one training loop. A step trains on one
//! global batch of `batch_size · grad_accum` examples: each epoch's batches are a pure function
//! of (seed, epoch) ([`epoch_batches`], length-bucketed), step `s` is batch `s mod n` of epoch
//! `s div n`, micro-batch `m` is its rows `m·batch_size ..`, and each process computes a
//! contiguous share of those, padded to the micro-batch's longest row so that every row sees
//! the same shapes (and dropout masks) whatever the process count. Validation scores the whole
//! validation split with the classification metrics; the best model (by `train.metric`) is
//! written to `RUN_DIR/model/` as it improves. A checkpoint holds the trainable tensors
//! (`trainable.safetensors`, LoRA factors unmerged); the frozen base is read from
//! `model.base` again on resume.

use super::batching::{collate_padded, Encoded, EpochSchedule};
use super::config::FinetuneConfig;
use super::dataset::LabelMap;
use super::model::{self, Classifier};
use super::predict;
use crate::distributed::DataParallel;
use crate::error::{Error, Result};
use crate::metrics::regression::REGRESSION_METRIC_NAMES;
use crate::models::{HeadKind, ModelSpec};
use crate::nn::peft::LoraSpec;
use crate::nn::{DropoutRng, ParamStore};
use crate::tokenizer::TextTokenizer;
use crate::train::{EvalAt, Task, ValMetrics};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// The checkpoint file of the trainable tensors.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";

/// A labelled split, encoded.
pub struct EncodedSplit<'a> {
    pub encoded: &'a [Encoded],
    pub gold: Gold,
}

/// What a split is scored against: class ids, or regression targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Gold {
    Classes(Vec<usize>),
    Values(Vec<f64>),
}

/// What a head task (sequence, token or span head) trains and saves: its weights and the
/// settings its model folder is written with, the classifier, the train split's batches; the
/// checkpoint, rollback and best-model parts of [`Task`] that [`Classification`],
/// `token_task::TokenClassification` and `qa_task::QuestionAnswering` share
/// ([`head_task_methods`]).
pub struct HeadTuning<'a> {
    pub parts: HeadParts<'a>,
    pub classifier: Classifier,
    /// The train split's batches, by its rows' token counts.
    pub batches: EpochSchedule,
    pub pad: u32,
}

impl<'a> std::ops::Deref for HeadTuning<'a> {
    type Target = HeadParts<'a>;
    fn deref(&self) -> &HeadParts<'a> {
        &self.parts
    }
}

/// What a head task starts from: the run's config, the prepared base and its method.
pub struct HeadParts<'a> {
    pub cfg: &'a FinetuneConfig,
    pub spec: ModelSpec,
    pub labels: &'a LabelMap,
    pub store: ParamStore,
    pub tokenizer: &'a TextTokenizer,
    pub lora: Option<LoraSpec>,
}

impl<'a> HeadTuning<'a> {
    /// The classifier with a `kind` head on the base, and the train split's batches from its
    /// rows' token counts (`lengths`).
    pub fn new(parts: HeadParts<'a>, kind: HeadKind, lengths: Vec<usize>) -> Result<Self> {
        let t = &parts.cfg.train;
        let classifier = Classifier::new(&parts.spec, &parts.store, parts.cfg.model.dropout, kind)?
            .with_activation_checkpointing(t.activation_checkpointing)?;
        let batches = EpochSchedule::new(lengths, t.batch_size, t.grad_accum, t.bucket_batches, t.seed);
        let pad = model::pad_id(parts.tokenizer);
        Ok(Self { parts, classifier, batches, pad })
    }
}

/// The [`Task`] methods every head task answers from its [`HeadTuning`] in `self.tuned`.
macro_rules! head_task_methods {
    () => {
        fn params(&self) -> &crate::nn::ParamStore {
            &self.tuned.store
        }

        fn micro_rows(&self, step: u64, micro: usize) -> crate::error::Result<usize> {
            Ok(self.tuned.batches.micro(step, micro)?.len())
        }

        fn tokens_per_micro_batch(&self) -> u64 {
            (self.tuned.batches.mean_length() * self.tuned.cfg.train.batch_size as f64).round() as u64
        }

        fn steps_per_epoch(&self) -> Option<u64> {
            Some(self.tuned.batches.steps_per_epoch())
        }

        fn val_split(&self) -> &'static str {
            "validation"
        }

        fn selection(&self) -> crate::train::Selection {
            crate::finetune::selection(self.tuned.cfg)
        }

        fn write_model(&self, dir: &std::path::Path) -> crate::error::Result<()> {
            self.tuned.write_model(dir)
        }

        fn restore_weights(&self, dir: Option<&std::path::Path>) -> crate::error::Result<()> {
            self.tuned.restore_weights(dir)
        }

        fn keep_best(&self, run_dir: &std::path::Path) -> crate::error::Result<()> {
            self.tuned.keep_best(run_dir)
        }
    };
}
pub(crate) use head_task_methods;

impl HeadTuning<'_> {
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// [`Task::write_model`]: the trainable tensors.
    pub fn write_model(&self, dir: &Path) -> Result<()> {
        write_trainable(&self.store, dir)
    }

    /// [`Task::restore_weights`]: a checkpoint's trainable tensors, or the initial weights.
    pub fn restore_weights(&self, dir: Option<&Path>) -> Result<()> {
        match dir {
            Some(dir) => set_trainable(&self.store, &read_trainable(dir, self.device())?),
            None => restore_initial(&self.store, self.cfg, &self.spec, self.labels),
        }
    }

    /// [`Task::keep_best`]: the model folder in `RUN_DIR/model/`.
    pub fn keep_best(&self, run_dir: &Path) -> Result<()> {
        let (dir, lora) = (run_dir.join("model"), self.lora.as_ref());
        model::save(&dir, &self.spec, self.labels, &self.store, self.tokenizer, self.cfg, lora)?;
        Ok(())
    }

    /// [`Task::describe`]: "lora token-classification fine-tuning of a Gpt2 model, 5 tags: N of
    /// M parameters trainable (p%); R train pieces, B per step (b x a), S steps per epoch".
    pub fn describe(&self, what: &str, unit: &str, train: &str) -> String {
        let (trainable, total) = (self.store.num_trainable(), self.store.num_params());
        let t = &self.cfg.train;
        format!(
            "{} {what} of a {:?} model, {} {unit}: {trainable} of {total} parameters trainable ({:.2}%); \
             {train}, {} per step ({} x {}), {} steps per epoch",
            self.cfg.finetune.method.name(),
            self.spec.style,
            self.labels.len(),
            100.0 * trainable as f64 / total.max(1) as f64,
            self.batches.global_batch(),
            t.batch_size,
            t.grad_accum,
            self.batches.steps_per_epoch(),
        )
    }
}

/// A validation row's named metrics, with the selection metric `metric` (of `names`) added
/// when it is not among them and is not the loss.
pub fn with_selected(
    mut extra: Vec<(&'static str, f64)>,
    metric: &str,
    names: &[&'static str],
    value: impl FnOnce() -> Result<f64>,
) -> Result<Vec<(&'static str, f64)>> {
    if metric != "loss" && !extra.iter().any(|(k, _)| *k == metric) {
        let name = names.iter().find(|n| **n == metric).copied().unwrap_or("selected");
        extra.push((name, value()?));
    }
    Ok(extra)
}

pub struct Classification<'a> {
    pub tuned: HeadTuning<'a>,
    train: &'a [Encoded],
    /// Regression: the train examples' targets (in `train`'s order); None: classes.
    values: Option<&'a [f64]>,
    validation: Option<EncodedSplit<'a>>,
}

impl<'a> Classification<'a> {
    pub fn new(parts: HeadParts<'a>, train: &'a [Encoded], validation: Option<EncodedSplit<'a>>) -> Result<Self> {
        let lengths = train.iter().map(|e| e.ids.len()).collect();
        let tuned = HeadTuning::new(parts, HeadKind::Sequence, lengths)?;
        Ok(Self { tuned, train, values: None, validation })
    }

    /// Trains a regression on `values` (the train examples' targets) instead of classes.
    pub fn with_targets(mut self, values: &'a [f64]) -> Self {
        self.values = Some(values);
        self
    }

    fn device(&self) -> &Device {
        self.tuned.device()
    }
}

impl Task for Classification<'_> {
    head_task_methods!();

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        let examples = self.tuned.batches.micro(step, micro)?;
        let all: Vec<&Encoded> = examples.iter().map(|&i| &self.train[i]).collect();
        // Every share padded to the micro-batch's longest row: the same shapes in any split.
        let width = all.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let mine = &all[rows.clone()];
        let batch = collate_padded(mine, self.tuned.pad, width, self.device())?;
        let logits = self.tuned.classifier.logits(&batch, Some(dropout))?;
        let loss = match self.values {
            Some(values) => {
                let v: Vec<f32> = examples[rows.clone()].iter().map(|&i| values[i] as f32).collect();
                model::mse_loss(&logits, &Tensor::from_vec(v, rows.len(), self.device())?)?
            }
            None => {
                let targets =
                    batch.labels.as_ref().ok_or_else(|| Error::Invalid("training examples carry labels".into()))?;
                model::loss(&logits, targets, self.tuned.cfg.train.label_smoothing)?
            }
        };
        if rows.len() == all.len() {
            Ok(loss)
        } else {
            Ok((loss * (rows.len() as f64 / all.len() as f64))?)
        }
    }

    /// Every process scores the whole validation split (not split over processes yet).
    fn validate(&self, _dp: &DataParallel, _at: EvalAt) -> Result<ValMetrics> {
        let Some(val) = &self.validation else {
            return Err(Error::Invalid("no validation split (data.validation) to evaluate".into()));
        };
        let t = &self.tuned.cfg.train;
        let tuned = &self.tuned;
        let logits = predict::score(&tuned.classifier, val.encoded, t.eval_batch_size, tuned.pad, self.device())?;
        let metric = self.tuned.cfg.metric();
        let gold = match &val.gold {
            Gold::Values(gold) => {
                let ev = predict::evaluate_regression(&logits, gold);
                let m = &ev.metrics;
                let extra = vec![("mse", m.mse), ("mae", m.mae), ("pearson", m.pearson), ("spearman", m.spearman)];
                let extra = with_selected(extra, metric, &REGRESSION_METRIC_NAMES, || {
                    m.get(metric).ok_or_else(|| Error::config("train.metric", format!("unknown {metric:?}")))
                })?;
                return Ok(ValMetrics { loss: ev.loss, ppl: f64::NAN, bits_per_byte: None, extra });
            }
            Gold::Classes(gold) => gold,
        };
        let ev = predict::evaluate(&logits, gold, self.tuned.labels);
        let m = &ev.metrics;
        let mut extra = vec![("accuracy", m.accuracy), ("macro_f1", m.macro_avg.f1), ("weighted_f1", m.weighted.f1)];
        if let Some(b) = &m.binary {
            extra.push(("binary_f1", b.f1));
        }
        let extra = with_selected(extra, metric, &crate::metrics::METRIC_NAMES, || {
            ev.get(metric)
                .ok_or_else(|| Error::config("train.metric", format!("{metric:?} needs two classes (binary metrics)")))
        })?;
        Ok(ValMetrics { loss: ev.loss, ppl: f64::NAN, bits_per_byte: None, extra })
    }

    fn describe(&self) -> String {
        self.tuned.describe("fine-tuning", "labels", &format!("{} train examples", self.train.len()))
    }
}

/// Sets the trainable tensors of `store` back to the run's initial weights: the base again,
/// prepared by the same seeded rule (a rollback before the first checkpoint).
pub fn restore_initial(store: &ParamStore, cfg: &FinetuneConfig, spec: &ModelSpec, labels: &LabelMap) -> Result<()> {
    let (_, mut fresh, _) = model::load_base(&cfg.model.base, labels, cfg.head_kind(), store.device())?;
    model::prepare(&mut fresh, spec, cfg, labels)?;
    set_trainable(store, &fresh.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())
}

/// Writes the trainable tensors of a fine-tune into checkpoint folder `dir`.
pub fn write_trainable(store: &ParamStore, dir: &Path) -> Result<()> {
    let bytes = crate::nn::serialize_tensors(store.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())))?;
    crate::checkpoint::write_staged(&dir.join(TRAINABLE_FILE), &bytes)
}

/// The trainable tensors of checkpoint folder `dir`.
pub fn read_trainable(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(TRAINABLE_FILE);
    candle_core::safetensors::load(&path, device)
        .map_err(|e| Error::format(&path, format!("cannot read the trainable tensors: {e}")))
}

/// Sets every trainable tensor of `store` from `tensors` (same names and shapes).
pub fn set_trainable(store: &ParamStore, tensors: &HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in store.vars() {
        let t = tensors.get(name).ok_or_else(|| {
            Error::Invalid(format!("the checkpoint has no `{name}`: it was written by another fine-tuning setup"))
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Invalid(format!("`{name}` is {:?} in the checkpoint, {:?} here", t.dims(), var.dims())));
        }
        var.set(t)?;
    }
    Ok(())
}
