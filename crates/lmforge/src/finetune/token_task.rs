//! Token classification (named entities, chunking) as a [`Task`] of the one training loop: a
//! [`Classifier`] with a token head (`*ForTokenClassification`) tags every first sub-word of a
//! word ([`super::tagged`]); the loss is the mean cross-entropy over those positions, each
//! micro-batch weighing by its tagged words (as Hugging Face's Trainer counts items under
//! gradient accumulation). Batching, checkpoints, the best model and resume are sequence
//! classification's ([`super::task`]). Validation tags every word of the validation split and
//! scores the tags with seqeval's entity metrics ([`crate::metrics::seqeval`]).

use super::batching::{collate, collate_padded, eval_batches, Encoded};
use super::dataset::LabelMap;
use super::model::Classifier;
use super::tagged::{word_tags, Sentence, TaggedEncoded};
use super::task::{head_task_methods, with_selected, HeadParts, HeadTuning};
use crate::distributed::DataParallel;
use crate::error::{Error, Result};
use crate::metrics::seqeval::{entity_metrics, EntityMetrics, ENTITY_METRIC_NAMES};
use crate::models::HeadKind;
use crate::nn::DropoutRng;
use crate::ops;
use crate::train::{EvalAt, Task, ValMetrics};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::ops::Range;

/// A tagged split: its sentences and their encoded pieces.
pub struct TaggedSplit<'a> {
    pub sentences: &'a [Sentence],
    pub pieces: &'a [TaggedEncoded],
}

pub struct TokenClassification<'a> {
    pub tuned: HeadTuning<'a>,
    train: &'a [TaggedEncoded],
    validation: Option<TaggedSplit<'a>>,
}

impl<'a> TokenClassification<'a> {
    pub fn new(parts: HeadParts<'a>, train: &'a [TaggedEncoded], validation: Option<TaggedSplit<'a>>) -> Result<Self> {
        let lengths = train.iter().map(|e| e.input.ids.len()).collect();
        let tuned = HeadTuning::new(parts, HeadKind::Token, lengths)?;
        Ok(Self { tuned, train, validation })
    }

    fn micro_items(&self, step: u64, micro: usize) -> Result<Vec<&TaggedEncoded>> {
        Ok(self.tuned.batches.micro(step, micro)?.into_iter().map(|i| &self.train[i]).collect())
    }
}

/// The flattened positions (row · T + position) and tag ids of the tagged first sub-words of
/// `items` padded to width `t`.
fn targets(items: &[&TaggedEncoded], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut tags = Vec::new();
    for (b, e) in items.iter().enumerate() {
        for (pos, tag) in e.targets() {
            rows.push((b * t + pos) as u32);
            tags.push(tag as u32);
        }
    }
    (rows, tags)
}

/// Mean cross-entropy of the token logits (B, T, L) at flattened positions `rows` against
/// `tags` (HF's `CrossEntropyLoss` over the labels that are not -100).
pub fn token_loss(logits: &Tensor, rows: &[u32], tags: &[u32]) -> Result<Tensor> {
    let (b, t, l) = logits.dims3()?;
    let device = logits.device();
    let picked = ops::embedding(&logits.reshape((b * t, l))?, &Tensor::from_slice(rows, rows.len(), device)?)?;
    Ok(ops::cross_entropy(&picked, &Tensor::from_slice(tags, tags.len(), device)?)?)
}

