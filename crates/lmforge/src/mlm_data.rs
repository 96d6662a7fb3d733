//! Encoder pretraining examples from token shards: a sentence index over a shard (documents
//! from the shard's document offsets, sentences split after tokens that end one), BERT's
//! next-sentence pairs (`[CLS] A [SEP] B [SEP]`, 50% the true continuation, 50% a segment of a
//! different document, truncated longest-first), single-segment windows for MLM alone, and
//! dynamic masking (15% selected, 80/10/10 [MASK] / random / unchanged, optionally whole
//! words). Every example is a pure function of (seed, step, micro-batch, row), so masks are
//! fresh each time a sequence is drawn, identical after a resume, and independent of how a
//! batch is split across processes.

use crate::config::check;
use crate::error::{Error, Result};
use crate::models::EncoderInput;
use crate::nn::seed_for;
use crate::shards::TokenShard;
use crate::tokenizer::TextTokenizer;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// HF's next-sentence labels: 0 = B continues A, 1 = B is from another document.
pub const IS_NEXT: u32 = 0;
pub const NOT_NEXT: u32 = 1;

/// What the masking and pairing need to know about the vocabulary.
pub struct Vocab {
    pub pad: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    pub size: usize,
    /// Special tokens (never masked, never drawn as random replacements, dropped from text).
    special: Vec<bool>,
    /// Tokens that begin a word (byte-level `Ġ…`, or anything but a WordPiece `##…`).
    word_start: Vec<bool>,
    /// Tokens after which a sentence ends (a sentence terminal of any script — `.`, `!`, `?`,
    /// `。`, `！`, `？`, … — or a line break at their end: `corpus::units::ends_sentence`).
    sentence_end: Vec<bool>,
    /// Tokens whose text ends in white space (the next piece starts a word).
    ends_space: Vec<bool>,
}

impl Vocab {
    pub fn from_tokenizer(tok: &TextTokenizer, model_vocab: usize) -> Result<Self> {
        let id = |t: &str| {
            tok.token_id(t).ok_or_else(|| {
                Error::config(
                    "data.special_tokens",
                    format!(
                        "the masked-LM objective needs the special token {t}; use special_tokens = \
                         [\"[PAD]\", \"[UNK]\", \"[CLS]\", \"[SEP]\", \"[MASK]\"]"
                    ),
                )
            })
        };
        let (pad, cls, sep, mask) = (id("[PAD]")?, id("[CLS]")?, id("[SEP]")?, id("[MASK]")?);
        let size = tok.vocab_size().min(model_vocab);
        let byte_level = (0..size.min(512) as u32).any(|i| tok.token_piece(i).is_some_and(|p| p.starts_with('Ġ')));
        let n = size;
        let (mut special, mut word_start, mut sentence_end, mut ends_space) =
            (vec![false; n], vec![true; n], vec![false; n], vec![false; n]);
        for i in 0..n {
            let id = i as u32;
            special[i] = tok.is_special(id);
            let piece = tok.token_piece(id).unwrap_or_default();
            let text = tok.token_text(id)?;
            word_start[i] = if byte_level {
                // Byte-level BPE spells a leading space `Ġ`; a piece without one continues
                // the word before it (unless that ended in white space, see `ends_space`).
                text.starts_with(char::is_whitespace) || !text.starts_with(char::is_alphanumeric)
            } else {
                !piece.starts_with("##")
            };
            ends_space[i] = text.ends_with(char::is_whitespace);
            sentence_end[i] = crate::corpus::units::ends_sentence(&text);
        }
        for s in [pad, cls, sep, mask] {
            if let Some(x) = special.get_mut(s as usize) {
                *x = true;
            }
        }
        if [pad, cls, sep, mask].iter().any(|&s| s as usize >= size) {
            return Err(Error::config("model.vocab_size", "the special tokens must lie inside the model's vocabulary"));
        }
        Ok(Self { pad, cls, sep, mask, size, special, word_start, sentence_end, ends_space })
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(true)
    }
}

