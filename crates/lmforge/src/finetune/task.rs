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
use crate::models::ModelSpec;
use crate::nn::peft::LoraSpec;
use crate::nn::{DropoutRng, ParamStore};
use crate::tokenizer::TextTokenizer;
use crate::train::{EvalAt, Selection, Task, ValMetrics};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// The checkpoint file of the trainable tensors.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";

/// A labelled split, encoded.
pub struct EncodedSplit<'a> {
    pub encoded: &'a [Encoded],
    pub gold: Vec<usize>,
}

pub struct Classification<'a> {
    pub cfg: &'a FinetuneConfig,
    pub spec: ModelSpec,
    pub labels: &'a LabelMap,
    pub store: ParamStore,
    classifier: Classifier,
    tokenizer: &'a TextTokenizer,
    lora: Option<LoraSpec>,
    train: &'a [Encoded],
    batches: EpochSchedule,
    validation: Option<EncodedSplit<'a>>,
    pad: u32,
}

impl<'a> Classification<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a FinetuneConfig,
        spec: ModelSpec,
        labels: &'a LabelMap,
        store: ParamStore,
        lora: Option<LoraSpec>,
        tokenizer: &'a TextTokenizer,
        train: &'a [Encoded],
        validation: Option<EncodedSplit<'a>>,
    ) -> Result<Self> {
        let classifier = Classifier::new(&spec, &store, cfg.model.dropout)?
            .with_activation_checkpointing(cfg.train.activation_checkpointing)?;
        let t = &cfg.train;
        let lengths = train.iter().map(|e| e.ids.len()).collect();
        let batches = EpochSchedule::new(lengths, t.batch_size, t.grad_accum, t.bucket_batches, t.seed);
        let pad = model::pad_id(tokenizer);
        Ok(Self { cfg, spec, labels, store, classifier, tokenizer, lora, train, batches, validation, pad })
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn pad(&self) -> u32 {
        self.pad
    }

    fn device(&self) -> &Device {
        self.store.device()
    }
}

impl Task for Classification<'_> {
    fn params(&self) -> &ParamStore {
        &self.store
    }

    fn micro_rows(&self, step: u64, micro: usize) -> Result<usize> {
        Ok(self.batches.micro(step, micro)?.len())
    }

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        let examples = self.batches.micro(step, micro)?;
        let all: Vec<&Encoded> = examples.iter().map(|&i| &self.train[i]).collect();
        // Every share padded to the micro-batch's longest row: the same shapes in any split.
        let width = all.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let mine = &all[rows.clone()];
        let batch = collate_padded(mine, self.pad, width, self.device())?;
        let targets = batch.labels.as_ref().ok_or_else(|| Error::Invalid("training examples carry labels".into()))?;
        let logits = self.classifier.logits(&batch, Some(dropout))?;
        let loss = model::loss(&logits, targets, self.cfg.train.label_smoothing)?;
        if rows.len() == all.len() {
            Ok(loss)
        } else {
            Ok((loss * (rows.len() as f64 / all.len() as f64))?)
        }
    }

    fn tokens_per_micro_batch(&self) -> u64 {
        (self.batches.mean_length() * self.cfg.train.batch_size as f64).round() as u64
    }

    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.batches.steps_per_epoch())
    }

    /// Every process scores the whole validation split (not split over processes yet).
    fn validate(&self, _dp: &DataParallel, _at: EvalAt) -> Result<ValMetrics> {
        let Some(val) = &self.validation else {
            return Err(Error::Invalid("no validation split (data.validation) to evaluate".into()));
        };
        let t = &self.cfg.train;
        let logits = predict::score(&self.classifier, val.encoded, t.eval_batch_size, self.pad, self.device())?;
        let ev = predict::evaluate(&logits, &val.gold, self.labels);
        let metric = self.cfg.metric();
        let value = ev
            .get(metric)
            .ok_or_else(|| Error::config("train.metric", format!("{metric:?} needs two classes (binary metrics)")))?;
        let m = &ev.metrics;
        let mut extra = vec![("accuracy", m.accuracy), ("macro_f1", m.macro_avg.f1), ("weighted_f1", m.weighted.f1)];
        if let Some(b) = &m.binary {
            extra.push(("binary_f1", b.f1));
        }
        if metric != "loss" && !extra.iter().any(|(k, _)| *k == metric) {
            let name = crate::metrics::METRIC_NAMES.iter().find(|n| **n == metric).copied().unwrap_or("selected");
            extra.push((name, value));
        }
        Ok(ValMetrics { loss: ev.loss, ppl: f64::NAN, bits_per_byte: None, extra })
    }

    fn val_split(&self) -> &'static str {
        "validation"
    }

    fn selection(&self) -> Selection {
        super::selection(self.cfg)
    }

    fn write_model(&self, dir: &Path) -> Result<()> {
        write_trainable(&self.store, dir)
    }

    fn restore_weights(&self, dir: Option<&Path>) -> Result<()> {
        let tensors = match dir {
            Some(dir) => read_trainable(dir, self.device())?,
            None => {
                // The initial weights: the base again, prepared by the same seeded rule.
                let (_, mut fresh, _) = model::load_base(&self.cfg.model.base, self.labels, self.device())?;
                model::prepare(&mut fresh, &self.spec, self.cfg, self.labels)?;
                fresh.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
            }
        };
        set_trainable(&self.store, &tensors)
    }

    fn keep_best(&self, run_dir: &Path) -> Result<()> {
        let dir = run_dir.join("model");
        model::save(&dir, &self.spec, self.labels, &self.store, self.tokenizer, self.cfg, self.lora.as_ref())?;
        Ok(())
    }

    fn describe(&self) -> String {
        let (trainable, total) = (self.store.num_trainable(), self.store.num_params());
        let t = &self.cfg.train;
        format!(
            "{} fine-tuning of a {:?} model, {} labels: {trainable} of {total} parameters trainable ({:.2}%); \
             {} train examples, {} per step ({} x {}), {} steps per epoch",
            self.cfg.finetune.method.name(),
            self.spec.style,
            self.labels.len(),
            100.0 * trainable as f64 / total.max(1) as f64,
            self.train.len(),
            self.batches.global_batch(),
            t.batch_size,
            t.grad_accum,
            self.steps_per_epoch().unwrap_or(0),
        )
    }
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
