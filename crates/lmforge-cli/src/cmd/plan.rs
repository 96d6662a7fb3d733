//! `lmforge plan`: memory, FLOPs, time and cost of a training job before allocating anything.

use anyhow::Result;
use lmforge::nn::recompute::Checkpointing;
use lmforge::plan::{self, PlanOptions, PlanRequest};
use lmforge::train::RunConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["config", "preset"]))]
pub struct Args {
    /// A run config: its [model], [optim] and [train] sections.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model preset (with the default run config).
    #[arg(long)]
    preset: Option<String>,
    /// Data-parallel devices (with `--gpu cpu`: processes, `mpirun -np N`, splitting each
    /// micro-batch).
    #[arg(long)]
    gpus: Option<usize>,
    /// h100-80gb (default), a100-80gb, a100-40gb, h200-141gb, or cpu (this machine).
    #[arg(long)]
    gpu: Option<String>,
    /// ZeRO stage: 0 (replicated), 1 (optimizer sharded), 2 (+ gradients), 3 (+ weights)
    /// (default: the config's distributed.zero).
    #[arg(long)]
    zero: Option<u8>,
    /// fp32 or bf16-mixed (default: bf16-mixed on GPUs, fp32 on cpu).
    #[arg(long)]
    precision: Option<String>,
    /// Sequences per device per micro-batch (default: train.batch_size).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per sequence (default: train.seq_len, or the model's context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Micro-batches per optimizer step (default: train.grad_accum).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Recompute layers in the backward pass, keeping only their input: every layer, or with
    /// a number N the first N, or `off` (default: train.activation_checkpointing).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "all")]
    activation_checkpointing: Option<Checkpointing>,
    /// Training tokens, e.g. 2e12 (default: 20 per parameter).
    #[arg(long)]
    tokens: Option<f64>,
    /// Model FLOPs utilisation (default 0.4).
    #[arg(long)]
    mfu: Option<f64>,
    /// Price of one GPU-hour, for the cost line.
    #[arg(long)]
    price_per_gpu_hour: Option<f64>,
    /// Device peak in TFLOP/s (cpu: instead of measuring a matmul).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Another optimizer (adamw, adam, sgd, adafactor, lamb, lion, muon) with its defaults,
    /// keeping the config's lr, weight decay and clipping.
    #[arg(long)]
    optim: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<i32> {
    let cfg = match (&a.config, &a.preset) {
        (Some(path), _) => RunConfig::resolve(Some(path), &[])?,
        (None, preset) => {
            let preset = preset.as_deref().expect("clap requires --config or --preset");
            RunConfig::resolve(None, &[format!("model.preset={preset:?}")])?
        }
    };
    let opts = PlanOptions {
        gpus: a.gpus,
        gpu: a.gpu,
        zero: a.zero,
        precision: a.precision,
        micro_batch: a.micro_batch,
        seq_len: a.seq_len,
        grad_accum: a.grad_accum,
        checkpointing: a.activation_checkpointing,
        tokens: a.tokens,
        mfu: a.mfu,
        price_per_gpu_hour: a.price_per_gpu_hour,
        peak_tflops: a.peak_tflops,
        optim: a.optim,
    };
    let plan = plan::plan(&PlanRequest::from_config(&cfg, &opts)?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan::report::table(&plan));
    }
    Ok(0)
}
