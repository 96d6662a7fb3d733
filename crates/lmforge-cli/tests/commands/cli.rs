//! End-to-end tests of the `lmforge` binary: train a tiny model on a slice of the bundled
//! corpus, evaluate, generate, export and re-evaluate; exact resume; Ctrl-C; config errors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{lmforge, metrics, ok, s, tensors, test_db, tiny_bert_config, tiny_config};

#[test]
fn train_eval_generate_export_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run)]);

    let rows = metrics(&run);
    let train: Vec<&Value> = rows.iter().filter(|r| r["split"] == "train").collect();
    let val: Vec<&Value> = rows.iter().filter(|r| r["split"] == "val").collect();
    assert_eq!(train.len(), 6);
    assert_eq!(val.len(), 2);
    for r in &train {
        for k in ["step", "loss", "lr", "tokens", "elapsed_s"] {
            assert!(r.get(k).is_some(), "train row lacks {k}: {r}");
        }
    }
    for k in ["ppl", "bits_per_byte"] {
        assert!(val[1][k].as_f64().unwrap() > 0.0);
    }
    assert!(train[5]["loss"].as_f64().unwrap() < train[0]["loss"].as_f64().unwrap(), "loss falls");
    assert!(run.join("config.toml").is_file());
    for step in ["step-00000003", "step-00000006"] {
        let c = run.join("checkpoints").join(step);
        for f in ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "tokenizer.json"] {
            assert!(c.join(f).is_file(), "{step}/{f}");
        }
    }

    let text = tmp.path().join("eval.txt");
    std::fs::write(&text, "ROMEO:\nWhat light through yonder window breaks?\nIt is the east.\n").unwrap();
    let a: Value =
        serde_json::from_str(&ok(&["eval", "ppl", "--model", s(&run), "--text", s(&text), "--json"])).unwrap();
    for k in ["tokens", "loss", "ppl", "bits_per_byte"] {
        assert!(a[k].as_f64().unwrap() > 0.0, "{k}");
    }

    let out = ok(&["generate", "--model", s(&run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "3"]);
    assert!(out.starts_with("ROMEO:") && out.len() > "ROMEO:".len());
    let again = ok(&["generate", "--model", s(&run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "3"]);
    assert_eq!(out, again, "seeded generation is reproducible");

    let hf = tmp.path().join("hf");
    ok(&["export", "hf", s(&run), "--out", s(&hf)]);
    let b: Value =
        serde_json::from_str(&ok(&["eval", "ppl", "--model", s(&hf), "--text", s(&text), "--json"])).unwrap();
    assert_eq!(a["loss"], b["loss"], "the exported folder is the same model");
    let cfg_json: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["model_type"], "gpt2");
}

#[test]
fn resume_reproduces_the_uninterrupted_run_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // Dropout and gradient accumulation make the check cover the RNG streams and micro-batches.
    let cfg = tiny_config(tmp.path(), "dropout = 0.1", "grad_accum = 2");

    let full = tmp.path().join("full");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&full)]);
    let split = tmp.path().join("split");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&split), "--stop-after", "4"]);
    assert!(split.join("checkpoints/step-00000004").is_dir());
    ok(&["train", "--resume", s(&split)]);

    let key = |r: &Value| {
        (
            r["step"].as_u64().unwrap(),
            r["split"].as_str().unwrap().to_string(),
            r["loss"].as_f64().unwrap().to_bits(),
            r["lr"].as_f64().unwrap().to_bits(),
        )
    };
    let a: Vec<_> = metrics(&full).iter().map(key).collect();
    let b: Vec<_> = metrics(&split).iter().map(key).collect();
    assert_eq!(a, b, "same losses, to the bit");
    let w = |run: &Path| std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    assert!(w(&full) == w(&split), "same final weights");
    let o = |run: &Path| std::fs::read(run.join("checkpoints/step-00000006/optimizer.safetensors")).unwrap();
    assert!(o(&full) == o(&split), "same optimizer state");

    // Activation checkpointing recomputes the same values (dropout masks replayed): the same
    // run, to the bit, with the key in the saved config.
    let ckpt = tmp.path().join("ckpt");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&ckpt), "--set", "train.activation_checkpointing=true"]);
    assert_eq!(metrics(&ckpt).iter().map(key).collect::<Vec<_>>(), a, "checkpointed: same losses");
    assert!(w(&ckpt) == w(&full), "checkpointed: same final weights");
    assert!(std::fs::read_to_string(ckpt.join("config.toml")).unwrap().contains("activation_checkpointing = true"));
    // So does recomputing the first block only (a block count), the count in the saved config.
    let first = tmp.path().join("first");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&first), "--set", "train.activation_checkpointing=1"]);
    assert_eq!(metrics(&first).iter().map(key).collect::<Vec<_>>(), a, "first block: same losses");
    assert!(w(&first) == w(&full), "first block: same final weights");
    assert!(std::fs::read_to_string(first.join("config.toml")).unwrap().contains("activation_checkpointing = 1"));
}

