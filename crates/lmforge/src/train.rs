//! The training loop: one flat loop for a fresh run and a resumed one. Each step draws its
//! micro-batches (a pure function of seed and step), accumulates gradients, clips, updates
//! with the configured optimizer at the scheduled learning rate, logs to `metrics.jsonl`, validates and
//! checkpoints on schedule. Decisions (should I evaluate / checkpoint now?) are small pure
//! functions. Interrupting (Ctrl-C) writes a checkpoint first; resuming from any checkpoint
//! reproduces the uninterrupted run's losses to the bit. Faulty steps and failed checkpoint
//! writes are handled by the policy in [`crate::faults`]. Launched as several processes
//! (`mpirun`), each computes its rows of every batch and `distributed::DataParallel` keeps
//! them in step; rank 0 alone writes.

use crate::checkpoint::{self, CheckpointContents, TrainerState};
use crate::config::RunConfig;
use crate::data::{self, Batch, PreparedData};
use crate::distributed::{self, Collective, DataParallel, SingleProcess};
use crate::error::{Error, IoContext, Result};
use crate::faults::{FaultPolicy, Verdict};
use crate::mlm_data::{self, MlmBatch, MlmSource, SentenceIndex, Vocab};
use crate::models::{Decoder, Encoder, ModelSpec, ParamInfo, ParamKind, Style};
use crate::nn::{seed_for, DropoutRng, InitScheme, ParamStore};
use crate::observe::{MetricsRow, Observers, RunEnd, RunStart};
use crate::optim::{
    clip_grad_norm, named_grads, param_groups, OptimSpec, Optimizer, ParamGroup, ParamRole, Plateau, PlateauRule,
    Schedule,
};
use crate::progress::{Progress, ProgressMode};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
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
    /// Told about the run's start, every metrics row and its end (e.g. the experiment store);
    /// on rank 0 only. A TensorBoard writer for `RUN_DIR/tb/` is always added.
    pub observers: Observers,
}

impl TrainOptions {
    fn collective(&self) -> Arc<dyn Collective> {
        self.comm.clone().unwrap_or_else(|| Arc::new(SingleProcess))
    }
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub step: u64,
    pub max_steps: u64,
    /// Stopped by a signal (Ctrl-C / SIGTERM) before max_steps, after writing a checkpoint.
    pub interrupted: bool,
    pub last_val: Option<ValMetrics>,
    pub tokens_per_s: f64,
    pub train_seconds: f64,
    pub num_params: u64,
}

/// Validation results. `loss` is what "best" and the plateau schedule follow (the total loss
/// for BERT: MLM + NSP); `ppl` is exp of the (masked) LM loss.
#[derive(Debug, Clone, PartialEq)]
pub struct ValMetrics {
    pub loss: f64,
    pub ppl: f64,
    /// Causal LMs only: loss in bits per byte of validation text.
    pub bits_per_byte: Option<f64>,
    /// Objective-specific metrics (`mlm_loss`, `mlm_acc`, `nsp_loss`, `nsp_acc`, ...).
    pub extra: Vec<(&'static str, f64)>,
}

impl ValMetrics {
    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let mut s = format!("loss {:.4} ppl {:.2}", self.loss, self.ppl);
        if let Some(b) = self.bits_per_byte {
            s += &format!(" bits/byte {b:.4}");
        }
        for (k, v) in &self.extra {
            s += &format!(" {k} {v:.4}");
        }
        s
    }
}

/// The network being trained and its objective's validation set.
enum Task<'a> {
    Causal { model: Decoder, val: Vec<Batch> },
    Masked { model: Encoder, source: Box<MlmSource<'a>>, val: Vec<MlmBatch>, unigram_acc: f64 },
}

