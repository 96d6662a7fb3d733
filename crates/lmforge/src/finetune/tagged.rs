//! Token-classification data: sentences of words with one tag each, from CoNLL column files (a
//! word per line, its tag in the last column, a blank line between sentences, `-DOCSTART-`
//! skipped) or JSONL rows (`tokens` and `tags` fields; tags as strings or as ids into
//! `data.labels`, as Hugging Face datasets export them). Prediction inputs may carry `text`
//! instead of `tokens` (split at whitespace). Bad sentences are counted with their file and
//! line like classification rows (`dataset::BadRows`).
//!
//! Encoding aligns tags to sub-words as `run_ner.py` does with `label_all_tokens = false`: a
//! word's first sub-word carries its tag, its other sub-words and the special tokens carry
//! none. A sentence longer than the model's window is not truncated: its words are split into
//! consecutive pieces that each fit, every word tagged once.

use super::config::{BadRowPolicy, ClsDataConfig};
use super::dataset::{format_of, jsonl_objects, BadRows, Format, LabelMap, Policy, Reason};
use crate::error::{Error, IoContext, Result};
use crate::tokenizer::{TextTokenizer, WordEncoding};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// One sentence: the 1-based line it starts on, its words and their tag ids (None for
/// prediction inputs without tags).
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    pub line: u64,
    pub words: Vec<String>,
    pub tags: Option<Vec<usize>>,
}

/// A sentence as read, tags not yet mapped.
struct RawSentence {
    line: u64,
    words: Vec<String>,
    tags: Option<Vec<String>>,
}

/// Reads `path` (CoNLL or JSONL, by `data.format`) and maps its tags with `labels`; `labels =
/// None` means the file is the training set and its own tags define the map (sorted, unless
/// `cfg.labels` lists them). Without `need_tags`, an untagged sentence is kept with `tags =
/// None` (prediction inputs), and tags the map does not know are dropped as gold.
pub fn read_sentences(
    path: &Path,
    cfg: &ClsDataConfig,
    labels: Option<&LabelMap>,
    need_tags: bool,
) -> Result<(Vec<Sentence>, BadRows, LabelMap)> {
    let mut policy = Policy { path, fail: cfg.bad_rows == BadRowPolicy::Fail, bad: BadRows::default() };
    let raw = match format_of(path, cfg.format)? {
        Format::Conll => read_conll(path, &mut policy)?,
        Format::Jsonl => read_jsonl(path, cfg, &mut policy)?,
        Format::Tsv | Format::Csv => {
            return Err(Error::format(
                path,
                "token classification reads CoNLL (.conll / .iob / .bio) or JSONL files, not TSV / CSV rows",
            ))
        }
    };
    let map = match labels {
        Some(m) => m.clone(),
        None if !cfg.labels.is_empty() => LabelMap { labels: cfg.labels.clone() },
        None => {
            let mut all: Vec<&str> = raw.iter().filter_map(|r| r.tags.as_ref()).flatten().map(String::as_str).collect();
            all.sort_unstable();
            all.dedup();
            LabelMap { labels: all.into_iter().map(String::from).collect() }
        }
    };
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let tags = match r.tags {
            None if need_tags => {
                policy.reject(r.line, Reason::MissingLabel, "a sentence without tags".into())?;
                continue;
            }
            None => None,
            Some(tags) => match tags.iter().map(|t| map.id(t).ok_or(t)).collect::<std::result::Result<Vec<_>, _>>() {
                Ok(ids) => Some(ids),
                Err(_) if !need_tags => None,
                Err(t) => {
                    let known = map.labels.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
                    policy.reject(r.line, Reason::UnknownLabel, format!("unknown tag {t:?} (known: {known})"))?;
                    continue;
                }
            },
        };
        out.push(Sentence { line: r.line, words: r.words, tags });
    }
    if out.is_empty() {
        let why = if policy.bad.total() > 0 { format!(": {}", policy.bad.summary()) } else { String::new() };
        return Err(Error::format(path, format!("no usable sentences{why}")));
    }
    if need_tags && map.len() < 2 {
        return Err(Error::format(path, format!("token classification needs at least 2 tags, found {:?}", map.labels)));
    }
    Ok((out, policy.bad, map))
}

