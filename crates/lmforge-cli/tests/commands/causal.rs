//! Causal-LM fine-tuning end to end through the `lmforge` binary on the tiny fixture models:
//! LoRA on GPT-2 (a PEFT folder that `eval ppl`, `eval generation`, `generate` and `export`
//! take with `--adapter`, merged by `--merge`), micro-batches weighed by their target tokens,
//! an exact `--resume`, chats on Llama with full fine-tuning and bottleneck adapters, and
//! config errors naming the key.

use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::common::{fixture, lmforge, ok, s};

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A toy instruction set: "Reverse: w1 w2 .. wk" → "wk .. w1", 2 to 6 words (so rows have
/// different numbers of target tokens), seeded.
fn write_rows(path: &Path, rows: usize, seed: u64) {
    let words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "sea", "sky"];
    let mut x = seed;
    let mut next = |n: usize| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 33) % n as u64) as usize
    };
    let mut text = String::new();
    for _ in 0..rows {
        let w: Vec<&str> = (0..2 + next(5)).map(|_| words[next(words.len())]).collect();
        let rev: Vec<&str> = w.iter().rev().copied().collect();
        let row = serde_json::json!({ "prompt": format!("Reverse: {}\n", w.join(" ")), "completion": rev.join(" ") });
        text += &format!("{row}\n");
    }
    std::fs::write(path, text).unwrap();
}