impl Task<'_> {
    /// The loss of micro-batch (step, micro), with dropout.
    #[allow(clippy::too_many_arguments)]
    fn micro_loss(
        &self,
        data: &PreparedData,
        seed: u64,
        step: u64,
        micro: usize,
        batch_size: usize,
        rows: Range<usize>,
        seq_len: usize,
        device: &Device,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let whole = rows == (0..batch_size);
        // This process's rows; their loss weighted so that the sum over processes is the
        // global batch's mean (untouched when one process computes every row).
        let row_share = rows.len() as f64 / batch_size as f64;
        match self {
            Task::Causal { model, .. } => {
                let batch = data::train_batch_rows(&data.train, seed, step, micro, batch_size, rows, seq_len)?;
                let (x, y) = batch_tensors(&batch, device)?;
                let loss = model.loss(&x, &y, Some(dropout))?;
                if whole {
                    Ok(loss)
                } else {
                    Ok((loss * row_share)?)
                }
            }
            Task::Masked { model, source, .. } => {
                let b = source.batch(seed, step, micro, rows)?;
                let (pos, tgt) = b.positions(device)?;
                let nsp = b.nsp_labels(device)?;
                let loss = model.pretraining_loss(&b.input(device)?, &pos, &tgt, nsp.as_ref(), Some(dropout))?;
                if whole {
                    return Ok(loss.total);
                }
                // The MLM loss is a mean over masked positions, whose count varies by row: the
                // global count comes from drawing the whole batch's masks (data work only).
                let global_masked = source.batch(seed, step, micro, 0..batch_size)?.positions.len();
                let mlm = (loss.mlm * (b.positions.len() as f64 / global_masked.max(1) as f64))?;
                match loss.nsp {
                    Some(nsp) => Ok((mlm + (nsp * row_share)?)?),
                    None => Ok(mlm),
                }
            }
        }
    }

    /// Validation on every process: each evaluates its share of the causal batches and the
    /// losses are gathered (same order, same sum as one process); masked-LM validation is not
    /// split yet, so every process evaluates all of it.
    fn validate(&self, dp: &DataParallel, device: &Device, tokens_per_byte: f64) -> Result<ValMetrics> {
        match self {
            Task::Causal { model, val } => {
                let mine = &val[dp.local_range(val.len())];
                let losses = dp.all_gather_split(&batch_losses(model, mine, device)?, val.len())?;
                Ok(val_metrics(&losses, val, tokens_per_byte))
            }
            Task::Masked { model, val, unigram_acc, .. } => {
                let mut v = evaluate_mlm(model, val, device)?;
                v.extra.push(("mlm_unigram_acc", *unigram_acc));
                Ok(v)
            }
        }
    }
}

/// Should step `step` (completed steps, 1-based) validate / checkpoint? Every `every` steps
/// (0 = never on a schedule) and always at the last step.
pub fn due(step: u64, every: u64, max_steps: u64) -> bool {
    step == max_steps || (every > 0 && step % every == 0)
}