/// CoNLL columns: whitespace-separated, the word first and the tag last (a one-column line is
/// an untagged word).
fn read_conll(path: &Path, policy: &mut Policy) -> Result<Vec<RawSentence>> {
    let file = std::fs::File::open(path).at(path)?;
    let mut out = Vec::new();
    // The sentence being read: its first line, words, tags (None once a word lacks one), and
    // whether a line of it was malformed.
    let mut words = Vec::new();
    let mut tags: Vec<Option<String>> = Vec::new();
    let mut start = 0u64;
    let mut malformed: Option<String> = None;
    let mut finish = |words: &mut Vec<String>,
                      tags: &mut Vec<Option<String>>,
                      start: u64,
                      malformed: &mut Option<String>,
                      policy: &mut Policy|
     -> Result<()> {
        if let Some(why) = malformed.take() {
            policy.reject(start, Reason::Malformed, why)?;
        } else if !words.is_empty() {
            let tagged = tags.iter().filter(|t| t.is_some()).count();
            let tags = if tagged == 0 {
                None
            } else if tagged == words.len() {
                Some(tags.iter().map(|t| t.clone().expect("all tagged")).collect())
            } else {
                policy.reject(start, Reason::Malformed, "some words of the sentence have no tag column".into())?;
                words.clear();
                return Ok(());
            };
            out.push(RawSentence { line: start, words: std::mem::take(words), tags });
        }
        words.clear();
        tags.clear();
        Ok(())
    };
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).at(path)? == 0 {
            break;
        }
        line_no += 1;
        let Ok(line) = std::str::from_utf8(&buf) else {
            if words.is_empty() {
                start = line_no;
            }
            malformed.get_or_insert_with(|| format!("line {line_no}: invalid UTF-8"));
            words.push(String::new());
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            finish(&mut words, &mut tags, start, &mut malformed, policy)?;
            continue;
        }
        if line.starts_with("-DOCSTART-") {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            start = line_no;
        }
        words.push(cols[0].to_string());
        tags.push((cols.len() >= 2).then(|| cols[cols.len() - 1].to_string()));
    }
    finish(&mut words, &mut tags, start, &mut malformed, policy)?;
    Ok(out)
}

/// JSONL rows: `tokens` (or, for prediction, `text` split at whitespace) and `tags`.
fn read_jsonl(path: &Path, cfg: &ClsDataConfig, policy: &mut Policy) -> Result<Vec<RawSentence>> {
    let mut out = Vec::new();
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    for (line, obj) in jsonl_objects(path, policy)? {
        let words: Option<Vec<String>> = match (obj.get(&cfg.tokens_column), obj.get(&cfg.text_column)) {
            (Some(Value::Array(a)), _) => a.iter().map(scalar).collect(),
            (None, Some(Value::String(t))) => Some(t.split_whitespace().map(String::from).collect()),
            _ => None,
        };
        let Some(words) = words else {
            let why = format!("no `{}` list of words (nor a `{}` text)", cfg.tokens_column, cfg.text_column);
            policy.reject(line, Reason::Malformed, why)?;
            continue;
        };
        if words.is_empty() || words.iter().any(|w| w.trim().is_empty()) {
            policy.reject(line, Reason::EmptyText, "an empty sentence or an empty word".into())?;
            continue;
        }
        let tags = match obj.get(&cfg.tags_column) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                let tags: Option<Vec<String>> = a
                    .iter()
                    .map(|v| match v {
                        // An id into data.labels (a datasets export's `ner_tags`).
                        Value::Number(n) if !cfg.labels.is_empty() => {
                            n.as_u64().and_then(|i| cfg.labels.get(i as usize)).cloned()
                        }
                        v => scalar(v).filter(|s| !s.is_empty()),
                    })
                    .collect();
                let Some(tags) = tags else {
                    let why = format!("`{}` holds a tag that is not a non-empty string or a known id", cfg.tags_column);
                    policy.reject(line, Reason::UnknownLabel, why)?;
                    continue;
                };
                if tags.len() != words.len() {
                    let why = format!("{} words but {} tags", words.len(), tags.len());
                    policy.reject(line, Reason::Malformed, why)?;
                    continue;
                }
                Some(tags)
            }
            Some(_) => {
                policy.reject(line, Reason::Malformed, format!("`{}` is not a list", cfg.tags_column))?;
                continue;
            }
        };
        out.push(RawSentence { line, words, tags });
    }
    Ok(out)
}