/// The same task as chats (system, user, assistant).
fn write_chats(path: &Path, rows: usize, seed: u64) {
    write_rows(path, rows, seed);
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            let chat = serde_json::json!({ "messages": [
                { "role": "system", "content": "You reverse words." },
                { "role": "user", "content": r["prompt"] },
                { "role": "assistant", "content": r["completion"] },
            ]});
            format!("{chat}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A causal_lm config over train (160 rows), validation (16) and test (16) files for `base`.
fn config(dir: &Path, base: &str, method: &str, chats: bool) -> PathBuf {
    let (train, val, test) = (dir.join("train.jsonl"), dir.join("val.jsonl"), dir.join("test.jsonl"));
    let write = if chats { write_chats } else { write_rows };
    write(&train, 160, 1);
    write(&val, 16, 2);
    write(&test, 16, 3);
    let cfg = dir.join(format!("{method}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[task]\nkind = \"causal_lm\"\n\n[data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\n\n\
             [model]\nbase = {:?}\ndropout = 0.0\n\n[finetune]\nmethod = {method:?}\n\n\
             [optim]\nlr = 1e-2\n\n[train]\nepochs = 2\nbatch_size = 16\neval_every = 4\nlog_every = 5\n\n\
             [sft]\ngenerate_every = 2\ngenerate_rows = 6\nmax_new_tokens = 6\n\n[log]\nprogress = \"off\"\n",
            s(&train),
            s(&val),
            s(&test),
            s(&fixture(base)),
        ),
    )
    .unwrap();
    cfg
}

fn sets(pairs: &[&str]) -> Vec<String> {
    pairs.iter().flat_map(|p| ["--set".to_string(), p.to_string()]).collect()
}

fn finetune(cfg: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec!["finetune", "--config", s(cfg), "--run-dir", s(run)];
    let extra = sets(extra);
    args.extend(extra.iter().map(String::as_str));
    ok(&args)
}

fn ppl_loss(args: &[&str]) -> f64 {
    let v: Value = serde_json::from_str(&ok(&[&["eval", "ppl", "--json"], args].concat())).unwrap();
    v["loss"].as_f64().unwrap()
}

fn validation_rows(run: &Path) -> Vec<Value> {
    crate::common::metrics(run).into_iter().filter(|r| r["split"] == "validation").collect()
}

#[test]
fn causal_lora_fine_tune_then_every_command_takes_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", false);
    let run = tmp.path().join("run");
    let out = ok(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--merge"]);
    assert!(out.contains("--- test (best model)") && out.contains("ROUGE-1/2/L"), "{out}");

    let r = read_json(&run.join("results.json"));
    assert_eq!(r["task"], "causal_lm");
    assert_eq!(r["final"]["split"], "test");
    assert!(r["train"]["target_tokens"].as_u64().unwrap() > 160, "{r}");
    let generation = &r["final"]["metrics"]["generation"];
    assert_eq!(generation["n"], 16, "{r}");

    // Validation: loss every evaluation, generation metrics every 2nd and at the last step.
    let rows = validation_rows(&run);
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [4, 8, 12, 16, 20]);
    let generated: Vec<u64> =
        rows.iter().filter(|r| r.get("rouge_l").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(generated, [8, 16, 20]);
    let (first, last) = (rows[0]["loss"].as_f64().unwrap(), rows[4]["loss"].as_f64().unwrap());
    assert!(last < first, "validation loss {first} -> {last}");

    // The model folder is a PEFT LoRA with the chat template and a manifest.
    let model = run.join("model");
    let ac = read_json(&model.join("adapter_config.json"));
    assert_eq!((ac["peft_type"].as_str(), ac["task_type"].as_str()), (Some("LORA"), Some("CAUSAL_LM")));
    assert_eq!(ac["target_modules"], serde_json::json!(["c_attn"]));
    assert!(read_json(&model.join("tokenizer_config.json"))["chat_template"].as_str().unwrap().contains("im_start"));
    assert!(model.join("manifest.json").is_file());

    // --adapter on the base is the merged folder, and not the base.
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "Reverse: red cat sky\nsky cat red\n").unwrap();
    let base = fixture("gpt2-tiny");
    let adapted = ppl_loss(&["--model", s(&base), "--adapter", s(&run), "--text", s(&text)]);
    let merged = ppl_loss(&["--model", s(&run.join("merged")), "--text", s(&text)]);
    let plain = ppl_loss(&["--model", s(&base), "--text", s(&text)]);
    assert!((adapted - merged).abs() <= 1e-5 * adapted, "adapter {adapted} vs merged {merged}");
    assert!((adapted - plain).abs() > 1e-2, "the adapter changes the model: {adapted} vs {plain}");

    // eval generation: the same greedy generations as the run's final evaluation, and the
    // file it writes scores the same with --predictions.
    let gens = tmp.path().join("gens.jsonl");
    let test = tmp.path().join("test.jsonl");
    let m: Value = serde_json::from_str(&ok(&[
        "eval",
        "generation",
        "--model",
        s(&base),
        "--adapter",
        s(&model),
        "--data",
        s(&test),
        "--max-new-tokens",
        "6",
        "--output",
        s(&gens),
        "--json",
    ]))
    .unwrap();
    assert_eq!(&m, generation, "eval generation reproduces the run's final generations");
    let again: Value = serde_json::from_str(&ok(&["eval", "generation", "--predictions", s(&gens), "--json"])).unwrap();
    assert_eq!(again, m);
    let run_gens = std::fs::read_to_string(run.join("generations-test.jsonl")).unwrap();
    assert_eq!(run_gens, std::fs::read_to_string(&gens).unwrap());

    ok(&[
        "generate",
        "--model",
        s(&base),
        "--adapter",
        s(&model),
        "--chat",
        "--prompt",
        "Reverse: sun sea",
        "--max-new-tokens",
        "4",
    ]);
    let out = lmforge(&["eval", "generation", "--model", s(&base), "--predictions", s(&gens)]);
    assert!(!out.status.success(), "--model and --predictions conflict");
}

/// A step of 16 rows as one micro-batch or as two of 8 trains the same model: each micro-batch
/// weighs by its target tokens (rows here have 2 to 6 words), so the step's loss is the mean
/// over all its target tokens either way.
#[test]
fn causal_micro_batches_weigh_by_their_target_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "llama-tiny", "full", false);
    let common = ["train.eval_every=5", "sft.generate_every=0", "train.checkpoint_every=20", "optim.lr=3e-3"];
    let (full, halves) = (tmp.path().join("full"), tmp.path().join("halves"));
    finetune(&cfg, &full, &[&common[..], &["train.batch_size=16"]].concat());
    finetune(&cfg, &halves, &[&common[..], &["train.batch_size=8", "train.grad_accum=2"]].concat());
    let loss =
        |dir: &Path| -> Vec<f64> { crate::common::metrics(dir).iter().map(|r| r["loss"].as_f64().unwrap()).collect() };
    let (a, b) = (loss(&full), loss(&halves));
    assert_eq!(a.len(), b.len());
    let rel = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x.abs()).fold(0.0, f64::max);
    eprintln!("causal grad_accum: losses differ by at most {rel:e} (relative)");
    // Measured 6e-8; weighing micro-batches by rows instead gives 1.9e-5 at the first step.
    assert!(rel <= 1e-6, "losses differ by {rel:e} (relative)");
    let d = crate::common::max_diff(
        &full.join("checkpoints/step-00000020"),
        &halves.join("checkpoints/step-00000020"),
        "trainable.safetensors",
    );
    eprintln!("causal grad_accum: weights after 20 steps differ by at most {d}");
    // Measured 3.5e-5 (Adam's normalisation magnifies fp32 summation-order noise in the
    // smallest gradients).
    assert!(d <= 1e-4, "weights after 20 steps: max |difference| {d}");
}

