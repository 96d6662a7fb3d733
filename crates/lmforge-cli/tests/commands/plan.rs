//! `lmforge plan` end to end: the JSON it prints, and its CPU memory prediction against the
//! peak resident memory of real `lmforge train` runs of the small presets.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::ok;

fn lmforge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lmforge"));
    c.env("RUST_LOG", "warn");
    // Runs are recorded under the target dir, never in the repo.
    c.env("LMFORGE_DB", Path::new(env!("CARGO_TARGET_TMPDIR")).join("plan-tests.db"));
    c
}

fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

#[test]
fn json_has_the_documented_keys_and_published_counts() {
    let p = plan_json(&["--preset", "llama-7b", "--gpu", "a100-80gb", "--tokens", "2e12", "--mfu", "0.445"]);
    assert_eq!(p["parameters"], 6_738_415_616u64);
    for key in ["parameters", "fits", "memory_per_device_bytes", "tokens_per_s", "gpu_hours"] {
        assert!(p.get(key).is_some(), "no {key} in {p}");
    }
    assert_eq!(p["fits"], false);
    assert!(p["suggestion"]["change"].as_str().unwrap().contains("--activation-checkpointing"));
    let hours = p["gpu_hours"].as_f64().unwrap();
    assert!((hours / 184_320.0 - 1.0).abs() < 0.01, "{hours}");
    assert_eq!(p["parameters_by_component"]["attention"], 32u64 * 4 * 4096 * 4096);
    // Beside it, a lighter optimizer on the same device: its flags, applied, fit.
    let lighter = p["optimizer_suggestion"]["change"].as_str().unwrap();
    assert!(lighter.contains("--optim adafactor"), "{lighter}");
    let mut args = vec!["--preset", "llama-7b", "--gpu", "a100-80gb"];
    args.extend(lighter.split_whitespace());
    let a = plan_json(&args);
    assert_eq!((a["optimizer"].as_str(), a["fits"].as_bool()), (Some("adafactor"), Some(true)));
    assert_eq!(a["memory_per_device_bytes"], p["optimizer_suggestion"]["memory_per_device_bytes"]);

    // Llama-7B at 2 × 4096 fits an H200 with every layer recomputed; recomputing fewer, as
    // the plan names them, still fits, and one fewer than that does not.
    let seven = ["--preset", "llama-7b", "--gpu", "h200-141gb", "--micro-batch", "2", "--seq-len", "4096"];
    let all = plan_json(&[&seven[..], &["--activation-checkpointing"]].concat());
    assert_eq!((all["fits"].as_bool(), all["activation_checkpointing"].as_bool()), (Some(true), Some(true)));
    let fewer = all["fewer_recomputed"]["change"].as_str().unwrap();
    let n: u64 = fewer.strip_prefix("--activation-checkpointing ").unwrap().parse().unwrap();
    let just = plan_json(&[&seven[..], &fewer.split_whitespace().collect::<Vec<_>>()].concat());
    assert_eq!((just["fits"].as_bool(), just["activation_checkpointing"].as_u64()), (Some(true), Some(n)));
    let fewer_by_one = (n - 1).to_string();
    let short = plan_json(&[&seven[..], &["--activation-checkpointing", &fewer_by_one]].concat());
    assert_eq!(short["fits"], false);
    let out = lmforge().args(["plan"]).args(seven).args(["--activation-checkpointing", "33"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--activation-checkpointing") && err.contains("33 blocks"), "{err}");

    let g = plan_json(&["--preset", "gpt2-124m", "--gpus", "8", "--zero", "2", "--micro-batch", "8"]);
    assert_eq!(g["parameters"], 124_439_808u64);
    assert_eq!(g["fits"], true);
    assert_eq!(g["global_batch"], 64);

    // A table without --json; errors name the flag.
    let table = ok(&["plan", "--preset", "gpt2-124m"]);
    assert!(table.contains("124,439,808") && table.contains("memory per device"), "{table}");
    let out = lmforge().args(["plan", "--preset", "gpt2-124m", "--zero", "4"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zero"));
    let out = lmforge().args(["plan", "--preset", "gpt2-124m", "--optim", "adamx"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--optim") && err.contains("adamx"), "{err}");
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt")
}

/// Peak resident memory (bytes) of a finished child, from the kernel's accounting of exactly
/// that child (`wait4`), so tests running in parallel do not see each other's children.
#[allow(clippy::zombie_processes)] // reaped by wait4 instead of Child::wait
fn run_measuring_peak_rss(cmd: &mut Command) -> u64 {
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, zero is a valid value; wait4 reaps our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "training failed: status {status}");
    usage.ru_maxrss as u64 * 1024 // kilobytes on Linux
}

/// A run config over a prepared data folder, so the measured process only trains.
fn run_config(dir: &Path, prepared: &Path, preset: &str, batch: usize) -> PathBuf {
    let cfg = dir.join(format!("{preset}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[data]\nprepared = {:?}\n\n[model]\npreset = \"{preset}\"\n\n[train]\nmax_steps = 2\n\
             batch_size = {batch}\nseq_len = 128\neval_every = 0\neval_batches = 1\ncheckpoint_every = 0\n\n\
             [log]\nprogress = \"off\"\n",
            prepared.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

/// `lmforge plan --gpu cpu` predicts the peak RSS of `lmforge train` within 20%.
#[test]
fn cpu_prediction_matches_measured_peak_rss() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(corpus()).unwrap();
    let cut = text[..200_000].rfind('\n').unwrap() + 1;
    let raw = tmp.path().join("corpus.txt");
    std::fs::write(&raw, &text[..cut]).unwrap();
    let prepared = tmp.path().join("prepared");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&["data", "prepare", "--input", &s(&raw), "--out", &s(&prepared), "--set", "data.vocab_size=1024"]);

    for (preset, batch) in [("tiny", 16), ("llama-tiny", 16), ("quickstart", 8)] {
        let cfg = run_config(tmp.path(), &prepared, preset, batch);
        let p = plan_json(&["--config", &s(&cfg), "--gpu", "cpu", "--peak-tflops", "0.1"]);
        let predicted = p["memory_per_device_bytes"].as_u64().unwrap();
        let run = tmp.path().join(format!("run-{preset}"));
        let measured = run_measuring_peak_rss(lmforge().args(["train", "--config", &s(&cfg), "--run-dir", &s(&run)]));
        let rel = predicted as f64 / measured as f64 - 1.0;
        eprintln!("{preset} batch {batch}x128: predicted {predicted} B, measured peak RSS {measured} B ({rel:+.3})");
        assert!(rel.abs() < 0.20, "{preset}: predicted {predicted} vs measured {measured} ({rel:+.3})");
    }
}