/// Starts a new run in `run_dir` (which must not already hold a run).
pub fn train(cfg: &RunConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainSummary> {
    let mut observers = opts.observers.clone();
    let result = train_fresh(cfg, run_dir, opts, &mut observers);
    observers.end(&run_end(&result));
    result
}

/// Continues the run in `run_dir` from its latest checkpoint.
pub fn resume(run_dir: &Path, opts: &TrainOptions) -> Result<TrainSummary> {
    let mut observers = opts.observers.clone();
    let result = resume_run(run_dir, opts, &mut observers);
    observers.end(&run_end(&result));
    result
}

/// How a run's result reads to its observers.
fn run_end(result: &Result<TrainSummary>) -> RunEnd {
    match result {
        Ok(s) if s.step >= s.max_steps => RunEnd::Finished { step: s.step },
        Ok(s) if s.interrupted => RunEnd::Stopped { step: s.step, reason: "interrupted by a signal".into() },
        Ok(s) => RunEnd::Stopped { step: s.step, reason: format!("stopped after step {} as asked", s.step) },
        Err(e) => RunEnd::Failed { error: e.to_string() },
    }
}

fn train_fresh(
    cfg: &RunConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    observers: &mut Observers,
) -> Result<TrainSummary> {
    let spec = ModelSpec::from_config(&cfg.model)?;
    let seq_len = seq_len(cfg, &spec)?;
    let optim = OptimSpec::from_config(&cfg.optim)?;
    let comm = opts.collective();
    let local_batch = distributed::split_rows(cfg.train.batch_size, comm.world_size(), 0).len();
    check_fits(&spec, local_batch, seq_len, &cfg.model.preset, &optim, cfg.train.activation_checkpointing)?;
    // Before anything is written: a group pattern that matches no parameter is a config error.
    let groups = optimizer_groups(cfg, &spec)?;
    let writer = comm.rank() == 0;
    let (_lock, data) = distributed::rank0_first(comm.as_ref(), || {
        let lock = if writer { Some(start_run_dir(cfg, run_dir)?) } else { None };
        if writer {
            observers.start(&RunStart::new(run_dir, cfg, cfg.train.max_steps, None));
        }
        let mode = if writer { ProgressMode::parse(&cfg.log.progress) } else { ProgressMode::Off };
        Ok((lock, PreparedData::prepare(&cfg.data, spec.vocab_size, &run_dir.join("data"), mode)?))
    })?;
    let device = Device::Cpu;
    let (params, state) = fresh_start(cfg, &spec, &device)?;
    let dp = DataParallel::new(comm, &cfg.distributed, &params, cfg.train.batch_size)?;
    let optimizer = dp.optimizer(&cfg.optim, groups)?;
    let metrics = if writer {
        MetricsLog::open(&run_dir.join("metrics.jsonl"), None, observers.clone())?
    } else {
        MetricsLog::discard()
    };
    run_loop(cfg, run_dir, spec, params, dp, optimizer, data, state, metrics, opts)
}

/// Claims `run_dir` for a new run (refusing one that holds a run) and writes its config.
/// Step 0: freshly initialised weights and an empty trainer state (a new run, or a resume
/// that finds no checkpoint yet).
fn fresh_start(cfg: &RunConfig, spec: &ModelSpec, device: &Device) -> Result<(ParamStore, TrainerState)> {
    let init = InitScheme::parse(&cfg.model.init)?;
    let params = ParamStore::init(&spec.params(), init, spec.n_layer, cfg.train.seed, device)?;
    let state = TrainerState {
        step: 0,
        tokens_seen: 0,
        data_cursor: 0,
        seed: cfg.train.seed,
        config_hash: cfg.hash(),
        val_loss: None,
        best_val_loss: None,
        best_step: None,
        elapsed_s: 0.0,
        plateau: (cfg.schedule.kind == "plateau").then(Plateau::default),
        faults: Default::default(),
    };
    Ok((params, state))
}

fn start_run_dir(cfg: &RunConfig, run_dir: &Path) -> Result<checkpoint::RunLock> {
    if run_dir.join("config.toml").exists() || !checkpoint::list_checkpoints(run_dir)?.is_empty() {
        return Err(Error::Invalid(format!(
            "{} already holds a run; continue it with `lmforge train --resume {}` or choose another --run-dir",
            run_dir.display(),
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    let lock = checkpoint::RunLock::acquire(run_dir)?;
    checkpoint::write_text(&run_dir.join("config.toml"), &cfg.to_toml())?;
    Ok(lock)
}

fn resume_run(run_dir: &Path, opts: &TrainOptions, observers: &mut Observers) -> Result<TrainSummary> {
    let cfg = RunConfig::resolve(Some(&run_dir.join("config.toml")), &[])?;
    let comm = opts.collective();
    let _lock = if comm.rank() == 0 { Some(checkpoint::RunLock::acquire(run_dir)?) } else { None };
    let spec = ModelSpec::from_config(&cfg.model)?;
    let device = Device::Cpu;
    // Rank 0 first: it sets damaged checkpoints aside (it holds the lock) before the others look.
    let back = distributed::rank0_first(comm.as_ref(), || restore(&cfg, run_dir, &spec, &device, comm.rank() == 0))?;
    let (params, state) = (back.params, back.state);
    if state.step == 0 {
        tracing::warn!("{} has no checkpoint yet: starting again from step 0", run_dir.display());
    }
    if comm.rank() == 0 {
        observers.start(&RunStart::new(run_dir, &cfg, cfg.train.max_steps, Some(state.step)));
    }
    let data = PreparedData::prepare(&cfg.data, spec.vocab_size, &run_dir.join("data"), ProgressMode::Off)?;
    let writer = comm.rank() == 0;
    let dp = DataParallel::new(comm, &cfg.distributed, &params, cfg.train.batch_size)?;
    let optimizer = restore_optimizer(&cfg, &spec, &dp, back.checkpoint.as_deref(), state.step)?;
    let metrics = if writer {
        MetricsLog::open(&run_dir.join("metrics.jsonl"), Some(state.step), observers.clone())?
    } else {
        MetricsLog::discard()
    };
    run_loop(&cfg, run_dir, spec, params, dp, optimizer, data, state, metrics, opts)
}

/// Where training continues from: the newest intact checkpoint's weights and trainer state, or
/// the seeded initial state when there is none (the run died before its first checkpoint).
struct Restored {
    params: ParamStore,
    state: TrainerState,
    /// The checkpoint folder, when there was one (its optimizer state is loaded separately,
    /// through `DataParallel`, which decides which shard each process keeps).
    checkpoint: Option<PathBuf>,
}

/// Reads the newest intact checkpoint of `run_dir` (damaged newer ones are reported; with
/// `set_aside_damaged`, which needs the run lock, renamed aside). Used to resume and to roll
/// back.
fn restore(
    cfg: &RunConfig,
    run_dir: &Path,
    spec: &ModelSpec,
    device: &Device,
    set_aside_damaged: bool,
) -> Result<Restored> {
    let Some((_, ckpt)) = checkpoint::latest_good_checkpoint(run_dir, set_aside_damaged)? else {
        let (params, state) = fresh_start(cfg, spec, device)?;
        return Ok(Restored { params, state, checkpoint: None });
    };
    let mut state = checkpoint::read_trainer_state(&ckpt)?;
    if state.config_hash != cfg.hash() {
        return Err(Error::format(
            run_dir.join("config.toml"),
            format!(
                "config hash {} differs from the checkpoint's {}: the config was edited after training started",
                cfg.hash(),
                state.config_hash
            ),
        ));
    }
    if cfg.schedule.kind == "plateau" && state.plateau.is_none() {
        // Not written by this trainer (it always saves the state); start the plateau count afresh.
        state.plateau = Some(Plateau::default());
    }
    let params = ParamStore::load(&ckpt.join("model.safetensors"), &spec.params(), device)?;
    Ok(Restored { params, state, checkpoint: Some(ckpt) })
}

/// A fresh optimizer over this process's parameters, with the checkpoint's state when given.
fn restore_optimizer(
    cfg: &RunConfig,
    spec: &ModelSpec,
    dp: &DataParallel,
    checkpoint: Option<&Path>,
    step: u64,
) -> Result<Optimizer> {
    let mut optimizer = dp.optimizer(&cfg.optim, optimizer_groups(cfg, spec)?)?;
    if let Some(ckpt) = checkpoint {
        dp.load_optimizer_state(&ckpt.join("optimizer.safetensors"), &mut optimizer, step)?;
    }
    Ok(optimizer)
}

/// Every parameter's optimizer group: its role from the model spec, then the default decay
/// rule and the `[[optim.groups]]` overrides.
fn optimizer_groups(cfg: &RunConfig, spec: &ModelSpec) -> Result<BTreeMap<String, ParamGroup>> {
    param_groups(&cfg.optim, spec.params().into_iter().map(|p| (p.name.clone(), param_role(&p))))
}

/// What a parameter is to the optimizer: an embedding, the untied LM head, a hidden matrix
/// with its fans, or a vector.
pub fn param_role(p: &ParamInfo) -> ParamRole {
    match p.kind {
        ParamKind::Embedding => ParamRole::Embedding,
        _ if p.name == "lm_head.weight" => ParamRole::Head,
        ParamKind::Matrix | ParamKind::ResidualProjection => ParamRole::Matrix { fan_in: p.fans.0, fan_out: p.fans.1 },
        ParamKind::Bias | ParamKind::NormWeight | ParamKind::NormBias => ParamRole::Vector,
    }
}

/// Bytes of fp32 optimizer state `optim` keeps for `spec`, without allocating (equal to
/// `Optimizer::state_bytes` of the trainer's optimizer; tested).
pub fn optimizer_state_bytes(spec: &ModelSpec, optim: &OptimSpec) -> u64 {
    spec.params().iter().map(|p| 4 * optim.state_elems(&p.shape, param_role(p)) as u64).sum()
}

fn seq_len(cfg: &RunConfig, spec: &ModelSpec) -> Result<usize> {
    let t = if cfg.train.seq_len == 0 { spec.context } else { cfg.train.seq_len };
    if t > spec.context {
        return Err(Error::config("train.seq_len", format!("{t} exceeds the model's context of {}", spec.context)));
    }
    Ok(t)
}

/// Refuses, before allocating anything, a model whose training state does not fit in memory.
/// The estimate is the same one `lmforge plan --gpu cpu` prints ([`ModelSpec::cpu_train_memory`]).
pub fn check_fits(
    spec: &ModelSpec,
    batch: usize,
    seq_len: usize,
    name: &str,
    optim: &OptimSpec,
    checkpointing: bool,
) -> Result<()> {
    let mem = spec.cpu_train_memory(batch, seq_len, optimizer_state_bytes(spec, optim), checkpointing);
    let need = mem.total();
    if let Some(avail) = available_memory_bytes() {
        if need > avail {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(Error::DoesNotFit(format!(
                "model `{name}` ({} parameters) needs about {:.1} GiB to train in fp32 with {} \
                 (weights, gradients and optimizer state = {:.1} GiB, plus activations for batch \
                 {batch} x {seq_len}), but only {:.1} GiB are available. Use a smaller preset or \
                 batch, or a machine with more memory; `lmforge plan` shows the breakdown.",
                spec.num_params(),
                gib(need),
                optim.name(),
                gib(mem.weights + mem.gradients + mem.optimizer_state),
                gib(avail)
            )));
        }
    }
    Ok(())
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `MemAvailable` from /proc/meminfo (None where unknown).
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    cfg: &RunConfig,
    run_dir: &Path,
    spec: ModelSpec,
    params: ParamStore,
    dp: DataParallel,
    mut optimizer: Optimizer,
    data: PreparedData,
    mut state: TrainerState,
    mut metrics: MetricsLog,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    let t = &cfg.train;
    let policy = FaultPolicy::from_config(cfg)?;
    if dp.world_size() > 1 && policy.on_nonfinite == crate::faults::OnNonFinite::Rollback {
        return Err(Error::config(
            "train.on_nonfinite",
            "\"rollback\" runs in single-process training only; use \"skip\" with several processes",
        ));
    }
    let seq_len = seq_len(cfg, &spec)?;
    let schedule = Schedule::new(&cfg.schedule, t.max_steps);
    let plateau_rule = PlateauRule::from_config(&cfg.schedule);
    let device = params.device().clone();
    let vocab = match spec.style {
        Style::Bert => Some(Vocab::from_tokenizer(&data.tokenizer, spec.vocab_size)?),
        Style::Gpt2 | Style::Llama => None,
    };
    let task = match &vocab {
        None => Task::Causal {
            model: Decoder::new(&spec, &params)?.with_activation_checkpointing(t.activation_checkpointing),
            val: data::eval_batches(&data.val, t.eval_batches, t.batch_size, seq_len)?,
        },
        Some(vocab) => {
            let nsp = t.objective == "mlm+nsp";
            let source = |shard| -> Result<MlmSource> {
                Ok(MlmSource { shard, index: SentenceIndex::build(shard, vocab)?, vocab, cfg: &cfg.mlm, nsp, seq_len })
            };
            let val = source(&data.val)?.eval_batches(state.seed, t.eval_batches, t.batch_size)?;
            let (_, unigram_acc) = mlm_data::unigram_baseline(&data.train, vocab, &val);
            Task::Masked {
                model: Encoder::new(&spec, &params)?,
                source: Box::new(source(&data.train)?),
                val,
                unigram_acc,
            }
        }
    };
    let tokens_per_step = (t.batch_size * seq_len * t.grad_accum) as u64;
    let run_config_toml = cfg.to_toml();
    let mode = if dp.is_writer() { ProgressMode::parse(&cfg.log.progress) } else { ProgressMode::Off };
    let progress = Progress::new(mode, "step", state.step, t.max_steps);
    // The whole state (every rank's shard under ZeRO-1, one replica otherwise).
    let state_bytes = dp.total_state_bytes(&optimizer)? / if dp.is_sharded() { 1.0 } else { dp.world_size() as f64 };
    progress.println(&format!(
        "model: {} parameters ({:?}, {} layers, d {}); optimizer {} state {} ({:.2} bytes/param); \
         {} train / {} val tokens{}",
        spec.num_params(),
        spec.style,
        spec.n_layer,
        spec.d_model,
        optimizer.name(),
        human_bytes(state_bytes as u64),
        state_bytes / spec.num_params().max(1) as f64,
        data.train.len(),
        data.val.len(),
        match (dp.world_size(), dp.is_sharded()) {
            (1, _) => String::new(),
            (n, false) => format!("; {n} processes, data parallel"),
            (n, true) => format!(
                "; {n} processes, ZeRO-1: rank 0 keeps {} of the optimizer state",
                human_bytes(optimizer.state_bytes() as u64)
            ),
        }
    ));

    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut train_time = 0.0f64;
    let mut trained_tokens = 0u64;
    let mut last_val = None;
    let mut last_ckpt_step = state.step;
    let mut interrupted = false;
    let mut stopped_early = false;

    while state.step < t.max_steps {
        // Every process stops at the same step when any of them was signalled.
        if dp.any(opts.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)))? {
            interrupted = true;
            break;
        }
        if opts.stop_after == Some(state.step) {
            stopped_early = true;
            break;
        }
        let step_start = Instant::now();
        let s = state.step;
        let lr = cfg.optim.lr * schedule.multiplier(s) * state.plateau.map_or(1.0, |p| p.scale) * state.faults.lr_scale;
        let inject_nan = crate::testhooks::inject_nan(s + 1);
        let mut grads: Option<BTreeMap<String, Tensor>> = None;
        let mut loss_sum = 0.0f64;
        // This process's rows of every micro-batch.
        let rows = dp.local_range(t.batch_size);
        for micro in 0..t.grad_accum {
            let mut dropout = DropoutRng::new(cfg.model.dropout, seed_for(state.seed, &format!("dropout/{s}/{micro}")))
                .for_rows(rows.start, t.batch_size);
            let mut loss = task.micro_loss(
                &data,
                state.seed,
                s,
                micro,
                t.batch_size,
                rows.clone(),
                seq_len,
                &device,
                &mut dropout,
            )?;
            if inject_nan {
                loss = (loss * f64::NAN)?;
            }
            loss_sum += loss.to_scalar::<f32>()? as f64;
            // Averaging over micro-batches: scale each loss so the summed gradient is the mean.
            let scaled = if t.grad_accum > 1 { (loss / t.grad_accum as f64)? } else { loss };
            let g = named_grads(params.vars(), &scaled.backward()?)?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (k, v) in g {
                        let a = acc.get_mut(&k).expect("same names every micro-batch");
                        *a = (&*a + v)?;
                    }
                    acc
                }
            });
            state.data_cursor += 1;
        }
        let mut grads = grads.expect("grad_accum >= 1");
        // Communication only now, after the last micro-batch: gradients and loss summed.
        let loss_sum = dp.all_reduce_grads(&mut grads, loss_sum)?;
        let grad_norm = clip_grad_norm(&mut grads, cfg.optim.grad_clip)?;
        // The loss and gradient norm are global (summed over processes above), so every
        // process reaches the same verdict.
        let loss = loss_sum / t.grad_accum as f64;
        let fault_row = |action: &str, step: u64, consecutive: u32| {
            json!({
                "step": step, "split": "fault", "kind": "nonfinite", "fault_step": s + 1, "loss": loss,
                "grad_norm": grad_norm, "action": action, "consecutive": consecutive,
            })
        };
        let spike = match state.faults.judge(s + 1, loss, grad_norm, &policy) {
            Ok(Verdict::Apply { spike }) => {
                dp.step(&mut optimizer, &grads, lr)?;
                Some(spike)
            }
            Ok(Verdict::Skip) => {
                progress.warn(&format!("step {}: loss {loss}, gradient norm {grad_norm}: update skipped", s + 1));
                metrics.write(&fault_row("skip", s + 1, state.faults.consecutive))?;
                None
            }
            Ok(Verdict::Rollback) => {
                let back = restore(cfg, run_dir, &spec, &device, dp.is_writer())?;
                params.assign(&back.params)?;
                optimizer = restore_optimizer(cfg, &spec, &dp, back.checkpoint.as_deref(), back.state.step)?;
                let faults = state.faults.after_rollback(&back.state.faults, &policy);
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
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        train_time += step_start.elapsed().as_secs_f64();
        trained_tokens += tokens_per_step;
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let tok_s = trained_tokens as f64 / train_time.max(1e-9);
        let log_now = spike == Some(true)
            || (spike.is_some() && (state.step % t.log_every == 0 || state.step == t.max_steps || state.step == 1));
        if log_now {
            let mut row = json!({
                "step": state.step, "split": "train", "loss": loss, "lr": lr,
                "tokens": state.tokens_seen, "elapsed_s": elapsed, "grad_norm": grad_norm,
                "tokens_per_s": tok_s,
            });
            if spike == Some(true) {
                row["spike"] = json!(true);
            }
            metrics.write(&row)?;
        }
        progress.update(state.step, &format!("loss {loss:.4} lr {lr:.2e} {tok_s:.0} tok/s"), log_now);

        state.val_loss = None;
        if due(state.step, t.eval_every, t.max_steps) {
            let v = task.validate(&dp, &device, data.meta.val_tokens_per_byte())?;
            let mut row = json!({
                "step": state.step, "split": "val", "loss": v.loss, "ppl": v.ppl,
                "lr": lr, "tokens": state.tokens_seen, "elapsed_s": elapsed,
            });
            if let Some(b) = v.bits_per_byte {
                row["bits_per_byte"] = json!(b);
            }
            for (k, x) in &v.extra {
                row[*k] = json!(x);
            }
            metrics.write(&row)?;
            progress.println(&format!("step {} val {}", state.step, v.summary()));
            state.val_loss = Some(v.loss);
            if let Some(p) = state.plateau.as_mut() {
                p.observe(v.loss, &plateau_rule);
            }
            if state.best_val_loss.is_none_or(|b| v.loss < b) {
                state.best_val_loss = Some(v.loss);
                state.best_step = Some(state.step);
            }
            last_val = Some(v);
        }
        if due(state.step, t.checkpoint_every, t.max_steps) {
            state.elapsed_s = elapsed;
            match save(cfg, run_dir, &spec, &params, &data, &dp, &optimizer, &state, &run_config_toml) {
                Ok(()) => last_ckpt_step = state.step,
                // The last checkpoint is the run's result: it cannot be skipped.
                Err(e) if policy.continue_on_write_error && state.step < t.max_steps => {
                    progress.warn(&format!(
                        "checkpoint at step {} not written ({e}); training continues and tries again at the next one",
                        state.step
                    ));
                    metrics.write(&json!({
                        "step": state.step, "split": "fault", "kind": "checkpoint_write",
                        "error": e.to_string(), "action": "continue",
                    }))?;
                }
                Err(e) => return Err(checkpoint_write_failed(e, run_dir, state.step)),
            }
        }
    }
    if (interrupted || stopped_early) && last_ckpt_step != state.step {
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        save(cfg, run_dir, &spec, &params, &data, &dp, &optimizer, &state, &run_config_toml)
            .map_err(|e| checkpoint_write_failed(e, run_dir, state.step))?;
        progress.println(&format!("stopped at step {}; checkpoint written, continue with --resume", state.step));
    }
    progress.finish();
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        step: state.step,
        max_steps: t.max_steps,
        interrupted,
        last_val,
        tokens_per_s: trained_tokens as f64 / train_time.max(1e-9),
        train_seconds: train_time,
        num_params: spec.num_params(),
    })
}

