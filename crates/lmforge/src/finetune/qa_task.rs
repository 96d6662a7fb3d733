//! Extractive question answering as a [`Task`] of the one training loop: a [`Classifier`] with a
//! span head (`*ForQuestionAnswering`: two outputs per token, the start and end logits) trains
//! on the windows of [`super::qa_data`] with `BertForQuestionAnswering`'s loss, the mean of the
//! start and end cross-entropies (padding positions are left out of the softmax, so a window's
//! loss does not depend on what it is batched with). Batching, checkpoints, the best model and
//! resume are sequence classification's ([`super::task`]).
//!
//! Answers are chosen as `run_qa.py`'s `postprocess_qa_predictions` does ([`best_answer`]):
//! over every window of a question, the `n_best` highest start and end logits are paired into
//! spans of context tokens with start ≤ end < start + `max_answer_length`, scored by start +
//! end logit; with SQuAD v2.0 the "no answer" score is the smallest `[CLS]` start + end over
//! the windows, and it wins when it beats the best span by more than
//! `null_score_diff_threshold`. Validation scores the answers with the official SQuAD
//! scripts' exact match and F1 ([`crate::metrics::squad`]).

use super::batching::{collate_padded, eval_batches, Encoded};
use super::config::QaConfig;
use super::model::Classifier;
use super::qa_data::{QaFeature, Question};
use super::task::{head_task_methods, with_selected, HeadParts, HeadTuning};
use crate::distributed::DataParallel;
use crate::error::{Error, Result};
use crate::metrics::squad::{evaluate as squad_evaluate, Scored, SquadMetrics, SquadVersion, QA_METRIC_NAMES};
use crate::models::HeadKind;
use crate::nn::DropoutRng;
use crate::ops;
use crate::train::{EvalAt, Task, ValMetrics};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::ops::Range;

/// A question split: its questions and their windows.
pub struct QaSplit<'a> {
    pub questions: &'a [Question],
    pub features: &'a [QaFeature],
}

pub struct QuestionAnswering<'a> {
    pub tuned: HeadTuning<'a>,
    train: &'a [QaFeature],
    validation: Option<QaSplit<'a>>,
}

impl<'a> QuestionAnswering<'a> {
    pub fn new(parts: HeadParts<'a>, train: &'a [QaFeature], validation: Option<QaSplit<'a>>) -> Result<Self> {
        let lengths = train.iter().map(|e| e.input.ids.len()).collect();
        let tuned = HeadTuning::new(parts, HeadKind::Span, lengths)?;
        Ok(Self { tuned, train, validation })
    }

    fn micro_items(&self, step: u64, micro: usize) -> Result<Vec<&QaFeature>> {
        Ok(self.tuned.batches.micro(step, micro)?.into_iter().map(|i| &self.train[i]).collect())
    }
}

/// `BertForQuestionAnswering`'s loss on span logits (B, T, 2): the mean over rows of (CE(start)
/// + CE(end)) / 2, each softmax over the row's `lengths[b]` real positions only.
pub fn span_loss(logits: &Tensor, lengths: &[usize], starts: &[u32], ends: &[u32]) -> Result<Tensor> {
    let (b, t, _) = logits.dims3()?;
    let device = logits.device();
    // A large negative logit at padding positions: they take no probability and no gradient.
    let mask: Vec<f32> = lengths.iter().flat_map(|&n| (0..t).map(move |i| if i < n { 0.0 } else { -1e9 })).collect();
    let mask = Tensor::from_vec(mask, (b, t), device)?.to_dtype(logits.dtype())?;
    let side = |k: usize, targets: &[u32]| -> Result<Tensor> {
        let l = (logits.narrow(2, k, 1)?.squeeze(2)? + &mask)?;
        Ok(ops::cross_entropy(&l, &Tensor::from_slice(targets, targets.len(), device)?)?)
    };
    Ok(((side(0, starts)? + side(1, ends)?)? * 0.5)?)
}

