//! The one training loop, for every objective: pretraining (`lmforge train`), fine-tuning
//! (`lmforge finetune`) and anything a new [`Task`] brings. One flat loop for a fresh run and a
//! resumed one; each step is [`step::gradients`] (the same one `lmforge bench` times), then
//! the fault policy's verdict ([`crate::faults`]), then the update at the scheduled learning
//! rate. The loop logs to `metrics.jsonl`, validates and checkpoints on schedule, keeps the
//! best validation by the task's [`Selection`] (with early stopping when the task asks), and
//! on a signal writes a checkpoint first. Decisions (evaluate or checkpoint now?) are small
//! pure functions. Resuming from any checkpoint reproduces the uninterrupted run to the bit:
//! batches are pure functions of (seed, step, micro-batch), and everything else that moves is
//! in [`TrainerState`]. Launched as several processes (`mpirun`), each computes its rows of
//! every micro-batch and [`DataParallel`] keeps them in step; rank 0 alone writes.
//!
//! Front ends build a task and a [`LoopPlan`] from their config: [`pretrain`] for
//! [`RunConfig`] (causal and masked LM tasks in [`lm`]), `finetune` for classification.

pub mod config;
mod fit;
pub mod lm;
mod metrics_log;
mod pretrain;
pub mod step;
pub mod task;

pub use config::{Objective, RunConfig, RunPlan, TrainConfig};
pub use fit::{available_memory_bytes, check_fits, human_bytes, optimizer_state_bytes, param_role};
pub use lm::{evaluate, evaluate_mlm};
pub use metrics_log::MetricsLog;
pub use pretrain::{resume, train};
pub use task::{EvalAt, Selection, Task, ValMetrics};

use crate::checkpoint::{self, CheckpointContents, EpochCursor, TrainerState};
use crate::distributed::{Collective, DataParallel, DistributedConfig, SingleProcess};
use crate::error::{Error, Result};
use crate::faults::{FaultPolicy, OnNonFinite, Verdict};
use crate::observe::{Observers, RunEnd};
use crate::optim::{OptimSpec, Optimizer, ParamGroup, Plateau, PlateauRule, Schedule};
use crate::patience;
use crate::progress::{Progress, ProgressChoice, ProgressMode};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Controls that are not part of the run's identity (not in the config hash).
#[derive(Default, Clone)]
pub struct TrainOptions {
    /// Stop (with a checkpoint) after this many completed steps, as if interrupted.
    pub stop_after: Option<u64>,
    /// Set by a signal handler: checkpoint and stop at the next step boundary.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The processes training together (`distributed::from_env`); None: this one alone.
    pub comm: Option<Arc<dyn Collective>>,
    /// Told about the run's start, every metrics row and its end (e.g. the experiment store,
    /// TensorBoard); on rank 0 only.
    pub observers: Observers,
    /// Where to train instead of the config's `train.device` (`--device` with `--resume`):
    /// checkpoints are device-neutral, so a run started on a GPU continues on the CPU and back.
    pub device: Option<crate::device::DeviceChoice>,
    /// `distributed.KEY=VALUE` overrides for a resumed run (`--set` with `--resume`): the ZeRO
    /// stage, buckets and compression may change at a resume, as the process count may.
    pub distributed_set: Vec<String>,
}

impl TrainOptions {
    pub fn collective(&self) -> Arc<dyn Collective> {
        self.comm.clone().unwrap_or_else(|| Arc::new(SingleProcess))
    }

