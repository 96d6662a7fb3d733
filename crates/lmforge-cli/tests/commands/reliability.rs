//! Reliability of the `lmforge` binary: killed anywhere (SIGKILL, including inside checkpoint
//! writes) and resumed, a run ends bit for bit where an uninterrupted one does; SIGINT /
//! SIGTERM checkpoint and exit 130 / 143; damaged checkpoints are reported and skipped;
//! non-finite steps are skipped or rolled back; failed checkpoint writes stop cleanly or
//! continue. Faults are placed with the `LMFORGE_TEST_*` hooks (see `lmforge::testhooks`).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{lmforge, metrics, ok, s, test_db, tiny_config};

/// splitmix64: the kill schedule is a pure function of the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Milliseconds the checkpoint-write hook sleeps per file, so kills land inside writes.
const CKPT_DELAY_MS: u64 = 10;

/// A run config for kill tests: 24 steps, a checkpoint every 2, validation every 4, dropout
/// and gradient accumulation (so the RNG streams and micro-batch cursor must resume exactly).
fn kill_config(dir: &Path) -> PathBuf {
    tiny_config(dir, "dropout = 0.1", "grad_accum = 2")
}

fn kill_overrides() -> Vec<String> {
    ["train.max_steps=24", "train.checkpoint_every=2", "train.eval_every=4"]
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// Spawns `train` for `run`: a fresh start while it holds no config yet, else `--resume`.
fn spawn_train(cfg: &Path, run: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmforge"));
    cmd.env("LMFORGE_DB", test_db());
    if run.join("config.toml").is_file() {
        cmd.args(["train", "--resume", s(run)]);
    } else {
        cmd.args(["train", "--config", s(cfg), "--run-dir", s(run)]).args(kill_overrides());
    }
    cmd.env("RUST_LOG", "error")
        .env("LMFORGE_TEST_CHECKPOINT_DELAY_MS", CKPT_DELAY_MS.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lmforge starts")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Staged checkpoint folders of process `pid` now in `run`'s checkpoints folder.
fn staged_of(run: &Path, pid: u32) -> BTreeSet<String> {
    let suffix = format!(".tmp-{pid}");
    std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".step-") && n.ends_with(&suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything that must match an uninterrupted run: final weights and optimizer state, the
/// checkpoints kept, and every metrics row without its wall-clock fields.
fn fingerprint(run: &Path) -> (Vec<u8>, Vec<u8>, Vec<String>, Vec<String>) {
    let last = run.join("checkpoints/step-00000024");
    let weights = std::fs::read(last.join("model.safetensors")).unwrap();
    let optim = std::fs::read(last.join("optimizer.safetensors")).unwrap();
    let kept: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = crate::common::metrics_without_timing(run, None);
    (weights, optim, kept, rows)
}

/// Fingerprints equal; otherwise a failure saying which part differs.
fn assert_same(
    got: &(Vec<u8>, Vec<u8>, Vec<String>, Vec<String>),
    want: &(Vec<u8>, Vec<u8>, Vec<String>, Vec<String>),
    run: &Path,
) {
    let what = if got.0 != want.0 {
        "final weights".to_string()
    } else if got.1 != want.1 {
        "final optimizer state".to_string()
    } else if got.2 != want.2 {
        format!("kept checkpoints {:?} vs {:?}", got.2, want.2)
    } else if let Some((a, b)) = got.3.iter().zip(&want.3).find(|(a, b)| a != b) {
        format!("metrics row {a} vs {b}")
    } else if got.3.len() != want.3.len() {
        format!("{} metrics rows vs {}", got.3.len(), want.3.len())
    } else {
        return;
    };
    panic!("{}: differs from the uninterrupted run: {what}", run.display());
}

/// How a trial chooses its moment.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// After a random delay from the start (loading, data preparation, steps, checkpoints).
    Anytime(Duration),
    /// Inside the `nth` checkpoint write of this process, `into` after its folder appeared.
    InCheckpoint { nth: usize, into: Duration },
}

struct Outcome {
    kills: usize,
    in_checkpoint: usize,
    episodes: usize,
}

/// Trains `episodes` runs to the end, each interrupted by `sig` at seeded random moments and
/// resumed, until `trials` signals have been delivered; every run must end exactly as
/// `baseline`. After SIGINT / SIGTERM the process must exit 130 / 143 having checkpointed.
fn interrupt_and_resume(tmp: &Path, sig: i32, trials: usize, seed: u64) -> Outcome {
    let cfg = kill_config(tmp);
    let baseline = tmp.join("baseline");
    if !baseline.exists() {
        let mut args = vec!["train".to_string(), "--config".into(), s(&cfg).into(), "--run-dir".into()];
        args.push(s(&baseline).into());
        args.extend(kill_overrides());
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let want = fingerprint(&baseline);
    let mut rng = Rng(seed);
    let mut out = Outcome { kills: 0, in_checkpoint: 0, episodes: 0 };
    while out.kills < trials {
        out.episodes += 1;
        let run = tmp.join(format!("sig{sig}-{}", out.episodes));
        loop {
            let mut child = spawn_train(&cfg, &run);
            let finishing = out.kills >= trials;
            let moment = if rng.below(5) < 2 {
                Moment::Anytime(Duration::from_millis(rng.below(1500)))
            } else {
                Moment::InCheckpoint {
                    nth: 1 + rng.below(3) as usize,
                    into: Duration::from_millis(rng.below(9 * CKPT_DELAY_MS)),
                }
            };
            let exited = if finishing { Some(child.wait().unwrap()) } else { wait_for(&mut child, &run, moment) };
            if let Some(status) = exited {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "run {} failed: {status}\n{err}", run.display());
                break; // the episode trained to the end
            }
            let pid = child.id();
            signal(&child, sig);
            out.kills += 1;
            let status = child.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            if sig == libc::SIGKILL {
                if !staged_of(&run, pid).is_empty() {
                    out.in_checkpoint += 1;
                }
            } else {
                // Graceful: a checkpoint at the step reached, then 128 + signal (or it had
                // finished anyway, or the signal came before the handler was installed).
                use std::os::unix::process::ExitStatusExt;
                let code = status.code();
                assert!(
                    code == Some(128 + sig) || code == Some(0) || status.signal() == Some(sig),
                    "{moment:?}: exit {status}\n{err}"
                );
                if code == Some(128 + sig) {
                    let last_row =
                        metrics(&run).iter().rev().find(|r| r["split"] == "train").map(|r| r["step"].clone());
                    let newest = std::fs::read_dir(run.join("checkpoints"))
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse::<u64>().ok())
                        .max();
                    assert_eq!(
                        last_row.and_then(|v| v.as_u64()),
                        newest,
                        "{moment:?}: checkpoint at the last step\n{err}"
                    );
                }
                if code == Some(0) {
                    break;
                }
            }
        }
        assert_same(&fingerprint(&run), &want, &run);
        let hidden: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "temporaries left after the final resume: {hidden:?}");
        std::fs::remove_dir_all(&run).unwrap();
    }
    out
}

/// Waits for `moment`; `Some(status)` when the process exited first.
fn wait_for(child: &mut Child, run: &Path, moment: Moment) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut seen = BTreeSet::new();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        assert!(Instant::now() < deadline, "no progress within 120 s");
        match moment {
            Moment::Anytime(d) if start.elapsed() >= d => return None,
            Moment::InCheckpoint { nth, into } => {
                seen.extend(staged_of(run, child.id()));
                if seen.len() >= nth {
                    std::thread::sleep(into);
                    return None;
                }
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL at random moments — a fifth of them timed from the start, the rest inside a
/// checkpoint write — then resume, over and over: every run ends bit for bit as the
/// uninterrupted one (weights, optimizer state, kept checkpoints, metrics history).
/// `LMFORGE_KILL_TRIALS` (default 20) and `LMFORGE_KILL_SEED` set the schedule.
#[test]
fn sigkill_anywhere_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let trials = env_u64("LMFORGE_KILL_TRIALS", 20) as usize;
    let seed = env_u64("LMFORGE_KILL_SEED", 8);
    let started = Instant::now();
    let out = interrupt_and_resume(tmp.path(), libc::SIGKILL, trials, seed);
    eprintln!(
        "SIGKILL: {} kills ({} inside a checkpoint write), {} runs, all bit-identical, {:.1} s",
        out.kills,
        out.in_checkpoint,
        out.episodes,
        started.elapsed().as_secs_f64()
    );
    assert!(out.in_checkpoint > 0, "no kill landed inside a checkpoint write");
}

/// SIGINT and SIGTERM at random moments: a checkpoint, exit 130 / 143, and the resumed runs
/// end exactly as the uninterrupted one.
#[test]
fn sigint_and_sigterm_checkpoint_exit_130_143_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for (sig, seed) in [(libc::SIGINT, 1), (libc::SIGTERM, 2)] {
        interrupt_and_resume(tmp.path(), sig, env_u64("LMFORGE_SIGNAL_TRIALS", 4) as usize, seed);
    }
    // A second stop signal ends the process at once (here inside the checkpoint that the
    // first one asked for); what it leaves still resumes.
    let cfg = kill_config(tmp.path());
    let run = tmp.path().join("double");
    let mut child = spawn_train(&cfg, &run);
    assert!(wait_for(&mut child, &run, Moment::InCheckpoint { nth: 2, into: Duration::ZERO }).is_none());
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(5));
    signal(&child, libc::SIGTERM);
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().unwrap();
    assert!(status.signal() == Some(libc::SIGTERM) || status.code() == Some(143), "{status}");
    let mut child = spawn_train(&cfg, &run);
    assert!(child.wait().unwrap().success());
    assert!(fingerprint(&run) == fingerprint(&tmp.path().join("baseline")));
}

