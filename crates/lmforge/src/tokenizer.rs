//! Tokenizers, always as Hugging Face `tokenizer.json`: train a byte-level BPE with the
//! `tokenizers` crate (GPT-2's pre-tokenizer and decoder, so every byte string round-trips),
//! load an existing one, save one atomically. Text is encoded without special tokens; the
//! end-of-text token separates documents.

use crate::error::{Error, Result};
use crate::fsio;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// GPT-style end-of-text marker, id 0 in tokenizers lmforge trains.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One sentence of words, encoded ([`TextTokenizer::encode_words`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WordEncoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The word each token comes from; None for special tokens.
    pub word_ids: Vec<Option<u32>>,
}

/// One window of a question–context pair ([`TextTokenizer::encode_qa`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QaWindow {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Per token, its (start, end) character offsets in the context; None for the question's
    /// tokens and the special tokens.
    pub context_offsets: Vec<Option<(usize, usize)>>,
}

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Trains a byte-level BPE with `vocab_size` entries (the 256 byte symbols and the special
    /// tokens, which take ids 0, 1, ... in order, included) on `texts`, streamed.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize, special_tokens: &[String]) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tk.train(&mut trainer, texts).map_err(|e| Error::Tokenizer(format!("training failed: {e}")))?;
        let inner: Tokenizer = tk.into();
        Ok(Self { inner })
    }

    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::format(path, "tokenizer.json not found"));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| Error::format(path, e.to_string()))
    }

    /// A tokenizer from the bytes of a `tokenizer.json`. The `tokenizers` crate panics
    /// (`expect`) on some malformed files: a control character or a lone surrogate inside a
    /// string, found by the hostile-input tests and the fuzzer. The bytes are parsed as JSON
    /// first, which refuses those, and a panic that still escapes (a well-formed file with a
    /// mistyped field) is turned into an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let invalid = |msg: String| Error::Tokenizer(format!("not a valid tokenizer.json: {msg}"));
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| invalid(e.to_string()))?;
        match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
            Ok(Ok(inner)) => Ok(Self { inner }),
            Ok(Err(e)) => Err(invalid(e.to_string())),
            Err(_) => Err(invalid("the tokenizers crate could not parse it".into())),
        }
    }

    /// A tokenizer built elsewhere (from a GGUF file's metadata).
    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self { inner }
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Saves as `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        fsio::write_atomic(path, json.as_bytes())
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts in parallel (order preserved).
    pub fn encode_batch(&self, texts: Vec<&str>) -> Result<Vec<Vec<u32>>> {
        let encs = self.inner.encode_batch_fast(texts, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Classification inputs: each text (and optional second text) with the tokenizer's own
    /// special tokens (BERT: `[CLS] a [SEP] b [SEP]`; none for GPT-2's byte-level BPE),
    /// truncated to `max_len` tokens longest-first and unpadded, as `tokenizer(a, b,
    /// truncation=True)` in transformers. Returns (ids, token type ids) per input, in order;
    /// padding or truncation settings saved in the tokenizer.json are replaced.
    pub fn encode_pairs(&self, inputs: &[(&str, Option<&str>)], max_len: usize) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let mut tk = self.inner.clone();
        tk.with_padding(None);
        tk.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            stride: 0,
            direction: tokenizers::TruncationDirection::Right,
        }))
        .map_err(|e| Error::Tokenizer(format!("truncation to {max_len} tokens: {e}")))?;
        let batch: Vec<tokenizers::EncodeInput> = inputs
            .iter()
            .map(|(a, b)| match b {
                Some(b) => tokenizers::EncodeInput::Dual((*a).into(), (*b).into()),
                None => tokenizers::EncodeInput::Single((*a).into()),
            })
            .collect();
        let encs = tk.encode_batch_fast(batch, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encs.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }

    /// Extractive-QA inputs, as `run_qa.py` tokenizes them: `tokenizer(question, context,
    /// truncation="only_second", max_length=max_len, stride=stride,
    /// return_overflowing_tokens=True, return_offsets_mapping=True)`: each pair with the
    /// tokenizer's own pair template, the context cut into windows of what the question leaves
    /// of `max_len`, consecutive windows overlapping by `stride` tokens (the first window, then
    /// the overflowing ones, in order). Per pair: its windows, or why it has none (a question
    /// that leaves no room for the context). Where a long question leaves a window of `stride`
    /// tokens or fewer (the `tokenizers` crate would panic; `run_qa.py` fails), the overlap is
    /// one token less than the window.
    ///
    /// The windows are cut here, as the library's own truncation does (`Encoding::truncate`,
    /// then the post-processor on each part), because the `tokenizers` crate 0.23.2 cuts a
    /// long context to `max_len` tokens before it makes the overflowing windows, which loses
    /// its end (Python's `tokenizers` 0.23.3 does not).
    pub fn encode_qa(
        &self,
        pairs: &[(&str, &str)],
        max_len: usize,
        stride: usize,
    ) -> Result<Vec<std::result::Result<Vec<QaWindow>, String>>> {
        let mut tk = self.inner.clone();
        tk.with_padding(None);
        tk.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let specials = tk.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
        let err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
        let questions =
            tk.encode_batch_char_offsets(pairs.iter().map(|(q, _)| *q).collect::<Vec<_>>(), false).map_err(err)?;
        let contexts =
            tk.encode_batch_char_offsets(pairs.iter().map(|(_, c)| *c).collect::<Vec<_>>(), false).map_err(err)?;
        let mut out = Vec::with_capacity(pairs.len());
        for (question, mut context) in questions.into_iter().zip(contexts) {
            let used = question.len() + specials;
            if used >= max_len {
                out.push(Err(format!(
                    "the question takes {used} of the {max_len} tokens (with the special tokens), leaving none for the context"
                )));
                continue;
            }
            let room = max_len - used;
            context.truncate(room, stride.min(room - 1), tokenizers::TruncationDirection::Right);
            let overflowing = context.take_overflowing();
            let mut windows = Vec::with_capacity(1 + overflowing.len());
            for part in std::iter::once(context).chain(overflowing) {
                let w = tk.post_process(question.clone(), Some(part), true).map_err(err)?;
                windows.push(QaWindow {
                    ids: w.get_ids().to_vec(),
                    type_ids: w.get_type_ids().to_vec(),
                    context_offsets: w
                        .get_sequence_ids()
                        .into_iter()
                        .zip(w.get_offsets())
                        .map(|(seq, &off)| (seq == Some(1)).then_some(off))
                        .collect(),
                });
            }
            out.push(Ok(windows));
        }
        Ok(out)
    }

    /// Token-classification inputs: sentences already split into words (transformers'
    /// `is_split_into_words=True`), each with the tokenizer's special tokens, truncated to
    /// `max_len` tokens when given (0: not truncated). Returns per sentence (ids, token type
    /// ids, the word index of each token: None for special tokens). A byte-level BPE reads
    /// every word with a leading space, as transformers' `add_prefix_space=True` that
    /// `run_ner.py` sets for GPT-2, so a word is tokenized as it is inside running text.
    pub fn encode_words(&self, sentences: &[Vec<&str>], max_len: usize) -> Result<Vec<WordEncoding>> {
        let mut tk = self.inner.clone();
        tk.with_padding(None);
        let truncation = (max_len > 0).then_some(tokenizers::TruncationParams {
            max_length: max_len,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            stride: 0,
            direction: tokenizers::TruncationDirection::Right,
        });
        tk.with_truncation(truncation).map_err(|e| Error::Tokenizer(format!("truncation to {max_len} tokens: {e}")))?;
        if let Some(tokenizers::PreTokenizerWrapper::ByteLevel(b)) = tk.get_pre_tokenizer() {
            let b = b.add_prefix_space(true);
            tk.with_pre_tokenizer(Some(b));
        }
        let batch: Vec<tokenizers::EncodeInput> = sentences
            .iter()
            .map(|words| tokenizers::EncodeInput::Single(tokenizers::InputSequence::from(words.clone())))
            .collect();
        // Not `encode_batch_fast`: it leaves the word ids out with the offsets.
        let encs = tk.encode_batch(batch, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encs
            .into_iter()
            .map(|e| WordEncoding {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                word_ids: e.get_word_ids().to_vec(),
            })
            .collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens (the smallest valid model vocab).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (special tokens included), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The decoded text of one token (a special token's own spelling).
    pub fn token_text(&self, id: u32) -> Result<String> {
        match self.inner.id_to_token(id) {
            Some(t) if self.inner.get_added_vocabulary().is_special_token(&t) => Ok(t),
            Some(_) => self.decode(&[id]),
            None => Err(Error::Tokenizer(format!("no token with id {id}"))),
        }
    }

    /// Whether `id` is one of the tokenizer's special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.id_to_token(id).is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// Raw vocabulary spelling of a token (byte-level `Ġ` for a leading space, WordPiece `##`
    /// for a continuation).
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-text id, if the tokenizer has one (`<|endoftext|>`, `</s>` or `<eos>`).
    pub fn eos_id(&self) -> Option<u32> {
        [END_OF_TEXT, "</s>", "<eos>"].iter().find_map(|t| self.inner.token_to_id(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_any_text() {
        let corpus = "the quick brown fox jumps over the lazy dog\n".repeat(50);
        let tk = TextTokenizer::train_bpe(corpus.lines(), 300, &[END_OF_TEXT.to_string()]).unwrap();
        assert!(tk.vocab_size() <= 300 && tk.vocab_size() > 257);
        assert_eq!(tk.eos_id(), Some(0));
        for text in ["the fox", "unseen wörds ✓ 🦀\ttabs\n\nand lines", ""] {
            let ids = tk.encode(text).unwrap();
            assert_eq!(tk.decode(&ids).unwrap(), text);
        }
        assert!(tk.encode("the quick brown fox").unwrap().len() < "the quick brown fox".len());
    }
}
