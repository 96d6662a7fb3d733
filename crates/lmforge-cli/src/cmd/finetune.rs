//! `lmforge finetune`: fine-tune a pretrained model for text classification, or continue a
//! fine-tuning run with `--resume` (on one process or several, under `mpirun`).

use super::{Start, StartArgs};
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::finetune::{self, FinetuneConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    start: StartArgs,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let (opts, start) = a.start.start(ctx, "finetune", None, "")?;
    let s = match start {
        Start::Resume(dir) => finetune::resume(&dir, &opts)?,
        Start::New { config, set, run_dir } => {
            let cfg = FinetuneConfig::resolve(Some(&config), &set)?;
            if ctx.is_writer() {
                eprintln!("fine-tuning into {}", run_dir.display());
            }
            finetune::finetune(&cfg, &run_dir, &opts)?
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
        println!("best:        validation {} {value:.4} at step {step}", s.metric);
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