/// One encoded piece of a sentence (a whole sentence unless it was longer than the window).
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedEncoded {
    /// The model input (no sequence label).
    pub input: super::batching::Encoded,
    /// Which sentence, and the index of this piece's first word in it.
    pub sentence: usize,
    pub first_word: usize,
    /// Per word of the piece: the position of its first sub-word (None: the word encodes to
    /// no token, e.g. only characters the normalizer removes).
    pub word_starts: Vec<Option<usize>>,
    /// Per word of the piece: its tag id (training and evaluation data).
    pub tags: Option<Vec<usize>>,
}

impl TaggedEncoded {
    /// (position, tag) of every tagged first sub-word.
    pub fn targets(&self) -> Vec<(usize, usize)> {
        match &self.tags {
            None => Vec::new(),
            Some(tags) => self.word_starts.iter().zip(tags).filter_map(|(p, &t)| p.map(|p| (p, t))).collect(),
        }
    }
}

/// How many words each piece of a sentence takes, from its untruncated encoding: consecutive
/// words whose sub-words fit in `max_len` with the special tokens (a word longer than that
/// alone is a piece of its own, truncated).
fn pieces(enc: &WordEncoding, words: usize, max_len: usize) -> Vec<usize> {
    if enc.ids.len() <= max_len {
        return vec![words];
    }
    let specials = enc.word_ids.iter().filter(|w| w.is_none()).count();
    let budget = max_len.saturating_sub(specials).max(1);
    let mut per_word = vec![0usize; words];
    for w in enc.word_ids.iter().flatten() {
        per_word[*w as usize] += 1;
    }
    let mut out = Vec::new();
    let (mut n, mut used) = (0usize, 0usize);
    for &k in &per_word {
        if n > 0 && used + k > budget {
            out.push(n);
            (n, used) = (0, 0);
        }
        n += 1;
        used += k;
    }
    out.push(n);
    out
}

/// Encodes sentences into pieces of at most `max_len` tokens (see the module doc).
pub fn encode_sentences(
    sentences: &[Sentence],
    tokenizer: &TextTokenizer,
    max_len: usize,
) -> Result<Vec<TaggedEncoded>> {
    let words: Vec<Vec<&str>> = sentences.iter().map(|s| s.words.iter().map(String::as_str).collect()).collect();
    let whole = tokenizer.encode_words(&words, 0)?;
    // (sentence, first word, word count) of every piece.
    let mut spans = Vec::new();
    for (i, (enc, s)) in whole.iter().zip(sentences).enumerate() {
        let mut first = 0;
        for n in pieces(enc, s.words.len(), max_len) {
            spans.push((i, first, n));
            first += n;
        }
    }
    let piece_words: Vec<Vec<&str>> = spans.iter().map(|&(i, f, n)| words[i][f..f + n].to_vec()).collect();
    let encs = tokenizer.encode_words(&piece_words, max_len)?;
    let mut out = Vec::with_capacity(spans.len());
    for ((i, first, n), enc) in spans.into_iter().zip(encs) {
        let mut word_starts = vec![None; n];
        let mut prev = None;
        for (pos, w) in enc.word_ids.iter().enumerate() {
            if let Some(w) = *w {
                if prev != Some(w) && word_starts[w as usize].is_none() {
                    word_starts[w as usize] = Some(pos);
                }
            }
            prev = *w;
        }
        if enc.ids.is_empty() {
            return Err(Error::Invalid(format!("line {}: the sentence encodes to no tokens", sentences[i].line)));
        }
        let tags = sentences[i].tags.as_ref().map(|t| t[first..first + n].to_vec());
        let input = super::batching::Encoded { ids: enc.ids, type_ids: enc.type_ids, label: None };
        out.push(TaggedEncoded { input, sentence: i, first_word: first, word_starts, tags });
    }
    Ok(out)
}

