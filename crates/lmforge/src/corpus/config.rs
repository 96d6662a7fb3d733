//! `[data]`: where the text comes from and how it becomes tokens. The section is the corpus
//! pipeline's; [`super::prepare`] reads it.

use super::clean::Normalization;
use super::reader::DocMode;
use crate::config::{check, given, readable};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[data.language_filters.LANG]`: any of the `[data]` filter thresholds, for one language.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterOverrides {
    pub min_chars: Option<usize>,
    pub max_chars: Option<usize>,
    pub min_words: Option<usize>,
    pub max_words: Option<usize>,
    pub max_non_alpha_frac: Option<f64>,
    pub max_dup_line_frac: Option<f64>,
    pub min_mean_word_len: Option<f64>,
    pub max_mean_word_len: Option<f64>,
    pub min_stop_words: Option<usize>,
}

/// What to do with bytes that are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUtf8 {
    /// Replace them (U+FFFD) and count the document as repaired.
    Repair,
    /// Reject the document.
    Drop,
}

/// Where the text comes from and how it becomes tokens: inputs, cleaning, quality filters,
/// deduplication, splits and tokenizer (the `corpus` module runs them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A text / JSONL / HTML / WARC file (optionally .gz / .zst) or a folder of them.
    pub path: PathBuf,
    /// More inputs, prepared together with `path`.
    pub inputs: Vec<PathBuf>,
    /// An already prepared folder (`lmforge data prepare --out DIR`) to train from.
    pub prepared: PathBuf,
    /// An existing `tokenizer.json` to use; empty: train a byte-level BPE on the train split.
    pub tokenizer: PathBuf,
    /// Vocabulary size for a trained tokenizer; 0: the model's vocabulary size.
    pub vocab_size: usize,
    /// Special tokens of a trained tokenizer, in id order from 0.
    pub special_tokens: Vec<String>,
    /// Documents of a text file: "file" (the whole file), "paragraph" (blank-line separated), "line".
    pub doc_mode: DocMode,
    /// The text field of JSONL records.
    pub jsonl_field: String,
    /// Invalid UTF-8: "repair" (replace, counted) or "drop" (reject the document).
    pub invalid_utf8: InvalidUtf8,
    /// Unicode normalisation: "nfc", "nfkc" or "none".
    pub normalize: Normalization,
    pub min_chars: usize,
    pub max_chars: usize,
    pub min_words: usize,
    pub max_words: usize,
    pub max_non_alpha_frac: f64,
    pub max_dup_line_frac: f64,
    pub min_mean_word_len: f64,
    pub max_mean_word_len: f64,
    /// Minimum count of stop words (Gopher uses 2); 0 = off. English ones, or with language
    /// identification the document's language's (`corpus::stopwords`; a language without a
    /// list is not held to it).
    pub min_stop_words: usize,
    /// Identify each document's language (`corpus::langid`): counts and bytes per language in
    /// the manifest. Off by default: it reads every document a second time.
    pub language_id: bool,
    /// Keep only documents in these languages (ISO 639-1 codes such as "en", "zh"; 639-3 taken
    /// too); the others are rejected as `language`. Non-empty turns `language_id` on.
    pub languages: Vec<String>,
    /// Filter thresholds per identified language (`[data.language_filters.zh]` with any of the
    /// filter keys above), over the `[data]` ones; Gopher's thresholds are English ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub language_filters: BTreeMap<String, FilterOverrides>,
    /// Replace e-mail addresses, IP addresses and phone-like numbers by placeholders
    /// (`corpus::pii`), counted in the manifest.
    pub scrub_pii: bool,
    /// Write `SPLIT.docs.jsonl` beside the shards: each kept document's source file and line
    /// (WARC: record number, URL, record id, date) and language. Unset: on when any input is
    /// HTML or WARC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_metadata: Option<bool>,
    pub exact_dedup: bool,
    pub near_dedup: bool,
    /// Word n-gram size of the MinHash shingles.
    pub minhash_ngram: usize,
    pub minhash_perms: usize,
    /// Estimated Jaccard similarity at or above which two documents are near duplicates.
    pub near_dup_threshold: f64,
    /// LSH bands (rows = perms / bands); 0: chosen for the threshold.
    pub lsh_bands: usize,
    /// Fractions of documents (by a stable hash of their text) held out for validation / test.
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// Seed of the split hash and the MinHash permutations.
    pub seed: u64,
    /// End every document with the end-of-text token (GPT-style packing).
    pub append_eos: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            inputs: Vec::new(),
            prepared: PathBuf::new(),
            tokenizer: PathBuf::new(),
            vocab_size: 0,
            special_tokens: vec![crate::tokenizer::END_OF_TEXT.to_string()],
            doc_mode: DocMode::Paragraph,
            jsonl_field: "text".into(),
            invalid_utf8: InvalidUtf8::Repair,
            normalize: Normalization::Nfc,
            min_chars: 1,
            max_chars: 10_000_000,
            min_words: 1,
            max_words: 1_000_000,
            max_non_alpha_frac: 0.5,
            max_dup_line_frac: 0.5,
            min_mean_word_len: 1.5,
            max_mean_word_len: 20.0,
            min_stop_words: 0,
            language_id: false,
            languages: Vec::new(),
            language_filters: BTreeMap::new(),
            scrub_pii: false,
            document_metadata: None,
            exact_dedup: true,
            near_dedup: true,
            minhash_ngram: 5,
            minhash_perms: 128,
            near_dup_threshold: 0.8,
            lsh_bands: 0,
            val_fraction: 0.1,
            test_fraction: 0.0,
            seed: 0,
            append_eos: true,
        }
    }
}

impl DataConfig {
    /// The languages `data.languages` keeps, by lmforge's names (None: every language); an
    /// unknown code is an error naming the key.
    pub fn kept_languages(&self) -> Result<Option<Vec<&'static str>>> {
        if self.languages.is_empty() {
            return Ok(None);
        }
        let known = |c: &String| {
            super::langid::canonical(c).ok_or_else(|| {
                crate::error::Error::config(
                    "data.languages",
                    format!(
                        "{c:?} is not a language the identifier knows (ISO 639-1 codes such as \"en\", \"zh\", \"de\")"
                    ),
                )
            })
        };
        self.languages.iter().map(known).collect::<Result<Vec<_>>>().map(Some)
    }

    /// The quality filters of these settings.
    pub fn filters(&self) -> super::clean::Filters {
        super::clean::Filters {
            min_chars: self.min_chars,
            max_chars: self.max_chars,
            min_words: self.min_words,
            max_words: self.max_words,
            max_non_alpha_frac: self.max_non_alpha_frac,
            max_dup_line_frac: self.max_dup_line_frac,
            min_mean_word_len: self.min_mean_word_len,
            max_mean_word_len: self.max_mean_word_len,
            min_stop_words: self.min_stop_words,
            stop_words: super::stopwords::of("en").expect("English has a list"),
        }
    }

    /// The filters of documents identified as `lang`: `[data.language_filters.LANG]` over the
    /// `[data]` thresholds, and that language's stop words (none: the stop-word rule is off).
    pub fn filters_for(&self, lang: &str) -> super::clean::Filters {
        let base = self.filters();
        let o = self
            .language_filters
            .iter()
            .find(|(k, _)| super::langid::canonical(k) == Some(lang))
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let stop_words = super::stopwords::of(lang);
        super::clean::Filters {
            min_chars: o.min_chars.unwrap_or(base.min_chars),
            max_chars: o.max_chars.unwrap_or(base.max_chars),
            min_words: o.min_words.unwrap_or(base.min_words),
            max_words: o.max_words.unwrap_or(base.max_words),
            max_non_alpha_frac: o.max_non_alpha_frac.unwrap_or(base.max_non_alpha_frac),
            max_dup_line_frac: o.max_dup_line_frac.unwrap_or(base.max_dup_line_frac),
            min_mean_word_len: o.min_mean_word_len.unwrap_or(base.min_mean_word_len),
            max_mean_word_len: o.max_mean_word_len.unwrap_or(base.max_mean_word_len),
            min_stop_words: if stop_words.is_some() { o.min_stop_words.unwrap_or(base.min_stop_words) } else { 0 },
            stop_words: stop_words.unwrap_or(&[]),
        }
    }

    /// The MinHash permutations of these settings (seeded from `seed`).
    pub fn minhasher(&self) -> super::dedup::MinHasher {
        super::dedup::MinHasher::new(self.minhash_perms, self.minhash_ngram, self.seed ^ 0x6d69_6e68)
    }

    /// Its keys that hold paths (relative ones in a config file resolve against its folder).
    pub const PATH_KEYS: [&'static str; 4] = ["data.path", "data.inputs", "data.prepared", "data.tokenizer"];

    /// That every path given can be read, before anything is written: an error names the key.
    pub fn check_paths(&self) -> Result<()> {
        if let Some(p) = given(&self.prepared) {
            return readable("data.prepared", p);
        }
        if let Some(p) = given(&self.path) {
            readable("data.path", p)?;
        }
        for p in &self.inputs {
            readable("data.inputs", p)?;
        }
        if let Some(p) = given(&self.tokenizer) {
            readable("data.tokenizer", p)?;
        }
        Ok(())
    }

    /// Every path given made absolute (against the working directory), so a config written
    /// elsewhere (a sweep's trial) means the same.
    pub fn make_absolute(&mut self) -> Result<()> {
        let abs = |p: &mut PathBuf| -> Result<()> {
            if given(p).is_some() && p.is_relative() {
                *p = std::path::absolute(&*p).map_err(|e| crate::Error::io(&*p, e))?;
            }
            Ok(())
        };
        abs(&mut self.path)?;
        abs(&mut self.prepared)?;
        abs(&mut self.tokenizer)?;
        self.inputs.iter_mut().try_for_each(abs)
    }

    /// All inputs: `path` (if set) then `inputs`.
    pub fn all_inputs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if !self.path.as_os_str().is_empty() {
            v.push(self.path.clone());
        }
        v.extend(self.inputs.iter().cloned());
        v
    }

    /// Range checks that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        check(
            (0.0..1.0).contains(&self.val_fraction)
                && (0.0..1.0).contains(&self.test_fraction)
                && self.val_fraction + self.test_fraction < 1.0,
            "data.val_fraction",
            self.val_fraction,
            "0 <= val_fraction, test_fraction and val + test < 1",
        )?;
        check(
            self.vocab_size == 0 || self.vocab_size >= 256 + self.special_tokens.len(),
            "data.vocab_size",
            self.vocab_size,
            "0 (the model's) or at least 256 bytes + the special tokens",
        )?;
        check(
            (0.0..=1.0).contains(&self.near_dup_threshold) && self.near_dup_threshold > 0.0,
            "data.near_dup_threshold",
            self.near_dup_threshold,
            "0 < threshold <= 1",
        )?;
        check(self.minhash_perms >= 1, "data.minhash_perms", self.minhash_perms, ">= 1")?;
        self.kept_languages()?;
        for (lang, o) in &self.language_filters {
            let key = format!("data.language_filters.{lang}");
            let Some(code) = super::langid::canonical(lang) else {
                return Err(crate::error::Error::config(
                    &key,
                    "not a language the identifier knows (ISO 639-1 codes such as \"zh\")",
                ));
            };
            if o.min_stop_words.is_some_and(|n| n > 0) && super::stopwords::of(code).is_none() {
                return Err(crate::error::Error::config(
                    format!("{key}.min_stop_words"),
                    "lmforge has no stop-word list for this language (corpus::stopwords)",
                ));
            }
            let f = self.filters_for(code);
            check(f.min_chars <= f.max_chars, &format!("{key}.min_chars"), f.min_chars, "<= max_chars")?;
            check(f.min_words <= f.max_words, &format!("{key}.min_words"), f.min_words, "<= max_words")?;
            check(
                f.min_mean_word_len <= f.max_mean_word_len,
                &format!("{key}.min_mean_word_len"),
                f.min_mean_word_len,
                "<= max_mean_word_len",
            )?;
            for (name, v) in [("max_non_alpha_frac", f.max_non_alpha_frac), ("max_dup_line_frac", f.max_dup_line_frac)]
            {
                check((0.0..=1.0).contains(&v), &format!("{key}.{name}"), v, "0..=1")?;
            }
        }
        check(self.minhash_ngram >= 1, "data.minhash_ngram", self.minhash_ngram, ">= 1")?;
        check(self.lsh_bands <= self.minhash_perms, "data.lsh_bands", self.lsh_bands, "0 (auto) or <= minhash_perms")?;
        check(self.min_chars <= self.max_chars, "data.min_chars", self.min_chars, "<= data.max_chars")?;
        check(self.min_words <= self.max_words, "data.min_words", self.min_words, "<= data.max_words")?;
        check(
            (0.0..=1.0).contains(&self.max_non_alpha_frac),
            "data.max_non_alpha_frac",
            self.max_non_alpha_frac,
            "0..=1",
        )?;
        check(
            (0.0..=1.0).contains(&self.max_dup_line_frac),
            "data.max_dup_line_frac",
            self.max_dup_line_frac,
            "0..=1",
        )?;
        check(
            self.min_mean_word_len <= self.max_mean_word_len,
            "data.min_mean_word_len",
            self.min_mean_word_len,
            "<= data.max_mean_word_len",
        )?;
        Ok(())
    }
}
