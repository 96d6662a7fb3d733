//! End-to-end fine-tuning through the `lmforge` binary on the tiny fixture models: finetune
//! (LoRA on GPT-2, adapters on BERT, full on Llama) → results.json and the model folder →
//! predict → eval classification, plus bad rows counted or failing with file and line.

use serde_json::Value;
use std::path::Path;

use crate::common::{finetune_config as config, lmforge, ok, s};

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
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/manifest.json",
    ] {
        assert!(model.join(f).is_file(), "model folder lacks {f}");
    }
    // Not beside the merged weights: transformers would load the adapter instead of them.
    assert!(!model.join("adapter_config.json").exists());
    let hf = read_json(&model.join("config.json"));
    assert_eq!(hf["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(hf["id2label"]["1"], "positive");
    let peft = read_json(&model.join("adapter/adapter_config.json"));
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
fn finetune_adapters_and_prefix_on_bert_and_full_on_llama() {
    for (base, method, lr) in
        [("bert-tiny", "adapter", 1e-2), ("bert-tiny", "prefix", 1e-2), ("llama-tiny", "full", 3e-3)]
    {
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
        if method == "prefix" {
            // PEFT's folder beside the model: the projected prefix and the head.
            let ac = read_json(&run.join("model/adapter/adapter_config.json"));
            assert_eq!((ac["peft_type"].as_str(), ac["task_type"].as_str()), (Some("PREFIX_TUNING"), Some("SEQ_CLS")));
            assert_eq!(ac["num_virtual_tokens"], 20);
        }
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

/// `--set KEY=VALUE` pairs as arguments.
fn sets(pairs: &[&str]) -> Vec<String> {
    pairs.iter().flat_map(|p| ["--set".to_string(), p.to_string()]).collect()
}

/// What must match between two fine-tuning runs that should be the same: the best model's
/// files, every validation row (without wall-clock fields), the results' best and final
/// metrics.
fn ft_fingerprint(run: &Path) -> (Vec<u8>, Vec<u8>, Vec<String>, String) {
    let model = run.join("model");
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let adapter = std::fs::read(model.join("adapter/adapter_model.safetensors")).unwrap();
    let rows = crate::common::metrics_without_timing(run, Some("validation"));
    let r = read_json(&run.join("results.json"));
    (weights, adapter, rows, format!("{} {}", r["best"], r["final"]["metrics"]))
}

/// Dropout in the backbone and in LoRA, two micro-batches a step, checkpoints every 4 steps and
/// validations every 5 (so a resume re-runs validations and writes the best model again).
const RESUME_SETS: [&str; 6] = [
    "model.dropout=0.1",
    "lora.dropout=0.1",
    "train.batch_size=8",
    "train.grad_accum=2",
    "train.checkpoint_every=4",
    "train.eval_every=5",
];

/// SIGKILL at seeded random moments of fine-tuning runs, each resumed with `--resume` until it
/// ends: every run ends with the uninterrupted run's validation metrics and a bit-identical
/// best model. `LMFORGE_FT_KILL_TRIALS` (default 8) and `LMFORGE_FT_KILL_SEED` set the schedule.
#[test]
fn finetune_killed_anywhere_and_resumed_ends_as_the_uninterrupted_run() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", 1e-2);
    let extra = sets(&RESUME_SETS);
    let base = tmp.path().join("base");
    let started = std::time::Instant::now();
    let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&base)];
    args.extend(extra.iter().map(String::as_str));
    ok(&args);
    let uninterrupted = started.elapsed();
    let want = ft_fingerprint(&base);
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let trials = env("LMFORGE_FT_KILL_TRIALS", 8);
    let mut seed = env("LMFORGE_FT_KILL_SEED", 3);
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n.max(1)
    };
    let (mut kills, mut episode) = (0, 0);
    while kills < trials {
        episode += 1;
        let run = tmp.path().join(format!("killed-{episode}"));
        loop {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmforge"));
            if run.join("config.toml").is_file() {
                cmd.args(["finetune", "--resume", s(&run)]);
            } else {
                cmd.args(["finetune", "--config", s(&cfg), "--run-dir", s(&run)]).args(&extra);
            }
            let mut child = cmd
                .env("LMFORGE_DB", crate::common::test_db())
                .env("RUST_LOG", "error")
                .env("LMFORGE_TEST_CHECKPOINT_DELAY_MS", "5")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Anywhere from loading the base to writing the results.
            let at = std::time::Duration::from_micros(next(uninterrupted.as_micros() as u64 * 3 / 2));
            let deadline = std::time::Instant::now() + at;
            let exited = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if kills >= trials || std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    continue;
                }
                break None;
            };
            match exited {
                Some(status) => {
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                    assert!(status.success(), "{}: {status}\n{err}", run.display());
                    break;
                }
                None => {
                    // SAFETY: a signal to our own child process.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    child.wait().unwrap();
                    kills += 1;
                }
            }
        }
        assert!(ft_fingerprint(&run) == want, "{}: differs from the uninterrupted run", run.display());
    }
    // The best model carries a manifest that `predict` verifies: a damaged copy is refused,
    // naming the file.
    let model = base.join("model");
    assert!(model.join("manifest.json").is_file() && base.join("checkpoints").is_dir());
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let i = bytes.len() - 5;
    bytes[i] ^= 0x20;
    std::fs::write(&weights, bytes).unwrap();
    let preds = tmp.path().join("preds.jsonl");
    let test = tmp.path().join("test.tsv");
    let out = lmforge(&["predict", "--model", s(&base), "--input", s(&test), "--output", s(&preds)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model.safetensors") && err.contains("SHA-256"), "{err}");
    eprintln!("fine-tuning: {kills} kills over {episode} runs, all ended as the uninterrupted run");
}

/// A step of 16 examples as one micro-batch or as two of 8 (`train.grad_accum = 2`) trains the
/// same model: the same batches, the gradients summed in another order.
#[test]
fn finetune_grad_accum_of_half_batches_equals_the_full_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "llama-tiny", "full", 3e-3);
    let run = |name: &str, batch: &str, accum: &str| {
        let dir = tmp.path().join(name);
        let (b, a) = (format!("train.batch_size={batch}"), format!("train.grad_accum={accum}"));
        let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&dir)];
        let extra = sets(&[&b, &a, "train.epochs=2", "train.checkpoint_every=30"]);
        args.extend(extra.iter().map(String::as_str));
        ok(&args);
        dir
    };
    let (full, halves) = (run("full", "16", "1"), run("halves", "8", "2"));
    // Activation checkpointing recomputes each block in the backward: the same numbers.
    let recomputed = tmp.path().join("recomputed");
    let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&recomputed)];
    let extra = sets(&["train.batch_size=16", "train.epochs=2", "train.checkpoint_every=30"]);
    args.extend(extra.iter().map(String::as_str));
    args.extend(["--set", "train.activation_checkpointing=true"]);
    ok(&args);
    let last = "checkpoints/step-00000030/trainable.safetensors";
    assert_eq!(std::fs::read(full.join(last)).unwrap(), std::fs::read(recomputed.join(last)).unwrap());
    let rows = |dir: &Path| -> Vec<(u64, String, f64)> {
        crate::common::metrics(dir)
            .iter()
            .map(|r| (r["step"].as_u64().unwrap(), r["split"].as_str().unwrap().into(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (rows(&full), rows(&halves));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, &x.1), (y.0, &y.1));
        assert!((x.2 - y.2).abs() <= 1e-5 * x.2.abs(), "step {} {}: {} vs {}", x.0, x.1, x.2, y.2);
    }
    let last = "checkpoints/step-00000030";
    let d = crate::common::max_diff(&full.join(last), &halves.join(last), "trainable.safetensors");
    eprintln!("grad_accum: weights after 30 steps differ by at most {d}");
    // Measured 2.6e-6 (fp32 sums of 8 + 8 rows against one of 16, compounded over 30 steps).
    assert!(d <= 2e-5, "weights after 30 steps: max |difference| {d}");
}