/// A run stopped off its checkpoint schedule (`--stop-after 23`, checkpoints every 2) and
/// resumed ends exactly as the unstopped run, kept checkpoints included: the stop's checkpoint
/// at 23 goes when the one at 24 is written. (A Ctrl-C landing after step 23 did the same to
/// the random-moment test above, rarely.)
#[test]
fn a_stop_off_the_checkpoint_schedule_leaves_the_same_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = kill_config(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut args = vec!["train".to_string(), "--config".into(), s(&cfg).into(), "--run-dir".into(), s(&dir).into()];
        args.extend(kill_overrides());
        args.extend(extra.iter().map(|a| a.to_string()));
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        dir
    };
    let whole = run("whole", &[]);
    let stopped = run("stopped", &["--stop-after", "23"]);
    assert!(stopped.join("checkpoints/step-00000023").is_dir(), "the stop wrote its checkpoint");
    ok(&["train", "--resume", s(&stopped)]);
    assert_same(&fingerprint(&stopped), &fingerprint(&whole), &stopped);
}

fn corrupt(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "truncate" => bytes.truncate(bytes.len() / 2),
        _ => {
            let i = bytes.len() - 7;
            bytes[i] ^= 0x40;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A damaged newest checkpoint is reported and the previous one used (resume, eval); naming it
/// explicitly is an error naming the bad file; a Hugging Face folder without a manifest loads.
#[test]
fn damaged_checkpoints_are_reported_never_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let full = tmp.path().join("full");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&full)]);
    let run = tmp.path().join("run");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run)]);
    let text = tmp.path().join("eval.txt");
    std::fs::write(&text, "ROMEO:\nWhat light through yonder window breaks?\n").unwrap();
    let step6 = run.join("checkpoints/step-00000006");
    let step3 = run.join("checkpoints/step-00000003");

    for (file, how) in
        [("model.safetensors", "truncate"), ("optimizer.safetensors", "flip"), ("trainer_state.json", "flip")]
    {
        let backup = std::fs::read(step6.join(file)).unwrap();
        corrupt(&step6.join(file), how);
        // Explicitly named: an error naming the file.
        let out = lmforge(&["eval", "ppl", "--model", s(&step6), "--text", s(&text)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(file), "{file}: {err}");
        // A run dir: a warning, and the previous checkpoint is used.
        let out = lmforge(&["eval", "ppl", "--model", s(&run), "--text", s(&text), "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("step 6 is damaged") && err.contains(file), "{file}: {err}");
        let via_run: Value = serde_json::from_slice(&out.stdout).unwrap();
        let direct: Value =
            serde_json::from_str(&ok(&["eval", "ppl", "--model", s(&step3), "--text", s(&text), "--json"])).unwrap();
        assert_eq!(via_run["loss"], direct["loss"], "{file}: the run dir evaluated step 3");
        std::fs::write(step6.join(file), backup).unwrap();
    }

    // Resume: step 6 is set aside, training redoes steps 4..6 from step 3 and ends exactly as
    // the uninterrupted run.
    corrupt(&step6.join("model.safetensors"), "flip");
    let out = lmforge(&["train", "--resume", s(&run)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("damaged"), "{err}");
    assert!(run.join("checkpoints/step-00000006.damaged").is_dir(), "kept for inspection");
    let w = |r: &Path| std::fs::read(r.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    assert!(w(&run) == w(&full));

    // A Hugging Face folder without a manifest (another tool's) loads as is.
    let hf = tmp.path().join("hf");
    ok(&["export", "hf", s(&run), "--out", s(&hf)]);
    std::fs::remove_file(hf.join("manifest.json")).unwrap();
    ok(&["eval", "ppl", "--model", s(&hf), "--text", s(&text)]);
}

fn fault_rows(run: &Path) -> Vec<Value> {
    metrics(run).into_iter().filter(|r| r["split"] == "fault").collect()
}

/// Non-finite steps (injected NaN losses): skipped and recorded; rolled back to the last
/// checkpoint with half the LR; training stops with a clear error after the limit in a row.
#[test]
fn nonfinite_steps_are_skipped_rolled_back_or_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let train = |run: &Path, nan_steps: &str, sets: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmforge"));
        cmd.env("LMFORGE_DB", test_db());
        cmd.args(["train", "--config", s(&cfg), "--run-dir", s(run)]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        cmd.env("RUST_LOG", "warn").env("LMFORGE_TEST_NAN_AT_STEPS", nan_steps).output().unwrap()
    };

    let skip = tmp.path().join("skip");
    let out = train(&skip, "4", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("update skipped"));
    let faults = fault_rows(&skip);
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0]["step"].as_u64(), faults[0]["action"].as_str()), (Some(4), Some("skip")));
    assert!(faults[0]["loss"].is_null(), "NaN is written as null");
    let train_steps: Vec<u64> =
        metrics(&skip).iter().filter(|r| r["split"] == "train").map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(train_steps, [1, 2, 3, 5, 6]);

    // A real spike: at this LR the loss of step 3 jumps to about twice its running mean
    // (13.3 against 6.9), and diverges from there.
    let spiky = tmp.path().join("spiky");
    assert!(train(&spiky, "", &["optim.lr=1.0"]).status.success());
    let spikes: Vec<u64> =
        metrics(&spiky).iter().filter(|r| r["spike"] == true).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(spikes.first(), Some(&3), "spikes are flagged in train rows: {spikes:?}");

    let base = tmp.path().join("base");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&base), "--set", "train.max_steps=8"]);
    let roll = tmp.path().join("roll");
    let out = train(&roll, "5", &["train.on_nonfinite=rollback", "train.max_steps=8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let faults = fault_rows(&roll);
    assert_eq!(faults.len(), 1, "{faults:?}");
    let f = &faults[0];
    assert_eq!(
        (f["step"].as_u64(), f["fault_step"].as_u64(), f["action"].as_str()),
        (Some(3), Some(5), Some("rollback"))
    );
    assert_eq!(f["lr_scale"].as_f64(), Some(0.5));
    let lr = |run: &Path, step: u64| {
        metrics(run).iter().find(|r| r["split"] == "train" && r["step"] == step).unwrap()["lr"].as_f64().unwrap()
    };
    assert_eq!(lr(&roll, 3), lr(&base, 3));
    assert_eq!(lr(&roll, 5), 0.5 * lr(&base, 5), "after the rollback the LR is halved");
    let rows: Vec<(u64, String)> = metrics(&roll)
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["split"].as_str().unwrap().to_string()))
        .collect();
    let steps: Vec<u64> = rows.iter().filter(|r| r.1 == "train").map(|r| r.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6, 7, 8], "rows of the abandoned steps are dropped: {rows:?}");

    let stop = tmp.path().join("stop");
    let out = train(&stop, "2,3,4", &["train.max_consecutive_faults=3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("3 faulty steps in a row") && err.contains("step 4"), "{err}");
    assert_eq!(fault_rows(&stop).last().unwrap()["action"], "stop");
    // What it checkpointed before stopping is intact.
    ok(&["train", "--resume", s(&stop)]);
}

fn is_privileged(dir: &Path) -> bool {
    // Root ignores permission bits: probe rather than guess.
    let probe = dir.join("probe");
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// A checkpoint that cannot be written (disk full, permission denied): a clear error and the
/// previous checkpoint intact (resume then ends exactly as an uninterrupted run), or with
/// `checkpoint.on_write_error = "continue"` a fault row and training goes on.
#[test]
fn failed_checkpoint_writes_stop_cleanly_or_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "", "");
    let full = tmp.path().join("full");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&full)]);
    let final_weights = |run: &Path| std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap();

    // Disk full in the middle of the step-6 checkpoint (its staged folder's files).
    let run = tmp.path().join("enospc");
    let out = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .env("LMFORGE_DB", test_db())
        .args(["train", "--config", s(&cfg), "--run-dir", s(&run)])
        .env("LMFORGE_TEST_WRITE_FAULT", "enospc@step-00000006.tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("No space left on device") && err.contains("step 3) is intact"), "{err}");
    let names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000003"], "nothing half-written is left");
    ok(&["train", "--resume", s(&run)]);
    assert!(final_weights(&run) == final_weights(&full));

    // Permission denied: a read-only checkpoints folder, or where permission bits do not bind
    // (root), the same error injected.
    let run = tmp.path().join("eacces");
    ok(&["train", "--config", s(&cfg), "--run-dir", s(&run), "--stop-after", "3"]);
    let ckpts = run.join("checkpoints");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ckpts, std::fs::Permissions::from_mode(0o555)).unwrap();
    let hook = if is_privileged(&ckpts) { "eacces@step-00000006" } else { "" };
    let out = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .env("LMFORGE_DB", test_db())
        .args(["train", "--resume", s(&run)])
        .env("LMFORGE_TEST_WRITE_FAULT", hook)
        .output()
        .unwrap();
    std::fs::set_permissions(&ckpts, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Permission denied") && err.contains("step 3) is intact"), "{err}");
    ok(&["train", "--resume", s(&run)]);
    assert!(final_weights(&run) == final_weights(&full));

    // "continue": the step-3 write fails, training goes on, step 6 is written.
    let run = tmp.path().join("continue");
    let out = Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .env("LMFORGE_DB", test_db())
        .args(["train", "--config", s(&cfg), "--run-dir", s(&run), "--set", "checkpoint.on_write_error=continue"])
        .env("LMFORGE_TEST_WRITE_FAULT", "enospc@step-00000003")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let faults = fault_rows(&run);
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0]["kind"].as_str(), faults[0]["step"].as_u64()), (Some("checkpoint_write"), Some(3)));
    assert!(!run.join("checkpoints/step-00000003").exists());
    assert!(final_weights(&run) == final_weights(&full), "a failed write changes nothing else");
}
