//! Training data for the causal LM: raw text → tokenizer → train/validation token shards →
//! batches. Preparation reads a text file (one document) or a folder of `.txt` files (one
//! document per file), holds out the end of the text as validation, trains or loads the
//! tokenizer and writes `train.bin`, `val.bin`, `tokenizer.json` and `meta.json` into one
//! folder, atomically. Batches are seeded random windows whose positions depend only on
//! (seed, step, micro-batch), so a resumed run reads exactly the batches it would have read.

use crate::config::DataConfig;
use crate::error::{Error, IoContext, Result};
use crate::fsio::{self, StagedDir};
use crate::nn::seed_for;
use crate::shards::{TokenShard, TokenShardWriter};
use crate::tokenizer::TextTokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Sizes of the prepared splits; bytes are UTF-8 bytes of the source text, so
/// bits/byte = loss / ln 2 · tokens / bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataMeta {
    pub source: PathBuf,
    pub documents: usize,
    pub train_bytes: u64,
    pub train_tokens: u64,
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
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).at(&meta_path)?;
        let meta: DataMeta = serde_json::from_str(&text).map_err(|e| Error::format(&meta_path, e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            train: TokenShard::open(&dir.join("train.bin"))?,
            val: TokenShard::open(&dir.join("val.bin"))?,
            tokenizer: TextTokenizer::load(&dir.join("tokenizer.json"))?,
            meta,
        })
    }

    /// Prepares `cfg.path` into `out` (unless `out` already holds prepared data) and opens it.
    /// `model_vocab` bounds the tokenizer: its ids must fit the embedding table.
    pub fn prepare(cfg: &DataConfig, model_vocab: usize, out: &Path) -> Result<Self> {
        if out.join("meta.json").is_file() {
            return Self::open(out);
        }
        let docs = read_documents(&cfg.path)?;
        let (train_docs, val_docs) = split_documents(docs, cfg.val_fraction);
        if val_docs.iter().all(|d| d.trim().is_empty()) || train_docs.iter().all(|d| d.trim().is_empty()) {
            return Err(Error::Invalid(format!(
                "{}: too little text to split into train and validation",
                cfg.path.display()
            )));
        }
        let tokenizer = if cfg.tokenizer.as_os_str().is_empty() {
            let vocab = if cfg.vocab_size == 0 { model_vocab } else { cfg.vocab_size };
            TextTokenizer::train_bpe(train_docs.iter().flat_map(|d| d.split_inclusive('\n')), vocab)?
        } else {
            TextTokenizer::load(&cfg.tokenizer)?
        };
        if tokenizer.vocab_size() > model_vocab {
            return Err(Error::config(
                "data.vocab_size",
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {model_vocab}; set model.vocab_size >= {}",
                    tokenizer.vocab_size(),
                    tokenizer.vocab_size()
                ),
            ));
        }
        let staged = StagedDir::new(out)?;
        let (train_tokens, train_bytes) =
            write_split(&tokenizer, &train_docs, &staged.path().join("train.bin"), model_vocab)?;
        let (val_tokens, val_bytes) = write_split(&tokenizer, &val_docs, &staged.path().join("val.bin"), model_vocab)?;
        tokenizer.save(&staged.path().join("tokenizer.json"))?;
        let meta = DataMeta {
            source: cfg.path.clone(),
            documents: train_docs.len() + val_docs.len(),
            train_bytes,
            train_tokens,
            val_bytes,
            val_tokens,
            vocab_size: tokenizer.vocab_size(),
        };
        fsio::write_json_atomic(&staged.path().join("meta.json"), &meta)?;
        staged.commit()?;
        Self::open(out)
    }
}

/// One document per file: the file itself, or each `.txt` file of a folder in name order.
fn read_documents(path: &Path) -> Result<Vec<String>> {
    if path.as_os_str().is_empty() {
        return Err(Error::config("data.path", "no training text given; set data.path to a text file or folder"));
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .at(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
            .collect();
        f.sort();
        if f.is_empty() {
            return Err(Error::format(path, "folder has no .txt files"));
        }
        f
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).at(f)?;
            String::from_utf8(bytes).map_err(|e| {
                Error::format(f, format!("not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()))
            })
        })
        .collect()
}

/// Holds out the last `fraction` of the bytes as validation, cutting at a line boundary.
fn split_documents(mut docs: Vec<String>, fraction: f64) -> (Vec<String>, Vec<String>) {
    let total: usize = docs.iter().map(String::len).sum();
    let mut want = (total as f64 * fraction).ceil() as usize;
    let mut val = Vec::new();
    while want > 0 {
        let Some(last) = docs.pop() else { break };
        if last.len() <= want {
            want -= last.len();
            val.push(last);
            continue;
        }
        // Cut this document: the first line boundary at or after len - want.
        let from = last.len() - want;
        let cut = last[from..].find('\n').map(|i| from + i + 1).unwrap_or(last.len());
        let (head, tail) = last.split_at(cut);
        if !tail.is_empty() {
            val.push(tail.to_string());
        }
        docs.push(head.to_string());
        break;
    }
    val.reverse();
    (docs, val)
}

/// Tokenizes documents (in parallel), separated by end-of-text, into one shard.
fn write_split(tk: &TextTokenizer, docs: &[String], path: &Path, vocab: usize) -> Result<(u64, u64)> {
    let encoded = tk.encode_batch(docs.iter().map(String::as_str).collect())?;
    let eos = tk.eos_id();
    let mut w = TokenShardWriter::create(path, vocab)?;
    let mut tokens = 0u64;
    for (i, ids) in encoded.iter().enumerate() {
        let mut ids = ids.clone();
        if let (Some(e), true) = (eos, i + 1 < encoded.len()) {
            ids.push(e);
        }
        tokens += ids.len() as u64;
        w.push_document(&ids)?;
    }
    w.finish()?;
    Ok((tokens, docs.iter().map(|d| d.len() as u64).sum()))
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
    Ok(windows(shard, &starts, batch_size, seq_len))
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
    fn split_cuts_at_line_boundary_and_keeps_every_byte() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let (train, val) = split_documents(vec![text.clone()], 0.1);
        assert_eq!(train.concat() + &val.concat(), text);
        assert!(val[0].starts_with("line "));
        let frac = val.concat().len() as f64 / text.len() as f64;
        assert!((0.07..0.13).contains(&frac), "{frac}");
    }

    #[test]
    fn batches_are_a_pure_function_of_seed_step_micro() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        let mut w = TokenShardWriter::create(&p, 1000).unwrap();
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
        let ev = eval_batches(&s, 2, 4, 16).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].inputs[0], 64);
    }
}
