//! Regression fine-tuning end to end through the `lmforge` binary: `task.kind = "regression"` on
//! a toy scored set → results.json with MSE / MAE / Pearson / Spearman and a `problem_type =
//! "regression"` folder → `predict` (a score per row) → `eval classification` (the same metrics).

use serde_json::Value;
use std::path::Path;

use crate::common::{draws, fixture, lmforge, ok, s};

/// Filler words around one cue word whose grade (0-4) is the target, plus a little noise.
fn write_scored(path: &Path, rows: usize, seed: u64, extra: &str) {
    let cues = ["awful", "poor", "fine", "good", "great"];
    let filler = ["the", "a", "movie", "was", "really", "quite", "and", "it", "so"];
    let mut next = draws(seed);
    let mut text = String::from("sentence\tscore\n");
    for _ in 0..rows {
        let grade = next(5);
        let mut words: Vec<&str> = (0..2 + next(5)).map(|_| filler[next(filler.len())]).collect();
        let at = next(words.len() + 1);
        words.insert(at, cues[grade]);
        let noise = next(5) as f64 * 0.05 - 0.1;
        text += &format!("{}\t{:.2}\n", words.join(" "), grade as f64 + noise);
    }
    text += extra;
    std::fs::write(path, text).unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn regression_finetune_predict_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, dev, test) = (tmp.path().join("train.tsv"), tmp.path().join("dev.tsv"), tmp.path().join("test.tsv"));
    write_scored(&train, 300, 1, "");
    write_scored(&dev, 40, 2, "");
    // A bad row at test time: a target that is not a number.
    write_scored(&test, 40, 3, "so great\tvery\n");
    let cfg = tmp.path().join("reg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[task]\nkind = \"regression\"\n\n[data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\n\
             text_column = \"sentence\"\nlabel_column = \"score\"\n\n[model]\nbase = {:?}\ndropout = 0.0\n\n\
             [optim]\nlr = 3e-3\n\n[train]\nepochs = 6\nbatch_size = 16\nmetric = \"pearson\"\n\n\
             [log]\nprogress = \"off\"\n",
            s(&train),
            s(&dev),
            s(&test),
            s(&fixture("bert-tiny")),
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let out = ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
    assert!(out.contains("pearson") && out.contains("spearman"), "{out}");
    let r = read_json(&run.join("results.json"));
    assert_eq!(r["task"], "regression");
    assert_eq!(r["bad_rows"]["unknown_label"], 1);
    let fin = &r["final"]["metrics"];
    let (pearson, mse) = (fin["pearson"].as_f64().unwrap(), fin["mse"].as_f64().unwrap());
    assert!(pearson >= 0.9, "the cue word's grade is learnable: test Pearson {pearson}\n{out}");
    assert_eq!(fin["loss"].as_f64(), Some(mse), "the loss is the MSE");
    assert_eq!(r["best"]["metric"], "pearson");
    let hf = read_json(&run.join("model/config.json"));
    assert_eq!((hf["problem_type"].as_str(), hf["id2label"].as_object().unwrap().len()), (Some("regression"), 1));

    let e: Value =
        serde_json::from_str(&ok(&["eval", "classification", "--model", s(&run), "--data", s(&test), "--json"]))
            .unwrap();
    assert_eq!(e["pearson"].as_f64(), Some(pearson));
    assert_eq!(e["bad_rows"]["unknown_label"], 1);

    let preds = tmp.path().join("scores.jsonl");
    ok(&["predict", "--model", s(&run), "--input", s(&test), "--output", s(&preds)]);
    let rows: Vec<Value> =
        std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 41, "40 rows + the one whose target is no number (targets are optional for predict)");
    let sq: f64 = rows
        .iter()
        .filter(|v| !v["gold"].is_null())
        .map(|v| (v["score"].as_f64().unwrap() - v["gold"].as_f64().unwrap()).powi(2))
        .sum();
    assert!((sq / 40.0 - mse).abs() < 1e-6, "predict's scores are the evaluated ones");

    let out = lmforge(&[
        "finetune",
        "--config",
        s(&cfg),
        "--run-dir",
        s(&tmp.path().join("r2")),
        "--set",
        "train.metric=accuracy",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.metric") && err.contains("spearman"), "{err}");
}