/// Sentences of a shard: spans [start, end) of shard positions, special tokens left out, and
/// the documents they belong to.
pub struct SentenceIndex {
    spans: Vec<(usize, usize)>,
    doc_of: Vec<usize>,
    /// First sentence of each document (plus one past the last).
    doc_first: Vec<usize>,
    /// Documents with two or more sentences (where a true next segment exists).
    multi: Vec<usize>,
}

impl SentenceIndex {
    pub fn build(shard: &TokenShard, vocab: &Vocab) -> Result<Self> {
        let (mut spans, mut doc_of, mut doc_first) = (Vec::new(), Vec::new(), Vec::new());
        let n_docs = shard.num_docs();
        for d in 0..n_docs {
            let (lo, hi) = (shard.doc_offset(d) as usize, shard.doc_offset(d + 1) as usize);
            doc_first.push(spans.len());
            let mut start = None;
            for p in lo..hi {
                let t = shard.get(p);
                if vocab.is_special(t) {
                    if let Some(s) = start.take() {
                        spans.push((s, p));
                        doc_of.push(d);
                    }
                    continue;
                }
                let s = *start.get_or_insert(p);
                if vocab.sentence_end.get(t as usize).copied().unwrap_or(false) {
                    spans.push((s, p + 1));
                    doc_of.push(d);
                    start = None;
                }
            }
            if let Some(s) = start {
                spans.push((s, hi));
                doc_of.push(d);
            }
        }
        doc_first.push(spans.len());
        if spans.is_empty() {
            return Err(Error::Invalid(format!("{}: no text to build sentences from", shard.path().display())));
        }
        let multi = (0..n_docs).filter(|&d| doc_first[d + 1] - doc_first[d] >= 2).collect();
        Ok(Self { spans, doc_of, doc_first, multi })
    }

    pub fn num_sentences(&self) -> usize {
        self.spans.len()
    }

    fn docs_with_text(&self) -> usize {
        (0..self.doc_first.len() - 1).filter(|&d| self.doc_len(d) > 0).count()
    }

    fn doc_len(&self, d: usize) -> usize {
        self.doc_first[d + 1] - self.doc_first[d]
    }

    /// A sentence drawn in proportion to its length (so long documents are seen as often as
    /// their share of the text).
    fn random_sentence(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.spans.last().map_or(0, |s| s.1);
        let pos = rng.random_range(0..total.max(1));
        // The first sentence ending after `pos` (sentences are sorted and disjoint).
        self.spans.partition_point(|s| s.1 <= pos).min(self.spans.len() - 1)
    }
}

/// One encoder example before masking.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Length before padding.
    pub len: usize,
    pub nsp_label: Option<u32>,
    /// For tests: the documents segment A and B came from.
    pub docs: (usize, Option<usize>),
}

/// Shard tokens of sentences `from..to` (of one document), appended to `out`.
fn push_sentences(shard: &TokenShard, index: &SentenceIndex, from: usize, to: usize, out: &mut Vec<u32>) {
    for &(s, e) in &index.spans[from..to] {
        shard.read_into(s, e - s, out);
    }
}

/// Sentences from `from` on (within document `d`) until `want` tokens are gathered or the
/// document ends; returns the end sentence.
fn gather(shard: &TokenShard, index: &SentenceIndex, d: usize, from: usize, want: usize, out: &mut Vec<u32>) -> usize {
    let end = index.doc_first[d + 1];
    let mut i = from;
    while i < end && out.len() < want {
        push_sentences(shard, index, i, i + 1, out);
        i += 1;
    }
    i
}

/// BERT's pair truncation: drop a token from the longer segment (front or back at random)
/// until both fit.
fn truncate_pair(a: &mut Vec<u32>, b: &mut Vec<u32>, max: usize, rng: &mut ChaCha8Rng) {
    while a.len() + b.len() > max {
        let longer = if a.len() > b.len() { &mut *a } else { &mut *b };
        if rng.random_bool(0.5) {
            longer.remove(0);
        } else {
            longer.pop();
        }
    }
}

