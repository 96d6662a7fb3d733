//! Checks against values computed by the reference implementations themselves: the shared
//! metrics fixture, and `tests/data/generation_metrics.json` from `scripts/make_generation_metrics_expected.py` (sacrebleu, rouge-score, NLTK and
//! the SQuAD v1.1 script).

use std::fmt::Display;

use serde_json::Value;

use super::*;

/// The fixture shared with lmforge's other metric tests.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/metrics.json");

/// Reference values written by `scripts/make_generation_metrics_expected.py`.
const EXPECTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/generation_metrics.json");

/// Tolerance for the shared fixture, which holds its values to 1e-6.
const FIXTURE_TOLERANCE: f64 = 1e-6;

/// Tolerance for `expected.json`. The ports do the same floating-point operations in the same
/// order, and on Linux the results are bit-identical (when serde_json parses floats exactly, its
/// `float_roundtrip` feature); the margin is for other platforms' `ln`/`exp`.
const TOLERANCE: f64 = 1e-9;

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn count(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")) as usize
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(text).collect()
}

fn text_lists(v: &Value) -> Vec<Vec<String>> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(texts).collect()
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

/// Collects every mismatch, so that one run shows all of them rather than the first.
#[derive(Default)]
struct Checker {
    failures: Vec<String>,
    checks: usize,
}

