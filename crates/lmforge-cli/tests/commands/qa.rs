//! Extractive question answering end to end through the `lmforge` binary on the tiny fixture
//! models: `finetune` with `task.kind = "question_answering"` on SQuAD v2.0 JSON → results.json
//! with the official exact match / F1 (answerable and unanswerable parts) and a
//! `*ForQuestionAnswering` folder → `predict` (answer, character offsets, score per question)
//! → `eval classification` (the same metrics); bad questions counted; stop and resume exact.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::common::{draws, fixture, lmforge, ok, s};

/// A toy SQuAD v2.0 set: a context of filler words in which two of three roles ("owner",
/// "holder", "author") are each followed by a name; the question asks for one role's name, and
/// is unanswerable when its role is not in the context. Some contexts are long enough to need
/// several windows.
fn squad(questions: usize, seed: u64) -> Value {
    let roles = ["owner", "holder", "author"];
    let names = ["network", "medium", "section", "file", "party", "entity"];
    let filler = ["the", "a", "and", "with", "from", "under", "this", "that", "which", "for"];
    let mut next = draws(seed);
    let mut paragraphs = Vec::new();
    for i in 0..questions {
        let skip = next(3);
        let mut words: Vec<&str> = Vec::new();
        let mut named: Vec<(usize, &str, &str)> = Vec::new(); // (word index, role, name)
        for (r, role) in roles.iter().enumerate() {
            for _ in 0..2 + next(if i % 5 == 0 { 30 } else { 6 }) {
                words.push(filler[next(filler.len())]);
            }
            if r != skip {
                let name = names[next(names.len())];
                words.push(role);
                named.push((words.len(), role, name));
                words.push(name);
            }
        }
        let asked = roles[next(3)];
        let context = words.join(" ");
        let answers: Vec<Value> = named
            .iter()
            .filter(|(_, role, _)| *role == asked)
            .map(|(at, _, name)| {
                let start = words[..*at].iter().map(|w| w.len() + 1).sum::<usize>();
                json!({"text": name, "answer_start": start})
            })
            .collect();
        paragraphs.push(json!({"context": context, "qas": [{
            "id": format!("q{seed}-{i}"),
            "question": format!("who is the {asked}?"),
            "answers": answers,
            "is_impossible": answers.is_empty(),
        }]}));
    }
    json!({"version": "v2.0", "data": [{"title": "toy", "paragraphs": paragraphs}]})
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn config(dir: &Path, base: &str) -> PathBuf {
    let (train, dev, test) = (dir.join("train.json"), dir.join("dev.json"), dir.join("test.json"));
    std::fs::write(&train, squad(1200, 1).to_string()).unwrap();
    std::fs::write(&dev, squad(40, 2).to_string()).unwrap();
    // A bad question at test time: its answer is not where answer_start says.
    let mut t = squad(40, 3);
    t["data"][0]["paragraphs"][0]["qas"][0]["answers"] = json!([{"text": "zebra", "answer_start": 0}]);
    t["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = json!(false);
    std::fs::write(&test, t.to_string()).unwrap();
    let cfg = dir.join("qa.toml");
    std::fs::write(
        &cfg,
        format!(
            "[task]\nkind = \"question_answering\"\n\n\
             [data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\n\n\
             [model]\nbase = {:?}\ndropout = 0.0\nmax_length = 48\n\n[qa]\ndoc_stride = 16\n\n\
             [optim]\nlr = 3e-3\n\n[train]\nepochs = 16\nbatch_size = 16\nlog_every = 10\n\n\
             [log]\nprogress = \"off\"\n",
            s(&train),
            s(&dev),
            s(&test),
            s(&fixture(base)),
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn question_answering_finetune_predict_and_eval() {
    for (base, class) in [("bert-tiny", "BertForQuestionAnswering"), ("gpt2-tiny", "GPT2ForQuestionAnswering")] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), base);
        let run = tmp.path().join("run");
        let out = ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
        assert!(out.contains("SQuAD v2.0 rules") && out.contains("without an answer"), "{out}");

        let r = read_json(&run.join("results.json"));
        assert_eq!(r["task"], "question_answering");
        assert_eq!(r["qa"]["version_2_with_negative"], true, "{base}: v2.0 from the training file");
        assert_eq!(r["bad_rows"]["malformed"], 1, "{base}");
        assert!(r["data"]["train"]["windows"].as_u64() > r["data"]["train"]["questions"].as_u64(), "long contexts");
        let fin = &r["final"]["metrics"];
        assert_eq!((r["final"]["split"].as_str(), fin["total"].as_u64()), (Some("test"), Some(39)));
        let f1 = fin["f1"].as_f64().unwrap();
        assert!(f1 >= 70.0, "{base}: the role's name is learnable: test F1 {f1}\n{out}");
        assert!(fin["HasAns"]["total"].as_u64() > Some(0) && fin["NoAns"]["total"].as_u64() > Some(0));
        let val: Vec<Value> = crate::common::metrics(&run).into_iter().filter(|v| v["split"] == "validation").collect();
        assert_eq!(val.len(), 16, "one validation per epoch");
        let best = val.iter().map(|v| v["f1"].as_f64().unwrap()).fold(0.0, f64::max);
        assert_eq!(r["best"]["value"].as_f64(), Some(best), "{base}: the best is the best validation f1");

        let hf = read_json(&run.join("model/config.json"));
        assert_eq!(hf["architectures"][0], class);

        // eval: the run's final test metrics again, from the saved folder.
        let test = tmp.path().join("test.json");
        let e: Value =
            serde_json::from_str(&ok(&["eval", "classification", "--model", s(&run), "--data", s(&test), "--json"]))
                .unwrap();
        assert_eq!(e["f1"].as_f64(), Some(f1), "{base}");
        assert_eq!(e["bad_rows"]["malformed"], 1);

        // predict on the test file: an answer per usable question, each the context's text
        // at its offsets, agreeing with eval's exact match.
        let preds = tmp.path().join("answers.jsonl");
        ok(&["predict", "--model", s(&run), "--input", s(&test), "--output", s(&preds)]);
        let rows: Vec<Value> =
            std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 39, "{base}: the bad question is left out");
        let t = read_json(&test);
        let contexts: std::collections::HashMap<String, String> = t["data"][0]["paragraphs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["qas"][0]["id"].as_str().unwrap().to_string(), p["context"].as_str().unwrap().to_string()))
            .collect();
        let mut exact = 0;
        for row in &rows {
            let answer = row["answer"].as_str().unwrap();
            let gold = row["gold"].as_array().unwrap();
            if let (Some(a), Some(b)) = (row["start"].as_u64(), row["end"].as_u64()) {
                let context = &contexts[row["id"].as_str().unwrap()];
                let at: String = context.chars().skip(a as usize).take((b - a) as usize).collect();
                assert_eq!(at, answer, "{base}: {row}");
            } else {
                assert_eq!(answer, "", "{base}: no offsets, no answer: {row}");
            }
            exact += usize::from(if gold.is_empty() { answer.is_empty() } else { gold.iter().any(|g| g == answer) });
        }
        assert_eq!(100.0 * exact as f64 / 39.0, e["exact"].as_f64().unwrap(), "{base}");

        // JSONL rows (datasets' layout) with no answers: unlabelled, answered by the model.
        let input = tmp.path().join("in.jsonl");
        let context = "the a owner section with that holder file and this";
        let rows = [
            json!({"id": "a", "question": "who is the holder?", "context": context}),
            json!({"id": "b", "question": "", "context": context}),
        ];
        std::fs::write(&input, format!("{}\n{}\n", rows[0], rows[1])).unwrap();
        ok(&["predict", "--model", s(&run), "--input", s(&input), "--output", s(&preds)]);
        let rows: Vec<Value> =
            std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 1, "{base}: the empty question is a bad row");
        assert!(rows[0]["gold"].is_null() && rows[0]["score"].is_f64(), "{rows:?}");
    }
}

#[test]
fn question_answering_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "bert-tiny");
    let run = tmp.path().join("run");
    let fails = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&run)];
        for x in sets {
            args.extend(["--set", x]);
        }
        let out = lmforge(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && needles.iter().all(|n| err.contains(n)), "{sets:?}: {err}");
    };
    fails(&["train.metric=accuracy"], &["train.metric", "no_ans_f1"]);
    fails(&["qa.doc_stride=48"], &["qa.doc_stride", "model.max_length"]);
    let llama = fixture("llama-tiny");
    fails(&[&format!("model.base={:?}", s(&llama))], &["model.base", "BERT and GPT-2"]);
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"data": [{"paragraphs": [{"context": "a b", "qas": [{"id": "1", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}"#).unwrap();
    fails(
        &[&format!("data.train={:?}", s(&bad)), "data.bad_rows=fail"],
        &["bad.json", "data[0].paragraphs[0].qas[0]", "not at character 0"],
    );
    assert!(!run.join("results.json").exists());
}

/// Stopped at step 7 (a checkpoint every 4 steps, validations every 5, dropout on) and resumed,
/// a QA run ends with the uninterrupted run's best model, bit for bit, and the same validation
/// rows and final metrics.
#[test]
fn question_answering_stopped_and_resumed_ends_as_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "bert-tiny");
    let sets = ["model.dropout=0.1", "train.checkpoint_every=4", "train.eval_every=5", "train.max_steps=12"];
    crate::common::assert_finetune_resumes_exactly(&cfg, &sets);
}