/// A next-sentence pair `[CLS] A [SEP] B [SEP]` padded to `seq_len`.
pub fn pair_example(
    shard: &TokenShard,
    index: &SentenceIndex,
    vocab: &Vocab,
    cfg: &MlmConfig,
    seq_len: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Example> {
    if seq_len < 5 {
        return Err(Error::config("train.seq_len", "next-sentence pairs need seq_len >= 5"));
    }
    if index.docs_with_text() < 2 {
        return Err(Error::Invalid(format!(
            "{}: next-sentence prediction needs at least two documents with text",
            shard.path().display()
        )));
    }
    let max = seq_len - 3;
    let target = if rng.random_bool(cfg.short_seq_prob) { rng.random_range(2..=max) } else { max };
    let is_next = rng.random_bool(0.5) && !index.multi.is_empty();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let a_target = rng.random_range(1..target.max(2));
    let (doc_a, doc_b);
    if is_next {
        // A document with a continuation: A ends before its last sentence, B follows it.
        let mut s = index.random_sentence(rng);
        if index.doc_len(index.doc_of[s]) < 2 {
            let d = index.multi[rng.random_range(0..index.multi.len())];
            s = index.doc_first[d] + rng.random_range(0..index.doc_len(d));
        }
        let d = index.doc_of[s];
        let last = index.doc_first[d + 1] - 1;
        let start = s.min(last - 1);
        let mut a_end = start;
        while a_end < last && (a_end == start || a.len() < a_target) {
            push_sentences(shard, index, a_end, a_end + 1, &mut a);
            a_end += 1;
        }
        gather(shard, index, d, a_end, target.saturating_sub(a.len()).max(1), &mut b);
        (doc_a, doc_b) = (d, d);
    } else {
        let s = index.random_sentence(rng);
        let d = index.doc_of[s];
        gather(shard, index, d, s, a_target, &mut a);
        // A sentence from another document: redraw until the document differs.
        let other = loop {
            let t = index.random_sentence(rng);
            if index.doc_of[t] != d {
                break t;
            }
        };
        let d2 = index.doc_of[other];
        gather(shard, index, d2, other, target.saturating_sub(a.len()).max(1), &mut b);
        (doc_a, doc_b) = (d, d2);
    }
    truncate_pair(&mut a, &mut b, max, rng);
    let mut ids = Vec::with_capacity(seq_len);
    ids.push(vocab.cls);
    ids.extend_from_slice(&a);
    ids.push(vocab.sep);
    let a_part = ids.len();
    ids.extend_from_slice(&b);
    ids.push(vocab.sep);
    let len = ids.len();
    let mut type_ids = vec![0u32; a_part];
    type_ids.resize(len, 1);
    ids.resize(seq_len, vocab.pad);
    type_ids.resize(seq_len, 0);
    let label = if is_next { IS_NEXT } else { NOT_NEXT };
    Ok(Example { ids, type_ids, len, nsp_label: Some(label), docs: (doc_a, Some(doc_b)) })
}

/// One segment `[CLS] A [SEP]` of up to `seq_len − 2` tokens from consecutive sentences of a
/// document (RoBERTa's DOC-SENTENCES), padded to `seq_len`.
pub fn single_example(
    shard: &TokenShard,
    index: &SentenceIndex,
    vocab: &Vocab,
    seq_len: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Example> {
    if seq_len < 3 {
        return Err(Error::config("train.seq_len", "masked-LM examples need seq_len >= 3"));
    }
    let s = index.random_sentence(rng);
    let d = index.doc_of[s];
    let mut a = Vec::new();
    gather(shard, index, d, s, seq_len - 2, &mut a);
    a.truncate(seq_len - 2);
    let mut ids = Vec::with_capacity(seq_len);
    ids.push(vocab.cls);
    ids.extend_from_slice(&a);
    ids.push(vocab.sep);
    let len = ids.len();
    ids.resize(seq_len, vocab.pad);
    Ok(Example { ids, type_ids: vec![0; seq_len], len, nsp_label: None, docs: (d, None) })
}

/// Masks `ex` in place; returns the selected positions and their original ids. A row with
/// nothing selected gets one position, so every row contributes to the loss.
pub fn mask_example(ex: &mut Example, vocab: &Vocab, cfg: &MlmConfig, rng: &mut ChaCha8Rng) -> Vec<(usize, u32)> {
    let candidate = |p: usize| !vocab.is_special(ex.ids[p]);
    // The units of selection: single pieces, or whole words (a piece that starts a word and
    // the continuation pieces after it).
    let mut units: Vec<std::ops::Range<usize>> = Vec::new();
    let mut p = 0;
    while p < ex.len {
        if !candidate(p) {
            p += 1;
            continue;
        }
        let mut end = p + 1;
        if cfg.whole_word {
            while end < ex.len
                && candidate(end)
                && !vocab.word_start[ex.ids[end] as usize]
                && !vocab.ends_space[ex.ids[end - 1] as usize]
            {
                end += 1;
            }
        }
        units.push(p..end);
        p = end;
    }
    let mut chosen: Vec<usize> =
        units.iter().filter(|_| rng.random_bool(cfg.mask_prob)).flat_map(|u| u.clone()).collect();
    if chosen.is_empty() && !units.is_empty() {
        chosen.extend(units[rng.random_range(0..units.len())].clone());
    }
    let mut out = Vec::with_capacity(chosen.len());
    for p in chosen {
        let original = ex.ids[p];
        out.push((p, original));
        let r: f64 = rng.random();
        if r < cfg.mask_token_frac {
            ex.ids[p] = vocab.mask;
        } else if r < cfg.mask_token_frac + cfg.random_token_frac {
            ex.ids[p] = loop {
                let t = rng.random_range(0..vocab.size as u32);
                if !vocab.is_special(t) {
                    break t;
                }
            };
        }
    }
    out
}

/// A masked batch ready for the encoder.
pub struct MlmBatch {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub lengths: Vec<usize>,
    /// Selected positions as flat (B·T) indices, and their original ids.
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
    pub nsp_labels: Option<Vec<u32>>,
    pub seq_len: usize,
}

impl MlmBatch {
    pub fn input(&self, device: &Device) -> Result<EncoderInput> {
        EncoderInput::new(&self.ids, &self.type_ids, self.lengths.clone(), self.seq_len, device)
    }

    pub fn positions(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.positions.len();
        Ok((Tensor::from_slice(&self.positions, n, device)?, Tensor::from_slice(&self.targets, n, device)?))
    }

    pub fn nsp_labels(&self, device: &Device) -> Result<Option<Tensor>> {
        Ok(match &self.nsp_labels {
            Some(l) => Some(Tensor::from_slice(l, l.len(), device)?),
            None => None,
        })
    }
}

/// Everything that draws encoder examples from one shard.
pub struct MlmSource<'a> {
    pub shard: &'a TokenShard,
    pub index: SentenceIndex,
    pub vocab: &'a Vocab,
    pub cfg: &'a MlmConfig,
    pub nsp: bool,
    pub seq_len: usize,
}

impl MlmSource<'_> {
    /// Row `row` of a batch, drawn from its own generator `label`: pairing then masking.
    pub fn example(&self, seed: u64, label: &str) -> Result<(Example, Vec<(usize, u32)>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, label));
        let mut ex = if self.nsp {
            pair_example(self.shard, &self.index, self.vocab, self.cfg, self.seq_len, &mut rng)?
        } else {
            single_example(self.shard, &self.index, self.vocab, self.seq_len, &mut rng)?
        };
        let masked = mask_example(&mut ex, self.vocab, self.cfg, &mut rng);
        Ok((ex, masked))
    }

    /// Rows `rows` of the batch of (step, micro): each row has its own generator, so a process
    /// computing part of a global batch draws exactly those rows.
    pub fn batch(&self, seed: u64, step: u64, micro: usize, rows: std::ops::Range<usize>) -> Result<MlmBatch> {
        let labels: Vec<String> = rows.map(|r| format!("mlm/{step}/{micro}/{r}")).collect();
        self.batch_of(seed, &labels)
    }

    /// Fixed validation batches: the same examples and masks at every evaluation.
    pub fn eval_batches(&self, seed: u64, batches: usize, batch_size: usize) -> Result<Vec<MlmBatch>> {
        (0..batches)
            .map(|b| {
                let labels: Vec<String> = (0..batch_size).map(|r| format!("mlm-val/{b}/{r}")).collect();
                self.batch_of(seed, &labels)
            })
            .collect()
    }

    fn batch_of(&self, seed: u64, labels: &[String]) -> Result<MlmBatch> {
        let t = self.seq_len;
        let mut batch = MlmBatch {
            ids: Vec::with_capacity(labels.len() * t),
            type_ids: Vec::with_capacity(labels.len() * t),
            lengths: Vec::with_capacity(labels.len()),
            positions: Vec::new(),
            targets: Vec::new(),
            nsp_labels: self.nsp.then(Vec::new),
            seq_len: t,
        };
        for (r, label) in labels.iter().enumerate() {
            let (ex, masked) = self.example(seed, label)?;
            for (p, original) in masked {
                batch.positions.push((r * t + p) as u32);
                batch.targets.push(original);
            }
            batch.ids.extend_from_slice(&ex.ids);
            batch.type_ids.extend_from_slice(&ex.type_ids);
            batch.lengths.push(ex.len);
            if let (Some(l), Some(v)) = (batch.nsp_labels.as_mut(), ex.nsp_label) {
                l.push(v);
            }
        }
        Ok(batch)
    }
}

