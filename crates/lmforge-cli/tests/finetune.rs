//! End-to-end fine-tuning through the `lmforge` binary on the tiny fixture models: finetune
//! (LoRA on GPT-2, adapters on BERT, full on Llama) → results.json and the model folder →
//! predict → eval classification, plus bad rows counted or failing with file and line.

use serde_json::Value;
use std::path::{Path, PathBuf};
mod common;

use common::{lmforge, ok};

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name);
    assert!(p.is_dir(), "fixture {} not found (CI places shared/ beside the checkout)", p.display());
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A toy sentiment set: filler words around one cue word that decides the label.
fn write_split(path: &Path, rows: usize, seed: u64, extra: &str) {
    let (pos, neg) = (["great", "good", "lovely", "fine"], ["awful", "bad", "sad", "poor"]);
    let filler = ["the", "a", "movie", "was", "really", "quite", "and", "it", "so"];
    let mut x = seed;
    let mut next = |n: usize| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 33) % n as u64) as usize
    };
    let mut text = String::from("sentence\tlabel\n");
    for _ in 0..rows {
        let positive = next(2) == 1;
        let mut words: Vec<&str> = (0..2 + next(6)).map(|_| filler[next(filler.len())]).collect();
        let cue = if positive { pos[next(4)] } else { neg[next(4)] };
        let at = next(words.len() + 1);
        words.insert(at, cue);
        text += &format!("{}\t{}\n", words.join(" "), if positive { "positive" } else { "negative" });
    }
    text += extra;
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, base: &str, method: &str, lr: f64) -> PathBuf {
    let (train, dev, test) = (dir.join("train.tsv"), dir.join("dev.tsv"), dir.join("test.tsv"));
    write_split(&train, 240, 1, "");
    write_split(&dev, 40, 2, "");
    // Two bad rows at test time: an empty text and a label the training set never had.
    write_split(&test, 40, 3, " \tpositive\nso so\tneutral\n");
    let cfg = dir.join(format!("{method}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\ntext_column = \"sentence\"\n\n\
             [model]\nbase = {:?}\ndropout = 0.0\n\n[finetune]\nmethod = {method:?}\n\n\
             [optim]\nlr = {lr}\n\n[train]\nepochs = 3\nbatch_size = 16\nlog_every = 5\n\n\
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

/// `lmforge eval classification --json` of a model on a file.
fn eval_json(model: &Path, data: &Path) -> Value {
    serde_json::from_str(&ok(&["eval", "classification", "--model", s(model), "--data", s(data), "--json"])).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn finetune_lora_then_predict_and_eval_classification() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", 1e-2);
    let run = tmp.path().join("run");
    let out = ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
    assert!(out.contains("trainable of") && out.contains("confusion matrix"), "{out}");

    let r = read_json(&run.join("results.json"));
    let (trainable, total) =
        (r["params"]["trainable_params"].as_u64().unwrap(), r["params"]["total_params"].as_u64().unwrap());
    assert!(trainable * 10 < total, "LoRA trains a small fraction: {trainable} of {total}");
    assert!(r["params"]["optimizer_state_bytes"].as_u64().unwrap() == 8 * trainable, "AdamW: 8 bytes per trainable");
    assert_eq!((r["bad_rows"]["empty_text"].as_u64(), r["bad_rows"]["unknown_label"].as_u64()), (Some(1), Some(1)));
    let fin = &r["final"]["metrics"];
    assert_eq!((r["final"]["split"].as_str(), fin["n"].as_u64()), (Some("test"), Some(40)));
    let acc = fin["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "the cue word is learnable: test accuracy {acc}");
    for k in ["macro", "micro", "weighted", "binary", "confusion_matrix", "per_class"] {
        assert!(!fin[k].is_null(), "results.json final metrics lack {k}");
    }
    let best_step = r["best"]["step"].as_u64().unwrap();
    let val_rows: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["split"] == "validation")
        .collect();
    assert_eq!(val_rows.len(), 3, "one validation per epoch");
    let best_acc = val_rows.iter().map(|v| v["accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(r["best"]["value"].as_f64(), Some(best_acc));
    assert!(val_rows.iter().any(|v| v["step"].as_u64() == Some(best_step) && v["improved"] == true));

    let model = run.join("model");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "finetune.toml",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] {
        assert!(model.join(f).is_file(), "model folder lacks {f}");
    }
    let hf = read_json(&model.join("config.json"));
    assert_eq!(hf["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(hf["id2label"]["1"], "positive");
    let peft = read_json(&model.join("adapter_config.json"));
    assert_eq!((peft["peft_type"].as_str(), peft["task_type"].as_str()), (Some("LORA"), Some("SEQ_CLS")));

    // predict: one line per usable row, in order, with label / probs / logits.
    let preds = tmp.path().join("preds.jsonl");
    ok(&["predict", "--model", s(&run), "--input", s(&tmp.path().join("test.tsv")), "--output", s(&preds)]);
    let rows: Vec<Value> =
        std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 41, "40 rows + the unknown-label row (labels are optional for predict)");
    let lines: Vec<u64> = rows.iter().map(|v| v["line"].as_u64().unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "input order");
    for v in &rows {
        let probs: Vec<f64> = v["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9 && v["logits"].as_array().unwrap().len() == 2);
        let argmax = if probs[1] > probs[0] { "positive" } else { "negative" };
        assert_eq!(v["label"], argmax);
    }

    // eval classification reproduces the run's final test metrics from the saved (merged) model.
    let e = eval_json(&run, &tmp.path().join("test.tsv"));
    assert_eq!(e["accuracy"].as_f64(), Some(acc));
    assert!((e["loss"].as_f64().unwrap() - fin["loss"].as_f64().unwrap()).abs() < 1e-5);
    assert_eq!(e["bad_rows"]["unknown_label"], 1);
    let table = ok(&["eval", "classification", "--model", s(&model), "--data", s(&tmp.path().join("test.tsv"))]);
    assert!(table.contains("accuracy") && table.contains("2 bad rows skipped"), "{table}");

    // The same file with bad_rows = fail: an error naming the file and line.
    let out = lmforge(&[
        "eval",
        "classification",
        "--model",
        s(&run),
        "--data",
        s(&tmp.path().join("test.tsv")),
        "--set",
        "data.bad_rows=fail",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("test.tsv: line 42: empty text"), "{err}");
    // A second finetune into the same run dir refuses.
    let out = lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already holds a run"));
}

#[test]
fn finetune_adapters_on_bert_and_full_on_llama() {
    for (base, method, lr) in [("bert-tiny", "adapter", 1e-2), ("llama-tiny", "full", 3e-3)] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), base, method, lr);
        let run = tmp.path().join("run");
        ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", "train.epochs=2"]);
        let r = read_json(&run.join("results.json"));
        let (trainable, total) =
            (r["params"]["trainable_params"].as_u64().unwrap(), r["params"]["total_params"].as_u64().unwrap());
        assert_eq!(trainable == total, method == "full", "{base} {method}: {trainable} of {total}");
        let acc = r["final"]["metrics"]["accuracy"].as_f64().unwrap();
        let e = eval_json(&run, &tmp.path().join("test.tsv"));
        assert_eq!(e["accuracy"].as_f64(), Some(acc), "{base} {method}: the saved model is the evaluated one");
    }
}

#[test]
fn finetune_config_errors_name_the_key_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", 1e-2);
    let run = tmp.path().join("run");
    for (set, key) in [
        ("finetune.method=qlora", "finetune.method"),
        ("lora.target_modules=[\"c_atn\"]", "lora.target_modules"),
        ("data.text_column=review", "data.text_column"),
        ("train.metric=binary_f2", "train.metric"),
    ] {
        let out = lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "--set {set}: {err}");
        assert!(!run.exists(), "--set {set}: nothing is written before the config and data check out");
    }
}