/// The predicted tag ids of every word of every sentence from the pieces' argmax tags at
/// their words' first sub-words; a word with no token gets `fallback` (the `O` tag).
pub fn word_tags(
    sentences: &[Sentence],
    pieces: &[TaggedEncoded],
    predicted: &[Vec<usize>],
    fallback: usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = sentences.iter().map(|s| vec![fallback; s.words.len()]).collect();
    for (p, pred) in pieces.iter().zip(predicted) {
        for (k, start) in p.word_starts.iter().enumerate() {
            if let Some(pos) = start {
                out[p.sentence][p.first_word + k] = pred[*pos];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClsDataConfig {
        ClsDataConfig { format: super::super::config::DataFormat::Auto, ..ClsDataConfig::default() }
    }

    #[test]
    fn conll_and_jsonl_read_the_same_sentences_and_count_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let conll = dir.path().join("a.conll");
        std::fs::write(
            &conll,
            "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\nGerman JJ B-MISC\r\n\nPeter B-PER\nBlackburn I-PER\n\n\
             broken\nline B-PER\n\n",
        )
        .unwrap();
        let (s, bad, labels) = read_sentences(&conll, &cfg(), None, true).unwrap();
        assert_eq!(labels.labels, ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].line, s[0].words.clone()), (3, vec!["EU".to_string(), "rejects".into(), "German".into()]));
        assert_eq!(s[1].tags, Some(vec![2, 3]));
        assert_eq!((bad.malformed, bad.examples.len()), (1, 1), "{bad:?}");
        assert!(bad.examples[0].contains("a.conll:10"), "{bad:?}");

        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(
            &jsonl,
            "{\"tokens\": [\"EU\", \"rejects\"], \"tags\": [\"B-ORG\", \"O\"]}\n\
             {\"tokens\": [\"Peter\"], \"tags\": [\"B-PER\", \"O\"]}\n\
             {\"tokens\": [\"x\"], \"tags\": [\"B-LOC\"]}\n\
             {\"text\": \"two words\"}\n",
        )
        .unwrap();
        let (s, bad, _) = read_sentences(&jsonl, &cfg(), Some(&labels), false).unwrap();
        assert_eq!(s.len(), 3, "the unknown tag is no gold tag for prediction; text is split");
        assert_eq!((s[1].tags.clone(), s[2].words.len()), (None, 2));
        assert_eq!(bad.malformed, 1, "3 tags for 2 words");
        let (s, bad, _) = read_sentences(&jsonl, &cfg(), Some(&labels), true).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((bad.malformed, bad.unknown_label, bad.missing_label), (1, 1, 1), "{bad:?}");
        let strict = ClsDataConfig { bad_rows: BadRowPolicy::Fail, ..cfg() };
        let e = read_sentences(&jsonl, &strict, Some(&labels), true).unwrap_err().to_string();
        assert!(e.contains("a.jsonl") && e.contains("line 2") && e.contains("1 words but 2 tags"), "{e}");
    }

    #[test]
    fn integer_tags_index_the_configured_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [1, 0]}\n").unwrap();
        let c = ClsDataConfig { tags_column: "ner_tags".into(), labels: vec!["O".into(), "B-X".into()], ..cfg() };
        let (s, _, labels) = read_sentences(&p, &c, None, true).unwrap();
        assert_eq!(labels.labels, ["O", "B-X"]);
        assert_eq!(s[0].tags, Some(vec![1, 0]));
    }

    #[test]
    fn long_sentences_split_into_pieces_that_fit() {
        let enc = WordEncoding {
            ids: vec![0; 9],
            type_ids: vec![0; 9],
            word_ids: vec![None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(2), Some(3), None],
        };
        assert_eq!(pieces(&enc, 4, 9), [4]);
        assert_eq!(pieces(&enc, 4, 6), [2, 2], "budget 4: 2+1 | 3+1");
        assert_eq!(pieces(&enc, 4, 4), [1, 1, 1, 1]);
    }
}
