//! The language-modelling tasks: causal LM (next token; GPT-2 / Llama) over token shards or
//! one fixed batch (`lmforge bench`), and masked LM ± next-sentence prediction (BERT). Both are
//! an [`LmTask`] (the weights, fixed-size micro-batches, selection by validation loss) with an
//! [`LmObjective`] (the loss and validation). Their model files are a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`), so every checkpoint loads in
//! `transformers` as it is.

use super::task::{EvalAt, Selection, Task, ValMetrics};
use crate::checkpoint;
use crate::data::{self, Batch};
use crate::distributed::{DataParallel, ShardedLayers};
use crate::error::{Error, Result};
use crate::mlm_data::{MlmBatch, MlmSource};
use crate::models::{Decoder, Encoder, ModelSpec};
use crate::nn::recompute::Checkpointing;
use crate::nn::{DropoutRng, InitScheme, ParamInfo, ParamStore};
use crate::patience::{PatienceRule, Threshold};
use crate::shards::TokenShard;
use crate::tokenizer::TextTokenizer;
use candle_core::{Device, Tensor};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Where a run's initial weights come from (again at a rollback before the first checkpoint).
#[derive(Debug, Clone)]
pub enum Initial {
    /// Seeded initialisation.
    Scheme(InitScheme, u64),
    /// A model folder's weights (`model.init_from`).
    From(std::path::PathBuf),
}

/// What every LM task shares: the spec, its parameters, how they started, the tokenizer its
/// checkpoints carry.
pub struct LmWeights<'a> {
    pub spec: ModelSpec,
    /// Every parameter, or under ZeRO-3 all but the decoder layers'.
    pub params: ParamStore,
    pub init: Initial,
    pub tokenizer: Option<&'a TextTokenizer>,
    /// ZeRO-3: the decoder layers, sharded over the processes.
    pub layers: Option<Arc<ShardedLayers>>,
}

impl Initial {
    /// The initial weights of `spec` on `device`.
    pub fn params(&self, spec: &ModelSpec, device: &Device) -> Result<ParamStore> {
        self.held_params(spec, device, &|_| true)
    }

    /// The initial weights of the parameters for which `held` holds (ZeRO-3: this process's
    /// share), the same values as [`Self::params`] gives them (each is drawn from its name).
    pub fn held_params(&self, spec: &ModelSpec, device: &Device, held: &dyn Fn(&str) -> bool) -> Result<ParamStore> {
        match self {
            Initial::Scheme(scheme, seed) => {
                let params: Vec<ParamInfo> = spec.params().into_iter().filter(|p| held(&p.name)).collect();
                ParamStore::init(&params, *scheme, spec.n_layer, *seed, device)
            }
            Initial::From(folder) => {
                checkpoint::verify_manifest(folder)?;
                checkpoint::load_held_params(folder, spec, device, held)
            }
        }
    }
}

impl LmWeights<'_> {
    fn write_model(&self, dir: &Path) -> Result<()> {
        let tokenizer = self.tokenizer.ok_or_else(|| Error::Invalid("this task has no tokenizer to save".into()))?;
        checkpoint::write_hf_files(dir, &self.spec, &self.params, tokenizer)
    }

    /// The weights of checkpoint `dir` (None: the initial ones) back in place; under ZeRO-3
    /// this process reads and sets only what it keeps, its share of the layers included.
    fn restore(&self, dir: Option<&Path>) -> Result<()> {
        let device = self.params.device();
        let held = |n: &str| self.params.contains(n) || self.layers.as_ref().is_some_and(|l| l.owns(n));
        let back = match dir {
            Some(dir) => checkpoint::load_checkpoint_params(dir, &self.spec, device, &held)?,
            None => self.init.held_params(&self.spec, device, &held)?,
        };
        self.params.assign(&back)?;
        match &self.layers {
            Some(layers) => layers.assign_owned(&back),
            None => Ok(()),
        }
    }

    fn describe(&self) -> String {
        let s = &self.spec;
        format!("model: {} parameters ({:?}, {} layers, d {})", s.num_params(), s.style, s.n_layer, s.d_model)
    }
}

/// The validation loss, lower is better, any improvement counts, never stops early.
fn loss_selection() -> Selection {
    Selection {
        metric: "loss".into(),
        rule: PatienceRule {
            higher_is_better: false,
            threshold: Threshold::Absolute(0.0),
            tolerate: u64::MAX,
            cooldown: 0,
        },
    }
}

