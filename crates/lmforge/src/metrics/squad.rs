//! SQuAD's exact match and F1 over a question set, as the official evaluation scripts compute
//! them: v1.1 (`evaluate-v1.1.py`: every question has gold answers; a question's score is the
//! best over them; a question without a prediction scores 0) and v2.0 (`evaluate-v2.0.py`:
//! gold answers that normalize to nothing are dropped and an unanswerable question's gold is
//! `""`, so the empty prediction is the right abstention; the empty-vs-empty F1 is 1, not v1's
//! 0; the scores are also split into answerable (`HasAns`) and unanswerable (`NoAns`)
//! questions). The answer normalization (lowercase, ASCII punctuation and the articles removed,
//! Python's whitespace split) is the scripts' own, shared with the generation metrics
//! ([`super::generation`]). Scores are 0..100, summed in the data's order as the scripts do;
//! checked against both scripts in `tests/data/squad.json`.

use super::generation::{exact_match, normalize_answer, py_split, squad_f1, token_f1};
use serde::Serialize;

/// Which official script's rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SquadVersion {
    #[serde(rename = "1.1")]
    V1,
    #[serde(rename = "2.0")]
    V2,
}

/// The names a QA run can select its best model by (besides `loss`), all higher-is-better
/// ([`SquadMetrics::get`]; the `has_ans` / `no_ans` parts need SQuAD v2.0 data).
pub const QA_METRIC_NAMES: [&str; 6] = ["exact", "f1", "has_ans_exact", "has_ans_f1", "no_ans_exact", "no_ans_f1"];

/// One question: its gold answer texts (none: unanswerable) and the prediction (None: the
/// system gave none).
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    pub answers: &'a [String],
    pub prediction: Option<&'a str>,
}

/// Exact match and F1 over a subset of the questions (0..100) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SquadScore {
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
}

/// The script's report: `exact` (v1.1 prints it as `exact_match`), `f1`, `total`, and for
/// v2.0 the `HasAns_*` / `NoAns_*` parts when the set has such questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SquadMetrics {
    pub version: SquadVersion,
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
    #[serde(rename = "HasAns", skip_serializing_if = "Option::is_none")]
    pub has_answer: Option<SquadScore>,
    #[serde(rename = "NoAns", skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<SquadScore>,
}

impl SquadMetrics {
    /// A metric by name: `exact`, `f1`, `has_ans_exact`, `has_ans_f1`, `no_ans_exact`,
    /// `no_ans_f1`.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "exact" | "exact_match" => Some(self.exact),
            "f1" => Some(self.f1),
            "has_ans_exact" => self.has_answer.map(|s| s.exact),
            "has_ans_f1" => self.has_answer.map(|s| s.f1),
            "no_ans_exact" => self.no_answer.map(|s| s.exact),
            "no_ans_f1" => self.no_answer.map(|s| s.f1),
            _ => None,
        }
    }
}

impl SquadMetrics {
    /// The report as lines: exact match and F1 over all questions, and v2.0's parts.
    pub fn table(&self) -> String {
        let version = match self.version {
            SquadVersion::V1 => "v1.1",
            SquadVersion::V2 => "v2.0",
        };
        let mut out = format!("SQuAD {version} rules      exact    f1      questions\n");
        let mut row = |name: &str, s: SquadScore| {
            out += &format!("{name:<22}{:>7.2}  {:>6.2}  {:>9}\n", s.exact, s.f1, s.total);
        };
        row("all", SquadScore { exact: self.exact, f1: self.f1, total: self.total });
        if let Some(s) = self.has_answer {
            row("with an answer", s);
        }
        if let Some(s) = self.no_answer {
            row("without an answer", s);
        }
        out
    }
}

/// v1.1's (exact, F1) of one prediction, each the best over the gold answers.
pub fn v1_score(prediction: &str, answers: &[String]) -> (f64, f64) {
    (exact_match(prediction, answers), token_f1(prediction, answers))
}

/// v2.0's `get_tokens`: nothing for an empty string, else the normalized words.
fn v2_tokens(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    py_split(&normalize_answer(s)).map(str::to_string).collect()
}

/// v2.0's `compute_f1` of one gold answer: v1.1's token F1, except that an empty side scores 1
/// when both are empty (v1.1: 0).
fn v2_f1(gold: &str, prediction: &str) -> f64 {
    let (gold_tokens, pred) = (v2_tokens(gold), v2_tokens(prediction));
    if gold_tokens.is_empty() || pred.is_empty() {
        return if gold_tokens == pred { 1.0 } else { 0.0 };
    }
    let pred: Vec<&str> = pred.iter().map(String::as_str).collect();
    squad_f1(&pred, gold)
}