impl Task for QuestionAnswering<'_> {
    head_task_methods!();

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        let all = self.micro_items(step, micro)?;
        // Every share padded to the micro-batch's longest row: the same shapes in any split.
        let width = all.iter().map(|f| f.input.ids.len()).max().unwrap_or(1);
        let share = rows.len() as f64 / all.len() as f64;
        let mine = &all[rows];
        let inputs: Vec<&Encoded> = mine.iter().map(|f| &f.input).collect();
        let batch = collate_padded(&inputs, self.tuned.pad, width, self.tuned.device())?;
        let logits = self.tuned.classifier.logits(&batch, Some(dropout))?;
        let starts: Vec<u32> = mine.iter().map(|f| f.start as u32).collect();
        let ends: Vec<u32> = mine.iter().map(|f| f.end as u32).collect();
        let loss = span_loss(&logits, &batch.lengths, &starts, &ends)?;
        Ok(if share == 1.0 { loss } else { (loss * share)? })
    }

    /// Every process answers the whole validation split (not split over processes yet).
    fn validate(&self, _dp: &DataParallel, _at: EvalAt) -> Result<ValMetrics> {
        let Some(val) = &self.validation else {
            return Err(Error::Invalid("no validation split (data.validation) to evaluate".into()));
        };
        let cfg = self.tuned.cfg;
        let ev = evaluate(
            &self.tuned.classifier,
            val,
            &cfg.qa,
            cfg.train.eval_batch_size,
            self.tuned.pad,
            self.tuned.device(),
        )?;
        let metric = cfg.metric();
        let m = &ev.metrics;
        let mut extra = vec![("exact", m.exact), ("f1", m.f1)];
        if let (Some(has), Some(no)) = (m.has_answer, m.no_answer) {
            extra.extend([("has_ans_f1", has.f1), ("no_ans_f1", no.f1)]);
        }
        let extra = with_selected(extra, metric, &QA_METRIC_NAMES, || {
            ev.get(metric).ok_or_else(|| Error::config("train.metric", format!("unknown {metric:?}")))
        })?;
        Ok(ValMetrics { loss: ev.loss, ppl: f64::NAN, bits_per_byte: None, extra })
    }

    fn describe(&self) -> String {
        self.tuned.describe("question-answering fine-tuning", "outputs", &format!("{} train windows", self.train.len()))
    }
}

/// Start and end logits of one window, over its real tokens.
pub struct SpanLogits {
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

/// The span logits of every window, batches sorted by length.
pub fn span_logits(
    model: &Classifier,
    features: &[QaFeature],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<Vec<SpanLogits>> {
    let lengths: Vec<usize> = features.iter().map(|f| f.input.ids.len()).collect();
    let mut out: Vec<Option<SpanLogits>> = (0..features.len()).map(|_| None).collect();
    for batch in eval_batches(&lengths, batch_size) {
        let items: Vec<&Encoded> = batch.iter().map(|&i| &features[i].input).collect();
        let b = collate_padded(&items, pad, 1, device)?;
        let logits = model.logits(&b, None)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        for (i, rows) in batch.into_iter().zip(logits) {
            let rows = &rows[..lengths[i]];
            out[i] = Some(SpanLogits {
                start: rows.iter().map(|r| r[0]).collect(),
                end: rows.iter().map(|r| r[1]).collect(),
            });
        }
    }
    Ok(out.into_iter().map(|s| s.expect("every window batched")).collect())
}

/// A question's chosen answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QaAnswer {
    /// The context substring, without whitespace at its ends (empty: no answer, SQuAD v2.0).
    pub answer: String,
    /// Character offsets of the answer in the context (end exclusive); None for no answer.
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// Start + end logit of the chosen span (of the null answer when there is none).
    pub score: f64,
    /// Its softmax probability over the `n_best` candidates, as `run_qa.py` reports it.
    pub probability: f64,
}

/// One candidate of `run_qa.py`'s n-best list.
#[derive(Clone)]
struct Candidate {
    offsets: (usize, usize),
    score: f64,
    start_logit: f64,
    end_logit: f64,
    null: bool,
}

/// The indices of the `n` largest values, largest first (numpy's `argsort(x)[-1:-n-1:-1]`;
/// equal values: the later index first).
fn top_indices(x: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(b.cmp(&a)));
    order.truncate(n);
    order
}

/// The substring of `context` between two character offsets.
fn char_slice(context: &str, (start, end): (usize, usize)) -> String {
    context.chars().skip(start).take(end.saturating_sub(start)).collect()
}

