//! The sweep controller: proposes trials, runs each as `lmforge train` (or `lmforge finetune`)
//! child processes (rung by rung), applies the early-stopping rule when a trial reaches a rung, keeps
//! `trials.jsonl` current, honours `max_parallel`, the time budget and Ctrl-C, and writes
//! `best.toml` and the results table at the end.

use super::early_stop::Decision;
use super::space::{grid_point, Internal};
use super::{read_trials, tpe, Strategy, SweepMeta, SweepSpec, Trial, TrialCommand, TrialConfig, TrialStatus};
use lmforge::checkpoint;
use lmforge::data::PreparedData;
use lmforge::error::{Error, IoContext, Result};
use lmforge::fsio;
use lmforge::models::ModelSpec;
use lmforge::progress::ProgressMode;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SweepOptions {
    pub sweep_dir: PathBuf,
    /// The `lmforge` executable the trials run.
    pub exe: PathBuf,
    /// The experiment store the trials record into.
    pub db: PathBuf,
    /// Set by Ctrl-C: running trials checkpoint and the sweep stops, resumable.
    pub interrupt: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    Complete,
    BudgetSpent,
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct SweepResult {
    pub trials: Vec<Trial>,
    /// Index into `trials` of the best finished trial.
    pub best: Option<usize>,
    pub outcome: SweepOutcome,
}

/// A trial's training process and the step it trains to.
struct Running {
    idx: usize,
    child: Child,
    target: u64,
    started: Instant,
}

/// Runs (or continues) the sweep in `opts.sweep_dir`.
pub fn run(spec: &SweepSpec, opts: &SweepOptions) -> Result<SweepResult> {
    let dir = &opts.sweep_dir;
    std::fs::create_dir_all(dir.join("trials")).at(dir.join("trials"))?;
    let mut meta = open_meta(spec, dir)?;
    fsio::write_atomic(&dir.join("sweep.toml"), spec.text.as_bytes())?;
    let mut trials = read_trials(dir)?;
    let grids: Vec<Vec<Value>> = if spec.strategy == Strategy::Grid {
        spec.params.iter().map(|p| p.grid()).collect::<Result<_>>()?
    } else {
        vec![]
    };
    let started = Instant::now();
    let elapsed_before = meta.elapsed_s;
    let mut running: Vec<Running> = Vec::new();
    let outcome = loop {
        let interrupted = opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let over_budget = spec.time_budget_s > 0.0 && elapsed >= spec.time_budget_s;
        if interrupted || over_budget {
            for r in &running {
                terminate(&r.child);
            }
            for mut r in running.drain(..) {
                let status = r.child.wait().at(&opts.exe)?;
                finish_segment(spec, opts, &mut trials, &r, status.code())?;
            }
            meta.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            save(dir, &trials, &meta)?;
            break if interrupted { SweepOutcome::Interrupted } else { SweepOutcome::BudgetSpent };
        }
        // Fill free slots: unfinished trials first (a resumed sweep), then new ones.
        while running.len() < spec.max_parallel {
            let next = trials.iter().position(|t| {
                matches!(t.status, TrialStatus::Pending | TrialStatus::Running)
                    && !running.iter().any(|r| r.idx == t.id)
            });
            let idx = match next {
                Some(i) => i,
                None if trials.len() < spec.max_trials => {
                    let id = trials.len();
                    let params = propose(spec, &grids, &trials, id);
                    trials.push(Trial {
                        id,
                        params,
                        status: TrialStatus::Pending,
                        step: 0,
                        metric: None,
                        rungs: BTreeMap::new(),
                        run_dir: format!("trials/{id:04}"),
                        note: String::new(),
                        seconds: 0.0,
                    });
                    id
                }
                None => break,
            };
            match launch(spec, opts, &mut trials[idx]) {
                Ok((child, target)) => running.push(Running { idx, child, target, started: Instant::now() }),
                Err(e) => {
                    trials[idx].status = TrialStatus::Failed;
                    trials[idx].note = e.to_string();
                    tracing::warn!("trial {idx} failed to start: {e}");
                }
            }
            meta.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            save(dir, &trials, &meta)?;
        }
        if running.is_empty() {
            meta.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            save(dir, &trials, &meta)?;
            break SweepOutcome::Complete;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].child.try_wait().at(&opts.exe)? {
                let r = running.swap_remove(i);
                finish_segment(spec, opts, &mut trials, &r, status.code())?;
                meta.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                save(dir, &trials, &meta)?;
            } else {
                i += 1;
            }
        }
    };
    let best = best_trial(spec, &trials);
    if let Some(b) = best {
        write_best(spec, dir, &trials[b])?;
    }
    Ok(SweepResult { trials, best, outcome })
}

