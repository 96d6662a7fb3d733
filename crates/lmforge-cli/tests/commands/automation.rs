//! The automation layer end to end through the `lmforge` binary: runs recorded in the
//! experiment store (two concurrent trainings lose nothing; a killed run shows as failed),
//! TensorBoard files that decode to the metrics rows, `runs` commands, sweeps and reports.
//! Every test uses its own store in a temporary folder (`--db` / `LMFORGE_DB`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{corpus, lmforge_in as lmforge, ok_in as ok};

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
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
    let first = lmforge_track::tensorboard::read_events(&files[0]).unwrap();
    assert_eq!(first[0].file_version.as_deref(), Some("brain.Event:2"));
    let second = lmforge_track::tensorboard::read_events(&files[1]).unwrap();
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

fn trials(sweep: &Path) -> Vec<Value> {
    std::fs::read_to_string(sweep.join("trials.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A sweep file over the tiny config: `extra` goes into [sweep] after the strategy.
fn sweep_file(dir: &Path, strategy: &str, sweep_extra: &str, rest: &str) -> PathBuf {
    tiny_config(dir);
    let path = dir.join("sweep.toml");
    std::fs::write(
        &path,
        format!(
            "[sweep]\nbase = \"tiny.toml\"\nstrategy = \"{strategy}\"\n\
             set = [\"train.log_every=3\", \"train.checkpoint_every=0\"]\n{sweep_extra}\n{rest}"
        ),
    )
    .unwrap();
    path
}

/// A grid sweep with ASHA on the tiny model: the trials are exactly the grid's points, each
/// once; trials stop at rungs (their run dirs end there, the store says stopped and why), and
/// every decision is the ASHA rule applied to the values recorded at that rung before it;
/// `best.toml` trains to the reported metric, to the bit; the report draws the sweep.
#[test]
fn grid_sweep_with_asha_covers_the_grid_stops_at_rungs_and_best_toml_reproduces() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let file = sweep_file(
        tmp.path(),
        "grid",
        "",
        "[early_stop]\nrule = \"asha\"\nmin_steps = 3\nreduction_factor = 2\n\n\
         [space]\n\"optim.lr\" = { choice = [1e-5, 3e-3, 1e-2, 1e-4] }\n\"model.dropout\" = { choice = [0.0, 0.1] }\n",
    );
    let out_dir = tmp.path().join("sw");
    let out = ok(&db, &["sweep", "--config", s(&file), "--out", s(&out_dir)]);
    assert!(out.contains("best: trial"), "{out}");
    let ts = trials(&out_dir);
    assert_eq!(ts.len(), 8);
    let points: std::collections::BTreeSet<String> =
        ts.iter().map(|t| format!("{} {}", t["params"]["optim.lr"], t["params"]["model.dropout"])).collect();
    let mut grid = std::collections::BTreeSet::new();
    for lr in ["1e-5", "0.003", "0.01", "0.0001"] {
        for d in ["0.0", "0.1"] {
            grid.insert(format!("{} {}", lr.parse::<f64>().unwrap(), d.parse::<f64>().unwrap()));
        }
    }
    let norm: std::collections::BTreeSet<String> = points
        .iter()
        .map(|p| {
            let (a, b) = p.split_once(' ').unwrap();
            format!("{} {}", a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap())
        })
        .collect();
    assert_eq!(norm, grid, "exactly the grid");

    // Rungs of a 6-step run validated every 3 steps with rf 2: step 3 only.
    let asha = lmforge_track::sweep::early_stop::Rule::Asha { reduction_factor: 2.0 };
    let (mut stopped, mut finished) = (0, 0);
    for (i, t) in ts.iter().enumerate() {
        let run = out_dir.join(t["run_dir"].as_str().unwrap());
        let last_row = metrics(&run).iter().filter_map(|r| r["step"].as_u64()).max().unwrap();
        let at_rung = t["rungs"]["3"].as_f64().unwrap();
        let before: Vec<f64> = ts[..i].iter().filter_map(|o| o["rungs"]["3"].as_f64()).collect();
        let decision = asha.decide(at_rung, &before);
        let rec = show(&db, s(&run));
        match t["status"].as_str().unwrap() {
            "stopped" => {
                stopped += 1;
                assert_eq!(t["step"], 3);
                assert_eq!(last_row, 3, "a stopped trial trained no further than its rung");
                assert!(run.join("checkpoints/step-00000003").is_dir());
                assert!(matches!(decision, lmforge_track::sweep::early_stop::Decision::Stop { .. }), "trial {i}");
                assert_eq!(rec["run"]["status"], "stopped");
                assert!(rec["run"]["note"].as_str().unwrap().contains("asha"), "{}", rec["run"]["note"]);
            }
            "finished" => {
                finished += 1;
                assert_eq!((t["step"].as_u64(), last_row), (Some(6), 6));
                assert_eq!(decision, lmforge_track::sweep::early_stop::Decision::Continue, "trial {i}");
                assert_eq!(rec["run"]["status"], "finished");
                assert_eq!(rec["run"]["kind"], "trial");
            }
            other => panic!("trial {i} is {other}"),
        }
    }
    assert!(stopped >= 1 && finished >= 2, "{stopped} stopped, {finished} finished");

    let best = ts
        .iter()
        .filter(|t| t["status"] == "finished")
        .min_by(|a, b| a["metric"].as_f64().unwrap().total_cmp(&b["metric"].as_f64().unwrap()))
        .unwrap();
    let run = tmp.path().join("from-best");
    ok(&db, &["train", "--config", s(&out_dir.join("best.toml")), "--run-dir", s(&run)]);
    let val = metrics(&run).iter().rfind(|r| r["split"] == "val").unwrap()["loss"].as_f64().unwrap();
    assert_eq!(val.to_bits(), best["metric"].as_f64().unwrap().to_bits(), "best.toml trains to the reported metric");

    // Run again: nothing left to do, nothing redone.
    let again = ok(&db, &["sweep", "--config", s(&file), "--out", s(&out_dir)]);
    assert_eq!(trials(&out_dir), ts, "{again}");

    let report = ok(&db, &["report", s(&out_dir)]);
    let html = std::fs::read_to_string(report.trim()).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("</html>"));
    assert_eq!(html.matches("<svg").count(), 3, "trial curves + one chart per parameter");
    assert!(html.contains("Validation loss of every trial") && html.contains("stopped early"));
    assert!(html.contains(">optim.lr<") && html.contains(">model.dropout<"));
    assert_eq!(html.matches("<tr class=").count(), 8, "one table row per trial");
    assert_eq!(html.matches("<tr class=\"stopped\"").count(), stopped);
    assert!(html.contains("<tr class=\"best\"") && html.contains("best.toml"));
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"), "self-contained");
}

/// A sweep killed (SIGKILL) in the middle and run again continues: finished trials are not
/// redone (their files are untouched), the interrupted trial resumes from its checkpoint, and
/// the result equals that of an uninterrupted sweep, to the bit.
#[test]
fn a_killed_sweep_resumes_without_redoing_finished_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let file = sweep_file(
        tmp.path(),
        "random",
        "max_trials = 3\nseed = 5",
        "[space]\n\"optim.lr\" = { loguniform = [1e-4, 1e-2] }\n\"model.n_layer\" = { int = [1, 2] }\n",
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("\"train.log_every=3\"", "\"train.log_every=3\", \"train.max_steps=60\", \"train.eval_every=20\""),
    )
    .unwrap();
    let straight = tmp.path().join("straight");
    ok(&db, &["sweep", "--config", s(&file), "--out", s(&straight)]);

    let resumed = tmp.path().join("resumed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(["sweep", "--config", s(&file), "--out", s(&resumed)])
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", &db)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while trial 1 trains, after trial 0 finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let ts = trials(&resumed);
        if ts.len() >= 2 && ts[0]["status"] == "finished" && resumed.join("trials/0001/metrics.jsonl").is_file() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the sweep did not get going");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = resumed.join("trials/0000/metrics.jsonl");
    let before = (std::fs::read(&first).unwrap(), std::fs::metadata(&first).unwrap().modified().unwrap());
    ok(&db, &["sweep", "--config", s(&file), "--out", s(&resumed)]);
    let after = (std::fs::read(&first).unwrap(), std::fs::metadata(&first).unwrap().modified().unwrap());
    assert!(before == after, "the finished trial was not redone");

    let key =
        |t: &Value| (t["id"].clone(), t["params"].clone(), t["status"].clone(), t["step"].clone(), t["metric"].clone());
    let a: Vec<_> = trials(&straight).iter().map(key).collect();
    let b: Vec<_> = trials(&resumed).iter().map(key).collect();
    assert_eq!(a, b, "the resumed sweep equals the uninterrupted one");
    let log = std::fs::read_to_string(resumed.join("trials/0000.log")).unwrap();
    assert_eq!(log.matches("training into").count(), 1, "trial 0 trained once: {log}");
}

/// The report of a single run: summary, the four curves, and the changed config keys.
#[test]
fn run_report_has_the_curves_and_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("run");
    ok(&db, &["train", "--config", s(&cfg), "--run-dir", s(&run)]);
    let out = tmp.path().join("r.html");
    ok(&db, &["report", "run", "--out", s(&out)]); // by name, through the store
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(html.matches("<svg").count(), 5);
    // Chart captions are SVG text elements.
    for title in ["Loss", "Learning rate", "Throughput", "Gradient norm (before clipping)", "Validation bits per byte"]
    {
        assert!(html.contains(&format!("\n{title}\n</text>")), "{title}");
    }
    assert!(html.contains("final val loss") && html.contains("6 / 6"));
    assert!(html.contains(">train.max_steps<"), "changed config keys are listed");
    assert!(!html.contains("<script") && !html.contains("src="));
}

