//! Examples to padded batches. Texts are tokenized once (the tokenizer's special tokens,
//! truncation to the model's length); each epoch's batches are a pure function of (seed,
//! epoch): shuffle, then pools of `bucket_batches` batches are sorted by length and cut, so a
//! batch holds similar lengths and is padded only to its own longest row (dynamic padding);
//! the batch order is shuffled again so lengths do not trend through the epoch.

use super::dataset::Example;
use crate::error::{Error, Result};
use crate::nn::seed_for;
use crate::tokenizer::TextTokenizer;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Segment ids (0 for the first text, 1 for the pair), as BERT's token_type_ids.
    pub type_ids: Vec<u32>,
    pub label: Option<usize>,
}

/// Tokenizes `examples` with special tokens, truncated to `max_len` tokens.
pub fn encode(examples: &[Example], tokenizer: &TextTokenizer, max_len: usize) -> Result<Vec<Encoded>> {
    let inputs: Vec<(&str, Option<&str>)> = examples.iter().map(|e| (e.text.as_str(), e.pair.as_deref())).collect();
    let encs = tokenizer.encode_pairs(&inputs, max_len)?;
    encs.into_iter()
        .zip(examples)
        .map(|((ids, type_ids), e)| {
            if ids.is_empty() {
                return Err(Error::Invalid(format!("line {}: the text encodes to no tokens", e.line)));
            }
            Ok(Encoded { ids, type_ids, label: e.label })
        })
        .collect()
}

/// One epoch's batches of example indices (see the module doc).
pub fn epoch_batches(lengths: &[usize], batch: usize, bucket_batches: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &format!("finetune/epoch/{epoch}")));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks(batch * bucket_batches) {
        let mut pool = pool.to_vec();
        if bucket_batches > 1 {
            pool.sort_by_key(|&i| lengths[i]); // stable: ties keep the shuffled order
        }
        batches.extend(pool.chunks(batch).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// The batches of a run trained in epochs: a step trains on one global batch of
/// `batch_size · grad_accum` examples; step `s` is batch `s mod n` of epoch `s div n` (epochs
/// by [`epoch_batches`], computed once each), micro-batch `m` its rows `m·batch_size ..`.
pub struct EpochSchedule {
    lengths: Vec<usize>,
    batch_size: usize,
    grad_accum: usize,
    bucket_batches: usize,
    seed: u64,
    current: RefCell<Option<(u64, Vec<Vec<usize>>)>>,
}

impl EpochSchedule {
    pub fn new(lengths: Vec<usize>, batch_size: usize, grad_accum: usize, bucket_batches: usize, seed: u64) -> Self {
        Self { lengths, batch_size, grad_accum, bucket_batches, seed, current: RefCell::new(None) }
    }

    /// Examples per optimizer step.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.lengths.len().div_ceil(self.global_batch()) as u64
    }

    /// Mean example length (tokens).
    pub fn mean_length(&self) -> f64 {
        self.lengths.iter().sum::<usize>() as f64 / self.lengths.len().max(1) as f64
    }

    /// The example indices of micro-batch `micro` of step `step`.
    pub fn micro(&self, step: u64, micro: usize) -> Result<Vec<usize>> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, index) = (step / per_epoch, (step % per_epoch) as usize);
        let mut cache = self.current.borrow_mut();
        if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let batches = epoch_batches(&self.lengths, self.global_batch(), self.bucket_batches, self.seed, epoch);
            *cache = Some((epoch, batches));
        }
        let (_, batches) = cache.as_ref().expect("just filled");
        let batch = batches.get(index).ok_or_else(|| Error::Invalid(format!("no batch {index} in epoch {epoch}")))?;
        let start = (micro * self.batch_size).min(batch.len());
        Ok(batch[start..(start + self.batch_size).min(batch.len())].to_vec())
    }
}

/// Batches for evaluation: indices sorted by length (least padding), in order.
pub fn eval_batches(lengths: &[usize], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// A padded batch. Dimension letters: B examples, T the longest of them.
pub struct Batch {
    pub ids: Tensor,      // (B, T) u32, padded with the pad id
    pub type_ids: Tensor, // (B, T) u32, padded with 0
    /// Real tokens per row (positions ≥ length are padding: HF's attention_mask).
    pub lengths: Vec<usize>,
    /// (B) u32 when every example has a label.
    pub labels: Option<Tensor>,
}

/// Pads `items` to their longest length (right padding).
pub fn collate(items: &[&Encoded], pad_id: u32, device: &Device) -> Result<Batch> {
    let t = items.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    collate_padded(items, pad_id, t, device)
}

/// Pads `items` to `width` tokens (at least their longest; right padding).
pub fn collate_padded(items: &[&Encoded], pad_id: u32, width: usize, device: &Device) -> Result<Batch> {
    let b = items.len();
    let t = items.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(width);
    let mut ids = vec![pad_id; b * t];
    let mut type_ids = vec![0u32; b * t];
    for (row, e) in items.iter().enumerate() {
        let n = e.ids.len();
        ids[row * t..row * t + n].copy_from_slice(&e.ids);
        type_ids[row * t..row * t + n].copy_from_slice(&e.type_ids);
    }
    let labels: Option<Vec<u32>> = items.iter().map(|e| e.label.map(|l| l as u32)).collect();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        type_ids: Tensor::from_vec(type_ids, (b, t), device)?,
        lengths: items.iter().map(|e| e.ids.len()).collect(),
        labels: labels.map(|l| Tensor::from_vec(l, b, device)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_batches_are_seeded_cover_everything_once_and_bucket_lengths() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 1).collect();
        let a = epoch_batches(&lengths, 10, 10, 1, 0);
        assert_eq!(a, epoch_batches(&lengths, 10, 10, 1, 0), "same seed and epoch, same batches");
        assert_ne!(a, epoch_batches(&lengths, 10, 10, 1, 1), "each epoch reshuffles");
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        // Bucketing cuts padding: the mean in-batch length spread is far below unbucketed.
        let spread = |bs: &[Vec<usize>]| -> f64 {
            bs.iter()
                .map(|b| {
                    let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                    (l.iter().max().unwrap() - l.iter().min().unwrap()) as f64
                })
                .sum::<f64>()
                / bs.len() as f64
        };
        assert!(spread(&a) * 5.0 < spread(&epoch_batches(&lengths, 10, 1, 1, 0)));
    }

    #[test]
    fn collate_pads_right_and_keeps_lengths() {
        let e1 = Encoded { ids: vec![5, 6, 7], type_ids: vec![0, 0, 1], label: Some(1) };
        let e2 = Encoded { ids: vec![8], type_ids: vec![0], label: Some(0) };
        let b = collate(&[&e1, &e2], 0, &Device::Cpu).unwrap();
        assert_eq!(b.ids.to_vec2::<u32>().unwrap(), [[5, 6, 7], [8, 0, 0]]);
        assert_eq!(b.type_ids.to_vec2::<u32>().unwrap(), [[0, 0, 1], [0, 0, 0]]);
        assert_eq!(b.lengths, [3, 1]);
        assert_eq!(b.labels.unwrap().to_vec1::<u32>().unwrap(), [1, 0]);
    }
}