#[allow(clippy::too_many_arguments)]
fn save(
    cfg: &RunConfig,
    run_dir: &Path,
    spec: &ModelSpec,
    params: &ParamStore,
    data: &PreparedData,
    dp: &DataParallel,
    optimizer: &Optimizer,
    state: &TrainerState,
    run_config_toml: &str,
) -> Result<()> {
    // Collective (ZeRO-1 shards travel to rank 0); rank 0 alone writes.
    let Some(optimizer_state) = dp.optimizer_state_for_checkpoint(optimizer)? else {
        return Ok(());
    };
    checkpoint::write_checkpoint(
        run_dir,
        &CheckpointContents { spec, params, tokenizer: &data.tokenizer, optimizer_state, state, run_config_toml },
    )?;
    let steps = checkpoint::list_checkpoints(run_dir)?;
    let best = if cfg.checkpoint.keep_best { state.best_step } else { None };
    for old in checkpoint::checkpoints_to_delete(&steps, cfg.checkpoint.keep_last, best) {
        crate::fsio::remove_dir(&checkpoint::checkpoint_dir(run_dir, old))?;
    }
    Ok(())
}

/// The error for a checkpoint that could not be written: what failed, and that nothing
/// written before is lost.
fn checkpoint_write_failed(e: Error, run_dir: &Path, step: u64) -> Error {
    let previous = match checkpoint::list_checkpoints(run_dir).ok().and_then(|s| s.last().copied()) {
        Some(p) => format!(
            "the previous checkpoint (step {p}) is intact and `lmforge train --resume {}` continues from it",
            run_dir.display()
        ),
        None => format!(
            "no earlier checkpoint exists; `lmforge train --resume {}` starts again from step 0",
            run_dir.display()
        ),
    };
    Error::Invalid(format!(
        "writing the checkpoint at step {step} failed: {e}. Nothing written before was lost: {previous}. \
         Free disk space or fix permissions first, or set checkpoint.on_write_error = \"continue\" to keep \
         training through such failures."
    ))
}