/// The unigram baseline of MLM: always predict the most frequent non-special token of the
/// training shard. Returns (that id, its accuracy on `batches`' masked positions).
pub fn unigram_baseline(train: &TokenShard, vocab: &Vocab, batches: &[MlmBatch]) -> (u32, f64) {
    let mut counts = vec![0u64; vocab.size];
    for i in 0..train.len() {
        let t = train.get(i) as usize;
        if t < counts.len() && !vocab.is_special(t as u32) {
            counts[t] += 1;
        }
    }
    let top = counts.iter().enumerate().max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i))).map_or(0, |(i, _)| i as u32);
    let (hits, total) =
        batches.iter().flat_map(|b| b.targets.iter()).fold((0u64, 0u64), |(h, n), &t| (h + (t == top) as u64, n + 1));
    (top, hits as f64 / total.max(1) as f64)
}

/// `[mlm]`: the masked-LM objective's settings (read with `train.objective = "mlm"` or
/// `"mlm+nsp"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MlmConfig {
    /// Probability that a (non-special, non-padding) token — or a whole word — is selected.
    pub mask_prob: f64,
    /// Of the selected: replaced by [MASK] ...
    pub mask_token_frac: f64,
    /// ... by a random token (the rest stay unchanged).
    pub random_token_frac: f64,
    /// Select whole words (all their pieces) instead of single tokens.
    pub whole_word: bool,
    /// Probability of a shorter target length for a sentence pair (BERT's 0.1).
    pub short_seq_prob: f64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self { mask_prob: 0.15, mask_token_frac: 0.8, random_token_frac: 0.1, whole_word: false, short_seq_prob: 0.1 }
    }
}

impl MlmConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        check(
            (0.0..1.0).contains(&self.mask_prob) && self.mask_prob > 0.0,
            "mlm.mask_prob",
            self.mask_prob,
            "0 < p < 1",
        )?;
        check(
            self.mask_token_frac >= 0.0
                && self.random_token_frac >= 0.0
                && self.mask_token_frac + self.random_token_frac <= 1.0,
            "mlm.mask_token_frac",
            self.mask_token_frac,
            "fractions >= 0 with mask_token_frac + random_token_frac <= 1",
        )?;
        check((0.0..=1.0).contains(&self.short_seq_prob), "mlm.short_seq_prob", self.short_seq_prob, "0..=1")
    }
}

#[cfg(test)]
mod tests;
