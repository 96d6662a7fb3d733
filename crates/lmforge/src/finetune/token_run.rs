//! The token-classification front end: reads the tagged files ([`super::tagged`]), loads the
//! base with a token head and sets up the method, hands [`TokenClassification`] to the loop, and
//! at the end scores the saved model (read back as `predict` reads it) on the test split, or
//! the validation split, into `RUN_DIR/results.json`. Also `predict` and `eval` for a token
//! classifier: tags per input word, and seqeval's entity metrics on a tagged file.

use super::config::{ClsDataConfig, FinetuneConfig};
use super::dataset::{add_bad_rows, BadRows, LabelMap};
use super::head_run::{self, HeadRun, HeadRunEnd};
use super::model::{self, LoadedClassifier};
use super::tagged::{encode_sentences, read_sentences, word_tags, Sentence, TaggedEncoded};
use super::task::HeadParts;
use super::token_task::{evaluate, outside_tag, tag_pieces, TaggedSplit, TokenClassification, TokenEvaluation};
use super::{train_subset, window, FinetuneSummary};
use crate::error::Result;
use crate::models::HeadKind;
use crate::observe::Observers;
use crate::train::{TrainOptions, TrainSummary};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// One split, read and encoded.
struct Split {
    file: PathBuf,
    sentences: Vec<Sentence>,
    pieces: Vec<TaggedEncoded>,
    bad: BadRows,
}

impl Split {
    fn view(&self) -> TaggedSplit<'_> {
        TaggedSplit { sentences: &self.sentences, pieces: &self.pieces }
    }

    /// Sentences split into more than one piece (longer than the window).
    fn split_sentences(&self) -> usize {
        self.pieces
            .iter()
            .filter(|p| p.first_word > 0)
            .map(|p| p.sentence)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

pub(super) fn run(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    resuming: bool,
    observers: &mut Observers,
) -> Result<(TrainSummary, FinetuneSummary)> {
    let t = &cfg.train;
    let placement = opts.placement(t.device, t.precision)?;
    cfg.check_paths()?;
    let (train_sentences, train_bad, labels) = read_sentences(&cfg.data.train, &cfg.data, None, true)?;
    let (train_sentences, held_out) = match super::folds::of(cfg) {
        Some((k, fold)) => {
            let assigned = super::folds::assign(&vec![0; train_sentences.len()], k, t.seed);
            let (train, held) = super::folds::split(train_sentences, &assigned, fold);
            (train, Some(held))
        }
        None => (train_sentences, None),
    };
    let train_sentences = train_subset(cfg, train_sentences);
    let (spec, mut store, tokenizer) = model::load_base(&cfg.model.base, &labels, HeadKind::Token, &placement.device)?;
    let max_len = window(cfg, spec.context);
    let read = |path: &Path, limit: usize| -> Result<Option<Split>> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let (mut sentences, bad, _) = read_sentences(path, &cfg.data, Some(&labels), true)?;
        if limit > 0 {
            sentences.truncate(limit);
        }
        let pieces = encode_sentences(&sentences, &tokenizer, max_len)?;
        Ok(Some(Split { file: path.to_path_buf(), sentences, pieces, bad }))
    };
    let pieces = encode_sentences(&train_sentences, &tokenizer, max_len)?;
    let train = Split { file: cfg.data.train.clone(), sentences: train_sentences, pieces, bad: train_bad };
    let validation = match held_out {
        Some(sentences) => {
            let pieces = encode_sentences(&sentences, &tokenizer, max_len)?;
            Some(Split { file: cfg.data.train.clone(), sentences, pieces, bad: BadRows::default() })
        }
        None => read(&cfg.data.validation, cfg.data.max_validation_rows)?,
    };
    let test = read(&cfg.data.test, 0)?;
    let lora = model::prepare(&mut store, &spec, cfg, &labels)?;
    let head = HeadRun { cfg, run_dir, opts, resuming, precision: placement.precision, kind: HeadKind::Token };
    let parts = HeadParts { cfg, spec, labels: &labels, store, tokenizer: &tokenizer, lora };
    let announce = |total| announce(cfg, &train, validation.as_ref(), test.as_ref(), total);
    let HeadRunEnd { summary, mut out, finish } =
        head.run(parts, train.pieces.len(), validation.is_some(), observers, &announce, |parts| {
            TokenClassification::new(parts, &train.pieces, validation.as_ref().map(Split::view))
        })?;
    if !finish {
        return Ok((summary, out));
    }
    let final_split = test.as_ref().map(|s| ("test", s)).or(validation.as_ref().map(|s| ("validation", s)));
    if let Some((name, split)) = final_split {
        let saved = LoadedClassifier::load(&out.model_dir, &placement.device)?;
        let pad = model::pad_id(&saved.tokenizer);
        let ev = evaluate(&saved.classifier, &split.view(), &labels, t.eval_batch_size, pad, &placement.device)?;
        out.final_split = Some(name.to_string());
        out.final_tokens = Some(ev);
    }
    write_results(run_dir, cfg, &labels, &out, [Some(&train), validation.as_ref(), test.as_ref()])?;
    Ok((summary, out))
}

