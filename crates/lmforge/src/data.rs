//! Training data for the causal LM: a prepared folder (see `corpus`: `train.bin`, `val.bin`,
//! `test.bin`, `tokenizer.json`, `manifest.json`) → batches. A run prepares its data into
//! `RUN_DIR/data/` on first use, or trains from a folder made by `lmforge data prepare`.
//! Batches are seeded random windows whose positions depend only on (seed, step,
//! micro-batch), so a resumed run reads exactly the batches it would have read.

use crate::corpus;
use crate::corpus::DataConfig;
use crate::error::{Error, Result};
use crate::nn::seed_for;
use crate::progress::ProgressMode;
use crate::shards::TokenShard;
use crate::tokenizer::TextTokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Sizes of the validation split; bytes are UTF-8 bytes of its cleaned documents, so
/// bits/byte = loss / ln 2 · tokens / bytes (end-of-text tokens count as tokens, not bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct DataMeta {
    pub val_bytes: u64,
    pub val_tokens: u64,
    pub vocab_size: usize,
}

impl DataMeta {
    pub fn val_tokens_per_byte(&self) -> f64 {
        self.val_tokens as f64 / self.val_bytes.max(1) as f64
    }
}

/// A prepared data folder, opened.
pub struct PreparedData {
    pub dir: PathBuf,
    pub train: TokenShard,
    pub val: TokenShard,
    pub tokenizer: TextTokenizer,
    pub meta: DataMeta,
}

impl PreparedData {
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| {
            Error::format(
                dir,
                format!("not a prepared data folder (no manifest.json: {e}); run `lmforge data prepare`"),
            )
        })?;
        let m: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&mpath, e.to_string()))?;
        let val = &m["counts"]["splits"]["val"];
        let meta = DataMeta {
            val_bytes: val["bytes"].as_u64().ok_or_else(|| Error::format(&mpath, "missing counts.splits.val.bytes"))?,
            val_tokens: val["tokens"]
                .as_u64()
                .ok_or_else(|| Error::format(&mpath, "missing counts.splits.val.tokens"))?,
            vocab_size: m["tokenizer"]["vocab_size"].as_u64().unwrap_or(0) as usize,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            train: TokenShard::open(&dir.join("train.bin"))?,
            val: TokenShard::open(&dir.join("val.bin"))?,
            tokenizer: TextTokenizer::load(&dir.join("tokenizer.json"))?,
            meta,
        })
    }

    /// The run's data: `cfg.prepared` if set, else `out` (prepared there from `cfg`'s inputs
    /// on first use). `model_vocab` bounds the tokenizer: its ids must fit the embeddings.
    pub fn prepare(cfg: &DataConfig, model_vocab: usize, out: &Path, mode: ProgressMode) -> Result<Self> {
        let data = if !cfg.prepared.as_os_str().is_empty() {
            Self::open(&cfg.prepared)?
        } else if out.join("manifest.json").is_file() {
            Self::open(out)?
        } else {
            corpus::prepare(cfg, &cfg.all_inputs(), out, Some(model_vocab), mode)?;
            Self::open(out)?
        };
        if let Some(s) = [&data.train, &data.val].into_iter().find(|s| s.vocab_size() > model_vocab) {
            return Err(Error::format(
                s.path(),
                format!("token ids up to {} do not fit the model's vocabulary of {model_vocab}", s.vocab_size()),
            ));
        }
        if data.tokenizer.vocab_size() > model_vocab {
            return Err(Error::config(
                "model.vocab_size",
                format!(
                    "{}: the tokenizer has {} tokens but the model's vocabulary is {model_vocab}",
                    data.dir.display(),
                    data.tokenizer.vocab_size()
                ),
            ));
        }
        Ok(data)
    }
}