/// `--folds 3`: three runs into RUN_DIR/fold-I, each trained on two thirds of the train rows
/// and validated on the third (stratified: both labels in every fold), their final test metrics
/// and mean ± std in cv.json; an explicit validation file is refused.
#[test]
fn finetune_folds_cross_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "bert-tiny", "full", 3e-3);
    let run = tmp.path().join("cv");
    let base = ["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--folds", "3", "--set", "train.epochs=2"];
    let out = lmforge(&base);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.validation"), "{err}");
    let mut args = base.to_vec();
    args.extend(["--set", "data.validation=\"\""]);
    let out = ok(&args);
    assert!(out.contains("3-fold cross-validation") && out.contains("mean") && out.contains("std"), "{out}");
    let cv = read_json(&run.join("cv.json"));
    let folds = cv["per_fold"].as_array().unwrap();
    assert_eq!(folds.len(), 3);
    let mut accs = Vec::new();
    for (i, f) in folds.iter().enumerate() {
        let dir = run.join(format!("fold-{i}"));
        let r = read_json(&dir.join("results.json"));
        assert_eq!(r["train"]["examples"], 160, "fold {i} trains on the other two thirds of 240 rows");
        assert_eq!(f["final_split"], "test");
        let acc = f["metrics"]["accuracy"].as_f64().unwrap();
        assert_eq!(r["final"]["metrics"]["accuracy"].as_f64(), Some(acc));
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        // `data.fold = 0` is the default, left out of the saved config.
        assert!(config.contains("folds = 3"), "{config}");
        assert_eq!(config.contains(&format!("fold = {i}")), i > 0, "{config}");
        let val: Vec<Value> = crate::common::metrics(&dir).into_iter().filter(|v| v["split"] == "validation").collect();
        assert!(!val.is_empty(), "fold {i} validates on its held-out fold");
        accs.push(acc);
    }
    let mean = accs.iter().sum::<f64>() / 3.0;
    assert!((cv["mean"]["accuracy"].as_f64().unwrap() - mean).abs() < 1e-12);
    let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert!((cv["std"]["accuracy"].as_f64().unwrap() - std).abs() < 1e-12);

    // The store holds the folds (kind `fold`, grouped by the folder's name); the report shows
    // each fold's metrics, their mean and std, and the folds' validation curves.
    let db = tmp.path().join("store.db");
    let db_args = |extra: &[&str]| {
        let mut v = vec!["--db", s(&db)];
        v.extend_from_slice(extra);
        ok(&v)
    };
    let run2 = tmp.path().join("cv2");
    let mut args2: Vec<&str> = args.iter().map(|a| if *a == s(&run) { s(&run2) } else { a }).collect();
    args2.insert(0, s(&db));
    args2.insert(0, "--db");
    ok(&args2);
    let listed: Value = serde_json::from_str(&db_args(&["runs", "list", "--json", "--filter", "group=cv2"])).unwrap();
    let kinds: Vec<&str> = listed.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["fold", "fold", "fold"], "{listed}");
    let report = ok(&["report", s(&run)]);
    let html = std::fs::read_to_string(report.trim()).unwrap();
    assert!(html.contains("Cross-validation cv") && html.contains("Validation accuracy of every fold"), "{html}");
    assert!(html.contains(&format!("{mean:.4}")) && html.contains(&format!("{std:.4}")));
    assert_eq!(html.matches("<svg").count(), 1);
}