/// `max_parallel = 2` runs trials side by side (all recorded, each in its own run dir), and a
/// time budget stops the sweep with its running trial resumable: raising the budget (allowed:
/// it is not part of the sweep's identity) and running again completes it.
#[test]
fn parallel_trials_and_a_time_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let file = sweep_file(
        tmp.path(),
        "random",
        "max_trials = 4\nmax_parallel = 2",
        "[space]\n\"optim.lr\" = { loguniform = [1e-4, 1e-2] }\n",
    );
    let par = tmp.path().join("par");
    ok(&db, &["sweep", "--config", s(&file), "--out", s(&par)]);
    let ts = trials(&par);
    assert_eq!(ts.len(), 4);
    assert!(ts.iter().all(|t| t["status"] == "finished" && t["step"] == 6), "{ts:?}");
    let listed: Value = serde_json::from_str(&ok(&db, &["runs", "list", "--json", "--filter", "group=sweep"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert!(listed.as_array().unwrap().iter().all(|r| r["kind"] == "trial" && r["status"] == "finished"));

    let text = std::fs::read_to_string(&file).unwrap();
    let slow = text
        .replace("max_parallel = 2", "max_parallel = 1\ntime_budget_s = 0.3")
        .replace("\"train.log_every=3\"", "\"train.log_every=3\", \"train.max_steps=300\", \"train.eval_every=100\"");
    std::fs::write(&file, &slow).unwrap();
    let budget = tmp.path().join("budget");
    let out = lmforge(&db, &["sweep", "--config", s(&file), "--out", s(&budget)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("time budget"), "{}", String::from_utf8_lossy(&out.stderr));
    let ts = trials(&budget);
    assert_eq!(ts.len(), 1, "no trial after the budget ran out");
    assert_eq!(ts[0]["status"], "running", "the interrupted trial is resumable");
    std::fs::write(
        &file,
        slow.replace("time_budget_s = 0.3", "time_budget_s = 0").replace("max_trials = 4", "max_trials = 1"),
    )
    .unwrap();
    ok(&db, &["sweep", "--config", s(&file), "--out", s(&budget)]);
    let ts = trials(&budget);
    assert_eq!((ts.len(), ts[0]["status"].as_str()), (1, Some("finished")));
}

/// A fine-tuning run (LoRA on the tiny GPT-2 fixture) is recorded as kind `finetune` with its
/// validation rows, writes TensorBoard events, and gets a report with its accuracy curve.
#[test]
fn a_finetune_run_is_recorded_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lmforge.db");
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/gpt2-tiny");
    assert!(base.is_dir(), "fixture {} not found (CI places shared/ beside the checkout)", base.display());
    let mut rows = String::from("sentence\tlabel\n");
    for i in 0..64 {
        let (cue, label) = if i % 2 == 0 { ("great", "positive") } else { ("awful", "negative") };
        rows += &format!("the movie was {cue} {}\t{label}\n", ["really", "quite", "so", "and"][i % 4]);
    }
    let (train, dev) = (tmp.path().join("train.tsv"), tmp.path().join("dev.tsv"));
    std::fs::write(&train, &rows).unwrap();
    std::fs::write(&dev, &rows).unwrap();
    let cfg = tmp.path().join("ft.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ntrain = {:?}\nvalidation = {:?}\ntext_column = \"sentence\"\n\n[model]\nbase = {:?}\n\n\
             [finetune]\nmethod = \"lora\"\n\n[optim]\nlr = 1e-2\n\n[train]\nepochs = 1\nbatch_size = 16\nlog_every = 1\n\n\
             [log]\nprogress = \"off\"\n",
            s(&train),
            s(&dev),
            s(&base)
        ),
    )
    .unwrap();
    let run = tmp.path().join("ft");
    ok(&db, &["finetune", "--config", s(&cfg), "--run-dir", s(&run)]);
    let rec = show(&db, "ft");
    assert_eq!((rec["run"]["kind"].as_str(), rec["run"]["status"].as_str()), (Some("finetune"), Some("finished")));
    assert!(rec["run"]["summary"]["val_accuracy"].as_f64().is_some(), "{}", rec["run"]["summary"]);
    assert!(rec["run"]["summary"]["best_val_loss"].as_f64().is_some(), "{}", rec["run"]["summary"]);
    let events = lmforge_track::tensorboard::read_dir_events(&run.join("tb")).unwrap();
    assert!(events.iter().flat_map(|e| &e.scalars).any(|(t, _)| t == "validation/accuracy"));
    let out = tmp.path().join("ft.html");
    ok(&db, &["report", s(&run), "--out", s(&out)]);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("\nValidation accuracy\n</text>") && html.contains("final val accuracy"));
    assert!(html.contains(">finetune.method<"), "changed fine-tuning keys are listed");
}