/// `run_qa.py`'s `postprocess_qa_predictions` for one question over its windows (`features`
/// with their `logits`); see the module doc.
pub fn best_answer(context: &str, windows: &[(&QaFeature, &SpanLogits)], qa: &QaConfig, v2: bool) -> QaAnswer {
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut min_null: Option<Candidate> = None;
    for (f, logits) in windows {
        let (s, e) = (&logits.start, &logits.end);
        let null = (s[0] + e[0]) as f64;
        if min_null.as_ref().is_none_or(|m| m.score > null) {
            let (start_logit, end_logit) = (s[0] as f64, e[0] as f64);
            min_null = Some(Candidate { offsets: (0, 0), score: null, start_logit, end_logit, null: true });
        }
        let offsets = &f.context_offsets;
        for &si in &top_indices(s, qa.n_best) {
            for &ei in &top_indices(e, qa.n_best) {
                let (Some(Some(a)), Some(Some(b))) = (offsets.get(si), offsets.get(ei)) else { continue };
                if ei < si || ei - si + 1 > qa.max_answer_length {
                    continue;
                }
                let (start_logit, end_logit) = (s[si] as f64, e[ei] as f64);
                candidates.push(Candidate {
                    offsets: (a.0, b.1),
                    score: (s[si] + e[ei]) as f64,
                    start_logit,
                    end_logit,
                    null: false,
                });
            }
        }
    }
    let null_score = min_null.as_ref().map_or(0.0, |m| m.score);
    if v2 {
        candidates.extend(min_null.clone());
    }
    // Python's `sorted(..., reverse=True)` is stable: equal scores keep their order.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(qa.n_best);
    if v2 && !candidates.iter().any(|c| c.null) {
        candidates.extend(min_null);
    }
    let mut texts: Vec<(String, &Candidate)> = candidates.iter().map(|c| (char_slice(context, c.offsets), c)).collect();
    let empty = Candidate { offsets: (0, 0), score: 0.0, start_logit: 0.0, end_logit: 0.0, null: false };
    if texts.is_empty() || (texts.len() == 1 && texts[0].0.is_empty()) {
        texts.insert(0, ("empty".to_string(), &empty));
    }
    let max = texts.iter().map(|(_, c)| c.score).fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = texts.iter().map(|(_, c)| (c.score - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let pick = |i: usize| {
        let (text, c) = &texts[i];
        let real = !c.null && !std::ptr::eq(*c, &empty);
        // A byte-level BPE's offsets include the space before a word: the answer is given
        // without the whitespace at its ends (SQuAD's scores ignore it either way).
        let trimmed = text.trim_start();
        let start = c.offsets.0 + (text.chars().count() - trimmed.chars().count());
        let trimmed = trimmed.trim_end();
        QaAnswer {
            answer: if real { trimmed.to_string() } else { text.clone() },
            start: real.then_some(start),
            end: real.then_some(start + trimmed.chars().count()),
            score: c.score,
            probability: exp[i] / sum,
        }
    };
    if !v2 {
        return pick(0);
    }
    let Some(best) = texts.iter().position(|(t, _)| !t.is_empty()) else {
        return QaAnswer { answer: String::new(), start: None, end: None, score: null_score, probability: 1.0 };
    };
    let c = texts[best].1;
    if null_score - c.start_logit - c.end_logit > qa.null_score_diff_threshold {
        let at = texts.iter().position(|(_, c)| c.null);
        let probability = at.map_or(0.0, |i| exp[i] / sum);
        QaAnswer { answer: String::new(), start: None, end: None, score: null_score, probability }
    } else {
        pick(best)
    }
}

/// The answer to every question from its windows' logits (a question without windows gets
/// the empty answer).
pub fn answers(
    questions: &[Question],
    features: &[QaFeature],
    logits: &[SpanLogits],
    qa: &QaConfig,
    v2: bool,
) -> Vec<QaAnswer> {
    let mut by_question: Vec<Vec<(&QaFeature, &SpanLogits)>> = vec![Vec::new(); questions.len()];
    for (f, l) in features.iter().zip(logits) {
        by_question[f.question].push((f, l));
    }
    questions
        .iter()
        .zip(by_question)
        .map(|(q, windows)| {
            if windows.is_empty() {
                QaAnswer { answer: String::new(), start: None, end: None, score: f64::NAN, probability: 0.0 }
            } else {
                best_answer(&q.context, &windows, qa, v2)
            }
        })
        .collect()
}

/// Loss and SQuAD metrics of a QA model on a question split.
#[derive(Debug, Clone, Serialize)]
pub struct QaEvaluation {
    /// Mean over windows of (CE(start) + CE(end)) / 2 against the training targets (nats).
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: SquadMetrics,
}

impl QaEvaluation {
    /// A metric by name: `loss` or one of [`SquadMetrics::get`]'s.
    pub fn get(&self, name: &str) -> Option<f64> {
        if name == "loss" {
            Some(self.loss)
        } else {
            self.metrics.get(name)
        }
    }
}

/// −log softmax(x)[i].
fn nll(x: &[f32], i: usize) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - x[i] as f64
}

/// Answers every question of `split` and scores the answers against the gold ones (SQuAD v2.0
/// rules when `qa.version_2_with_negative` says so).
pub fn evaluate(
    model: &Classifier,
    split: &QaSplit,
    qa: &QaConfig,
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<QaEvaluation> {
    let logits = span_logits(model, split.features, batch_size, pad, device)?;
    Ok(score(split, &logits, qa))
}

/// [`evaluate`] from already computed logits.
pub fn score(split: &QaSplit, logits: &[SpanLogits], qa: &QaConfig) -> QaEvaluation {
    let v2 = qa.version_2_with_negative.unwrap_or(false);
    let predicted = answers(split.questions, split.features, logits, qa, v2);
    let golds: Vec<Vec<String>> = split.questions.iter().map(Question::answer_texts).collect();
    let scored: Vec<Scored> =
        golds.iter().zip(&predicted).map(|(g, p)| Scored { answers: g, prediction: Some(&p.answer) }).collect();
    let version = if v2 { SquadVersion::V2 } else { SquadVersion::V1 };
    let n = split.features.len().max(1) as f64;
    let loss = split
        .features
        .iter()
        .zip(logits)
        .map(|(f, l)| (nll(&l.start, f.start) + nll(&l.end, f.end)) / 2.0)
        .sum::<f64>()
        / n;
    QaEvaluation { loss, metrics: squad_evaluate(version, &scored) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One window "[CLS] q [SEP] Ann met Bob [SEP]": context tokens 3, 4, 5.
    fn window() -> QaFeature {
        QaFeature {
            question: 0,
            input: Encoded { ids: vec![0; 7], type_ids: vec![0; 7], label: None },
            context_offsets: vec![None, None, None, Some((0, 3)), Some((4, 7)), Some((8, 11)), None],
            start: 0,
            end: 0,
        }
    }

    fn answer(start: &[f32], end: &[f32], qa: &QaConfig, v2: bool) -> QaAnswer {
        let f = window();
        let l = SpanLogits { start: start.to_vec(), end: end.to_vec() };
        best_answer("Ann met Bob", &[(&f, &l)], qa, v2)
    }

    #[test]
    fn the_best_span_is_the_highest_start_plus_end_over_context_tokens() {
        let qa = QaConfig::default();
        // The question token 1 has the highest logits but is not in the context.
        let a = answer(&[0.0, 9.0, 0.0, 1.0, 3.0, 0.0, 0.0], &[0.0, 9.0, 0.0, 0.0, 0.5, 2.0, 0.0], &qa, false);
        assert_eq!((a.answer.as_str(), a.start, a.end, a.score), ("met Bob", Some(4), Some(11), 5.0));
        // An end before the start is never paired: the best valid span wins.
        let a = answer(&[0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0], &[0.0, 0.0, 0.0, 3.0, 0.0, 1.0, 0.0], &qa, false);
        assert_eq!(a.answer, "Bob");
        // max_answer_length bounds the span in tokens.
        let short = QaConfig { max_answer_length: 1, ..QaConfig::default() };
        let a = answer(&[0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0], &short, false);
        assert!(a.answer == "Ann" || a.answer == "Bob", "{a:?}");
    }

    #[test]
    fn v2_abstains_when_the_null_score_beats_the_best_span() {
        let qa = QaConfig::default();
        let (start, end) = ([5.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        let a = answer(&start, &end, &qa, true);
        assert_eq!((a.answer.as_str(), a.start, a.score), ("", None, 10.0), "null 10 > span 4");
        // v1 always answers.
        assert_eq!(answer(&start, &end, &qa, false).answer, "met Bob");
        // A threshold above the difference keeps the span.
        let lenient = QaConfig { null_score_diff_threshold: 6.5, ..QaConfig::default() };
        assert_eq!(answer(&start, &end, &lenient, true).answer, "met Bob");
    }

    #[test]
    fn top_indices_are_numpy_argsort_reversed() {
        assert_eq!(top_indices(&[1.0, 3.0, 2.0, 3.0], 3), vec![3, 1, 2]);
        assert_eq!(top_indices(&[1.0], 5), vec![0]);
    }
}