fn batch_tensors(b: &Batch, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_slice(&b.inputs, (b.batch_size, b.seq_len), device)?;
    let y = Tensor::from_slice(&b.targets, (b.batch_size, b.seq_len), device)?;
    Ok((x, y))
}

/// Mean loss over the validation batches (token-weighted), perplexity and bits per byte.
pub fn evaluate(model: &Decoder, batches: &[Batch], device: &Device, tokens_per_byte: f64) -> Result<ValMetrics> {
    Ok(val_metrics(&batch_losses(model, batches, device)?, batches, tokens_per_byte))
}

/// The mean loss of each batch.
fn batch_losses(model: &Decoder, batches: &[Batch], device: &Device) -> Result<Vec<f32>> {
    batches
        .iter()
        .map(|b| {
            let (x, y) = batch_tensors(b, device)?;
            Ok(model.loss(&x, &y, None)?.to_scalar::<f32>()?)
        })
        .collect()
}

/// Validation metrics from each batch's mean loss (weighted by its tokens).
fn val_metrics(losses: &[f32], batches: &[Batch], tokens_per_byte: f64) -> ValMetrics {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (loss, b) in losses.iter().zip(batches) {
        let n = b.batch_size * b.seq_len;
        sum += *loss as f64 * n as f64;
        count += n;
    }
    let loss = sum / count.max(1) as f64;
    ValMetrics {
        loss,
        ppl: loss.exp(),
        bits_per_byte: Some(loss / std::f64::consts::LN_2 * tokens_per_byte),
        extra: Vec::new(),
    }
}

