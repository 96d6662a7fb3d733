//! Extractive question-answering data: questions over a context, each answer a character span
//! of the context. Read from SQuAD JSON (v1.1 / v2.0: `data[].paragraphs[].{context, qas[]}`,
//! `is_impossible`) or JSONL rows as Hugging Face's `squad` / `squad_v2` datasets export them
//! (`id`, `question`, `context`, `answers: {text: [...], answer_start: [...]}`). A question
//! with no answers is unanswerable (SQuAD v2.0). Bad questions (an answer that is not at its
//! `answer_start` in the context, an empty question or context) are counted with their place
//! in the file, or fail with `data.bad_rows = "fail"`.
//!
//! Encoding is `run_qa.py`'s: the question (left-stripped) and the context as the tokenizer's
//! pair, the context cut into overlapping windows ([`TextTokenizer::encode_qa`]); each window
//! keeps its tokens' character offsets in the context, and its training target is the first
//! and last token of the first answer when the window holds all of it, else the `[CLS]`
//! position (the "no answer" of SQuAD v2.0; the first position for tokenizers without one).

use super::batching::Encoded;
use super::config::{BadRowPolicy, ClsDataConfig};
use super::dataset::{jsonl_objects, BadRows, Policy, Reason};
use crate::error::{Error, IoContext, Result};
use crate::tokenizer::TextTokenizer;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// One answer: its text and its first character in the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub start: usize,
}

/// One question over a context.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    /// Where it is in its file: `line N` (JSONL) or `data[i].paragraphs[j].qas[k]`.
    pub at: String,
    pub question: String,
    /// Shared by the questions of a paragraph.
    pub context: Arc<str>,
    /// Empty: unanswerable (or, for prediction inputs, not given).
    pub answers: Vec<Answer>,
}

impl Question {
    pub fn answer_texts(&self) -> Vec<String> {
        self.answers.iter().map(|a| a.text.clone()).collect()
    }
}

/// A question file, read.
#[derive(Debug, Clone)]
pub struct QaSet {
    pub questions: Vec<Question>,
    pub bad: BadRows,
    /// SQuAD v2.0 semantics: the file says `"version": "v2.0"`, or has an unanswerable question.
    pub v2: bool,
}

/// Reads a SQuAD JSON file (a JSON object with `data`) or JSONL rows.
pub fn read_questions(path: &Path, cfg: &ClsDataConfig) -> Result<QaSet> {
    let mut policy = Policy { path, fail: cfg.bad_rows == BadRowPolicy::Fail, bad: BadRows::default() };
    let text = std::fs::read_to_string(path).at(path)?;
    let whole = if text.trim_start().starts_with('{') { serde_json::from_str::<Value>(&text).ok() } else { None };
    let (raw, mut v2) = match whole.as_ref().and_then(|v| v.get("data").map(|d| (v, d))) {
        Some((doc, data)) => {
            let version = doc.get("version").and_then(Value::as_str).unwrap_or_default();
            (read_squad(path, data, &mut policy)?, version.trim_start_matches('v').starts_with('2'))
        }
        None => (read_jsonl(path, &mut policy)?, false),
    };
    let mut questions = Vec::with_capacity(raw.len());
    for q in raw {
        if q.question.trim().is_empty() || q.context.is_empty() {
            policy.reject_at(
                &q.at,
                &q.at,
                Reason::EmptyText,
                format!("question {:?}: an empty question or context", q.id),
            )?;
            continue;
        }
        if let Some(a) = q.answers.iter().find(|a| !answer_is_at(&q.context, a)) {
            let detail =
                format!("question {:?}: the answer {:?} is not at character {} of the context", q.id, a.text, a.start);
            policy.reject_at(&q.at, &q.at, Reason::Malformed, detail)?;
            continue;
        }
        v2 |= q.answers.is_empty();
        questions.push(q);
    }
    if questions.is_empty() {
        let why = if policy.bad.total() > 0 { format!(": {}", policy.bad.summary()) } else { String::new() };
        return Err(Error::format(path, format!("no usable questions{why}")));
    }
    Ok(QaSet { questions, bad: policy.bad, v2 })
}

