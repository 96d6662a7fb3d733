//! Helpers shared by the binary's integration tests: run `lmforge` (its experiment store under
//! the target dir), write a tiny run config over a slice of the bundled corpus, read
//! `metrics.jsonl`.
#![allow(dead_code)] // each test file uses its own subset

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn lmforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", test_db())
        .output()
        .expect("lmforge runs")
}

/// The experiment store these tests' runs are recorded in: under the target dir, never the repo.
pub fn test_db() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests.db")
}

pub fn ok(args: &[&str]) -> String {
    let out = lmforge(args);
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

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