/// `train.precision = "bf16-mixed"` (on the CPU, bf16 products computed through f32 and
/// rounded, as a GPU's bf16 matmul with f32 accumulation returns them): validation loss within
/// 2% of the fp32 run's, fp32 weights in the checkpoints, the precision in the saved config, and
/// a resumed run that continues the uninterrupted one to the bit.
#[test]
fn bf16_mixed_trains_close_to_fp32_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "dropout = 0.1", "");
    let steps = ["--set", "train.max_steps=40", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"];
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut args = vec!["train", "--config", s(&cfg), "--run-dir", s(&dir)];
        args.extend(steps);
        args.extend(extra);
        ok(&args);
        dir
    };
    let fp32 = run("fp32", &[]);
    let mixed = run("mixed", &["--set", "train.precision=bf16-mixed"]);
    let split = run("split", &["--set", "train.precision=bf16-mixed", "--stop-after", "20"]);
    // `--device` moves a resumed run (here to the device it was on: the same numbers).
    ok(&["train", "--resume", s(&split), "--device", "cpu"]);

    let val = |dir: &Path| -> Vec<f64> {
        metrics(dir).iter().filter(|r| r["split"] == "val").map(|r| r["loss"].as_f64().unwrap()).collect()
    };
    let (a, b) = (val(&fp32), val(&mixed));
    assert_eq!(a.len(), 2);
    let rel = (b[1] - a[1]).abs() / a[1];
    eprintln!("validation loss after 40 steps: fp32 {}, bf16-mixed {} ({:.3}% apart)", a[1], b[1], 100.0 * rel);
    assert!(rel < 0.02, "bf16-mixed validation loss {} vs fp32 {} ({:.2}%)", b[1], a[1], 100.0 * rel);
    assert!(a != b, "bf16-mixed must not be fp32 under another name");
    let bits =
        |dir: &Path| -> Vec<u64> { metrics(dir).iter().map(|r| r["loss"].as_f64().unwrap().to_bits()).collect() };
    assert_eq!(bits(&mixed), bits(&split), "resumed bf16-mixed run: the same losses, to the bit");
    let w = |run: &Path| std::fs::read(run.join("checkpoints/step-00000040/model.safetensors")).unwrap();
    assert!(w(&mixed) == w(&split), "same final weights");
    let weights = tensors(&mixed.join("checkpoints/step-00000040/model.safetensors"));
    assert!(!weights.is_empty(), "fp32 weights in the checkpoint (tensors() asserts F32)");
    assert!(std::fs::read_to_string(mixed.join("config.toml")).unwrap().contains("precision = \"bf16-mixed\""));
}