/// Whether `a.text` is the context's text at character `a.start`.
fn answer_is_at(context: &str, a: &Answer) -> bool {
    !a.text.is_empty() && context.chars().skip(a.start).take(a.text.chars().count()).eq(a.text.chars())
}

/// SQuAD's `answers` list (`[{text, answer_start}]`) or datasets' columns (`{text: [..],
/// answer_start: [..]}`); None when malformed.
fn answers_of(v: Option<&Value>) -> Option<Vec<Answer>> {
    let answer = |text: &Value, start: &Value| -> Option<Answer> {
        Some(Answer { text: text.as_str()?.to_string(), start: start.as_u64()? as usize })
    };
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(|a| answer(a.get("text")?, a.get("answer_start")?)).collect(),
        Some(Value::Object(cols)) => {
            let texts = cols.get("text")?.as_array()?;
            let starts = cols.get("answer_start")?.as_array()?;
            if texts.len() != starts.len() {
                return None;
            }
            texts.iter().zip(starts).map(|(t, s)| answer(t, s)).collect()
        }
        Some(_) => None,
    }
}

fn text_field(o: &serde_json::Map<String, Value>, key: &str) -> String {
    o.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn read_squad(path: &Path, data: &Value, policy: &mut Policy) -> Result<Vec<Question>> {
    let Some(articles) = data.as_array() else {
        return Err(Error::format(path, "`data` is not a list of articles (SQuAD JSON)"));
    };
    let mut out = Vec::new();
    for (i, article) in articles.iter().enumerate() {
        let paragraphs = article.get("paragraphs").and_then(Value::as_array);
        for (j, p) in paragraphs.into_iter().flatten().enumerate() {
            let context: Arc<str> = p.get("context").and_then(Value::as_str).unwrap_or_default().into();
            let qas = p.get("qas").and_then(Value::as_array);
            for (k, qa) in qas.into_iter().flatten().enumerate() {
                let at = format!("data[{i}].paragraphs[{j}].qas[{k}]");
                let Some(o) = qa.as_object() else {
                    policy.reject_at(&at, &at, Reason::Malformed, "not a JSON object".into())?;
                    continue;
                };
                let impossible = o.get("is_impossible").and_then(Value::as_bool).unwrap_or(false);
                let Some(answers) = answers_of(o.get("answers")) else {
                    policy.reject_at(
                        &at,
                        &at,
                        Reason::Malformed,
                        "`answers` is not a list of {text, answer_start}".into(),
                    )?;
                    continue;
                };
                out.push(Question {
                    id: o.get("id").map(id_text).unwrap_or_else(|| at.clone()),
                    question: text_field(o, "question").trim_start().to_string(),
                    context: context.clone(),
                    answers: if impossible { Vec::new() } else { answers },
                    at,
                });
            }
        }
    }
    Ok(out)
}

fn id_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn read_jsonl(path: &Path, policy: &mut Policy) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (line, o) in jsonl_objects(path, policy)? {
        let at = format!("line {line}");
        let Some(answers) = answers_of(o.get("answers")) else {
            let detail = "`answers` is not {text: [...], answer_start: [...]} or a list of {text, answer_start}";
            policy.reject(line, Reason::Malformed, detail.into())?;
            continue;
        };
        out.push(Question {
            id: o.get("id").map(id_text).unwrap_or_else(|| line.to_string()),
            question: text_field(&o, "question").trim_start().to_string(),
            context: text_field(&o, "context").into(),
            answers,
            at,
        });
    }
    Ok(out)
}

/// One window of a question, encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct QaFeature {
    /// The question's index in its set.
    pub question: usize,
    /// Token ids and segment ids (no label).
    pub input: Encoded,
    /// Per token, its character span in the context (None outside the context).
    pub context_offsets: Vec<Option<(usize, usize)>>,
    /// The training target: the answer's first and last token, or the `[CLS]` position.
    pub start: usize,
    pub end: usize,
}

/// Questions that have no window: their index and why.
pub type Rejected = Vec<(usize, String)>;