/// Reads `sweep.json`, refusing a sweep dir that holds a different sweep; or starts one.
fn open_meta(spec: &SweepSpec, dir: &Path) -> Result<SweepMeta> {
    let path = dir.join("sweep.json");
    let fresh = SweepMeta {
        name: spec.name.clone(),
        identity: spec.identity(),
        metric: spec.metric.clone(),
        goal: spec.goal,
        command: spec.command,
        strategy: spec.strategy,
        rule: spec.rule.name().to_string(),
        rungs: spec.rungs.clone(),
        max_steps: spec.base.max_steps(),
        params: spec.params.iter().map(|p| (p.key.clone(), p.is_log())).collect(),
        elapsed_s: 0.0,
    };
    if !path.exists() {
        return Ok(fresh);
    }
    let old = super::read_meta(dir)?;
    if old.identity != fresh.identity {
        return Err(Error::format(
            &path,
            "holds a different sweep (its base config, space, strategy, seed, metric or early stopping \
             changed); continue it with its own sweep.toml or choose another --out",
        ));
    }
    Ok(SweepMeta { elapsed_s: old.elapsed_s, ..fresh })
}

fn save(dir: &Path, trials: &[Trial], meta: &SweepMeta) -> Result<()> {
    let mut text = String::new();
    for t in trials {
        text.push_str(&serde_json::to_string(t).expect("a trial serialises"));
        text.push('\n');
    }
    fsio::write_atomic(&dir.join("trials.jsonl"), text.as_bytes())?;
    fsio::write_json_atomic(&dir.join("sweep.json"), meta)
}

/// The parameters of trial `id`: the grid's `id`-th point, a seeded draw, or TPE's suggestion
/// from the trials done so far (after `tpe_startup` random ones). Each trial's random stream
/// depends only on (seed, id), so a resumed sweep proposes what the uninterrupted one would.
fn propose(spec: &SweepSpec, grids: &[Vec<Value>], trials: &[Trial], id: usize) -> BTreeMap<String, Value> {
    let keys = spec.params.iter().map(|p| p.key.clone());
    if spec.strategy == Strategy::Grid {
        return keys.zip(grid_point(grids, id)).collect();
    }
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(lmforge::nn::seed_for(spec.seed, &format!("sweep/trial/{id}")));
    let done: Vec<&Trial> = trials
        .iter()
        .filter(|t| matches!(t.status, TrialStatus::Finished | TrialStatus::Stopped | TrialStatus::Failed))
        .collect();
    let points: Vec<Internal> = if spec.strategy == Strategy::Tpe && done.len() >= spec.tpe_startup.max(1) {
        let mut ranked: Vec<&Trial> = done;
        ranked.sort_by(|a, b| rank_key(spec, a).partial_cmp(&rank_key(spec, b)).unwrap_or(std::cmp::Ordering::Equal));
        let history: Vec<Vec<Internal>> = ranked
            .iter()
            .filter_map(|t| spec.params.iter().map(|p| p.internal(t.params.get(&p.key)?)).collect::<Option<Vec<_>>>())
            .collect();
        tpe::suggest(&spec.params, &history, &mut rng)
    } else {
        spec.params.iter().map(|p| p.sample(&mut rng)).collect()
    };
    keys.zip(spec.params.iter().zip(points).map(|(p, x)| p.value(x))).collect()
}

/// Better trials first: further trained, then a better metric (by the sweep's goal); failed
/// ones last.
fn rank_key(spec: &SweepSpec, t: &Trial) -> (u8, i64, f64) {
    let failed = (t.status == TrialStatus::Failed || t.metric.is_none_or(|m| !m.is_finite())) as u8;
    let objective = t.metric.filter(|m| m.is_finite()).map_or(f64::INFINITY, |m| spec.goal.objective(m));
    (failed, -(t.step as i64), objective)
}