/// BERT pretraining (MLM + NSP) through the CLI: validation metrics, exact resume (dynamic
/// masks, NSP pairs and dropout included), and an HF export that re-imports to the same weights.
#[test]
fn bert_pretraining_resumes_exactly_and_exports_a_bert_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_bert_config(tmp.path());
    let data = tmp.path().join("corpus.txt");
    let full = tmp.path().join("full");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&full)]);
    let split = tmp.path().join("split");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&split), "--stop-after", "4"]);
    ok(&["train", "--resume", s(&split)]);
    let rows = metrics(&full);
    let val: Vec<&Value> = rows.iter().filter(|r| r["split"] == "val").collect();
    assert_eq!(val.len(), 2);
    for k in ["mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc", "mlm_unigram_acc"] {
        let x = val[1][k].as_f64().unwrap_or_else(|| panic!("val row lacks {k}: {}", val[1]));
        assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
    }
    let key = |r: &Value| {
        let mut v = r.clone();
        let o = v.as_object_mut().unwrap();
        for k in ["elapsed_s", "tokens_per_s"] {
            o.remove(k);
        }
        v.to_string()
    };
    let a: Vec<String> = metrics(&full).iter().map(key).collect();
    let b: Vec<String> = metrics(&split).iter().map(key).collect();
    assert_eq!(a, b, "same losses, accuracies and learning rates after a resume");
    let w = |run: &Path| std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    assert!(w(&full) == w(&split), "same final weights");

    let hf = tmp.path().join("hf");
    ok(&["export", "hf", s(&full), "--out", s(&hf)]);
    let cfg_json: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg_json["model_type"].as_str(), cfg_json["architectures"][0].as_str()),
        (Some("bert"), Some("BertForPreTraining"))
    );
    let again = tmp.path().join("hf2");
    ok(&["export", "hf", s(&hf), "--out", s(&again)]);
    let m = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(m(&hf) == w(&full) && m(&again) == m(&hf), "export -> import -> export keeps every weight bit");

    let out = lmforge(&["eval", "ppl", "--model", s(&hf), "--text", s(&data)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BERT encoder"), "a clear error for a causal-only command");
}

/// Stopping and resuming continues exactly with optimizers whose state is not AdamW's:
/// Adafactor (factored second moments and a first moment; the step count it also depends on is
/// restored from the trainer state) and Muon (momentum buffers plus AdamW state, with a
/// parameter group that travels through the saved config.toml), and reduce-on-plateau (its
/// state lives in trainer_state.json; here every validation after the first reduces the LR).
#[test]
fn resume_is_exact_with_adafactor_muon_and_plateau() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let cases: [&[&str]; 3] = [
        &["optim.name=adafactor", "optim.beta1=0.9", "optim.scale_parameter=false", "optim.lr=0.01"],
        &["optim.name=muon", "optim.lr=0.02", "optim.groups=[{pattern = \"ln_\", lr_scale = 0.5}]"],
        &[
            "schedule.kind=plateau",
            "schedule.plateau_patience=0",
            "schedule.plateau_threshold=0.5",
            "schedule.plateau_factor=0.5",
            "schedule.min_lr_ratio=0",
            "train.eval_every=1",
        ],
    ];
    for sets in cases {
        let name = sets[0].split('=').nth(1).unwrap();
        let mut extra = Vec::new();
        for s in sets {
            extra.extend(["--set", s]);
        }
        let full = tmp.path().join(format!("{name}-full"));
        let split = tmp.path().join(format!("{name}-split"));
        let mut args = vec!["train", "--config", s(&cfg), "--run-dir", s(&full)];
        args.extend(&extra);
        ok(&args);
        let mut args = vec!["train", "--config", s(&cfg), "--run-dir", s(&split), "--stop-after", "4"];
        args.extend(&extra);
        ok(&args);
        ok(&["train", "--resume", s(&split)]);

        let rows = |run: &Path| -> Vec<(u64, String, u64, u64)> {
            metrics(run)
                .iter()
                .map(|r| {
                    let bits = |k: &str| r[k].as_f64().unwrap().to_bits();
                    (r["step"].as_u64().unwrap(), r["split"].as_str().unwrap().into(), bits("loss"), bits("lr"))
                })
                .collect()
        };
        assert_eq!(rows(&full), rows(&split), "{name}: same losses and lrs, to the bit");
        for f in ["model.safetensors", "optimizer.safetensors"] {
            let read = |run: &Path| std::fs::read(run.join("checkpoints/step-00000006").join(f)).unwrap();
            assert!(read(&full) == read(&split), "{name}: same {f}");
        }
        let first = metrics(&full)[0]["loss"].as_f64().unwrap();
        let last = metrics(&full).iter().rfind(|r| r["split"] == "train").unwrap()["loss"].as_f64().unwrap();
        assert!(last < first, "{name}: loss falls ({first} -> {last})");
        if name == "plateau" {
            let lrs: Vec<f64> = metrics(&full).iter().map(|r| r["lr"].as_f64().unwrap()).collect();
            assert!(*lrs.last().unwrap() < 0.1 * 6e-4, "plateau reduced the lr: {lrs:?}");
        }
    }
}

