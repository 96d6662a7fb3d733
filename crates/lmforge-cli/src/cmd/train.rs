//! `lmforge train`: a new run from a config, or `--resume RUN_DIR`.

use super::RunArgs;
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::observe::Observers;
use lmforge::train::{self, TrainOptions, TrainSummary};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The run config (TOML).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Continue the run in this folder from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many completed steps.
    #[arg(long, value_name = "STEP")]
    stop_after: Option<u64>,
    /// The run's name in the experiment store (default: the run dir's folder name).
    #[arg(long)]
    name: Option<String>,
    /// How the store labels the run (a sweep starts its trials with `trial`).
    #[arg(long, hide = true, default_value = "train")]
    kind: String,
    /// The store group (a sweep's name) the run belongs to.
    #[arg(long, hide = true, default_value = "")]
    group: String,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    // Rank 0 alone records a multi-process run.
    let observers = if ctx.is_writer() {
        lmforge_track::observers(&ctx.db_path(), &a.kind, a.name, &a.group)
    } else {
        Observers::default()
    };
    let opts = TrainOptions {
        stop_after: a.stop_after,
        interrupt: Some(process::interrupt_flag()),
        comm: Some(ctx.comm.clone()),
        observers,
    };
    let summary = match a.resume {
        Some(dir) => {
            if !a.run.set.is_empty() || a.run.run_dir.is_some() {
                anyhow::bail!("--resume continues a run exactly: --set and --run-dir cannot be combined with it");
            }
            train::resume(&dir, &opts)?
        }
        None => {
            let path = a.config.expect("clap requires --config without --resume");
            let cfg = lmforge::train::RunConfig::resolve(Some(&path), &a.run.set)?;
            let run_dir = process::agreed_run_dir(&ctx.comm, a.run.run_dir, &process::config_stem(&path, "run"))?;
            if ctx.is_writer() {
                eprintln!("training into {}", run_dir.display());
            }
            train::train(&cfg, &run_dir, &opts)?
        }
    };
    if ctx.is_writer() {
        print_summary(&summary);
    }
    Ok(process::stop_status(summary.interrupted))
}

pub fn print_summary(s: &TrainSummary) {
    println!("run dir:     {}", s.run_dir.display());
    println!("steps:       {}/{}", s.step, s.max_steps);
    println!("parameters:  {}", s.num_params);
    println!("train speed: {:.0} tokens/s over {:.1} s", s.tokens_per_s, s.train_seconds);
    if let Some(v) = &s.last_val {
        println!("val:         {}", v.summary());
    }
}
