//! `lmforge train`: the pretraining front end. It resolves a [`RunConfig`], claims the run
//! folder, prepares the data (rank 0 first), builds the causal or masked LM task over freshly
//! initialised weights (or a checkpoint's, to resume) on the configured device, and hands it
//! to the one loop.

use super::lm::{CausalBatches, CausalLm, Initial, LmWeights, MaskedLm};
use super::{check_fits, find_start, run_loop, start_run_dir, Cadence, LoopPlan, MetricsLog, Objective, RunConfig};
use super::{RunPlan, Start, TrainOptions, TrainSummary};
use crate::checkpoint::{self, RunLock};
use crate::config;
use crate::data::{self, PreparedData};
use crate::device::Placement;
use crate::distributed;
use crate::error::{Error, IoContext, Result};
use crate::mlm_data::{self, MlmSource, SentenceIndex, Vocab};
use crate::nn::ParamStore;
use crate::observe::{Observers, RunStart};
use crate::progress::ProgressMode;
use candle_core::Device;
use std::path::Path;
use std::sync::Arc;

impl RunPlan {
    /// What the loop runs.
    pub fn loop_plan(&self) -> LoopPlan {
        let (c, t) = (&self.cfg, &self.cfg.train);
        LoopPlan {
            max_steps: t.max_steps,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            seed: t.seed,
            dropout: c.model.dropout,
            lr: c.optim.lr,
            grad_clip: c.optim.grad_clip,
            schedule: self.schedule.clone(),
            plateau: self.plateau,
            optim: self.optim.clone(),
            groups: self.groups.clone(),
            faults: self.faults.clone(),
            eval: Cadence::every(t.eval_every),
            checkpoint: Cadence::every(t.checkpoint_every),
            log_every: t.log_every,
            keep_last: c.checkpoint.keep_last,
            keep_best: c.checkpoint.keep_best,
            distributed: c.distributed.clone(),
            progress: c.log.progress,
            config_toml: c.to_toml(),
            config_hash: c.hash(),
            command: "lmforge train",
        }
    }
}

impl RunPlan {
    /// Where the initial weights come from.
    pub fn initial(&self) -> Initial {
        match &self.init_source {
            Some(folder) => Initial::From(folder.clone()),
            None => Initial::Scheme(self.cfg.model.init, self.cfg.train.seed),
        }
    }
}