/// The part of a language-modelling task that differs between objectives: the loss of a
/// share of a micro-batch, validation, the description. [`LmTask`] supplies the rest.
pub trait LmObjective {
    /// The loss of rows `rows` of micro-batch `micro` of step `step` (a micro-batch has
    /// `batch_size` rows), weighted so that the processes' shares sum to the micro-batch's loss.
    fn loss(
        &self,
        step: u64,
        micro: usize,
        rows: Range<usize>,
        batch_size: usize,
        device: &Device,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor>;

    fn validate(&self, dp: &DataParallel, device: &Device) -> Result<ValMetrics>;

    fn describe(&self) -> String;
}

/// A language-modelling task: fixed-size micro-batches of `seq_len`-token rows, selected by
/// validation loss, checkpointed as a Hugging Face folder.
pub struct LmTask<'a, O> {
    pub weights: LmWeights<'a>,
    pub objective: O,
    batch_size: usize,
    seq_len: usize,
}

impl<O: LmObjective> Task for LmTask<'_, O> {
    fn params(&self) -> &ParamStore {
        &self.weights.params
    }

    fn micro_rows(&self, _step: u64, _micro: usize) -> Result<usize> {
        Ok(self.batch_size)
    }

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        self.objective.loss(step, micro, rows, self.batch_size, self.weights.params.device(), dropout)
    }

    fn tokens_per_micro_batch(&self) -> u64 {
        (self.batch_size * self.seq_len) as u64
    }

    fn validate(&self, dp: &DataParallel, _at: EvalAt) -> Result<ValMetrics> {
        self.objective.validate(dp, self.weights.params.device())
    }

    fn selection(&self) -> Selection {
        loss_selection()
    }

    fn write_model(&self, dir: &Path) -> Result<()> {
        self.weights.write_model(dir)
    }

    fn sharded_layers(&self) -> Option<Arc<ShardedLayers>> {
        self.weights.layers.clone()
    }

    fn write_model_with(&self, dir: &Path, layers: Vec<(String, Tensor)>) -> Result<()> {
        let mut vars = self.weights.params.vars().clone();
        for (name, t) in layers {
            vars.insert(name, candle_core::Var::from_tensor(&t)?);
        }
        let full = ParamStore::from_vars(vars, self.weights.params.device());
        let tokenizer =
            self.weights.tokenizer.ok_or_else(|| Error::Invalid("this task has no tokenizer to save".into()))?;
        checkpoint::write_hf_files(dir, &self.weights.spec, &full, tokenizer)
    }

    fn restore_weights(&self, dir: Option<&Path>) -> Result<()> {
        self.weights.restore(dir)
    }

    fn describe(&self) -> String {
        format!("{}; {}", self.weights.describe(), self.objective.describe())
    }
}

/// Where a causal LM's training batches come from.
pub enum CausalBatches<'a> {
    /// Random windows of a token shard, positions drawn from (seed, step, micro-batch).
    Shard { shard: &'a TokenShard, seed: u64 },
    /// One batch, every step (`lmforge bench`): inputs and targets (B, T).
    Fixed { x: Tensor, y: Tensor },
}

/// Next-token prediction (GPT-2, Llama).
pub struct Causal<'a> {
    model: Decoder,
    batches: CausalBatches<'a>,
    seq_len: usize,
    val: Vec<Batch>,
    /// Validation tokens per byte of text (for bits per byte).
    tokens_per_byte: f64,
}

/// The causal LM task.
pub type CausalLm<'a> = LmTask<'a, Causal<'a>>;

impl<'a> CausalLm<'a> {
    pub fn new(
        weights: LmWeights<'a>,
        activation_checkpointing: Checkpointing,
        batches: CausalBatches<'a>,
        batch_size: usize,
        seq_len: usize,
        val: Vec<Batch>,
        tokens_per_byte: f64,
    ) -> Result<Self> {
        let model = match &weights.layers {
            Some(layers) => Decoder::with_layer_source(&weights.spec, &weights.params, layers.clone())?,
            None => {
                Decoder::new(&weights.spec, &weights.params)?.with_activation_checkpointing(activation_checkpointing)
            }
        };
        let objective = Causal { model, batches, seq_len, val, tokens_per_byte };
        Ok(LmTask { weights, objective, batch_size, seq_len })
    }
}