#[test]
fn sigint_writes_a_checkpoint_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .env("LMFORGE_DB", test_db())
        .args([
            "train",
            "--config",
            s(&cfg),
            "--run-dir",
            s(&run),
            "--set",
            "train.max_steps=100000",
            "--set",
            "train.checkpoint_every=0",
        ])
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", test_db())
        .spawn()
        .unwrap();
    // Wait for training to be under way (a metrics row), bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("metrics.jsonl").is_file() || std::fs::metadata(run.join("metrics.jsonl")).unwrap().len() == 0 {
        assert!(std::time::Instant::now() < deadline, "training did not start");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training exited before the signal: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().collect();
    assert_eq!(ckpts.len(), 1, "one checkpoint written on interrupt");
    let last_step = metrics(&run).last().unwrap()["step"].as_u64().unwrap();
    assert!(last_step < 100_000);
}

#[test]
fn config_errors_name_the_key_exit_nonzero_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    let cases: [(&[&str], &str); 6] = [
        (&["--set", "train.max_stepz=3"], "max_stepz"),
        // A hyperparameter of another optimizer is rejected by name, not ignored.
        (&["--set", "optim.momentum=0.9"], "optim.momentum"),
        (&["--set", "optim.groups=[{pattern = \"no_such_param\"}]"], "optim.groups[0].pattern"),
        (&["--set", "train.batch_size=\"four\""], "train.batch_size"),
        (&["--set", "optim.lr=-0.1"], "optim.lr"),
        (&["--set", "model.preset=gpt9"], "model.preset"),
    ];
    for (extra, key) in cases {
        let mut args = vec!["train", "--config", s(&cfg), "--run-dir", s(&run)];
        args.extend_from_slice(extra);
        let out = lmforge(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must fail");
        assert!(err.contains(key), "{extra:?}: error should name {key}: {err}");
        assert!(!run.exists(), "{extra:?}: nothing may be written");
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nmax_steps = 5\nwarmup = 3\n").unwrap();
    let out = lmforge(&["train", "--config", s(&bad), "--run-dir", s(&run)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warmup"));
    assert!(!run.exists());
}

/// A device this binary cannot use is a config error naming the key and how to build for it,
/// before anything is written: `train.device = "cuda"` on a build without CUDA.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_this_build_lacks_fails_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    for (set, key, hint) in [
        ("train.device=cuda", "train.device", "--features lmforge-cli/cuda"),
        ("train.device=cuda:1", "train.device", "--features lmforge-cli/cuda"),
    ] {
        let out = lmforge(&["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key) && err.contains(hint), "{set}: {err}");
        assert!(!run.exists(), "{set}: nothing may be written");
    }
    // A run moved to a GPU at --resume: the flag is named, the run dir left as it was.
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run), "--stop-after", "3"]);
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let out = lmforge(&["train", "--resume", s(&run), "--device", "cuda"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--device") && err.contains("lmforge-cli/cuda"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), before);
    std::fs::remove_dir_all(&run).unwrap();
    // The same config plans (a GPU config is still a valid config on a laptop).
    let plan = ok(&["plan", "--config", s(&cfg), "--json"]);
    assert!(plan.contains("\"fits\""), "{plan}");
    // The commands that run a model take the same choice.
    let out = lmforge(&["bench", "train", "--preset", "tiny", "--steps", "1", "--device", "cuda"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--device"));
}

/// Relative paths in a config file resolve against the file's folder: `lmforge train --config
/// /abs/path/run.toml` works from any directory, and an unreadable path names its key and the
/// path it resolved to.
#[test]
fn a_config_given_by_absolute_path_works_from_another_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = tmp.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let text = std::fs::read_to_string(tiny_config(tmp.path(), "", "")).unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let relative = text.replace(&format!("{:?}", s(&corpus)), "\"../corpus.txt\"");
    assert_ne!(relative, text, "the config names its corpus");
    let cfg = configs.join("run.toml");
    std::fs::write(&cfg, &relative).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |config: &Path, dir: &str| {
        Command::new(env!("CARGO_BIN_EXE_lmforge"))
            .args(["train", "--config", s(config), "--run-dir", dir])
            .current_dir(&elsewhere)
            .env("LMFORGE_DB", test_db())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&cfg, "run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved: toml::Table = std::fs::read_to_string(elsewhere.join("run/config.toml")).unwrap().parse().unwrap();
    let path = Path::new(saved["data"]["path"].as_str().unwrap());
    assert!(path.is_absolute(), "the saved config holds the resolved path: {}", path.display());
    assert_eq!(path.canonicalize().unwrap(), corpus.canonicalize().unwrap());
    assert!(!metrics(&elsewhere.join("run")).is_empty());
    // A path that does not exist: the key and the resolved path, nothing written.
    let missing = configs.join("missing.toml");
    std::fs::write(&missing, relative.replace("../corpus.txt", "../nowhere.txt")).unwrap();
    let out = run(&missing, "run2");
    let err = String::from_utf8_lossy(&out.stderr);
    let resolved = configs.join("../nowhere.txt");
    assert!(!out.status.success() && err.contains("data.path") && err.contains(s(&resolved)), "{err}");
    assert!(!elsewhere.join("run2").exists());
}

/// `model.init_from` continues from a run's weights and tokenizer: with the first step's LR at
/// zero (warmup), the continued run's first validation equals the source's last, exactly. A
/// shape key that disagrees with the source names both values; a Hugging Face folder works as a
/// source too.
#[test]
fn init_from_continues_a_run_exactly_and_checks_the_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let source = tmp.path().join("source");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&source)]);
    let last_val = |run: &Path| -> f64 {
        let rows = metrics(run);
        rows.iter().rev().find(|r| r["split"] == "val").unwrap()["loss"].as_f64().unwrap()
    };
    let continued = tmp.path().join("continued");
    let init = format!("model.init_from={:?}", s(&source));
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--run-dir",
        s(&continued),
        "--set",
        &init,
        "--set",
        "train.max_steps=1",
        "--set",
        "train.eval_every=1",
    ]);
    assert_eq!(last_val(&continued), last_val(&source), "the continued run starts from the source's weights");
    let tok = |run: &Path| std::fs::read(run.join("data/tokenizer.json")).unwrap();
    assert_eq!(tok(&continued), tok(&source), "and its tokenizer");

    let out = lmforge(&[
        "train",
        "--config",
        s(&cfg),
        "--run-dir",
        s(&tmp.path().join("bad")),
        "--set",
        &init,
        "--set",
        "model.n_layer=3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model.n_layer") && err.contains('3') && err.contains('2'), "{err}");
    assert!(!tmp.path().join("bad").exists());

    let hf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/gpt2-tiny");
    let from_hf = tmp.path().join("from-hf");
    let init = format!("model.init_from={:?}", s(&hf));
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&from_hf), "--set", &init, "--set", "train.max_steps=2"]);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from_hf.join("checkpoints/step-00000002/config.json")).unwrap())
            .unwrap();
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (saved["n_embd"].clone(), saved["vocab_size"].clone()),
        (source["n_embd"].clone(), source["vocab_size"].clone())
    );
}