/// A train file alone, with a 4-row class: `data.validation_fraction` / `test_fraction` carve
/// the held-out splits per class (the small class in each), `[data.augment]` adds one EDA copy
/// of every training row (WordNet synonyms from the hand-written fixture), results.json reports
/// both, and a run stopped part-way and resumed ends with the uninterrupted run's model.
#[test]
fn finetune_carves_stratified_splits_and_augments_training_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.tsv");
    let neutral = "the movie was so so\tneutral\nit was a film\tneutral\nthe plot was fine and good\tneutral\nquite a picture\tneutral\n";
    crate::common::write_split(&train, 120, 4, neutral);
    let wordnet = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lmforge/tests/data/wordnet-mini");
    let cfg = tmp.path().join("carve.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ntrain = {:?}\ntext_column = \"sentence\"\nvalidation_fraction = 0.1\ntest_fraction = 0.1\n\
             split_by = \"label\"\n\n[data.augment]\ncopies = 1\nwordnet = {:?}\n\n\
             [model]\nbase = {:?}\ndropout = 0.0\n\n[finetune]\nmethod = \"lora\"\n\n[optim]\nlr = 1e-2\n\n\
             [train]\nepochs = 2\nbatch_size = 16\nlog_every = 5\ncheckpoint_every = 3\n\n[log]\nprogress = \"off\"\n",
            s(&train),
            s(&wordnet),
            s(&crate::common::fixture("gpt2-tiny")),
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
    let r = read_json(&run.join("results.json"));
    let splits = &r["splits"];
    for (name, want_neutral) in [("validation", 1), ("test", 1)] {
        assert_eq!(splits[name]["source"], "fraction", "{splits}");
        assert_eq!(splits[name]["classes"]["neutral"], want_neutral, "{name}: {splits}");
        let (pos, neg) = (
            splits[name]["classes"]["positive"].as_u64().unwrap(),
            splits[name]["classes"]["negative"].as_u64().unwrap(),
        );
        assert!(pos >= 5 && neg >= 5, "{name}: {splits}");
    }
    let held: u64 = ["validation", "test"].iter().map(|n| splits[*n]["rows"].as_u64().unwrap()).sum();
    let original_train = 124 - held;
    // The training rows are the rest, each with one augmented copy.
    assert_eq!(splits["train"]["rows"].as_u64(), Some(2 * original_train), "{splits}");
    assert_eq!(splits["train"]["classes"]["neutral"], 4, "two rows and their copies: {splits}");
    let aug = &r["augmentation"];
    assert_eq!(aug["rows_added"].as_u64(), Some(original_train), "{aug}");
    assert_eq!(
        aug["by_operation"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        original_train
    );
    assert!(aug["wordnet_words"].as_u64().unwrap() > 0, "{aug}");
    assert_eq!((r["final"]["split"].as_str(), r["final"]["file"].as_str()), (Some("test"), Some(s(&train))));

    // Stopped after 5 steps and resumed: the same training rows, the same model.
    let split = tmp.path().join("split");
    ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&split), "--stop-after", "5"]);
    ok(&["finetune", "--resume", s(&split)]);
    let weights = |d: &Path| std::fs::read(d.join("model/adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&split), weights(&run), "resumed run differs");
    assert_eq!(read_json(&split.join("results.json"))["final"], r["final"]);

    // Keys are checked by name.
    for (set, key) in [
        ("data.validation_fraction=1.5", "data.validation_fraction"),
        ("data.augment.swap=2", "data.augment.swap"),
        ("data.split_by=alphabet", "data.split_by"),
    ] {
        let out = lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&tmp.path().join("bad")), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "--set {set}: {err}");
    }
}