/// Masked-LM validation: loss and accuracy over the masked positions (token-weighted), and
/// next-sentence loss and accuracy over the rows when the batches have labels.
pub fn evaluate_mlm(model: &Encoder, batches: &[MlmBatch], device: &Device) -> Result<ValMetrics> {
    let (mut mlm_sum, mut mlm_hits, mut mlm_n) = (0.0f64, 0usize, 0usize);
    let (mut nsp_sum, mut nsp_hits, mut nsp_n) = (0.0f64, 0usize, 0usize);
    for b in batches {
        let hidden = model.hidden(&b.input(device)?, None)?;
        let (pos, tgt) = b.positions(device)?;
        let logits = model.mlm_logits(&Encoder::select_rows(&hidden, &pos)?)?;
        mlm_sum += crate::ops::cross_entropy_per_row(&logits, &tgt)?.sum_all()?.to_scalar::<f32>()? as f64;
        let pred = crate::models::encoder::argmax_last(&logits)?;
        mlm_hits += pred.iter().zip(&b.targets).filter(|(p, t)| p == t).count();
        mlm_n += b.targets.len();
        if let (Some(labels), Some(lt)) = (&b.nsp_labels, b.nsp_labels(device)?) {
            let logits = model.nsp_logits(&model.pooled(&hidden)?)?;
            nsp_sum += crate::ops::cross_entropy_per_row(&logits, &lt)?.sum_all()?.to_scalar::<f32>()? as f64;
            let pred = crate::models::encoder::argmax_last(&logits)?;
            nsp_hits += pred.iter().zip(labels).filter(|(p, t)| p == t).count();
            nsp_n += labels.len();
        }
    }
    let mlm_loss = mlm_sum / mlm_n.max(1) as f64;
    let mut extra = vec![("mlm_loss", mlm_loss), ("mlm_acc", mlm_hits as f64 / mlm_n.max(1) as f64)];
    let mut loss = mlm_loss;
    if nsp_n > 0 {
        let nsp_loss = nsp_sum / nsp_n as f64;
        loss += nsp_loss;
        extra.push(("nsp_loss", nsp_loss));
        extra.push(("nsp_acc", nsp_hits as f64 / nsp_n as f64));
    }
    Ok(ValMetrics { loss, ppl: mlm_loss.exp(), bits_per_byte: None, extra })
}

