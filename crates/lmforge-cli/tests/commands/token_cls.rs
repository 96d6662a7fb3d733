//! Token classification end to end through the `lmforge` binary on the tiny fixture models:
//! `finetune` with `task.kind = "token_classification"` on CoNLL files → results.json with
//! seqeval's entity metrics and a `*ForTokenClassification` folder → `predict` (tags per word,
//! from words or from text) → `eval classification` (the same metrics), bad sentences counted.

use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::common::{draws, fixture, lmforge, ok, s};

/// A toy NER set: "persons" (one or two words) and "places" among filler words. The words are
/// one token each in the fixtures' small vocabulary (trained on licence text): a causal model
/// tags a word at its first sub-word, before it has seen the rest, so words that share a first
/// sub-word could not be told apart by GPT-2.
fn write_conll(path: &Path, sentences: usize, seed: u64, extra: &str) {
    let (first, last) = (["author", "owner", "holder", "recipient"], ["party", "entity", "individual"]);
    let cities = ["network", "medium", "section", "file"];
    let filler = ["the", "a", "and", "with", "from", "under", "this", "that", "which", "for"];
    let mut next = draws(seed);
    let mut text = String::from("-DOCSTART- -X- O\n\n");
    for _ in 0..sentences {
        let mut rows: Vec<(String, &str)> = Vec::new();
        for _ in 0..3 + next(6) {
            match next(5) {
                0 => {
                    rows.push((first[next(4)].into(), "B-PER"));
                    if next(2) == 0 {
                        rows.push((last[next(3)].into(), "I-PER"));
                    }
                }
                1 => rows.push((cities[next(4)].into(), "B-LOC")),
                _ => rows.push((filler[next(filler.len())].into(), "O")),
            }
        }
        for (w, t) in rows {
            text += &format!("{w} NN {t}\n");
        }
        text += "\n";
    }
    text += extra;
    std::fs::write(path, text).unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn config(dir: &Path, base: &str) -> PathBuf {
    let (train, dev, test) = (dir.join("train.conll"), dir.join("dev.conll"), dir.join("test.conll"));
    write_conll(&train, 400, 1, "");
    write_conll(&dev, 30, 2, "");
    // A bad sentence at test time: a tag the training set never had.
    write_conll(&test, 30, 3, "program NN B-GPE\n\n");
    let cfg = dir.join("ner.toml");
    std::fs::write(
        &cfg,
        format!(
            "[task]\nkind = \"token_classification\"\n\n\
             [data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\n\n\
             [model]\nbase = {:?}\ndropout = 0.0\n\n[optim]\nlr = 5e-3\n\n\
             [train]\nepochs = 6\nbatch_size = 16\nlog_every = 5\n\n[log]\nprogress = \"off\"\n",
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
fn token_classification_finetune_predict_and_eval() {
    for (base, class) in [("bert-tiny", "BertForTokenClassification"), ("gpt2-tiny", "GPT2ForTokenClassification")] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), base);
        let run = tmp.path().join("run");
        let out = ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
        assert!(out.contains("micro avg") && out.contains("weighted avg"), "{out}");

        let r = read_json(&run.join("results.json"));
        assert_eq!(r["task"], "token_classification");
        assert_eq!(r["labels"], serde_json::json!(["B-LOC", "B-PER", "I-PER", "O"]));
        assert_eq!(r["bad_rows"]["unknown_label"], 1, "{base}");
        let fin = &r["final"]["metrics"];
        assert_eq!((r["final"]["split"].as_str(), fin["sentences"].as_u64()), (Some("test"), Some(30)));
        let f1 = fin["micro"]["f1"].as_f64().unwrap();
        assert!(f1 >= 0.9, "{base}: names and cities are learnable: test entity F1 {f1}\n{out}");
        let types: Vec<&str> =
            fin["per_type"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["LOC", "PER"]);
        let val: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &Value| v["split"] == "validation")
            .collect();
        assert_eq!(val.len(), 6, "one validation per epoch");
        let best = val.iter().map(|v| v["f1"].as_f64().unwrap()).fold(0.0, f64::max);
        assert_eq!(r["best"]["value"].as_f64(), Some(best), "{base}: the best is the best validation f1");
        assert_eq!(r["best"]["metric"], "f1");

        let model = run.join("model");
        let hf = read_json(&model.join("config.json"));
        assert_eq!(hf["architectures"][0], class);
        assert_eq!(hf["id2label"]["1"], "B-PER");

        // eval: the run's final test metrics again, from the saved folder.
        let e: Value = serde_json::from_str(&ok(&[
            "eval",
            "classification",
            "--model",
            s(&run),
            "--data",
            s(&tmp.path().join("test.conll")),
            "--json",
        ]))
        .unwrap();
        assert_eq!(e["micro"]["f1"].as_f64(), Some(f1), "{base}");
        assert_eq!(e["bad_rows"]["unknown_label"], 1);

        // predict: words or text in, a tag per word out.
        let input = tmp.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"tokens\": [\"author\", \"party\", \"with\", \"owner\", \"under\", \"file\"]}\n\
             {\"text\": \"holder   and this network for\"}\n{\"tokens\": []}\n",
        )
        .unwrap();
        let preds = tmp.path().join("tags.jsonl");
        ok(&["predict", "--model", s(&run), "--input", s(&input), "--output", s(&preds)]);
        let rows: Vec<Value> =
            std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 2, "{base}: the empty sentence is a bad row");
        assert_eq!(rows[0]["tags"], serde_json::json!(["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]), "{base}");
        assert_eq!(rows[1]["tokens"], serde_json::json!(["holder", "and", "this", "network", "for"]));
        assert_eq!(rows[1]["tags"], serde_json::json!(["B-PER", "O", "O", "B-LOC", "O"]), "{base}");
    }
}

#[test]
fn token_classification_config_and_data_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "bert-tiny");
    let run = tmp.path().join("run");
    let out = lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", "train.metric=binary_f1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.metric") && err.contains("macro_f1"), "{err}");
    let tsv = tmp.path().join("rows.tsv");
    std::fs::write(&tsv, "text\tlabel\nhi\tO\n").unwrap();
    let out =
        lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", &format!("data.train={tsv:?}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rows.tsv") && err.contains("CoNLL"), "{err}");
    assert!(!run.join("results.json").exists());
}