impl LmObjective for Causal<'_> {
    fn loss(
        &self,
        step: u64,
        micro: usize,
        rows: Range<usize>,
        batch_size: usize,
        device: &Device,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let whole = rows == (0..batch_size);
        // This process's rows; their loss weighted so that the sum over processes is the
        // micro-batch's mean (untouched when one process computes every row).
        let row_share = rows.len() as f64 / batch_size as f64;
        let (x, y) = match &self.batches {
            CausalBatches::Shard { shard, seed } => {
                let b = data::train_batch_rows(shard, *seed, step, micro, batch_size, rows, self.seq_len)?;
                batch_tensors(&b, device)?
            }
            CausalBatches::Fixed { x, y } => {
                (x.narrow(0, rows.start, rows.len())?, y.narrow(0, rows.start, rows.len())?)
            }
        };
        let loss = self.model.loss(&x, &y, Some(dropout))?;
        if whole {
            Ok(loss)
        } else {
            Ok((loss * row_share)?)
        }
    }

    /// Each process evaluates its share of the batches and the losses are gathered (same
    /// order, same sum as one process).
    fn validate(&self, dp: &DataParallel, device: &Device) -> Result<ValMetrics> {
        if dp.stage() == 3 {
            // Every process runs every batch: each layer's all-gather needs all of them.
            let losses = batch_losses(&self.model, &self.val, device)?;
            return Ok(val_metrics(&losses, &self.val, self.tokens_per_byte));
        }
        let mine = &self.val[dp.local_range(self.val.len())];
        let losses = dp.all_gather_split(&batch_losses(&self.model, mine, device)?, self.val.len())?;
        Ok(val_metrics(&losses, &self.val, self.tokens_per_byte))
    }

    fn describe(&self) -> String {
        let data = match &self.batches {
            CausalBatches::Shard { shard, .. } => format!("{} train tokens, ", shard.len()),
            CausalBatches::Fixed { .. } => String::new(),
        };
        let val: usize = self.val.iter().map(|b| b.batch_size * b.seq_len).sum();
        format!("{data}{val} validation tokens")
    }
}

/// Masked-LM (± NSP) pretraining of a BERT encoder.
pub struct Masked<'a> {
    model: Encoder,
    source: MlmSource<'a>,
    seed: u64,
    val: Vec<MlmBatch>,
    /// The accuracy of always predicting a token's most frequent value (a floor to beat).
    unigram_acc: f64,
}

/// The masked LM task.
pub type MaskedLm<'a> = LmTask<'a, Masked<'a>>;

impl<'a> MaskedLm<'a> {
    pub fn new(
        weights: LmWeights<'a>,
        source: MlmSource<'a>,
        seed: u64,
        batch_size: usize,
        val: Vec<MlmBatch>,
        unigram_acc: f64,
    ) -> Result<Self> {
        let model = Encoder::new(&weights.spec, &weights.params)?;
        let seq_len = source.seq_len;
        Ok(LmTask { weights, objective: Masked { model, source, seed, val, unigram_acc }, batch_size, seq_len })
    }
}

impl LmObjective for Masked<'_> {
    fn loss(
        &self,
        step: u64,
        micro: usize,
        rows: Range<usize>,
        batch_size: usize,
        device: &Device,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let whole = rows == (0..batch_size);
        let row_share = rows.len() as f64 / batch_size as f64;
        let b = self.source.batch(self.seed, step, micro, rows)?;
        let (pos, tgt) = b.positions(device)?;
        let nsp = b.nsp_labels(device)?;
        let loss = self.model.pretraining_loss(&b.input(device)?, &pos, &tgt, nsp.as_ref(), Some(dropout))?;
        if whole {
            return Ok(loss.total);
        }
        // The MLM loss is a mean over masked positions, whose count varies by row: the global
        // count comes from drawing the whole batch's masks (data work only).
        let global_masked = self.source.batch(self.seed, step, micro, 0..batch_size)?.positions.len();
        let mlm = (loss.mlm * (b.positions.len() as f64 / global_masked.max(1) as f64))?;
        match loss.nsp {
            Some(nsp) => Ok((mlm + (nsp * row_share)?)?),
            None => Ok(mlm),
        }
    }

    /// Not split over processes yet: every process evaluates all of it.
    fn validate(&self, _dp: &DataParallel, device: &Device) -> Result<ValMetrics> {
        let mut v = evaluate_mlm(&self.model, &self.val, device)?;
        v.extra.push(("mlm_unigram_acc", self.unigram_acc));
        Ok(v)
    }

    fn describe(&self) -> String {
        format!("{} train tokens, {} validation batches", self.source.shard.len(), self.val.len())
    }
}