/// `eval generation --predictions` scores a JSONL file as sacrebleu and rouge-score do: the
/// shared fixture's corpus BLEU and mean ROUGE-L, and a malformed line names its file and line.
#[test]
fn eval_generation_scores_predictions_like_the_reference_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/metrics.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let (hyps, refs) = (m["bleu"]["hypotheses"].as_array().unwrap(), m["bleu"]["references"].as_array().unwrap());
    let rows: String = hyps
        .iter()
        .zip(refs)
        .map(|(h, r)| serde_json::json!({"prediction": h, "reference": r}).to_string() + "\n")
        .collect();
    let file = tmp.path().join("preds.jsonl");
    std::fs::write(&file, rows).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&ok(&["eval", "generation", "--predictions", s(&file), "--json"])).unwrap();
    assert!((out["bleu"].as_f64().unwrap() - m["bleu"]["corpus_bleu"].as_f64().unwrap()).abs() < 1e-6, "{out}");
    let pairs = m["rouge"]["per_pair_fmeasure"].as_array().unwrap();
    let mean_l = pairs.iter().map(|p| p["rougeL"].as_f64().unwrap()).sum::<f64>() / pairs.len() as f64;
    assert!((out["rouge_l"].as_f64().unwrap() - mean_l).abs() < 1e-6, "{out}");
    assert_eq!(out["n"], 5);
    std::fs::write(&file, "{\"prediction\": \"a\", \"reference\": \"a\"}\n{\"prediction\": 3}\n").unwrap();
    let bad = lmforge(&["eval", "generation", "--predictions", s(&file)]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("preds.jsonl") && err.contains("line 2"), "{err}");
}