    /// The config's device (or [`Self::device`]) and precision, resolved.
    pub fn placement(
        &self,
        device: crate::device::DeviceChoice,
        precision: crate::device::Precision,
    ) -> Result<crate::device::Placement> {
        match self.device {
            Some(d) => crate::device::Placement::resolve_from(d, precision, "--device"),
            None => crate::device::Placement::resolve(device, precision),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub step: u64,
    pub max_steps: u64,
    /// Stopped by a signal (Ctrl-C / SIGTERM) before max_steps, after writing a checkpoint.
    pub interrupted: bool,
    /// Early stopping ended the run (a normal end).
    pub stopped_early: bool,
    pub last_val: Option<ValMetrics>,
    /// The best value of the selection metric and its step.
    pub best: Option<(f64, u64)>,
    pub tokens_per_s: f64,
    pub train_seconds: f64,
    pub num_params: u64,
}

impl TrainSummary {
    /// How the run's result reads to its observers.
    pub fn run_end(result: std::result::Result<&Self, &Error>) -> RunEnd {
        match result {
            Ok(s) if s.step >= s.max_steps || s.stopped_early => RunEnd::Finished { step: s.step },
            Ok(s) if s.interrupted => RunEnd::Stopped { step: s.step, reason: "interrupted by a signal".into() },
            Ok(s) => RunEnd::Stopped { step: s.step, reason: format!("stopped after step {} as asked", s.step) },
            Err(e) => RunEnd::Failed { error: e.to_string() },
        }
    }
}

/// Should step `step` (completed steps, 1-based) validate / checkpoint? Every `every` steps
/// (0 = never on a schedule) and always at the last step.
pub fn due(step: u64, every: u64, max_steps: u64) -> bool {
    step == max_steps || (every > 0 && step % every == 0)
}

/// When something recurring happens: every N steps, at each epoch's end, and always at the
/// last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Every N steps; 0: not on a step count.
    pub every: u64,
    /// At the end of every pass over the training data (tasks trained in epochs).
    pub epoch_end: bool,
}

impl Cadence {
    pub fn every(n: u64) -> Self {
        Self { every: n, epoch_end: false }
    }

    /// Whether completed step `step` is due.
    pub fn due(&self, step: u64, max_steps: u64, steps_per_epoch: Option<u64>) -> bool {
        due(step, self.every, max_steps) || (self.epoch_end && steps_per_epoch.is_some_and(|n| n > 0 && step % n == 0))
    }
}

/// What the loop runs, besides the task: resolved by a front end from its config.
#[derive(Debug, Clone)]
pub struct LoopPlan {
    pub max_steps: u64,
    /// Rows of a full micro-batch (every process needs at least one).
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    pub dropout: f64,
    pub lr: f64,
    pub grad_clip: f64,
    pub schedule: Schedule,
    pub plateau: Option<PlateauRule>,
    pub optim: OptimSpec,
    /// Every trainable parameter's optimizer group.
    pub groups: BTreeMap<String, ParamGroup>,
    pub faults: FaultPolicy,
    pub eval: Cadence,
    pub checkpoint: Cadence,
    pub log_every: u64,
    pub keep_last: usize,
    pub keep_best: bool,
    pub distributed: DistributedConfig,
    pub progress: ProgressChoice,
    /// The resolved config, saved in every checkpoint, and its hash.
    pub config_toml: String,
    pub config_hash: String,
    /// The command that runs this kind of run (`lmforge train`), for messages.
    pub command: &'static str,
}

impl LoopPlan {
    /// The trainer state of step 0.
    pub fn fresh_state(&self) -> TrainerState {
        TrainerState {
            step: 0,
            tokens_seen: 0,
            data_cursor: 0,
            seed: self.seed,
            config_hash: self.config_hash.clone(),
            val_loss: None,
            selection: Default::default(),
            best_step: None,
            legacy_best_val_loss: None,
            elapsed_s: 0.0,
            plateau: self.plateau.map(|_| Plateau::default()),
            faults: Default::default(),
            epoch: None,
            stopped_early: false,
        }
    }

