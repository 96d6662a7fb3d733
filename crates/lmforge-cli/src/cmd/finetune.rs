//! `lmforge finetune`: fine-tune a pretrained model for text classification, or continue a
//! fine-tuning run with `--resume` (on one process or several, under `mpirun`).

use super::RunArgs;
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::finetune::{self, FinetuneConfig};
use lmforge::observe::Observers;
use lmforge::train::TrainOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The fine-tune config (TOML).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Continue the fine-tuning run in this folder from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many completed steps.
    #[arg(long, value_name = "STEP")]
    stop_after: Option<u64>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let observers = if ctx.is_writer() {
        lmforge_track::observers(&ctx.db_path(), "finetune", None, "")
    } else {
        Observers::default()
    };
    let opts = TrainOptions {
        stop_after: a.stop_after,
        interrupt: Some(process::interrupt_flag()),
        comm: Some(ctx.comm.clone()),
        observers,
    };
    let (metric, s) = match a.resume {
        Some(dir) => {
            if !a.run.set.is_empty() || a.run.run_dir.is_some() {
                anyhow::bail!("--resume continues a run exactly: --set and --run-dir cannot be combined with it");
            }
            let s = finetune::resume(&dir, &opts)?;
            let cfg = std::fs::read_to_string(dir.join("config.toml")).ok();
            let metric = cfg.and_then(|t| FinetuneConfig::from_toml_str(&t).ok()).map(|c| c.train.metric);
            (metric.unwrap_or_default(), s)
        }
        None => {
            let path = a.config.expect("clap requires --config without --resume");
            let cfg = FinetuneConfig::resolve(Some(&path), &a.run.set)?;
            let run_dir = process::agreed_run_dir(&ctx.comm, a.run.run_dir, &process::config_stem(&path, "finetune"))?;
            if ctx.is_writer() {
                eprintln!("fine-tuning into {}", run_dir.display());
            }
            (cfg.train.metric.clone(), finetune::finetune(&cfg, &run_dir, &opts)?)
        }
    };
    if !ctx.is_writer() {
        return Ok(process::stop_status(s.interrupted));
    }
    println!("run dir:     {}", s.run_dir.display());
    println!("model:       {}", s.model_dir.display());
    println!(
        "steps:       {}/{} ({:.2} epochs){}",
        s.steps,
        s.total_steps,
        s.epochs,
        if s.stopped_early { ", stopped early" } else { "" }
    );
    println!(
        "parameters:  {} trainable of {} ({:.2}%), optimizer state {} bytes",
        s.params.trainable_params,
        s.params.total_params,
        100.0 * s.params.trainable_fraction,
        s.params.optimizer_state_bytes
    );
    println!("train time:  {:.1} s", s.train_seconds);
    if let Some((value, step)) = s.best {
        println!("best:        validation {metric} {value:.4} at step {step}");
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_eval) {
        println!("--- {split} (best model), loss {:.4} ---", e.loss);
        print!("{}", e.metrics.table());
    }
    if !s.finished {
        println!("stopped at step {}; continue with `lmforge finetune --resume {}`", s.steps, s.run_dir.display());
    }
    Ok(process::stop_status(s.interrupted))
}