impl Checker {
    fn close(&mut self, what: impl Display, actual: f64, expected: f64, tolerance: f64) {
        self.checks += 1;
        if (actual - expected).abs() > tolerance || actual.is_nan() {
            self.failures.push(format!("{what}: got {actual}, expected {expected}"));
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: impl Display, actual: T, expected: T) {
        self.checks += 1;
        if actual != expected {
            self.failures.push(format!("{what}: got {actual:?}, expected {expected:?}"));
        }
    }

    fn bleu(&mut self, what: &str, actual: &Bleu, expected: &Value) {
        self.close(format!("{what} score"), actual.score, num(&expected["score"]), TOLERANCE);
        self.close(format!("{what} bp"), actual.bp, num(&expected["bp"]), TOLERANCE);
        for (n, (a, e)) in actual.precisions.iter().zip(array(&expected["precisions"])).enumerate() {
            self.close(format!("{what} precision {}", n + 1), *a, num(e), TOLERANCE);
        }
        self.equal(format!("{what} sys_len"), actual.sys_len, count(&expected["sys_len"]));
        self.equal(format!("{what} ref_len"), actual.ref_len, count(&expected["ref_len"]));
    }

    fn rouge(&mut self, what: &str, actual: &Rouge, expected: &Value) {
        for (kind, score) in [("rouge1", actual.rouge1), ("rouge2", actual.rouge2), ("rouge_l", actual.rouge_l)] {
            let e = &expected[kind];
            self.close(format!("{what} {kind} precision"), score.precision, num(&e["precision"]), TOLERANCE);
            self.close(format!("{what} {kind} recall"), score.recall, num(&e["recall"]), TOLERANCE);
            self.close(format!("{what} {kind} fmeasure"), score.fmeasure, num(&e["fmeasure"]), TOLERANCE);
        }
    }

    fn finish(self) {
        assert!(self.checks > 0, "nothing was checked");
        let shown: Vec<&String> = self.failures.iter().take(40).collect();
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failures.len(),
            self.checks,
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn shared_fixture_bleu() {
    let fixture = load(FIXTURE);
    let bleu = &fixture["bleu"];
    let hypotheses = texts(&bleu["hypotheses"]);
    // The fixture has one reference stream: one reference per hypothesis.
    let references: Vec<Vec<String>> = texts(&bleu["references"]).into_iter().map(|r| vec![r]).collect();
    let mut check = Checker::default();
    let corpus = corpus_bleu(&hypotheses, &references);
    check.close("corpus BLEU", corpus.score, num(&bleu["corpus_bleu"]), FIXTURE_TOLERANCE);
    check.close("corpus BLEU bp", corpus.bp, num(&bleu["bp"]), FIXTURE_TOLERANCE);
    for (n, expected) in array(&bleu["precisions"]).iter().enumerate() {
        check.close(format!("precision {}", n + 1), corpus.precisions[n], num(expected), FIXTURE_TOLERANCE);
    }
    for (i, expected) in array(&bleu["sentence_bleu"]).iter().enumerate() {
        let actual = sentence_bleu(&hypotheses[i], &references[i]).score;
        check.close(format!("sentence BLEU {i}"), actual, num(expected), FIXTURE_TOLERANCE);
    }
    check.finish();
}

#[test]
fn shared_fixture_rouge() {
    let fixture = load(FIXTURE);
    let bleu = &fixture["bleu"];
    let rouge_fixture = &fixture["rouge"];
    assert_eq!(rouge_fixture["use_stemmer"], Value::Bool(false));
    // The ROUGE values are for the BLEU section's pairs (reference as target).
    let predictions = texts(&bleu["hypotheses"]);
    let references = texts(&bleu["references"]);
    let mut check = Checker::default();
    for (i, expected) in array(&rouge_fixture["per_pair_fmeasure"]).iter().enumerate() {
        let actual = rouge(&predictions[i], &references[i..=i], false);
        check.close(format!("pair {i} rouge1"), actual.rouge1.fmeasure, num(&expected["rouge1"]), FIXTURE_TOLERANCE);
        check.close(format!("pair {i} rouge2"), actual.rouge2.fmeasure, num(&expected["rouge2"]), FIXTURE_TOLERANCE);
        check.close(format!("pair {i} rougeL"), actual.rouge_l.fmeasure, num(&expected["rougeL"]), FIXTURE_TOLERANCE);
    }
    check.finish();
}

#[test]
fn matches_reference_implementations_on_every_case() {
    let expected = load(EXPECTED);
    let mut check = Checker::default();
    for corpus in array(&expected["corpora"]) {
        let name = text(&corpus["name"]);
        let predictions = texts(&corpus["predictions"]);
        let references = text_lists(&corpus["references"]);

        check.bleu(&format!("[{name}] corpus BLEU"), &corpus_bleu(&predictions, &references), &corpus["corpus_bleu"]);
        let chrf = corpus_chrf(&predictions, &references);
        check.close(format!("[{name}] corpus chrF"), chrf, num(&corpus["corpus_chrf"]), TOLERANCE);
        for (stemmed, key) in [(false, "plain"), (true, "stemmed")] {
            let actual = mean_rouge(&predictions, &references, stemmed);
            check.rouge(&format!("[{name}] mean ROUGE {key}"), &actual, &corpus["mean_rouge"][key]);
        }

        let all = generation_metrics(&predictions, &references);
        let e = &corpus["generation_metrics"];
        check.equal(format!("[{name}] n"), all.n, count(&e["n"]));
        let fields = [
            ("bleu", all.bleu),
            ("bleu_bp", all.bleu_bp),
            ("chrf", all.chrf),
            ("rouge1", all.rouge1),
            ("rouge2", all.rouge2),
            ("rouge_l", all.rouge_l),
            ("rouge1_stemmed", all.rouge1_stemmed),
            ("rouge2_stemmed", all.rouge2_stemmed),
            ("rouge_l_stemmed", all.rouge_l_stemmed),
            ("exact_match", all.exact_match),
            ("token_f1", all.token_f1),
        ];
        for (field, actual) in fields {
            check.close(format!("[{name}] generation_metrics.{field}"), actual, num(&e[field]), TOLERANCE);
        }
        for (n, p) in array(&e["bleu_precisions"]).iter().enumerate() {
            check.close(
                format!("[{name}] generation_metrics.bleu_precisions[{n}]"),
                all.bleu_precisions[n],
                num(p),
                TOLERANCE,
            );
        }

        let Some(items) = corpus.get("items") else {
            continue;
        };
        for (i, item) in array(items).iter().enumerate() {
            let (prediction, refs) = (&predictions[i], &references[i]);
            let what = format!("[{name}] item {i}");
            check.bleu(&format!("{what} sentence BLEU"), &sentence_bleu(prediction, refs), &item["sentence_bleu"]);
            let chrf = corpus_chrf(std::slice::from_ref(prediction), std::slice::from_ref(refs));
            check.close(format!("{what} chrF"), chrf, num(&item["chrf"]), TOLERANCE);
            check.rouge(&format!("{what} ROUGE plain"), &rouge(prediction, refs, false), &item["rouge"]["plain"]);
            check.rouge(&format!("{what} ROUGE stemmed"), &rouge(prediction, refs, true), &item["rouge"]["stemmed"]);
            check.close(
                format!("{what} exact match"),
                exact_match(prediction, refs),
                num(&item["exact_match"]),
                TOLERANCE,
            );
            check.close(format!("{what} token F1"), token_f1(prediction, refs), num(&item["token_f1"]), TOLERANCE);
        }
    }
    check.finish();
}

#[test]
fn tokenizers_match_reference_implementations() {
    let expected = load(EXPECTED);
    let mut check = Checker::default();
    for case in array(&expected["tokenization"]) {
        let input = text(&case["text"]);
        check.equal(format!("13a tokens of {input:?}"), bleu_tokens(&input), texts(&case["tokens_13a"]));
        check.equal(format!("ROUGE tokens of {input:?}"), rouge_tokens(&input, false), texts(&case["rouge_tokens"]));
        check.equal(
            format!("stemmed ROUGE tokens of {input:?}"),
            rouge_tokens(&input, true),
            texts(&case["rouge_tokens_stemmed"]),
        );
        check.equal(
            format!("SQuAD normalization of {input:?}"),
            normalize_answer(&input),
            text(&case["squad_normalized"]),
        );
    }
    check.finish();
}

#[test]
fn porter_stemmer_matches_nltk() {
    let expected = load(EXPECTED);
    let mut check = Checker::default();
    for pair in array(&expected["porter"]) {
        let word = text(&pair[0]);
        check.equal(format!("stem of {word:?}"), porter::stem(&word), text(&pair[1]));
    }
    check.finish();
}

/// `is_py_word_char` against Python's `\w` for every code point Python's Unicode database
/// assigns (code points assigned later may differ between Unicode versions). On a mismatch, the
/// message holds the `NOT_PY_ALNUM` table that would fix it.
#[test]
fn word_characters_match_python_re() {
    let expected = load(EXPECTED);
    let table = &expected["python_word_chars"];
    let ranges = |v: &Value| -> Vec<(u32, u32)> {
        array(v).iter().map(|r| (count(&r[0]) as u32, count(&r[1]) as u32)).collect()
    };
    let (assigned, word) = (ranges(&table["assigned"]), ranges(&table["word"]));
    let mut mismatches = Vec::new();
    let mut wanted_table: Vec<(u32, u32)> = Vec::new();
    for c in assigned.iter().flat_map(|&(first, last)| (first..=last).filter_map(char::from_u32)) {
        let python = in_ranges(&word, c);
        if is_py_word_char(c) != python {
            mismatches.push(format!("U+{:04X}", c as u32));
        }
        // The table only corrects `is_alphanumeric` downwards: Python's word characters must be
        // alphanumeric for Rust too.
        assert!(!python || c == '_' || c.is_alphanumeric(), "U+{:04X} is alphanumeric only for Python", c as u32);
        if c.is_alphanumeric() && !python {
            let cp = c as u32;
            match wanted_table.last_mut() {
                Some((_, last)) if *last + 1 == cp => *last = cp,
                _ => wanted_table.push((cp, cp)),
            }
        }
    }
    let table_text: Vec<String> = wanted_table.iter().map(|(a, b)| format!("(0x{a:04X}, 0x{b:04X}),")).collect();
    assert!(
        mismatches.is_empty(),
        "{} code points disagree with Python ({}...); NOT_PY_ALNUM should be:\n{}",
        mismatches.len(),
        mismatches.iter().take(10).cloned().collect::<Vec<_>>().join(" "),
        table_text.chunks(5).map(|line| format!("    {}", line.join(" "))).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_reference_is_an_empty_reference() {
    let blank = vec![String::new()];
    for prediction in ["", "a cat", "The answer."] {
        assert_eq!(sentence_bleu(prediction, &[]), sentence_bleu(prediction, &blank));
        assert_eq!(rouge(prediction, &[], true), rouge(prediction, &blank, true));
        assert_eq!(exact_match(prediction, &[]), exact_match(prediction, &blank));
        assert_eq!(token_f1(prediction, &[]), token_f1(prediction, &blank));
        let p = vec![prediction.to_string()];
        assert_eq!(corpus_chrf(&p, &[vec![]]), corpus_chrf(&p, std::slice::from_ref(&blank)));
    }
    // SQuAD v2's convention: an empty answer matches "no answer".
    assert_eq!(exact_match("", &[]), 1.0);
}

#[test]
fn empty_and_mismatched_inputs_do_not_panic() {
    let none = generation_metrics(&[], &[]);
    assert_eq!(none.n, 0);
    assert_eq!((none.bleu, none.chrf, none.rouge1, none.exact_match, none.token_f1), (0.0, 0.0, 0.0, 0.0, 0.0));
    let predictions = vec!["a b c".to_string(), "d e f".to_string()];
    let references = vec![vec!["a b c".to_string()]];
    let truncated = generation_metrics(&predictions, &references);
    assert_eq!(truncated, generation_metrics(&predictions[..1], &references));
    assert_eq!(truncated.n, 1);
}

#[test]
fn generation_metrics_serialize_with_documented_names() {
    let predictions = vec!["the cat sat on the mat".to_string()];
    let references = vec![vec!["the cat is on the mat".to_string()]];
    let json = serde_json::to_value(generation_metrics(&predictions, &references)).expect("serializable");
    let mut keys: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bleu",
            "bleu_bp",
            "bleu_precisions",
            "chrf",
            "exact_match",
            "n",
            "rouge1",
            "rouge1_stemmed",
            "rouge2",
            "rouge2_stemmed",
            "rouge_l",
            "rouge_l_stemmed",
            "token_f1"
        ]
    );
}