/// The run's data, as the start of the log says it.
fn announce(cfg: &FinetuneConfig, train: &Split, validation: Option<&Split>, test: Option<&Split>, total: u64) {
    let mode = cfg.log.progress.mode();
    let count = |s: &Split| {
        let split = s.split_sentences();
        let note = if split > 0 { format!(" ({split} longer than the window, split)") } else { String::new() };
        format!("{} sentences{note}", s.sentences.len())
    };
    let mut line = format!("sentences: {} train", count(train));
    for (name, s) in [("validation", validation), ("test", test)] {
        if let Some(s) = s {
            line += &format!(", {} {name}", count(s));
        }
    }
    crate::progress::note(mode, &format!("{line}; {total} steps in all"));
    for s in [Some(train), validation, test].into_iter().flatten() {
        if s.bad.total() > 0 {
            crate::progress::note(mode, &format!("{}: {}", s.file.display(), s.bad.summary()));
        }
    }
}

fn write_results(
    run_dir: &Path,
    cfg: &FinetuneConfig,
    labels: &LabelMap,
    s: &FinetuneSummary,
    splits: [Option<&Split>; 3],
) -> Result<()> {
    let mut bad = BadRows::default();
    let mut sizes = serde_json::Map::new();
    for (name, split) in ["train", "validation", "test"].into_iter().zip(splits) {
        if let Some(split) = split {
            add_bad_rows(&mut bad, &split.bad);
            sizes.insert(
                name.into(),
                json!({
                    "sentences": split.sentences.len(),
                    "words": split.sentences.iter().map(|x| x.words.len()).sum::<usize>(),
                    "pieces": split.pieces.len(),
                    "split_sentences": split.split_sentences(),
                }),
            );
        }
    }
    let metrics = s.final_tokens.as_ref().map(|e| json!(e));
    let mut results = head_run::results(cfg, s, json!({}), &bad, metrics);
    results.insert("labels".into(), json!(labels.labels));
    results.insert("data".into(), sizes.into());
    crate::fsio::write_json_atomic(&run_dir.join("results.json"), &results)
}

/// `lmforge eval classification` on a token classifier: seqeval's entity metrics on a tagged
/// file (CoNLL or JSONL).
pub fn eval_file(
    model: &LoadedClassifier,
    data: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<(TokenEvaluation, BadRows)> {
    let (sentences, bad, _) = read_sentences(data, reader, Some(&model.labels), true)?;
    let pieces = encode_sentences(&sentences, &model.tokenizer, model.max_length())?;
    let split = TaggedSplit { sentences: &sentences, pieces: &pieces };
    let pad = model::pad_id(&model.tokenizer);
    let ev = evaluate(&model.classifier, &split, &model.labels, batch_size, pad, model.params.device())?;
    Ok((ev, bad))
}

/// What `predict` did with a token classifier.
#[derive(Debug, Clone, Serialize)]
pub struct TagSummary {
    pub sentences: usize,
    pub words: usize,
    pub bad_rows: BadRows,
    /// Token accuracy on the sentences that carried known tags, if any did.
    pub accuracy: Option<f64>,
}

/// `lmforge predict` with a token classifier: one JSON line per usable input sentence, in
/// input order: `{"line", "tokens", "tags"}` (plus `"gold"` when the sentence had tags).
pub fn predict_file(
    model: &LoadedClassifier,
    input: &Path,
    output: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<TagSummary> {
    let (sentences, bad, _) = read_sentences(input, reader, Some(&model.labels), false)?;
    let pieces = encode_sentences(&sentences, &model.tokenizer, model.max_length())?;
    let pad = model::pad_id(&model.tokenizer);
    let (predicted, _, _) = tag_pieces(&model.classifier, &pieces, batch_size, pad, model.params.device())?;
    let words = word_tags(&sentences, &pieces, &predicted, outside_tag(&model.labels));
    let (mut tagged, mut correct) = (0usize, 0usize);
    let names = |ids: &[usize]| -> Vec<&str> { ids.iter().map(|&i| model.labels.labels[i].as_str()).collect() };
    let mut rows = Vec::with_capacity(sentences.len());
    for (s, tags) in sentences.iter().zip(&words) {
        let mut obj = json!({"line": s.line, "tokens": s.words, "tags": names(tags)});
        if let Some(gold) = &s.tags {
            obj["gold"] = json!(names(gold));
            tagged += gold.len();
            correct += gold.iter().zip(tags).filter(|(a, b)| a == b).count();
        }
        rows.push(obj);
    }
    crate::fsio::write_jsonl_atomic(output, rows)?;
    Ok(TagSummary {
        sentences: sentences.len(),
        words: sentences.iter().map(|s| s.words.len()).sum(),
        bad_rows: bad,
        accuracy: (tagged > 0).then(|| correct as f64 / tagged as f64),
    })
}