/// v2.0's (exact, F1) of one prediction: gold answers that normalize to nothing are dropped,
/// and none left means the gold is `""`.
pub fn v2_score(prediction: &str, answers: &[String]) -> (f64, f64) {
    let golds: Vec<&str> = answers.iter().map(String::as_str).filter(|a| !normalize_answer(a).is_empty()).collect();
    let golds = if golds.is_empty() { vec![""] } else { golds };
    let normalized = normalize_answer(prediction);
    let exact = golds.iter().any(|g| normalize_answer(g) == normalized);
    let f1 = golds.iter().map(|g| v2_f1(g, prediction)).fold(f64::NEG_INFINITY, f64::max);
    (if exact { 1.0 } else { 0.0 }, f1)
}

fn percent(scores: &[(f64, f64)]) -> SquadScore {
    let total = scores.len();
    let sum = |f: fn(&(f64, f64)) -> f64| scores.iter().map(f).sum::<f64>();
    let (exact, f1) = if total == 0 {
        (0.0, 0.0)
    } else {
        (100.0 * sum(|s| s.0) / total as f64, 100.0 * sum(|s| s.1) / total as f64)
    };
    SquadScore { exact, f1, total }
}

/// The official script's report over `questions`, in order.
pub fn evaluate(version: SquadVersion, questions: &[Scored]) -> SquadMetrics {
    match version {
        SquadVersion::V1 => {
            // A question without a prediction counts in the total with 0.
            let scores: Vec<(f64, f64)> =
                questions.iter().map(|q| q.prediction.map_or((0.0, 0.0), |p| v1_score(p, q.answers))).collect();
            let all = percent(&scores);
            SquadMetrics { version, exact: all.exact, f1: all.f1, total: all.total, has_answer: None, no_answer: None }
        }
        SquadVersion::V2 => {
            // Questions without a prediction are left out (the script skips them).
            let scored: Vec<(bool, (f64, f64))> = questions
                .iter()
                .filter_map(|q| q.prediction.map(|p| (!q.answers.is_empty(), v2_score(p, q.answers))))
                .collect();
            let part = |has: bool| -> Option<SquadScore> {
                let s: Vec<(f64, f64)> = scored.iter().filter(|(h, _)| *h == has).map(|(_, s)| *s).collect();
                (!s.is_empty()).then(|| percent(&s))
            };
            let all = percent(&scored.iter().map(|(_, s)| *s).collect::<Vec<_>>());
            SquadMetrics {
                version,
                exact: all.exact,
                f1: all.f1,
                total: all.total,
                has_answer: part(true),
                no_answer: part(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn empty_answers_differ_between_the_versions() {
        // v1: empty against empty shares no token (F1 0) but normalizes equal (exact 1).
        assert_eq!(v1_score("", &s(&[""])), (1.0, 0.0));
        // v2: the empty prediction is the right answer to an unanswerable question.
        assert_eq!(v2_score("", &[]), (1.0, 1.0));
        assert_eq!(v2_score("the", &[]), (1.0, 1.0), "`the` normalizes to nothing");
        assert_eq!(v2_score("Paris", &[]), (0.0, 0.0));
        assert_eq!(v2_score("", &s(&["Paris"])), (0.0, 0.0));
    }

    #[test]
    fn v2_reports_the_answerable_and_unanswerable_parts() {
        let gold = [s(&["the Eiffel Tower", "Eiffel Tower"]), vec![]];
        let m = evaluate(
            SquadVersion::V2,
            &[
                Scored { answers: &gold[0], prediction: Some("Eiffel tower!") },
                Scored { answers: &gold[1], prediction: Some("x") },
            ],
        );
        assert_eq!((m.exact, m.f1, m.total), (50.0, 50.0, 2));
        assert_eq!(m.has_answer, Some(SquadScore { exact: 100.0, f1: 100.0, total: 1 }));
        assert_eq!(m.no_answer, Some(SquadScore { exact: 0.0, f1: 0.0, total: 1 }));
        let v1 = evaluate(SquadVersion::V1, &[Scored { answers: &gold[0], prediction: None }]);
        assert_eq!((v1.exact, v1.total), (0.0, 1));
    }
}
