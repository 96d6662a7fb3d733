//! `lmforge bench`: training throughput and memory of this machine, or its matmul peak.

use super::{print_json, DeviceArg};
use anyhow::{Context, Result};
use lmforge::bench::{self, TrainBenchOptions};
use lmforge::nn::recompute::Checkpointing;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a preset on a fixed random batch (AdamW unless --optim, clip 1.0) and report
    /// tokens/s, step times, peak RSS, FLOPs and MFU.
    Train {
        /// bench-gpt or bench-llama (any preset works).
        #[arg(long, default_value = "bench-gpt")]
        preset: String,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// fused (default) or reference (the composed ops, for comparison).
        #[arg(long, default_value = "fused")]
        kernels: String,
        /// Recompute blocks' activations in the backward (less memory, more compute): every
        /// block, or with a number N the first N.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "all", default_value = "off")]
        activation_checkpointing: Checkpointing,
        /// Break the step down by phase and fused kernel (forward / backward pass of each).
        #[arg(long)]
        profile: bool,
        /// fp32, or bf16-mixed (bf16 products and activations, fp32 weights, gradients and
        /// optimizer state).
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// The optimizer: adamw (default), adam, sgd, adafactor, lamb, lion or muon, with its
        /// defaults, lr 3e-4 and weight decay 0.1 (adafactor's factored second moment is
        /// what fits a model whose AdamW state does not; `lmforge plan --optim`).
        #[arg(long, default_value = "adamw")]
        optim: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Serve a model on loopback and load it: output tokens/s, time to first token and
    /// inter-token latency (p50 / p99) at each concurrency, resident memory.
    Serve {
        /// A causal LM: run dir, checkpoint or Hugging Face folder.
        #[arg(long)]
        model: std::path::PathBuf,
        #[command(flatten)]
        adapter: super::AdapterArg,
        /// Concurrent clients, a level each (each sends --requests streamed completions in turn).
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 4)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        prompt_len: usize,
        /// Tokens out per request (the end-of-text token is ignored).
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        #[arg(long, default_value_t = 256)]
        kv_cache_mb: usize,
        #[arg(long, default_value_t = 512)]
        prefill_tokens: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Sustained fp32 matmul GFLOP/s (the peak MFU is measured against).
    Matmul {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The model file a serving bench runs; none for the other benches (they train).
    pub fn served_model(&self) -> Option<&std::path::Path> {
        match self {
            Command::Serve { model, .. } => Some(model),
            _ => None,
        }
    }
}

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Train {
            preset,
            steps,
            warmup,
            batch,
            kernels,
            activation_checkpointing,
            profile,
            precision,
            optim,
            json,
            device,
        } => {
            let kernels = lmforge::ops::Kernels::parse(&kernels)
                .with_context(|| format!("--kernels {kernels:?}: expected fused or reference"))?;
            let opts = TrainBenchOptions {
                preset,
                steps,
                warmup,
                batch,
                kernels,
                activation_checkpointing,
                profile,
                device: device.device,
                precision: lmforge::device::Precision::parse(&precision)?,
                optim,
            };
            let r = bench::bench_train(&opts)?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", bench::table(&r));
            }
        }
        Command::Serve {
            model,
            adapter,
            concurrency,
            requests,
            prompt_len,
            max_tokens,
            max_batch,
            kv_cache_mb,
            prefill_tokens,
            json,
            device,
        } => {
            let m = lmforge::checkpoint::LoadedModel::load_with_adapter(&model, adapter.get(), &device.resolve()?)?;
            let max_concurrent = concurrency.iter().copied().max().unwrap_or(1).max(1);
            let o = lmforge_serve::ServeOptions {
                host: "127.0.0.1".into(),
                port: 0,
                max_batch,
                max_concurrent,
                kv_cache_mb,
                prefill_tokens,
                api_key: None,
                model_id: model.display().to_string(),
                drain: std::time::Duration::from_secs(1),
            };
            let b = lmforge_serve::bench::BenchOptions {
                concurrency,
                prompt_len,
                max_tokens,
                requests_per_client: requests,
            };
            let r = lmforge_serve::bench::bench(m, o, b)?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", lmforge_serve::bench::table(&r));
            }
        }
        Command::Matmul { json } => {
            let r = bench::bench_matmul()?;
            if json {
                print_json(&r)?;
            } else {
                println!("fp32 matmul {}x{0}: {:.1} GFLOP/s ({} threads)", r.n, r.gflops, r.threads);
            }
        }
    }
    Ok(0)
}