/// The windows of every question ([`TextTokenizer::encode_qa`]), in order, and the questions
/// that have none.
pub fn encode_questions(
    questions: &[Question],
    tokenizer: &TextTokenizer,
    max_len: usize,
    stride: usize,
) -> Result<(Vec<QaFeature>, Rejected)> {
    let pairs: Vec<(&str, &str)> = questions.iter().map(|q| (q.question.as_str(), &*q.context)).collect();
    let cls = ["[CLS]", "<s>"].iter().find_map(|t| tokenizer.token_id(t));
    let mut features = Vec::new();
    let mut rejected = Vec::new();
    for (i, windows) in tokenizer.encode_qa(&pairs, max_len, stride)?.into_iter().enumerate() {
        let windows = match windows {
            Ok(w) => w,
            Err(why) => {
                rejected.push((i, why));
                continue;
            }
        };
        for w in windows {
            let cls_at = cls.and_then(|c| w.ids.iter().position(|&id| id == c)).unwrap_or(0);
            let (start, end) = questions[i]
                .answers
                .first()
                .and_then(|a| answer_tokens(&w.context_offsets, a))
                .unwrap_or((cls_at, cls_at));
            features.push(QaFeature {
                question: i,
                input: Encoded { ids: w.ids, type_ids: w.type_ids, label: None },
                context_offsets: w.context_offsets,
                start,
                end,
            });
        }
    }
    Ok((features, rejected))
}

/// The first and last token of `answer` in a window, when the window's context holds all of
/// it: the last context token starting at or before the answer's start, and the first ending
/// at or after its end (`run_qa.py`'s scan, kept within the context tokens).
pub fn answer_tokens(offsets: &[Option<(usize, usize)>], answer: &Answer) -> Option<(usize, usize)> {
    let (start_char, end_char) = (answer.start, answer.start + answer.text.chars().count());
    let context: Vec<(usize, (usize, usize))> =
        offsets.iter().enumerate().filter_map(|(i, o)| o.map(|o| (i, o))).collect();
    let (first, last) = (context.first()?, context.last()?);
    if !(first.1 .0 <= start_char && last.1 .1 >= end_char) {
        return None;
    }
    let start = context.iter().take_while(|(_, o)| o.0 <= start_char).last()?.0;
    let end = context.iter().rev().take_while(|(_, o)| o.1 >= end_char).last()?.0;
    Some((start, end.max(start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_tokens_cover_the_answer_or_say_it_is_outside() {
        // "[CLS] q [SEP] The cat sat [SEP]": context tokens at 3, 4, 5.
        let offsets = vec![None, None, None, Some((0, 3)), Some((4, 7)), Some((8, 11)), None];
        let a = |text: &str, start| Answer { text: text.into(), start };
        assert_eq!(answer_tokens(&offsets, &a("cat", 4)), Some((4, 4)));
        assert_eq!(answer_tokens(&offsets, &a("cat sat", 4)), Some((4, 5)));
        assert_eq!(answer_tokens(&offsets, &a("at", 5)), Some((4, 4)), "inside a token: that token");
        assert_eq!(answer_tokens(&offsets, &a("The", 0)), Some((3, 3)));
        assert_eq!(answer_tokens(&offsets, &a("sat down", 8)), None, "ends past the window");
        let window = vec![None, Some((8, 11)), Some((12, 16)), None];
        assert_eq!(answer_tokens(&window, &a("cat", 4)), None, "starts before the window");
    }

    #[test]
    fn answers_read_in_both_layouts() {
        let squad: Value = serde_json::json!([{"text": "b", "answer_start": 2}]);
        let columns: Value = serde_json::json!({"text": ["b"], "answer_start": [2]});
        let want = vec![Answer { text: "b".into(), start: 2 }];
        assert_eq!(answers_of(Some(&squad)), Some(want.clone()));
        assert_eq!(answers_of(Some(&columns)), Some(want));
        assert_eq!(answers_of(Some(&serde_json::json!({"text": ["b"], "answer_start": []}))), None);
        assert!(answer_is_at("a b", &Answer { text: "b".into(), start: 2 }));
        assert!(!answer_is_at("a b", &Answer { text: "b".into(), start: 1 }));
        assert!(answer_is_at("é b", &Answer { text: "b".into(), start: 2 }), "character, not byte, offsets");
    }
}