    /// The learning rate of step `s` (0-based) in `state`.
    fn lr(&self, s: u64, state: &TrainerState) -> f64 {
        self.lr * self.schedule.multiplier(s) * state.plateau.map_or(1.0, |p| p.scale) * state.faults.lr_scale
    }
}

/// Where training (re)starts: the trainer state, and the checkpoint it came from (None: step 0).
pub struct Start {
    pub state: TrainerState,
    pub checkpoint: Option<PathBuf>,
}

/// The newest intact checkpoint of `run_dir` and its trainer state, checked against the
/// config's hash (damaged newer ones are reported; with `set_aside_damaged`, which needs the
/// run lock, renamed aside); a fresh state without one. Weights are the caller's to load.
pub fn find_start(run_dir: &Path, plan: &LoopPlan, set_aside_damaged: bool) -> Result<Start> {
    let Some((_, ckpt)) = checkpoint::latest_good_checkpoint(run_dir, set_aside_damaged)? else {
        return Ok(Start { state: plan.fresh_state(), checkpoint: None });
    };
    let mut state = checkpoint::read_trainer_state(&ckpt)?;
    if state.config_hash != plan.config_hash {
        return Err(Error::format(
            run_dir.join("config.toml"),
            format!(
                "config hash {} differs from the checkpoint's {}: the config was edited after training started",
                plan.config_hash, state.config_hash
            ),
        ));
    }
    if plan.plateau.is_some() && state.plateau.is_none() {
        // Not written by this trainer (it always saves the state); start the plateau count afresh.
        state.plateau = Some(Plateau::default());
    }
    Ok(Start { state, checkpoint: Some(ckpt) })
}

/// Claims `run_dir` for a new run: refuses a folder that holds one (naming the command that
/// continues it), creates it, takes the lock and writes the resolved config.
pub fn start_run_dir(run_dir: &Path, config_toml: &str, resume_command: &str) -> Result<checkpoint::RunLock> {
    if run_dir.join("config.toml").exists() || !checkpoint::list_checkpoints(run_dir)?.is_empty() {
        return Err(Error::Invalid(format!(
            "{} already holds a run; continue it with `{resume_command} --resume {}` or choose another --run-dir",
            run_dir.display(),
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let lock = checkpoint::RunLock::acquire(run_dir)?;
    checkpoint::write_text(&run_dir.join("config.toml"), config_toml)?;
    Ok(lock)
}

/// ", bf16-compressed gradients" and the like for the start line.
/// How gradients travel, for the log line: compression, and NCCL where it carries them.
fn compressed(dp: &DataParallel) -> String {
    let through = match dp.tensor_transport() {
        Some(name) => format!(" over {name}"),
        None => String::new(),
    };
    match dp.compression() {
        crate::distributed::Compression::None => through,
        c => format!("{through}, {} gradient compression", c.name()),
    }
}

/// Runs `task` from `start` to `plan.max_steps` (or a signal, `--stop-after`, early stopping).
pub fn run_loop(
    task: &dyn Task,
    plan: &LoopPlan,
    run_dir: &Path,
    start: Start,
    mut metrics: MetricsLog,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    // The saved config's [distributed], or a resume's overrides of it (not part of the
    // config's identity: the run's hash and config.toml stay as they were).
    let distributed = plan.distributed.with_overrides(&opts.distributed_set)?;
    let dp = DataParallel::with_layers(
        opts.collective(),
        &distributed,
        task.params(),
        plan.batch_size,
        task.sharded_layers(),
    )?;
    if dp.world_size() > 1 && plan.faults.on_nonfinite == OnNonFinite::Rollback {
        return Err(Error::config(
            "train.on_nonfinite",
            "\"rollback\" runs in single-process training only; use \"skip\" with several processes",
        ));
    }
    let mut optimizer = restore_optimizer(plan, &dp, start.checkpoint.as_deref(), start.state.step)?;
    let mut state = start.state;
    let per_epoch = task.steps_per_epoch();
    if let (Some(saved), Some(n)) = (state.epoch, per_epoch) {
        if saved.steps_per_epoch != n {
            return Err(Error::Invalid(format!(
                "the training data changed since the checkpoint: an epoch was {} steps, now it is {n}",
                saved.steps_per_epoch
            )));
        }
    }
    let selection = task.selection();
    let mode = if dp.is_writer() { plan.progress.mode() } else { ProgressMode::Off };
    let progress = Progress::new(mode, "step", state.step, plan.max_steps);
    // The whole state (every rank's shard under ZeRO-1, one replica otherwise).
    let state_bytes = dp.total_state_bytes(&optimizer)? / if dp.is_sharded() { 1.0 } else { dp.world_size() as f64 };
    let trainable = (task.params().num_trainable() + dp.sharded_layer_params()).max(1);
    progress.println(&format!(
        "{}; optimizer {} state {} ({:.2} bytes/param); {}{}",
        task.describe(),
        optimizer.name(),
        human_bytes(state_bytes as u64),
        state_bytes / trainable as f64,
        crate::device::Placement { device: task.params().device().clone(), precision: task.params().precision() }
            .describe(),
        match (dp.world_size(), dp.stage()) {
            (1, _) => String::new(),
            (n, 0) => format!("; {n} processes, data parallel{}", compressed(&dp)),
            (n, stage) => format!(
                "; {n} processes, ZeRO-{stage}{}: rank 0 keeps {} of the optimizer state",
                compressed(&dp),
                human_bytes(optimizer.state_bytes() as u64)
            ),
        }
    ));

    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let tokens_per_step = task.tokens_per_micro_batch() * plan.grad_accum as u64;
    let mut train_time = 0.0f64;
    let mut trained_tokens = 0u64;
    let mut last_val = None;
    let mut last_ckpt_step = state.step;
    let (mut interrupted, mut stopped_after) = (false, false);
    let epoch_of = |step: u64| per_epoch.map(|n| step as f64 / n.max(1) as f64);

    while state.step < plan.max_steps && !state.stopped_early {
        // Every process stops at the same step when any of them was signalled.
        if dp.any(opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)))? {
            interrupted = true;
            break;
        }
        if opts.stop_after == Some(state.step) {
            stopped_after = true;
            break;
        }
        let step_start = Instant::now();
        let s = state.step;
        let lr = plan.lr(s, &state);
        let at = step::StepAt {
            step: s,
            grad_accum: plan.grad_accum,
            seed: state.seed,
            dropout: plan.dropout,
            grad_clip: plan.grad_clip,
        };
        let step::StepGrads { loss, grad_norm, grads, grad_scale } = step::gradients(task, &dp, at, &mut |_| {})?;
        state.data_cursor += plan.grad_accum as u64;
        // The loss and gradient norm are global (summed over processes), so every process
        // reaches the same verdict.
        let fault_row = |action: &str, step: u64, consecutive: u32| {
            json!({
                "step": step, "split": "fault", "kind": "nonfinite", "fault_step": s + 1, "loss": loss,
                "grad_norm": grad_norm, "action": action, "consecutive": consecutive,
            })
        };
        let spike = match state.faults.judge(s + 1, loss, grad_norm, &plan.faults) {
            Ok(Verdict::Apply { spike }) => {
                dp.step(&mut optimizer, &grads, grad_scale, lr)?;
                Some(spike)
            }
            Ok(Verdict::Skip) => {
                progress.warn(&format!("step {}: loss {loss}, gradient norm {grad_norm}: update skipped", s + 1));
                metrics.write(&fault_row("skip", s + 1, state.faults.consecutive))?;
                None
            }
            Ok(Verdict::Rollback) => {
                let back = find_start(run_dir, plan, dp.is_writer())?;
                task.restore_weights(back.checkpoint.as_deref())?;
                optimizer = restore_optimizer(plan, &dp, back.checkpoint.as_deref(), back.state.step)?;
                let faults = state.faults.after_rollback(&back.state.faults, &plan.faults);
                state = back.state;
                state.faults = faults;
                last_ckpt_step = state.step;
                // Rows past the checkpoint describe the abandoned trajectory; the fault row is
                // filed under the step training continues from, so a resume keeps it.
                metrics = metrics.reopen(state.step)?;
                let mut row = fault_row("rollback", state.step, state.faults.consecutive);
                row["lr_scale"] = json!(state.faults.lr_scale);
                metrics.write(&row)?;
                progress.warn(&format!(
                    "step {}: loss {loss}, gradient norm {grad_norm}: rolled back to step {} with the LR x {}",
                    s + 1,
                    state.step,
                    state.faults.lr_scale
                ));
                continue;
            }
            Err(msg) => {
                metrics.write(&fault_row("stop", s + 1, state.faults.consecutive))?;
                return Err(Error::Invalid(msg));
            }
        };
        // The step's communication: its gradients' reductions and the update's all-gather.
        let traffic = dp.take_traffic();
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        state.epoch = per_epoch.map(|n| EpochCursor::at(state.step, n));
        train_time += step_start.elapsed().as_secs_f64();
        trained_tokens += tokens_per_step;
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let tok_s = trained_tokens as f64 / train_time.max(1e-9);
        let epoch = epoch_of(state.step);
        let log_now = spike == Some(true)
            || (spike.is_some()
                && (state.step % plan.log_every == 0 || state.step == plan.max_steps || state.step == 1));
        if log_now {
            let mut row = json!({
                "step": state.step, "split": "train", "loss": loss, "lr": lr,
                "tokens": state.tokens_seen, "elapsed_s": elapsed, "grad_norm": grad_norm,
                "tokens_per_s": tok_s,
            });
            if let Some(e) = epoch {
                row["epoch"] = json!(e);
            }
            if spike == Some(true) {
                row["spike"] = json!(true);
            }
            if dp.world_size() > 1 {
                // This process's communication in the step: bytes sent, seconds in collectives,
                // and the part of them the step waited for (the rest overlapped computation).
                row["comm_bytes"] = json!(traffic.bytes);
                row["comm_s"] = json!(traffic.busy_s);
                row["comm_exposed_s"] = json!(traffic.exposed_s);
            }
            metrics.write(&row)?;
        }
        let at_epoch = epoch.map(|e| format!("epoch {e:.2} ")).unwrap_or_default();
        progress.update(state.step, &format!("{at_epoch}loss {loss:.4} lr {lr:.2e} {tok_s:.0} tok/s"), log_now);

        state.val_loss = None;
        if plan.eval.due(state.step, plan.max_steps, per_epoch) {
            // The how-manieth evaluation this is, from the cadence alone (so the same after a resume).
            let index = (1..=state.step).filter(|&s| plan.eval.due(s, plan.max_steps, per_epoch)).count() as u64;
            let v = task.validate(&dp, EvalAt { step: state.step, index, last: state.step >= plan.max_steps })?;
            // A step's communication figures leave validation's out.
            dp.take_traffic();
            let value = v.get(&selection.metric).ok_or_else(|| {
                Error::Invalid(format!("validation has no metric {:?} to select the best model by", selection.metric))
            })?;
            let verdict = state.selection.observe(value, &selection.rule);
            let improved = verdict == patience::Verdict::Improved;
            let mut row = json!({ "step": state.step, "split": task.val_split(), "loss": v.loss });
            if v.ppl.is_finite() {
                row["ppl"] = json!(v.ppl);
            }
            if let Some(b) = v.bits_per_byte {
                row["bits_per_byte"] = json!(b);
            }
            for (k, x) in &v.extra {
                row[*k] = json!(x);
            }
            row["lr"] = json!(lr);
            row["tokens"] = json!(state.tokens_seen);
            row["elapsed_s"] = json!(elapsed);
            if let Some(e) = epoch {
                row["epoch"] = json!(e);
            }
            row["improved"] = json!(improved);
            metrics.write(&row)?;
            progress.println(&format!(
                "step {}{} {} {}{}",
                state.step,
                epoch.map(|e| format!(" (epoch {e:.2})")).unwrap_or_default(),
                task.val_split(),
                v.summary(),
                if improved { " (best)" } else { "" }
            ));
            state.val_loss = Some(v.loss);
            if let (Some(p), Some(rule)) = (state.plateau.as_mut(), plan.plateau.as_ref()) {
                p.observe(v.loss, rule);
            }
            if improved {
                state.best_step = Some(state.step);
                if dp.is_writer() {
                    task.keep_best(run_dir)?;
                }
            }
            if verdict == patience::Verdict::Exhausted {
                state.stopped_early = true;
                progress.println(&format!(
                    "early stopping at step {}: {} evaluations without a {} improvement",
                    state.step,
                    selection.rule.tolerate + 1,
                    selection.metric
                ));
            }
            last_val = Some(v);
        }
        let end = state.step == plan.max_steps || state.stopped_early;
        if end || plan.checkpoint.due(state.step, plan.max_steps, per_epoch) {
            state.elapsed_s = elapsed;
            match save(task, plan, run_dir, &dp, &optimizer, &state) {
                Ok(()) => last_ckpt_step = state.step,
                // The last checkpoint is the run's result: it cannot be skipped.
                Err(e) if plan.faults.continue_on_write_error && !end => {
                    progress.warn(&format!(
                        "checkpoint at step {} not written ({e}); training continues and tries again at the next one",
                        state.step
                    ));
                    metrics.write(&json!({
                        "step": state.step, "split": "fault", "kind": "checkpoint_write",
                        "error": e.to_string(), "action": "continue",
                    }))?;
                }
                Err(e) => return Err(checkpoint_write_failed(e, run_dir, state.step, plan.command)),
            }
        }
    }
    if (interrupted || stopped_after) && last_ckpt_step != state.step {
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        save(task, plan, run_dir, &dp, &optimizer, &state)
            .map_err(|e| checkpoint_write_failed(e, run_dir, state.step, plan.command))?;
        progress.println(&format!(
            "stopped at step {}; checkpoint written, continue with `{} --resume {}`",
            state.step,
            plan.command,
            run_dir.display()
        ));
    }
    progress.finish();
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        step: state.step,
        max_steps: plan.max_steps,
        interrupted,
        stopped_early: state.stopped_early,
        last_val,
        best: state.selection.best.zip(state.best_step),
        tokens_per_s: trained_tokens as f64 / train_time.max(1e-9),
        train_seconds: train_time,
        num_params: (task.params().num_params() + dp.sharded_layer_params()) as u64,
    })
}

/// A fresh optimizer over this process's parameters, with the checkpoint's state when given.
fn restore_optimizer(plan: &LoopPlan, dp: &DataParallel, checkpoint: Option<&Path>, step: u64) -> Result<Optimizer> {
    let mut optimizer = dp.optimizer_of(plan.optim.clone(), plan.groups.clone())?;
    if let Some(ckpt) = checkpoint {
        dp.load_optimizer_state(&ckpt.join("optimizer.safetensors"), &mut optimizer, step)?;
    }
    Ok(optimizer)
}

/// Writes the checkpoint of `state` (collective: ZeRO-1 shards travel to rank 0, which alone
/// writes) and applies the retention rule.
fn save(
    task: &dyn Task,
    plan: &LoopPlan,
    run_dir: &Path,
    dp: &DataParallel,
    optimizer: &Optimizer,
    state: &TrainerState,
) -> Result<()> {
    // ZeRO-3: the layer parameters, gathered to rank 0 (collective, as the state is).
    let layers = dp.gather_layers_for_checkpoint()?;
    let Some(optimizer_state) = dp.optimizer_state_for_checkpoint(optimizer)? else {
        return Ok(());
    };
    checkpoint::write_checkpoint(
        run_dir,
        &CheckpointContents {
            write_model: &|dir| match &layers {
                Some(l) => task.write_model_with(dir, l.clone()),
                None => task.write_model(dir),
            },
            optimizer_state,
            state,
            run_config_toml: &plan.config_toml,
        },
    )?;
    let steps = checkpoint::list_checkpoints(run_dir)?;
    let best = if plan.keep_best { state.best_step } else { None };
    let per_epoch = task.steps_per_epoch();
    let scheduled = |s: u64| plan.checkpoint.due(s, plan.max_steps, per_epoch);
    for old in checkpoint::checkpoints_to_delete_on(&steps, plan.keep_last, best, scheduled) {
        crate::fsio::remove_dir(&checkpoint::checkpoint_dir(run_dir, old))?;
    }
    Ok(())
}

/// The error for a checkpoint that could not be written: what failed, and that nothing
/// written before is lost.
fn checkpoint_write_failed(e: Error, run_dir: &Path, step: u64, command: &str) -> Error {
    let previous = match checkpoint::list_checkpoints(run_dir).ok().and_then(|s| s.last().copied()) {
        Some(p) => format!(
            "the previous checkpoint (step {p}) is intact and `{command} --resume {}` continues from it",
            run_dir.display()
        ),
        None => {
            format!("no earlier checkpoint exists; `{command} --resume {}` starts again from step 0", run_dir.display())
        }
    };
    Error::Invalid(format!(
        "writing the checkpoint at step {step} failed: {e}. Nothing written before was lost: {previous}. \
         Free disk space or fix permissions first, or set checkpoint.on_write_error = \"continue\" to keep \
         training through such failures."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_on_schedule_and_at_the_end() {
        assert!(due(100, 50, 1000));
        assert!(!due(101, 50, 1000));
        assert!(due(1000, 0, 1000));
        assert!(!due(10, 0, 1000));
        assert!(due(7, 5, 7));
    }

    #[test]
    fn epoch_cadence_falls_on_each_epoch_end() {
        let c = Cadence { every: 0, epoch_end: true };
        assert!(c.due(10, 100, Some(10)) && c.due(20, 100, Some(10)) && !c.due(11, 100, Some(10)));
        assert!(c.due(100, 100, Some(30)), "the last step always");
        assert!(!c.due(10, 100, None), "no epochs: only the last step");
        let both = Cadence { every: 4, epoch_end: true };
        assert!(both.due(4, 100, Some(10)) && both.due(10, 100, Some(10)));
    }
}
