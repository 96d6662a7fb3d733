//! Helpers shared by the binary's end-to-end tests (`tests/commands/`): run `lmforge` (its
//! experiment store under the target dir), write a tiny run config over a slice of the bundled
//! corpus or a fine-tuning config over toy labelled splits, read `metrics.jsonl` and
//! safetensors files.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn lmforge(args: &[&str]) -> Output {
    lmforge_in(&test_db(), args)
}

/// `lmforge args` recording its runs in the experiment store `db`.
pub fn lmforge_in(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", db)
        .output()
        .expect("lmforge runs")
}

/// The experiment store these tests' runs are recorded in: under the target dir, never the repo.
pub fn test_db() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests.db")
}

pub fn ok(args: &[&str]) -> String {
    ok_in(&test_db(), args)
}

/// [`ok`] with the experiment store `db`.
pub fn ok_in(db: &Path, args: &[&str]) -> String {
    let out = lmforge_in(db, args);
    assert!(
        out.status.success(),
        "lmforge {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt")
}

/// The first 150 kB of the bundled corpus (whole lines), written to `dir/corpus.txt`.
pub fn corpus_slice(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(corpus()).unwrap();
    let cut = text[..150_000].rfind('\n').unwrap() + 1;
    let data = dir.join("corpus.txt");
    std::fs::write(&data, &text[..cut]).unwrap();
    data
}

/// A tiny run config over [`corpus_slice`]; extra lines go into [model] / [train].
pub fn tiny_config(dir: &Path, model_extra: &str, train_extra: &str) -> PathBuf {
    let data = corpus_slice(dir);
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\npath = {:?}\nvocab_size = 400\n\n[model]\npreset = \"tiny\"\n{model_extra}\n\n\
             [schedule]\nwarmup_steps = 2\n\n[train]\nmax_steps = 6\nbatch_size = 4\nseq_len = 32\n\
             eval_every = 3\neval_batches = 2\ncheckpoint_every = 3\nlog_every = 1\n{train_extra}\n\n\
             [log]\nprogress = \"off\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

/// A tiny BERT (MLM + NSP, dropout, grad_accum 2, whole-word masking) over [`corpus_slice`].
pub fn tiny_bert_config(dir: &Path) -> PathBuf {
    let data = corpus_slice(dir);
    let cfg = dir.join("bert.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\npath = {:?}\nvocab_size = 400\nappend_eos = false\n\
             special_tokens = [\"[PAD]\", \"[UNK]\", \"[CLS]\", \"[SEP]\", \"[MASK]\"]\n\n\
             [model]\npreset = \"bert-quickstart\"\nvocab_size = 400\nd_model = 64\nn_layer = 2\nn_head = 2\n\
             context = 64\ndropout = 0.1\n\n[schedule]\nwarmup_steps = 2\n\n\
             [train]\nobjective = \"mlm+nsp\"\nmax_steps = 6\nbatch_size = 4\ngrad_accum = 2\nseq_len = 32\n\
             eval_every = 3\neval_batches = 2\ncheckpoint_every = 3\nlog_every = 1\n\n[mlm]\nwhole_word = true\n\n\
             [log]\nprogress = \"off\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

pub fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `metrics.jsonl` rows of `split` (all rows for None) without their wall-clock fields, as
/// text: what two runs that should be the same must share.
pub fn metrics_without_timing(run: &Path, split: Option<&str>) -> Vec<String> {
    metrics(run)
        .into_iter()
        .filter(|r| split.is_none_or(|s| r["split"] == s))
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("tokens_per_s");
            r.to_string()
        })
        .collect()
}

/// Runs `lmforge finetune --config cfg` with `sets` twice, whole and stopped after step 7 then
/// resumed, and asserts both end alike: the best model bit for bit, the validation rows, and
/// results.json's best and final metrics.
pub fn assert_finetune_resumes_exactly(cfg: &Path, sets: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &Path, stop: Option<&str>| {
        let mut args = vec!["finetune", "--config", s(cfg), "--run-dir", s(dir)];
        for x in sets {
            args.extend(["--set", x]);
        }
        if let Some(step) = stop {
            args.extend(["--stop-after", step]);
        }
        ok(&args);
    };
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    run(&whole, None);
    run(&parts, Some("7"));
    assert!(!parts.join("results.json").exists(), "stopped before the end");
    ok(&["finetune", "--resume", s(&parts)]);
    let fingerprint = |run: &Path| {
        let rows = metrics_without_timing(run, Some("validation"));
        let r: Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
        let weights = std::fs::read(run.join("model/model.safetensors")).unwrap();
        (weights, rows, format!("{} {}", r["best"], r["final"]["metrics"]))
    };
    let (a, b) = (fingerprint(&whole), fingerprint(&parts));
    assert!(a.0 == b.0, "the best model differs after the resume");
    assert_eq!((a.1, a.2), (b.1, b.2));
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name);
    assert!(p.is_dir(), "fixture {} not found (CI places shared/ beside the checkout)", p.display());
    p
}

/// A seeded draw below `n` (a 64-bit LCG): the toy data sets' generator, the same on every
/// machine.
pub fn draws(seed: u64) -> impl FnMut(usize) -> usize {
    let mut x = seed;
    move |n: usize| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 33) % n as u64) as usize
    }
}

/// A toy sentiment set: filler words around one cue word that decides the label.
pub fn write_split(path: &Path, rows: usize, seed: u64, extra: &str) {
    let (pos, neg) = (["great", "good", "lovely", "fine"], ["awful", "bad", "sad", "poor"]);
    let filler = ["the", "a", "movie", "was", "really", "quite", "and", "it", "so"];
    let mut next = draws(seed);
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

/// A fine-tuning config over toy sentiment splits (train 240, dev 40, test 40 rows with two bad
/// ones) for the fixture model `base`.
pub fn finetune_config(dir: &Path, base: &str, method: &str, lr: f64) -> PathBuf {
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

/// Every f32 tensor of a safetensors file, flattened, by name.
pub fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F32", "{name}");
        let (a, b) =
            (info["data_offsets"][0].as_u64().unwrap() as usize, info["data_offsets"][1].as_u64().unwrap() as usize);
        out.insert(
            name.clone(),
            data[a..b].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        );
    }
    out
}

/// Largest absolute difference between two folders' `file`s (same tensor names required).
pub fn max_diff(a: &Path, b: &Path, file: &str) -> f32 {
    let (x, y) = (tensors(&a.join(file)), tensors(&b.join(file)));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{file}: the same tensors");
    assert!(!x.is_empty(), "{file} holds tensors");
    x.iter().flat_map(|(k, v)| v.iter().zip(&y[k]).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}