/// One micro-batch: inputs and next-token targets, each B·T ids in row-major order.
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Random windows of T+1 tokens from `shard`, positions drawn from (seed, step, micro).
pub fn train_batch(
    shard: &TokenShard,
    seed: u64,
    step: u64,
    micro: usize,
    batch_size: usize,
    seq_len: usize,
) -> Result<Batch> {
    train_batch_rows(shard, seed, step, micro, batch_size, 0..batch_size, seq_len)
}

/// Rows `rows` of [`train_batch`]'s batch of `batch_size` rows: what one data-parallel
/// process computes. Every row is the one a single process would read.
pub fn train_batch_rows(
    shard: &TokenShard,
    seed: u64,
    step: u64,
    micro: usize,
    batch_size: usize,
    rows: std::ops::Range<usize>,
    seq_len: usize,
) -> Result<Batch> {
    let n = shard.len();
    if n < seq_len + 1 {
        return Err(Error::Invalid(format!(
            "{}: {n} tokens cannot fill one sequence of {} tokens; use more text or a shorter train.seq_len",
            shard.path().display(),
            seq_len + 1
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &format!("batch/{step}/{micro}")));
    let starts: Vec<usize> = (0..batch_size).map(|_| rng.random_range(0..=n - seq_len - 1)).collect();
    let mine = starts
        .get(rows.clone())
        .ok_or_else(|| Error::Invalid(format!("rows {rows:?} are outside a batch of {batch_size}")))?;
    Ok(windows(shard, mine, mine.len(), seq_len))
}

/// The fixed validation windows: consecutive, non-overlapping, from the start of the shard,
/// at most `max_batches` batches. The same every evaluation, so val losses are comparable.
pub fn eval_batches(shard: &TokenShard, max_batches: usize, batch_size: usize, seq_len: usize) -> Result<Vec<Batch>> {
    let n = shard.len();
    let available = n.saturating_sub(1) / seq_len;
    if available == 0 {
        return Err(Error::Invalid(format!(
            "{}: {n} validation tokens cannot fill one sequence of {} tokens; raise data.val_fraction or lower train.seq_len",
            shard.path().display(),
            seq_len + 1
        )));
    }
    let count = available.min(max_batches * batch_size);
    let starts: Vec<usize> = (0..count).map(|i| i * seq_len).collect();
    Ok(starts.chunks(batch_size).map(|c| windows(shard, c, c.len(), seq_len)).collect())
}

fn windows(shard: &TokenShard, starts: &[usize], batch_size: usize, seq_len: usize) -> Batch {
    let mut inputs = Vec::with_capacity(batch_size * seq_len);
    let mut targets = Vec::with_capacity(batch_size * seq_len);
    let mut buf = Vec::with_capacity(seq_len + 1);
    for &s in starts {
        buf.clear();
        shard.read_into(s, seq_len + 1, &mut buf);
        inputs.extend_from_slice(&buf[..seq_len]);
        targets.extend_from_slice(&buf[1..]);
    }
    Batch { inputs, targets, batch_size, seq_len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_pure_function_of_seed_step_micro() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        let mut w = crate::shards::TokenShardWriter::create(&p, 1000).unwrap();
        w.push_document(&(0..500).collect::<Vec<u32>>()).unwrap();
        w.finish().unwrap();
        let s = TokenShard::open(&p).unwrap();
        let a = train_batch(&s, 1, 5, 0, 4, 16).unwrap();
        let b = train_batch(&s, 1, 5, 0, 4, 16).unwrap();
        let c = train_batch(&s, 1, 6, 0, 4, 16).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_ne!(a.inputs, c.inputs);
        for (x, y) in a.inputs.iter().zip(&a.targets) {
            assert_eq!(x + 1, *y, "targets are inputs shifted by one");
        }
        let rows = train_batch_rows(&s, 1, 5, 0, 4, 1..3, 16).unwrap();
        assert_eq!(rows.inputs, a.inputs[16..48], "a row range is that slice of the whole batch");
        let ev = eval_batches(&s, 2, 4, 16).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].inputs[0], 64);
    }
}