/// Stopped after 7 steps and resumed, a LoRA run with dropout ends bit-identical to the
/// uninterrupted one (weights, validation rows, generations).
#[test]
fn causal_stop_and_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", false);
    let extra = ["lora.dropout=0.1", "model.dropout=0.1", "train.checkpoint_every=3"];
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    finetune(&cfg, &whole, &extra);
    let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&split), "--stop-after", "7"];
    let e = sets(&extra);
    args.extend(e.iter().map(String::as_str));
    ok(&args);
    assert!(!split.join("results.json").exists());
    ok(&["finetune", "--resume", s(&split)]);
    let weights = |d: &Path| std::fs::read(d.join("model/adapter_model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&split), "the resumed run's adapter differs");
    let rows = |d: &Path| crate::common::metrics_without_timing(d, Some("validation"));
    assert_eq!(rows(&whole), rows(&split));
    let gens = |d: &Path| std::fs::read_to_string(d.join("generations-test.jsonl")).unwrap();
    assert_eq!(gens(&whole), gens(&split));
}

/// Chats on Llama: full fine-tuning writes a plain Hugging Face folder carrying its chat
/// template; bottleneck adapters write an lmforge adapter folder that `--adapter` loads and
/// `export` refuses to merge; a chat without a final assistant turn is a counted bad row.
#[test]
fn causal_chats_on_llama_full_and_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "llama-tiny", "full", true);
    let train = tmp.path().join("train.jsonl");
    let mut text = std::fs::read_to_string(&train).unwrap();
    text += "{\"messages\": [{\"role\": \"user\", \"content\": \"no reply\"}]}\n";
    std::fs::write(&train, text).unwrap();
    let quick = ["train.epochs=1", "sft.generate_every=0"];
    let full = tmp.path().join("full");
    finetune(&cfg, &full, &quick);
    let r = read_json(&full.join("results.json"));
    assert_eq!(r["bad_rows"]["missing_label"], 1, "{r}");
    let model = full.join("model");
    assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());
    assert!(read_json(&model.join("tokenizer_config.json"))["chat_template"].as_str().unwrap().contains("im_start"));
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "<|im_start|>user\nReverse: red cat<|im_end|>\n").unwrap();
    let tuned = ppl_loss(&["--model", s(&model), "--text", s(&text)]);
    let test_loss = r["final"]["metrics"]["loss"].as_f64().unwrap();
    assert!(tuned.is_finite() && test_loss.is_finite());

    let adapters = tmp.path().join("adapters");
    finetune(&cfg, &adapters, &[&quick[..], &["finetune.method=adapter", "adapter.size=8"]].concat());
    let ac = read_json(&adapters.join("model/adapter_config.json"));
    assert_eq!(ac["peft_type"], "LMFORGE_BOTTLENECK");
    let base = fixture("llama-tiny");
    let with = ppl_loss(&["--model", s(&base), "--adapter", s(&adapters), "--text", s(&text)]);
    let without = ppl_loss(&["--model", s(&base), "--text", s(&text)]);
    assert!((with - without).abs() > 1e-4, "adapters change the model: {with} vs {without}");
    let out = lmforge(&["export", "hf", s(&base), "--adapter", s(&adapters), "--out", s(&tmp.path().join("x"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot be merged"), "{err}");

    // Prefix tuning (with the MLP): a PEFT PREFIX_TUNING folder that --adapter loads, that
    // generates, and that export refuses to merge.
    let prefixed = tmp.path().join("prefix");
    let prefix = ["finetune.method=prefix", "prefix.num_virtual_tokens=4", "prefix.projection=true", "optim.lr=1e-2"];
    finetune(&cfg, &prefixed, &[&quick[..], &prefix[..]].concat());
    let ac = read_json(&prefixed.join("model/adapter_config.json"));
    assert_eq!((ac["peft_type"].as_str(), ac["num_virtual_tokens"].as_u64()), (Some("PREFIX_TUNING"), Some(4)));
    let with = ppl_loss(&["--model", s(&base), "--adapter", s(&prefixed), "--text", s(&text)]);
    assert!((with - without).abs() > 1e-4, "the prefix changes the model: {with} vs {without}");
    let r = read_json(&prefixed.join("results.json"));
    let trainable = r["params"]["trainable_params"].as_u64().unwrap();
    assert_eq!(trainable, 4 * 32 + 32 * 32 + 32 + 2 * 2 * 32 * 32 + 2 * 2 * 32, "embedding and MLP only: {r}");
    let out = lmforge(&[
        "generate",
        "--model",
        s(&base),
        "--adapter",
        s(&prefixed),
        "--prompt",
        "Reverse:",
        "--max-new-tokens",
        "5",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = lmforge(&["export", "hf", s(&base), "--adapter", s(&prefixed), "--out", s(&tmp.path().join("y"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a prefix") && err.contains("cannot be merged"), "{err}");
}

#[test]
fn causal_config_errors_name_the_key_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2-tiny", "lora", false);
    for (set, key) in [
        ("train.metric=accuracy", "train.metric"),
        ("sft.train_on=prompt", "sft.train_on"),
        ("sft.chat_template=vicuna", "sft.chat_template"),
        ("sft.generate_every=3", "sft.generate_every"),
        ("data.validation=", "data.validation"),
    ] {
        let run = tmp.path().join("run");
        let mut args = vec!["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", set];
        if set == "sft.generate_every=3" {
            args.extend(["--set", "train.metric=rouge_l"]);
        }
        let out = lmforge(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "--set {set}: {err}");
        assert!(!run.exists(), "--set {set}: nothing is written");
    }
    // An encoder base is refused by name.
    let run = tmp.path().join("bert");
    let bert = format!("model.base={}", s(&fixture("bert-tiny")));
    let out = lmforge(&["finetune", "--config", s(&cfg), "--run-dir", s(&run), "--set", &bert]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model.base") && err.contains("decoder"), "{err}");
}