/// Prepares the trial's config and data and starts its next training segment.
fn launch(spec: &SweepSpec, opts: &SweepOptions, trial: &mut Trial) -> Result<(Child, u64)> {
    let dir = &opts.sweep_dir;
    let mut cfg = spec.config(&trial.params)?;
    // The trial's config file lives in the sweep dir: its paths must not depend on where it is.
    match &mut cfg {
        TrialConfig::Train(cfg) => {
            if cfg.data.prepared.as_os_str().is_empty() {
                cfg.data.prepared = shared_data(dir, cfg)?;
            }
            cfg.data.make_absolute()?;
        }
        TrialConfig::Finetune(cfg) => {
            let d = &mut cfg.data;
            for p in
                [&mut d.train, &mut d.validation, &mut d.test, &mut cfg.model.base, &mut cfg.sft.chat_template_file]
            {
                if !p.as_os_str().is_empty() {
                    *p = std::path::absolute(&*p).at(&*p)?;
                }
            }
        }
    }
    let cfg_path = dir.join(format!("{}.toml", trial.run_dir));
    let run_dir = dir.join(&trial.run_dir);
    // A trial process of a sweep process that was killed may still be writing its checkpoint
    // (it got SIGTERM when its parent died): wait for it to let go of the run dir.
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoint::RunLock::holder(&run_dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let has_checkpoint = !checkpoint::list_checkpoints(&run_dir)?.is_empty();
    if run_dir.exists() && !has_checkpoint {
        // A start that never reached its first checkpoint: begin again.
        std::fs::remove_dir_all(&run_dir).at(&run_dir)?;
    }
    // A fine-tune that trains by epochs (max_steps 0) runs to its end in one segment.
    let max_steps = match cfg.max_steps() {
        0 => u64::MAX,
        n => n,
    };
    let target = spec.rungs.iter().copied().find(|r| *r > trial.step).unwrap_or(max_steps);
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("--db").arg(&opts.db).arg(spec.command.name());
    if has_checkpoint {
        cmd.arg("--resume").arg(&run_dir);
    } else {
        fsio::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
        cmd.arg("--config").arg(&cfg_path).arg("--run-dir").arg(&run_dir);
        cmd.args(["--kind", "trial", "--group", &spec.name, "--name", &format!("{}/trial-{:04}", spec.name, trial.id)]);
    }
    if target < max_steps {
        cmd.arg("--stop-after").arg(target.to_string());
    }
    let log_path = dir.join(format!("{}.log", trial.run_dir));
    let log = fsio::open_append(&log_path)?;
    cmd.stdout(log.try_clone().at(&log_path)?).stderr(log).stdin(Stdio::null());
    if spec.max_parallel > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Parallel trials share the cores instead of each spawning a thread per core.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        cmd.env("RAYON_NUM_THREADS", (cores / spec.max_parallel).max(1).to_string());
    }
    die_with_parent(&mut cmd);
    let child = cmd.spawn().at(&opts.exe)?;
    trial.status = TrialStatus::Running;
    tracing::info!("trial {} {}: training to step {target}", trial.id, describe(spec, trial));
    Ok((child, target))
}

/// The prepared data folder for `cfg`'s data settings, shared by every trial with the same
/// ones (prepared on first use: it is deterministic, so a trial trains exactly as it would
/// on data it prepared itself).
fn shared_data(dir: &Path, cfg: &lmforge::train::RunConfig) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let vocab = ModelSpec::from_config(&cfg.model)?.vocab_size;
    let key = serde_json::json!({ "data": cfg.data, "vocab": vocab }).to_string();
    let hash: String = Sha256::digest(key.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect();
    let out = dir.join("data").join(hash);
    PreparedData::prepare(&cfg.data, vocab, &out, ProgressMode::Off)?;
    std::fs::canonicalize(&out).at(&out)
}

