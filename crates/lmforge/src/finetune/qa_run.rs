//! The extractive-QA front end: reads the question files ([`super::qa_data`]), loads the base
//! with a span head and sets up the method, hands [`QuestionAnswering`] to the loop, and at the
//! end scores the saved model (read back as `predict` reads it) on the test split, or the
//! validation split, into `RUN_DIR/results.json`. Also `predict` and `eval` for a QA model:
//! answers per question, and SQuAD's exact match and F1 on a question file.

use super::config::{ClsDataConfig, FinetuneConfig, QaConfig};
use super::dataset::{add_bad_rows, BadRows, LabelMap};
use super::head_run::{self, HeadRun, HeadRunEnd};
use super::model::{self, LoadedClassifier};
use super::qa_data::{encode_questions, read_questions, QaFeature, QaSet, Question};
use super::qa_task::{answers, evaluate, span_logits, QaEvaluation, QaSplit, QuestionAnswering};
use super::task::HeadParts;
use super::{train_subset, window, FinetuneSummary};
use crate::error::{Error, Result};
use crate::metrics::squad::{self, Scored, SquadMetrics, SquadVersion};
use crate::models::HeadKind;
use crate::observe::Observers;
use crate::tokenizer::TextTokenizer;
use crate::train::{TrainOptions, TrainSummary};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The two outputs of a span head, named as transformers' default `id2label`.
pub fn span_labels() -> LabelMap {
    LabelMap { labels: vec!["LABEL_0".into(), "LABEL_1".into()] }
}

/// One split, read and encoded.
struct Split {
    file: PathBuf,
    questions: Vec<Question>,
    features: Vec<QaFeature>,
    bad: BadRows,
}

impl Split {
    fn view(&self) -> QaSplit<'_> {
        QaSplit { questions: &self.questions, features: &self.features }
    }

    fn read(set: QaSet, file: &Path, tokenizer: &TextTokenizer, max_len: usize, qa: &QaConfig) -> Result<Self> {
        let QaSet { questions, mut bad, .. } = set;
        let (features, questions) = encode(questions, tokenizer, max_len, qa, &mut bad, file)?;
        Ok(Self { file: file.to_path_buf(), questions, features, bad })
    }

    fn unanswerable(&self) -> usize {
        self.questions.iter().filter(|q| q.answers.is_empty()).count()
    }
}

/// Encodes `questions`, dropping (and counting as bad) those the window has no room for.
fn encode(
    questions: Vec<Question>,
    tokenizer: &TextTokenizer,
    max_len: usize,
    qa: &QaConfig,
    bad: &mut BadRows,
    file: &Path,
) -> Result<(Vec<QaFeature>, Vec<Question>)> {
    let (mut features, rejected) = encode_questions(&questions, tokenizer, max_len, qa.doc_stride)?;
    if rejected.is_empty() {
        return Ok((features, questions));
    }
    let mut keep = vec![true; questions.len()];
    for (i, why) in &rejected {
        keep[*i] = false;
        bad.malformed += 1;
        // As many examples as the readers keep (`dataset::BadRows`).
        if bad.examples.len() < 5 {
            bad.examples.push(format!("{}:{}: {why}", file.display(), questions[*i].at));
        }
    }
    // Renumber the windows' questions after the dropped ones.
    let mut new_index = vec![usize::MAX; questions.len()];
    let kept: Vec<Question> = questions
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .enumerate()
        .map(|(n, (i, q))| {
            new_index[i] = n;
            q
        })
        .collect();
    if kept.is_empty() {
        return Err(Error::format(file, "no question leaves room for its context in the window (model.max_length)"));
    }
    for f in &mut features {
        f.question = new_index[f.question];
    }
    Ok((features, kept))
}