pub fn batch_tensors(b: &Batch, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_slice(&b.inputs, (b.batch_size, b.seq_len), device)?;
    let y = Tensor::from_slice(&b.targets, (b.batch_size, b.seq_len), device)?;
    Ok((x, y))
}

/// Mean loss over the validation batches (token-weighted), perplexity and bits per byte.
pub fn evaluate(model: &Decoder, batches: &[Batch], device: &Device, tokens_per_byte: f64) -> Result<ValMetrics> {
    Ok(val_metrics(&batch_losses(model, batches, device)?, batches, tokens_per_byte))
}

/// The mean loss of each batch.
fn batch_losses(model: &Decoder, batches: &[Batch], device: &Device) -> Result<Vec<f32>> {
    batches
        .iter()
        .map(|b| {
            let (x, y) = batch_tensors(b, device)?;
            Ok(model.loss(&x, &y, None)?.to_scalar::<f32>()?)
        })
        .collect()
}

/// Validation metrics from each batch's mean loss (weighted by its tokens).
fn val_metrics(losses: &[f32], batches: &[Batch], tokens_per_byte: f64) -> ValMetrics {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (loss, b) in losses.iter().zip(batches) {
        let n = b.batch_size * b.seq_len;
        sum += *loss as f64 * n as f64;
        count += n;
    }
    let loss = sum / count.max(1) as f64;
    ValMetrics {
        loss,
        ppl: loss.exp(),
        bits_per_byte: Some(loss / std::f64::consts::LN_2 * tokens_per_byte),
        extra: Vec::new(),
    }
}

/// Masked-LM validation: loss and accuracy over the masked positions (token-weighted), and
/// next-sentence loss and accuracy over the rows when the batches have labels.
pub fn evaluate_mlm(model: &Encoder, batches: &[MlmBatch], device: &Device) -> Result<ValMetrics> {
    let (mut mlm_sum, mut mlm_hits, mut mlm_n) = (0.0f64, 0usize, 0usize);
    let (mut nsp_sum, mut nsp_hits, mut nsp_n) = (0.0f64, 0usize, 0usize);
    for b in batches {
        let hidden = model.hidden(&b.input(device)?, None)?;
        let (pos, tgt) = b.positions(device)?;
        let logits = model.mlm_logits(&Encoder::select_rows(&hidden, &pos)?)?;
        mlm_sum += crate::ops::cross_entropy_per_row(&logits, &tgt)?.sum_all()?.to_scalar::<f32>()? as f64;
        let pred = crate::models::encoder::argmax_last(&logits)?;
        mlm_hits += pred.iter().zip(&b.targets).filter(|(p, t)| p == t).count();
        mlm_n += b.targets.len();
        if let (Some(labels), Some(lt)) = (&b.nsp_labels, b.nsp_labels(device)?) {
            let logits = model.nsp_logits(&model.pooled(&hidden)?)?;
            nsp_sum += crate::ops::cross_entropy_per_row(&logits, &lt)?.sum_all()?.to_scalar::<f32>()? as f64;
            let pred = crate::models::encoder::argmax_last(&logits)?;
            nsp_hits += pred.iter().zip(labels).filter(|(p, t)| p == t).count();
            nsp_n += labels.len();
        }
    }
    let mlm_loss = mlm_sum / mlm_n.max(1) as f64;
    let mut extra = vec![("mlm_loss", mlm_loss), ("mlm_acc", mlm_hits as f64 / mlm_n.max(1) as f64)];
    let mut loss = mlm_loss;
    if nsp_n > 0 {
        let nsp_loss = nsp_sum / nsp_n as f64;
        loss += nsp_loss;
        extra.push(("nsp_loss", nsp_loss));
        extra.push(("nsp_acc", nsp_hits as f64 / nsp_n as f64));
    }
    Ok(ValMetrics { loss, ppl: mlm_loss.exp(), bits_per_byte: None, extra })
}
