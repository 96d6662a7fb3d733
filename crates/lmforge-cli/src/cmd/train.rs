//! `lmforge train`: a new run from a config, or `--resume RUN_DIR`.

use super::{RecordArgs, Start, StartArgs};
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::train::{self, RunConfig, TrainSummary};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    start: StartArgs,
    #[command(flatten)]
    record: RecordArgs,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let r = a.record;
    let (opts, start) = a.start.start(ctx, r.kind.as_deref().unwrap_or("train"), r.name, &r.group)?;
    let summary = match start {
        Start::Resume(dir) => train::resume(&dir, &opts)?,
        Start::New { config, set, run_dir } => {
            let cfg = RunConfig::resolve(Some(&config), &set)?;
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