pub(super) fn run(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    resuming: bool,
    observers: &mut Observers,
) -> Result<(TrainSummary, FinetuneSummary)> {
    let placement = opts.placement(cfg.train.device, cfg.train.precision)?;
    cfg.check_paths()?;
    let mut train_set = read_questions(&cfg.data.train, &cfg.data)?;
    // v2.0 or not is decided once, from the training file, and saved with the model.
    let mut resolved = cfg.clone();
    resolved.qa.version_2_with_negative.get_or_insert(train_set.v2);
    let cfg = &resolved;
    let t = &cfg.train;
    let labels = span_labels();
    let (spec, mut store, tokenizer) = model::load_base(&cfg.model.base, &labels, HeadKind::Span, &placement.device)?;
    if !spec.arch().classification_head(HeadKind::Span).supported {
        return Err(Error::config(
            "model.base",
            format!(
                "question answering is implemented for BERT and GPT-2 bases; a {:?} base is not yet (its HF class names the backbone differently)",
                spec.style
            ),
        ));
    }
    train_set.questions = train_subset(cfg, std::mem::take(&mut train_set.questions));
    let max_len = window(cfg, spec.context);
    let train = Split::read(train_set, &cfg.data.train, &tokenizer, max_len, &cfg.qa)?;
    let read = |path: &Path, limit: usize| -> Result<Option<Split>> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let mut set = read_questions(path, &cfg.data)?;
        if limit > 0 {
            set.questions.truncate(limit);
        }
        Ok(Some(Split::read(set, path, &tokenizer, max_len, &cfg.qa)?))
    };
    let validation = read(&cfg.data.validation, cfg.data.max_validation_rows)?;
    let test = read(&cfg.data.test, 0)?;
    let lora = model::prepare(&mut store, &spec, cfg, &labels)?;
    let head = HeadRun { cfg, run_dir, opts, resuming, precision: placement.precision, kind: HeadKind::Span };
    let parts = HeadParts { cfg, spec, labels: &labels, store, tokenizer: &tokenizer, lora };
    let announce = |total| announce(cfg, &train, validation.as_ref(), test.as_ref(), total);
    let HeadRunEnd { summary, mut out, finish } =
        head.run(parts, train.features.len(), validation.is_some(), observers, &announce, |parts| {
            QuestionAnswering::new(parts, &train.features, validation.as_ref().map(Split::view))
        })?;
    if !finish {
        return Ok((summary, out));
    }
    let final_split = test.as_ref().map(|s| ("test", s)).or(validation.as_ref().map(|s| ("validation", s)));
    if let Some((name, split)) = final_split {
        let saved = LoadedClassifier::load(&out.model_dir, &placement.device)?;
        let pad = model::pad_id(&saved.tokenizer);
        let ev = evaluate(&saved.classifier, &split.view(), &cfg.qa, t.eval_batch_size, pad, &placement.device)?;
        out.final_split = Some(name.to_string());
        out.final_qa = Some(ev);
    }
    write_results(run_dir, cfg, &out, [Some(&train), validation.as_ref(), test.as_ref()])?;
    Ok((summary, out))
}

/// The run's data, as the start of the log says it.
fn announce(cfg: &FinetuneConfig, train: &Split, validation: Option<&Split>, test: Option<&Split>, total: u64) {
    let mode = cfg.log.progress.mode();
    let count = |s: &Split| {
        format!("{} questions ({} unanswerable) in {} windows", s.questions.len(), s.unanswerable(), s.features.len())
    };
    let mut line = format!("questions: {} train", count(train));
    for (name, s) in [("validation", validation), ("test", test)] {
        if let Some(s) = s {
            line += &format!(", {} {name}", count(s));
        }
    }
    let v2 = cfg.qa.version_2_with_negative.unwrap_or(false);
    line += &format!("; SQuAD {} rules; {total} steps in all", if v2 { "v2.0" } else { "v1.1" });
    crate::progress::note(mode, &line);
    for s in [Some(train), validation, test].into_iter().flatten() {
        if s.bad.total() > 0 {
            crate::progress::note(mode, &format!("{}: {}", s.file.display(), s.bad.summary()));
        }
    }
}