impl Task for TokenClassification<'_> {
    head_task_methods!();

    fn micro_weight(&self, step: u64, micro: usize) -> Result<usize> {
        Ok(self.micro_items(step, micro)?.iter().map(|e| e.targets().len()).sum())
    }

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        let all = self.micro_items(step, micro)?;
        let total: usize = all.iter().map(|e| e.targets().len()).sum();
        // Every share padded to the micro-batch's longest row: the same shapes in any split.
        let width = all.iter().map(|e| e.input.ids.len()).max().unwrap_or(1);
        let mine = &all[rows];
        let inputs: Vec<&Encoded> = mine.iter().map(|e| &e.input).collect();
        let batch = collate_padded(&inputs, self.tuned.pad, width, self.tuned.device())?;
        let logits = self.tuned.classifier.logits(&batch, Some(dropout))?;
        let (positions, tags) = targets(mine, width);
        if positions.is_empty() {
            // No tagged word in this share: a zero loss that still reaches every parameter.
            return Ok((logits.sum_all()? * 0.0)?);
        }
        let loss = token_loss(&logits, &positions, &tags)?;
        Ok(if positions.len() == total { loss } else { (loss * (positions.len() as f64 / total as f64))? })
    }

    /// Every process tags the whole validation split (not split over processes yet).
    fn validate(&self, _dp: &DataParallel, _at: EvalAt) -> Result<ValMetrics> {
        let Some(val) = &self.validation else {
            return Err(Error::Invalid("no validation split (data.validation) to evaluate".into()));
        };
        let (cfg, labels) = (self.tuned.cfg, self.tuned.labels);
        let ev = evaluate(
            &self.tuned.classifier,
            val,
            labels,
            cfg.train.eval_batch_size,
            self.tuned.pad,
            self.tuned.device(),
        )?;
        let metric = cfg.metric();
        let m = &ev.entities;
        let extra = vec![
            ("f1", m.micro.f1),
            ("precision", m.micro.precision),
            ("recall", m.micro.recall),
            ("accuracy", m.accuracy),
            ("macro_f1", m.macro_avg.f1),
        ];
        let extra = with_selected(extra, metric, &ENTITY_METRIC_NAMES, || {
            ev.get(metric).ok_or_else(|| Error::config("train.metric", format!("unknown {metric:?}")))
        })?;
        Ok(ValMetrics { loss: ev.loss, ppl: f64::NAN, bits_per_byte: None, extra })
    }

    fn describe(&self) -> String {
        let words: usize = self.train.iter().map(|e| e.targets().len()).sum();
        let train = format!("{} train pieces ({words} tagged words)", self.train.len());
        self.tuned.describe("token-classification fine-tuning", "tags", &train)
    }
}

/// The argmax tag at every position of every piece, and the summed cross-entropy (nats) and
/// count of the tagged positions, batches sorted by length.
pub fn tag_pieces(
    model: &Classifier,
    pieces: &[TaggedEncoded],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<(Vec<Vec<usize>>, f64, usize)> {
    let lengths: Vec<usize> = pieces.iter().map(|e| e.input.ids.len()).collect();
    let mut out = vec![Vec::new(); pieces.len()];
    let (mut nll, mut n) = (0.0f64, 0usize);
    for batch in eval_batches(&lengths, batch_size) {
        let items: Vec<&Encoded> = batch.iter().map(|&i| &pieces[i].input).collect();
        let b = collate(&items, pad, device)?;
        let logits = model.logits(&b, None)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        for (i, rows) in batch.into_iter().zip(logits) {
            out[i] = rows.iter().take(pieces[i].input.ids.len()).map(|r| super::predict::argmax(r)).collect();
            for (pos, tag) in pieces[i].targets() {
                nll -= super::predict::softmax(&rows[pos])[tag].max(f64::MIN_POSITIVE).ln();
                n += 1;
            }
        }
    }
    Ok((out, nll, n))
}

/// Loss and entity metrics of a tagger on a tagged split.
#[derive(Debug, Clone, Serialize)]
pub struct TokenEvaluation {
    /// Mean cross-entropy over the tagged first sub-words (nats).
    pub loss: f64,
    #[serde(flatten)]
    pub entities: EntityMetrics,
}

impl TokenEvaluation {
    /// A metric by name: `loss` or one of seqeval's ([`ENTITY_METRIC_NAMES`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        if name == "loss" {
            Some(self.loss)
        } else {
            self.entities.get(name)
        }
    }
}

/// The tag a word with no token is given: `O` when the tag set has it, else the first tag.
pub fn outside_tag(labels: &LabelMap) -> usize {
    labels.id("O").unwrap_or(0)
}

/// Tags every word of `split` and scores the tags against the gold ones.
pub fn evaluate(
    model: &Classifier,
    split: &TaggedSplit,
    labels: &LabelMap,
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<TokenEvaluation> {
    let (predicted, nll, n) = tag_pieces(model, split.pieces, batch_size, pad, device)?;
    let words = word_tags(split.sentences, split.pieces, &predicted, outside_tag(labels));
    let name = |ids: &[usize]| -> Vec<&str> { ids.iter().map(|&i| labels.labels[i].as_str()).collect() };
    let gold: Vec<Vec<&str>> =
        split.sentences.iter().map(|s| name(s.tags.as_deref().expect("a tagged split"))).collect();
    let pred: Vec<Vec<&str>> = words.iter().map(|w| name(w)).collect();
    Ok(TokenEvaluation { loss: nll / n.max(1) as f64, entities: entity_metrics(&gold, &pred) })
}