/// Records a finished training segment: the metric at its target step, then the rule's
/// decision at a rung, the end of the trial, or its failure.
fn finish_segment(
    spec: &SweepSpec,
    opts: &SweepOptions,
    trials: &mut [Trial],
    r: &Running,
    code: Option<i32>,
) -> Result<()> {
    let run_dir = opts.sweep_dir.join(&trials[r.idx].run_dir);
    let t = &mut trials[r.idx];
    t.seconds += r.started.elapsed().as_secs_f64();
    match code {
        Some(0) => {}
        // Stopped by a signal (ours, or Ctrl-C to the process group): resumable as it is.
        Some(130) | Some(143) | None => {
            t.note = "interrupted; continues when the sweep is run again".into();
            return Ok(());
        }
        Some(c) => {
            let log = std::fs::read_to_string(opts.sweep_dir.join(format!("{}.log", t.run_dir))).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            t.status = TrialStatus::Failed;
            t.note = format!("exit status {c}: {last}");
            tracing::warn!("trial {} failed: {}", t.id, t.note);
            return Ok(());
        }
    }
    let outcome = segment_metric(spec, &run_dir, r.target, config_steps(spec, t));
    let (step, value, finished) = match outcome {
        Ok(v) => v,
        Err(e) => {
            t.status = TrialStatus::Failed;
            t.note = e.to_string();
            return Ok(());
        }
    };
    t.step = step;
    t.metric = Some(value);
    t.note.clear();
    if finished {
        t.status = TrialStatus::Finished;
        tracing::info!("trial {} finished: {} {value:.4}", t.id, spec.metric);
        return Ok(());
    }
    t.rungs.insert(r.target, value);
    let (id, target) = (t.id, r.target);
    let goal = spec.goal;
    let others: Vec<f64> =
        trials.iter().filter(|o| o.id != id).filter_map(|o| o.rungs.get(&target).map(|v| goal.objective(*v))).collect();
    let t = &mut trials[r.idx];
    // The rules minimise: a maximised metric enters negated, and leaves the note as it is.
    match spec.rule.decide(goal.objective(value), &others) {
        Decision::Continue => {
            tracing::info!("trial {} at rung {target}: {} {value:.4}, continues", t.id, spec.metric);
        }
        Decision::Stop { value, threshold, among } => {
            let (value, threshold) = (goal.objective(value), goal.objective(threshold));
            t.status = TrialStatus::Stopped;
            t.note = format!(
                "stopped by {} at step {target}: {} {value:.4} worse than {threshold:.4} ({among} trials at this rung)",
                spec.rule.name(),
                spec.metric
            );
            tracing::info!("trial {}: {}", t.id, t.note);
            mark_stopped_in_store(&opts.db, &run_dir, &t.note);
        }
    }
    Ok(())
}

fn config_steps(spec: &SweepSpec, t: &Trial) -> u64 {
    spec.config(&t.params).map(|c| c.max_steps()).unwrap_or(u64::MAX)
}

/// What a segment that trained to `target` (of `max_steps`; 0: by epochs) reached: (step,
/// metric, whether the trial is finished). A pretraining trial reads the validation metric at
/// `target` and is finished at `max_steps`. A fine-tune is finished when it wrote
/// `results.json` (its last step, or early stopping by `train.patience`): its metric is then
/// the best validation value it logged, by the sweep's goal (the model it kept); at a rung, the
/// value there.
fn segment_metric(spec: &SweepSpec, run_dir: &Path, target: u64, max_steps: u64) -> Result<(u64, f64, bool)> {
    let (key, split) = (spec.metric_key(), spec.command.val_split());
    if spec.command == TrialCommand::Train {
        return Ok((target, val_metric(run_dir, target, key, split)?, target >= max_steps));
    }
    let results = run_dir.join("results.json");
    if !results.exists() {
        return Ok((target, val_metric(run_dir, target, key, split)?, false));
    }
    let text = std::fs::read_to_string(&results).at(&results)?;
    let r: Value = serde_json::from_str(&text).map_err(|e| Error::format(&results, e.to_string()))?;
    let step = r["train"]["steps"].as_u64().unwrap_or(target);
    let path = run_dir.join("metrics.jsonl");
    let best = val_rows(run_dir, split)?
        .filter_map(|row| row[key].as_f64())
        .min_by(|a, b| spec.goal.objective(*a).total_cmp(&spec.goal.objective(*b)))
        .ok_or_else(|| Error::format(&path, format!("no validation {key}: does the task report it?")))?;
    Ok((step, best, true))
}

/// The validation rows (`split`) of a run's `metrics.jsonl`.
fn val_rows(run_dir: &Path, split: &str) -> Result<impl Iterator<Item = Value>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).at(&path)?;
    let split = split.to_string();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(move |r| r["split"] == split.as_str())
        .collect::<Vec<_>>()
        .into_iter())
}