fn write_results(run_dir: &Path, cfg: &FinetuneConfig, s: &FinetuneSummary, splits: [Option<&Split>; 3]) -> Result<()> {
    let mut bad = BadRows::default();
    let mut sizes = serde_json::Map::new();
    for (name, split) in ["train", "validation", "test"].into_iter().zip(splits) {
        if let Some(split) = split {
            add_bad_rows(&mut bad, &split.bad);
            let size = json!({"questions": split.questions.len(), "unanswerable": split.unanswerable(), "windows": split.features.len()});
            sizes.insert(name.into(), size);
        }
    }
    let metrics = s.final_qa.as_ref().map(|e| json!(e));
    let mut results = head_run::results(cfg, s, json!({}), &bad, metrics);
    results.insert("qa".into(), json!(cfg.qa));
    results.insert("data".into(), sizes.into());
    crate::fsio::write_json_atomic(&run_dir.join("results.json"), &results)
}

/// The QA settings of a loaded model: those it was trained with, else `run_qa.py`'s defaults
/// (SQuAD v2.0 rules when the question file is labelled and says v2.0 or has an unanswerable
/// question; questions without answers in an unlabelled file are just unlabelled).
fn settings(model: &LoadedClassifier, set: &QaSet) -> QaConfig {
    let mut qa = model.config.as_ref().map(|c| c.qa.clone()).unwrap_or_default();
    let labelled = set.questions.iter().any(|q| !q.answers.is_empty());
    qa.version_2_with_negative.get_or_insert(set.v2 && labelled);
    qa
}

/// `lmforge eval classification` on a QA model: SQuAD's exact match and F1 on a question file.
pub fn eval_file(
    model: &LoadedClassifier,
    data: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<(QaEvaluation, BadRows)> {
    let set = read_questions(data, reader)?;
    let qa = settings(model, &set);
    let split = Split::read(set, data, &model.tokenizer, model.max_length(), &qa)?;
    let pad = model::pad_id(&model.tokenizer);
    let ev = evaluate(&model.classifier, &split.view(), &qa, batch_size, pad, model.params.device())?;
    Ok((ev, split.bad))
}

/// What `predict` did with a QA model.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerSummary {
    pub questions: usize,
    pub answered: usize,
    pub bad_rows: BadRows,
    /// Exact match and F1 on the questions that carried answers (SQuAD rules), if any did.
    pub metrics: Option<SquadMetrics>,
}

/// `lmforge predict` with a QA model: one JSON line per usable question, in input order:
/// `{"id", "question", "answer", "start", "end", "score", "probability"}` (plus `"gold"` when
/// the question had answers).
pub fn predict_file(
    model: &LoadedClassifier,
    input: &Path,
    output: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<AnswerSummary> {
    let set = read_questions(input, reader)?;
    let qa = settings(model, &set);
    let v2 = qa.version_2_with_negative.unwrap_or(false);
    let split = Split::read(set, input, &model.tokenizer, model.max_length(), &qa)?;
    let pad = model::pad_id(&model.tokenizer);
    let logits = span_logits(&model.classifier, &split.features, batch_size, pad, model.params.device())?;
    let predicted = answers(&split.questions, &split.features, &logits, &qa, v2);
    let labelled = split.questions.iter().any(|q| !q.answers.is_empty());
    let mut rows = Vec::with_capacity(predicted.len());
    for (q, a) in split.questions.iter().zip(&predicted) {
        let mut obj = json!({"id": q.id, "question": q.question});
        if let serde_json::Value::Object(fields) = json!(a) {
            obj.as_object_mut().expect("an object").extend(fields);
        }
        if labelled {
            obj["gold"] = json!(q.answer_texts());
        }
        rows.push(obj);
    }
    crate::fsio::write_jsonl_atomic(output, rows)?;
    // A file with answers is a labelled one: all its questions are scored (an unanswerable
    // one's gold is "no answer").
    let metrics = labelled.then(|| {
        let golds: Vec<Vec<String>> = split.questions.iter().map(Question::answer_texts).collect();
        let scored: Vec<Scored> =
            golds.iter().zip(&predicted).map(|(g, p)| Scored { answers: g, prediction: Some(&p.answer) }).collect();
        squad::evaluate(if v2 { SquadVersion::V2 } else { SquadVersion::V1 }, &scored)
    });
    Ok(AnswerSummary {
        questions: split.questions.len(),
        answered: predicted.iter().filter(|a| !a.answer.is_empty()).count(),
        bad_rows: split.bad,
        metrics,
    })
}
