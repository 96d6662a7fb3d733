//! `lmforge bench`: training throughput and memory of this machine, or its matmul peak.

use super::{print_json, DeviceArg};
use anyhow::{Context, Result};
use lmforge::bench::{self, TrainBenchOptions};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a preset on a fixed random batch (AdamW, clip 1.0, fp32) and report tokens/s,
    /// step times, peak RSS, FLOPs and MFU.
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
        /// Recompute each block's activations in the backward (less memory, more compute).
        #[arg(long)]
        activation_checkpointing: bool,
        /// Break the step down by phase and fused kernel (forward / backward pass of each).
        #[arg(long)]
        profile: bool,
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

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Train { preset, steps, warmup, batch, kernels, activation_checkpointing, profile, json, device } => {
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
            };
            let r = bench::bench_train(&opts)?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", bench::table(&r));
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