impl RunConfig {
    /// A run's saved `config.toml`, read as written (its paths were resolved when the run
    /// started; its hash must match the checkpoints').
    pub fn load_saved(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let cfg: Self = config::parse(&text, &[])?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Starts a new run in `run_dir` (which must not already hold a run).
pub fn train(cfg: &RunConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainSummary> {
    let mut observers = opts.observers.clone();
    let result = train_fresh(cfg, run_dir, opts, &mut observers);
    observers.end(&TrainSummary::run_end(result.as_ref()));
    result
}

/// Continues the run in `run_dir` from its latest checkpoint.
pub fn resume(run_dir: &Path, opts: &TrainOptions) -> Result<TrainSummary> {
    let mut observers = opts.observers.clone();
    let result = resume_run(run_dir, opts, &mut observers);
    observers.end(&TrainSummary::run_end(result.as_ref()));
    result
}

/// The plan and the placement: everything that can fail on the config fails here, before a
/// file is written.
fn resolve(cfg: &RunConfig, opts: &TrainOptions) -> Result<(RunPlan, Placement)> {
    let plan = cfg.plan()?;
    let placement = opts.placement(cfg.train.device, cfg.train.precision)?;
    if matches!(placement.device, Device::Cpu) {
        let world = opts.collective().world_size();
        let local_batch = distributed::split_rows(cfg.train.batch_size, world, 0).len();
        let checkpointing = cfg.train.activation_checkpointing;
        check_fits(&plan.spec, local_batch, plan.seq_len, &cfg.model.preset, &plan.optim, checkpointing)?;
    }
    Ok((plan, placement))
}

fn train_fresh(
    cfg: &RunConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    observers: &mut Observers,
) -> Result<TrainSummary> {
    let (plan, placement) = resolve(cfg, opts)?;
    plan.data.check_paths()?;
    let lp = plan.loop_plan();
    let comm = opts.collective();
    let writer = comm.rank() == 0;
    let (_lock, data) = distributed::rank0_first(comm.as_ref(), || {
        let lock = if writer { Some(start_run_dir(run_dir, &lp.config_toml, lp.command)?) } else { None };
        if writer {
            observers.start(&RunStart::new(run_dir, cfg, cfg.train.max_steps, None));
        }
        let mode = if writer { cfg.log.progress.mode() } else { ProgressMode::Off };
        Ok((lock, PreparedData::prepare(&plan.data, plan.spec.vocab_size, &run_dir.join("data"), mode)?))
    })?;
    let held = zero3_holder(&plan, opts)?;
    let params = plan.initial().held_params(&plan.spec, &placement.device, &held)?.with_precision(placement.precision);
    let metrics = if writer {
        MetricsLog::open(&run_dir.join("metrics.jsonl"), None, observers.clone())?
    } else {
        MetricsLog::discard()
    };
    let start = Start { state: lp.fresh_state(), checkpoint: None };
    run_task(&plan, &lp, &data, params, run_dir, start, metrics, opts)
}

fn resume_run(run_dir: &Path, opts: &TrainOptions, observers: &mut Observers) -> Result<TrainSummary> {
    let cfg = RunConfig::load_saved(&run_dir.join("config.toml"))?;
    let (plan, placement) = resolve(&cfg, opts)?;
    let lp = plan.loop_plan();
    let comm = opts.collective();
    let _lock = if comm.rank() == 0 { Some(RunLock::acquire(run_dir)?) } else { None };
    // Rank 0 first: it sets damaged checkpoints aside (it holds the lock) before the others look.
    let start = distributed::rank0_first(comm.as_ref(), || find_start(run_dir, &lp, comm.rank() == 0))?;
    let spec = &plan.spec;
    let held = zero3_holder(&plan, opts)?;
    let params = match &start.checkpoint {
        Some(ckpt) => checkpoint::load_checkpoint_params(ckpt, spec, &placement.device, &held)?,
        None => plan.initial().held_params(spec, &placement.device, &held)?,
    }
    .with_precision(placement.precision);
    if start.state.step == 0 {
        tracing::warn!("{} has no checkpoint yet: starting again from step 0", run_dir.display());
    }
    if comm.rank() == 0 {
        observers.start(&RunStart::new(run_dir, &cfg, cfg.train.max_steps, Some(start.state.step)));
    }
    let data = PreparedData::prepare(&plan.data, spec.vocab_size, &run_dir.join("data"), ProgressMode::Off)?;
    let metrics = if comm.rank() == 0 {
        MetricsLog::open(&run_dir.join("metrics.jsonl"), Some(start.state.step), observers.clone())?
    } else {
        MetricsLog::discard()
    };
    run_task(&plan, &lp, &data, params, run_dir, start, metrics, opts)
}

/// Whether this process keeps a parameter, by name.
type Holds = Box<dyn Fn(&str) -> bool>;

/// ZeRO-3 on several processes: whether this process keeps a parameter (by name) — every one
/// outside the decoder layers and its share of the layers' — so it initialises or reads only
/// those (each process never holds the whole model); otherwise every parameter.
fn zero3_holder(plan: &RunPlan, opts: &TrainOptions) -> Result<Holds> {
    let comm = opts.collective();
    let dist = plan.cfg.distributed.with_overrides(&opts.distributed_set)?;
    if dist.zero < 3 || comm.world_size() == 1 {
        return Ok(Box::new(|_| true));
    }
    if plan.objective != Objective::Causal {
        return Err(Error::config(
            "distributed.zero",
            "3 shards the layers of decoder models (GPT-2, Llama) trained as causal LMs; use 2 for BERT",
        ));
    }
    let spec = &plan.spec;
    Ok(Box::new(distributed::zero3::holder(&spec.params(), spec.n_layer, comm.rank(), comm.world_size())))
}

/// ZeRO-3 with several processes: the decoder layers leave `params` (which holds only this
/// process's share of them, [`zero3_holder`]).
fn shard_layers(
    plan: &RunPlan,
    mut params: ParamStore,
    opts: &TrainOptions,
) -> Result<(ParamStore, Option<Arc<distributed::ShardedLayers>>)> {
    let comm = opts.collective();
    let dist = plan.cfg.distributed.with_overrides(&opts.distributed_set)?;
    if dist.zero < 3 || comm.world_size() == 1 {
        return Ok((params, None));
    }
    let reducer = Arc::new(distributed::Reducer::from_config(comm, &dist, params.device().clone())?);
    let spec = &plan.spec;
    let layers = distributed::ShardedLayers::split(&mut params, &spec.params(), spec.n_layer, reducer)?;
    Ok((params, Some(layers)))
}

#[allow(clippy::too_many_arguments)]
fn run_task(
    plan: &RunPlan,
    lp: &LoopPlan,
    data: &PreparedData,
    params: ParamStore,
    run_dir: &Path,
    start: Start,
    metrics: MetricsLog,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    let (c, t) = (&plan.cfg, &plan.cfg.train);
    let seed = start.state.seed;
    let (params, layers) = shard_layers(plan, params, opts)?;
    let weights =
        LmWeights { spec: plan.spec.clone(), params, init: plan.initial(), tokenizer: Some(&data.tokenizer), layers };
    match plan.objective {
        Objective::Causal => {
            let val = data::eval_batches(&data.val, t.eval_batches, t.batch_size, plan.seq_len)?;
            let task = CausalLm::new(
                weights,
                t.activation_checkpointing,
                CausalBatches::Shard { shard: &data.train, seed },
                t.batch_size,
                plan.seq_len,
                val,
                data.meta.val_tokens_per_byte(),
            )?;
            run_loop(&task, lp, run_dir, start, metrics, opts)
        }
        Objective::Mlm | Objective::MlmNsp => {
            let vocab = Vocab::from_tokenizer(&data.tokenizer, plan.spec.vocab_size)?;
            let nsp = plan.objective == Objective::MlmNsp;
            let source = |shard| -> Result<MlmSource> {
                Ok(MlmSource {
                    shard,
                    index: SentenceIndex::build(shard, &vocab)?,
                    vocab: &vocab,
                    cfg: &c.mlm,
                    nsp,
                    seq_len: plan.seq_len,
                })
            };
            let val = source(&data.val)?.eval_batches(seed, t.eval_batches, t.batch_size)?;
            let (_, unigram_acc) = mlm_data::unigram_baseline(&data.train, &vocab, &val);
            let task = MaskedLm::new(weights, source(&data.train)?, seed, t.batch_size, val, unigram_acc)?;
            run_loop(&task, lp, run_dir, start, metrics, opts)
        }
    }
}
