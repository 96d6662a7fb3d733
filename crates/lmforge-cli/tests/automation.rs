//! The automation layer end to end through the `lmforge` binary: runs recorded in the
//! experiment store (two concurrent trainings lose nothing; a killed run shows as failed),
//! TensorBoard files that decode to the metrics rows, `runs` commands, sweeps and reports.
//! Every test uses its own store in a temporary folder (`--db` / `LMFORGE_DB`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lmforge(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", db)
        .output()
        .expect("lmforge runs")
}

fn ok(db: &Path, args: &[&str]) -> String {
    let out = lmforge(db, args);
    assert!(
        out.status.success(),
        "lmforge {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt")
}

/// A tiny run config over the first 100 kB of the corpus.
fn tiny_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(corpus()).unwrap();
    let cut = text[..100_000].rfind('\n').unwrap() + 1;
    let data = dir.join("corpus.txt");
    std::fs::write(&data, &text[..cut]).unwrap();
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\npath = {:?}\nvocab_size = 300\n\n[model]\npreset = \"tiny\"\n\n\
             [schedule]\nwarmup_steps = 2\n\n[train]\nmax_steps = 6\nbatch_size = 4\nseq_len = 32\n\
             eval_every = 3\neval_batches = 2\ncheckpoint_every = 3\nlog_every = 1\n\n\
             [log]\nprogress = \"off\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn show(db: &Path, run: &str) -> Value {
    serde_json::from_str(&ok(db, &["runs", "show", run, "--json"])).unwrap()
}

/// Two trainings at once into one store, each logging every step: both runs and every metric
/// row of each are recorded (as many as their metrics.jsonl holds), with status finished.
#[test]
fn two_concurrent_trainings_are_recorded_completely() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store/lmforge.db");
    let cfg = tiny_config(tmp.path());
    let runs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("run-{i}"))).collect();
    let children: Vec<_> = runs
        .iter()
        .map(|run| {
            Command::new(env!("CARGO_BIN_EXE_lmforge"))
                .args(["--db", s(&db), "train", "--config", s(&cfg), "--run-dir", s(run)])
                .args(["--set", "train.max_steps=12", "--set", "train.eval_every=2"])
                .env("RUST_LOG", "warn")
                .env("RAYON_NUM_THREADS", "1")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for run in &runs {
        let rec = show(&db, s(run));
        assert_eq!(rec["run"]["status"], "finished");
        assert_eq!(rec["run"]["step"], 12);
        assert_eq!(rec["run"]["kind"], "train");
        let expected: usize = metrics(run)
            .iter()
            .map(|r| r.as_object().unwrap().iter().filter(|(k, v)| *k != "step" && v.is_number()).count())
            .sum();
        assert_eq!(rec["metrics"].as_array().unwrap().len(), expected, "every scalar of every row");
        let last_val = metrics(run).iter().rfind(|r| r["split"] == "val").unwrap()["loss"].as_f64().unwrap();
        assert_eq!(rec["run"]["summary"]["val_loss"].as_f64().unwrap(), last_val);
        let ckpts = rec["run"]["artifacts"]["checkpoints"].as_array().unwrap();
        assert!(ckpts.last().unwrap().as_str().unwrap().ends_with("step-00000012"));
    }
    let list = ok(&db, &["runs", "list", "--filter", "status=finished", "--sort", "val_loss"]);
    assert!(list.contains("run-0") && list.contains("run-1"), "{list}");
    let listed: Value = serde_json::from_str(&ok(&db, &["runs", "list", "--json", "--filter", "name=run-1"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// The TensorBoard file of a run, decoded record by record (length, both CRCs, protobuf
/// fields), holds exactly the scalars of metrics.jsonl; a resumed run adds a file that starts
/// with a SessionLog START at the first step after the checkpoint.
#[test]
fn tensorboard_events_decode_to_the_metrics_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("run");
    ok(&db, &["train", "--config", s(&cfg), "--run-dir", s(&run), "--stop-after", "4"]);
    ok(&db, &["train", "--resume", s(&run)]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "one event file per process");
    let first = lmforge::tensorboard::read_events(&files[0]).unwrap();
    assert_eq!(first[0].file_version.as_deref(), Some("brain.Event:2"));
    let second = lmforge::tensorboard::read_events(&files[1]).unwrap();
    assert_eq!((second[1].session_status, second[1].step), (Some(1), 5));
    let hparams: Vec<_> = first.iter().flat_map(|e| e.plugins.iter()).collect();
    assert_eq!(hparams[0].1, "hparams");

    // Later events replace earlier ones at the same step (as TensorBoard purges on restart).
    let mut seen = std::collections::BTreeMap::new();
    for e in first.iter().chain(&second) {
        if e.session_status == Some(1) {
            seen.retain(|(_, step): &(String, u64), _| *step < e.step);
        }
        for (tag, v) in &e.scalars {
            seen.insert((tag.clone(), e.step), *v);
        }
    }
    let mut expected = std::collections::BTreeMap::new();
    for r in metrics(&run) {
        let step = r["step"].as_u64().unwrap();
        let split = r["split"].as_str().unwrap();
        for (k, v) in r.as_object().unwrap() {
            if k != "step" && v.is_number() {
                expected.insert((format!("{split}/{k}"), step), v.as_f64().unwrap() as f32);
            }
        }
    }
    assert_eq!(seen, expected);
    for tag in ["train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss", "val/bits_per_byte"] {
        assert!(seen.keys().any(|(t, _)| t == tag), "{tag}");
    }
    let rec = show(&db, s(&run));
    assert_eq!(rec["run"]["status"], "finished", "the resume continued the same record");
}

/// A training killed with SIGKILL records no end; `runs list` finds its process gone and shows
/// it failed. `runs rm` asks unless --yes, then removes the record.
#[test]
fn a_killed_run_shows_as_failed_and_rm_removes_records() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("doomed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", "train.max_steps=100000"])
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", &db)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("metrics.jsonl").is_file() || std::fs::metadata(run.join("metrics.jsonl")).unwrap().len() == 0 {
        assert!(std::time::Instant::now() < deadline, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(show(&db, "doomed")["run"]["status"], "running");
    child.kill().unwrap();
    child.wait().unwrap();
    let rec = show(&db, "doomed");
    assert_eq!(rec["run"]["status"], "failed");
    assert!(rec["run"]["note"].as_str().unwrap().contains("crashed or killed"));

    let out = lmforge(&db, &["runs", "rm", "doomed"]);
    assert!(!out.status.success(), "no confirmation without a terminal");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    ok(&db, &["runs", "rm", "doomed", "--yes"]);
    assert!(ok(&db, &["runs", "list"]).contains("(no runs)"));
    assert!(run.is_dir(), "the run dir stays");
}

/// `runs compare` shows the differing config keys and the metrics side by side.
#[test]
fn runs_compare_shows_config_differences_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let cfg = tiny_config(tmp.path());
    for (name, lr) in [("slow", "1e-4"), ("fast", "3e-3")] {
        let run = tmp.path().join(name);
        ok(&db, &["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", &format!("optim.lr={lr}")]);
    }
    let out = ok(&db, &["runs", "compare", "slow", "fast"]);
    assert!(out.contains("config differences (1)"), "{out}");
    assert!(out.contains("optim.lr") && out.contains("0.0001") && out.contains("0.003"), "{out}");
    assert!(out.contains("val_loss"), "{out}");
    assert!(!out.contains("train.max_steps "), "identical keys are not listed: {out}");
}