/// Stopped at step 7 (a checkpoint every 4 steps, validations every 5, dropout on) and resumed,
/// a token-classification run ends with the uninterrupted run's best model, bit for bit, and
/// the same validation rows and final metrics.
#[test]
fn token_classification_stopped_and_resumed_ends_as_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "bert-tiny");
    let sets = ["model.dropout=0.1", "train.checkpoint_every=4", "train.eval_every=5", "train.epochs=2"];
    crate::common::assert_finetune_resumes_exactly(&cfg, &sets);
}

/// A sweep over token-classification fine-tunes that maximises `val_f1`: a grid over the
/// learning rate with median stopping at a rung. Every trial finishes or stops by the rule
/// (applied to f1 with higher better); a finished trial's metric is the best validation f1 its
/// run logged; the sweep's best is the finished trial with the highest; `best.toml` is a
/// fine-tuning config.
#[test]
fn a_sweep_over_finetune_trials_maximises_val_f1() {
    let tmp = tempfile::tempdir().unwrap();
    config(tmp.path(), "bert-tiny");
    let file = tmp.path().join("sweep.toml");
    std::fs::write(
        &file,
        "[sweep]\nbase = \"ner.toml\"\ncommand = \"finetune\"\nstrategy = \"grid\"\nmetric = \"val_f1\"\n\
         set = [\"train.max_steps=40\", \"train.eval_every=10\", \"train.checkpoint_every=0\"]\n\n\
         [early_stop]\nrule = \"median\"\nmin_trials = 1\nrungs = [20]\n\n\
         [space]\n\"optim.lr\" = { choice = [5e-3, 1e-5, 2e-3] }\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("sw");
    let out = ok(&["sweep", "--config", s(&file), "--out", s(&out_dir)]);
    let meta = read_json(&out_dir.join("sweep.json"));
    assert_eq!((meta["goal"].as_str(), meta["command"].as_str()), (Some("maximize"), Some("finetune")));
    let ts: Vec<Value> = std::fs::read_to_string(out_dir.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ts.len(), 3, "{out}");
    assert!(ts.iter().all(|t| t["status"] != "failed"), "{ts:?}");
    let median = lmforge_track::sweep::early_stop::Rule::Median { min_trials: 1 };
    let mut finished = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let run = out_dir.join(t["run_dir"].as_str().unwrap());
        let f1s: Vec<f64> = crate::common::metrics(&run)
            .iter()
            .filter(|r| r["split"] == "validation")
            .map(|r| r["f1"].as_f64().unwrap())
            .collect();
        let at_rung = t["rungs"]["20"].as_f64().unwrap();
        // The rule minimises: f1 enters negated.
        let before: Vec<f64> = ts[..i].iter().filter_map(|o| o["rungs"]["20"].as_f64()).map(|v| -v).collect();
        let decision = median.decide(-at_rung, &before);
        match t["status"].as_str().unwrap() {
            "stopped" => {
                assert!(matches!(decision, lmforge_track::sweep::early_stop::Decision::Stop { .. }), "trial {i}");
                assert_eq!((t["step"].as_u64(), f1s.len()), (Some(20), 2), "trained to its rung only");
            }
            "finished" => {
                assert_eq!(decision, lmforge_track::sweep::early_stop::Decision::Continue, "trial {i}");
                let best = f1s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                assert_eq!(t["metric"].as_f64(), Some(best), "trial {i}: its best validation f1");
                assert!(run.join("results.json").is_file() && run.join("model/config.json").is_file());
                finished.push((best, t["id"].as_u64().unwrap()));
            }
            other => panic!("trial {i} is {other}: {t}"),
        }
    }
    assert!(!finished.is_empty(), "{out}");
    let (best_f1, best_id) =
        finished.iter().copied().fold((f64::NEG_INFINITY, 0), |a, b| if b.0 > a.0 { b } else { a });
    assert!(out.contains(&format!("best: trial {best_id} with val_f1 {best_f1:.4}")), "{out}");
    let best = std::fs::read_to_string(out_dir.join("best.toml")).unwrap();
    assert!(best.contains("lmforge finetune --config") && best.contains("token_classification"), "{best}");
}