/// The store's record of a trial says why it stopped (its process only knew "stopped after
/// step N"). A store that cannot be opened costs the note, not the sweep.
fn mark_stopped_in_store(db: &Path, run_dir: &Path, note: &str) {
    let result =
        crate::store::Store::open(db).and_then(|mut s| match s.run_by_dir(&crate::store::run_dir_key(run_dir))? {
            Some(rec) => s.set_status(&rec.id, "stopped", note),
            None => Ok(()),
        });
    if let Err(e) = result {
        tracing::warn!("could not mark the trial stopped in the experiment store: {e}");
    }
}

/// The validation metric the run logged at `step` in its `split` rows.
pub fn val_metric(run_dir: &Path, step: u64, key: &str, split: &str) -> Result<f64> {
    val_rows(run_dir, split)?
        .filter(|r| r["step"].as_u64() == Some(step))
        .find_map(|r| r[key].as_f64())
        .ok_or_else(|| Error::format(run_dir.join("metrics.jsonl"), format!("no validation {key} at step {step}")))
}

/// The best finished trial by the sweep's goal.
fn best_trial(spec: &SweepSpec, trials: &[Trial]) -> Option<usize> {
    let objective = |t: &Trial| spec.goal.objective(t.metric.unwrap_or(f64::NAN));
    trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.status == TrialStatus::Finished && t.metric.is_some_and(f64::is_finite))
        .min_by(|a, b| objective(a.1).total_cmp(&objective(b.1)))
        .map(|(i, _)| i)
}

/// `best.toml`: the best trial's resolved config without the sweep's shared data folder, so
/// it trains anywhere the base config did (the data is prepared again, identically).
fn write_best(spec: &SweepSpec, dir: &Path, t: &Trial) -> Result<()> {
    let cfg = spec.config(&t.params)?;
    let mut text = format!(
        "# Best trial {} of sweep `{}`: {} {:.6} at step {}.\n# Parameters: {}\n# Train it: lmforge {} --config {}\n\n",
        t.id,
        spec.name,
        spec.metric,
        t.metric.unwrap_or(f64::NAN),
        t.step,
        describe(spec, t),
        spec.command.name(),
        dir.join("best.toml").display()
    );
    text.push_str(&cfg.to_toml());
    fsio::write_atomic(&dir.join("best.toml"), text.as_bytes())
}

/// `optim.lr=0.0012 model.n_layer=3` in the space's order.
fn describe(spec: &SweepSpec, t: &Trial) -> String {
    spec.params
        .iter()
        .filter_map(|p| t.params.get(&p.key).map(|v| format!("{}={}", p.key, short(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

fn short(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e4) {
                format!("{x:.3e}")
            } else {
                format!("{:.4}", x).trim_end_matches('0').trim_end_matches('.').to_string()
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The results table: finished trials by metric, then stopped (furthest first), then the rest.
pub fn table(spec: &SweepSpec, trials: &[Trial]) -> String {
    let mut order: Vec<&Trial> = trials.iter().collect();
    order.sort_by(|a, b| rank_key(spec, a).partial_cmp(&rank_key(spec, b)).unwrap_or(std::cmp::Ordering::Equal));
    let widths: Vec<usize> = spec
        .params
        .iter()
        .map(|p| {
            trials
                .iter()
                .filter_map(|t| t.params.get(&p.key))
                .map(|v| short(v).len())
                .max()
                .unwrap_or(0)
                .max(p.key.len())
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:>5}  {:<8}  {:>6}  {:>12}", "trial", "status", "step", spec.metric);
    for (p, w) in spec.params.iter().zip(&widths) {
        let _ = write!(out, "  {:>w$}", p.key);
    }
    out.push('\n');
    for t in order {
        let status = format!("{:?}", t.status).to_lowercase();
        let metric = t.metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into());
        let _ = write!(out, "{:>5}  {status:<8}  {:>6}  {metric:>12}", t.id, t.step);
        for (p, w) in spec.params.iter().zip(&widths) {
            let v = t.params.get(&p.key).map(short).unwrap_or_default();
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    }
    out
}

/// Asks a child to checkpoint and stop (its SIGTERM handler does, exiting 143).
fn terminate(child: &Child) {
    #[cfg(unix)]
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// A trial process gets SIGTERM (checkpoint, exit) when the sweep process dies, even by
/// SIGKILL: no orphan keeps training, and a rerun finds its run dir free to resume.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