#[test]
fn llama_7b_is_refused_before_allocating_where_it_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    let out = lmforge(&[
        "train",
        "--config",
        s(&cfg),
        "--run-dir",
        s(&run),
        "--set",
        "model.preset=llama-7b",
        "--set",
        "train.seq_len=0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("6738415616") && err.contains("GiB"), "{err}");
    assert!(!run.exists());
}

#[test]
fn quickstart_runs_with_overrides_and_prints_a_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("qs");
    let out = ok(&[
        "quickstart",
        "--run-dir",
        s(&run),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.eval_batches=1",
        "--set",
        "log.progress=off",
    ]);
    assert!(out.contains("--- sample ---\nROMEO:"), "{out}");
    assert!(out.contains("bits/byte"), "{out}");
    assert!(run.join("checkpoints/step-00000002/model.safetensors").is_file());
}

#[test]
fn data_prepare_then_train_from_the_prepared_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let data = tmp.path().join("prepared");
    let out = ok(&[
        "data",
        "prepare",
        "--config",
        s(&cfg),
        "--out",
        s(&data),
        "--set",
        "data.doc_mode=\"paragraph\"",
        "--set",
        "data.vocab_size=400",
    ]);
    assert!(out.contains("documents out") && out.contains("split val"), "{out}");
    for f in ["manifest.json", "tokenizer.json", "train.bin", "val.bin", "test.bin", "rejected.sample.jsonl"] {
        assert!(data.join(f).is_file(), "{f}");
    }
    let m: Value = serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap()).unwrap();
    for k in ["documents_in", "exact_duplicates", "near_duplicates", "rejected", "documents_out", "splits"] {
        assert!(m["counts"].get(k).is_some(), "manifest counts.{k}");
    }
    let run = tmp.path().join("run");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", &format!("data.prepared={:?}", s(&data))]);
    assert!(run.join("checkpoints/step-00000006/model.safetensors").is_file());
    assert!(!run.join("data").exists(), "a prepared folder is used in place");
}

#[test]
fn a_run_dir_in_use_is_refused_and_a_stale_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", "train.max_steps=2"]);
    assert!(!run.join(".lock").exists(), "the lock is released at the end");
    // A live owner (this test process): refused, naming the pid.
    std::fs::write(run.join(".lock"), format!("{}\n", std::process::id())).unwrap();
    let out = lmforge(&["train", "--resume", s(&run)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use") && err.contains(&std::process::id().to_string()), "{err}");
    // A dead owner: a finished child's pid. The lock is taken over and released.
    let dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    std::fs::write(run.join(".lock"), format!("{pid}\n")).unwrap();
    ok(&["train", "--resume", s(&run)]);
    assert!(!run.join(".lock").exists());
}

/// An MPI launcher's environment without the `mpi` feature: refused before anything is
/// written (each process would otherwise train alone into the same folder).
#[cfg(not(feature = "mpi"))]
#[test]
fn an_mpi_launch_without_the_mpi_feature_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let run = tmp.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(["train", "--config", s(&cfg), "--run-dir", s(&run)])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`mpi` feature") && err.contains("2 processes"), "{err}");
    assert!(!run.exists());
}

/// Multi-process training under `mpirun` (the `mpi` feature, Open MPI installed).
#[cfg(feature = "mpi")]
#[path = "mpi/distributed.rs"]
mod distributed;
