//! `lmforge finetune`: fine-tune a pretrained model for text classification.

use super::RunArgs;
use crate::{process, Ctx};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The fine-tune config (TOML).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let cfg = lmforge::finetune::FinetuneConfig::resolve(Some(&a.config), &a.run.set)?;
    let run_dir =
        a.run.run_dir.unwrap_or_else(|| process::default_run_dir(&process::config_stem(&a.config, "finetune")));
    eprintln!("fine-tuning into {}", run_dir.display());
    let opts = lmforge::finetune::FinetuneOptions {
        interrupt: Some(process::interrupt_flag()),
        observers: lmforge_track::observers(&ctx.db_path(), "finetune", None, ""),
    };
    let s = lmforge::finetune::finetune(&cfg, &run_dir, &opts)?;
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
        println!("best:        validation {} {value:.4} at step {step}", cfg.train.metric);
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_eval) {
        println!("--- {split} (best model), loss {:.4} ---", e.loss);
        print!("{}", e.metrics.table());
    }
    Ok(process::stop_status(s.interrupted))
}