/// Append-only `metrics.jsonl`. Opened for a resume, it first drops rows past the checkpoint
/// (written after it by the run that died), rewriting the file atomically. Every row written
/// is passed on to the run's observers.
pub struct MetricsLog {
    /// None: rows are dropped (the processes of a distributed run other than rank 0).
    file: Option<std::fs::File>,
    path: PathBuf,
    observers: Observers,
}

impl MetricsLog {
    pub fn open(path: &Path, keep_up_to_step: Option<u64>, observers: Observers) -> Result<Self> {
        if let (Some(limit), true) = (keep_up_to_step, path.exists()) {
            let text = std::fs::read_to_string(path).at(path)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64())
                        .is_some_and(|s| s <= limit)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::fsio::write_atomic(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).at(path)?;
        Ok(Self { file: Some(file), path: path.to_path_buf(), observers })
    }

    /// The same log with the rows past `step` dropped (a rollback to that step's checkpoint).
    pub fn reopen(self, step: u64) -> Result<Self> {
        if self.file.is_none() {
            return Ok(self);
        }
        Self::open(&self.path, Some(step), self.observers)
    }

    /// A log that writes nothing.
    pub fn discard() -> Self {
        Self { file: None, path: PathBuf::new(), observers: Observers::default() }
    }

    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        let Some(f) = &mut self.file else { return Ok(()) };
        writeln!(f, "{row}").at(&self.path)?;
        if let Some(row) = MetricsRow::from_json(row) {
            self.observers.row(&row);
        }
        Ok(())
    }
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
    fn optimizer_state_estimate_equals_what_the_optimizer_allocates() {
        use crate::config::RunConfig;
        // Every optimizer, and each option that changes its state.
        let settings: [&[&str]; 9] = [
            &["optim.name=adamw"],
            &["optim.name=adamw", "optim.amsgrad=true"],
            &["optim.name=sgd"],
            &["optim.name=sgd", "optim.momentum=0.9"],
            &["optim.name=adafactor"],
            &["optim.name=adafactor", "optim.beta1=0.9"],
            &["optim.name=lamb"],
            &["optim.name=lion"],
            &["optim.name=muon"],
        ];
        for preset in ["tiny", "llama-tiny"] {
            let spec = ModelSpec::preset(preset).unwrap();
            let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 1, &Device::Cpu).unwrap();
            for set in settings {
                let sets: Vec<String> = set.iter().map(|s| s.to_string()).collect();
                let cfg = RunConfig::from_toml_str("", &sets).unwrap();
                let optim = OptimSpec::from_config(&cfg.optim).unwrap();
                let opt = Optimizer::new(optim.clone(), params.vars(), optimizer_groups(&cfg, &spec).unwrap()).unwrap();
                assert_eq!(optimizer_state_bytes(&spec, &optim), opt.state_bytes() as u64, "{preset} {set:?}");
            }
        }
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
    }
}
