//! `lmforge sweep`: hyperparameter search with early stopping; run again to continue.

use crate::{process, Ctx};
use anyhow::{Context, Result};
use lmforge_track::sweep::{self, SweepOptions, SweepOutcome, SweepSpec};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The sweep file (TOML: [sweep], [early_stop], [space]).
    #[arg(long)]
    config: PathBuf,
    /// The sweep dir (default: sweeps/NAME). Running the same command again continues it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let spec = SweepSpec::load(&a.config)?;
    let sweep_dir = a.out.unwrap_or_else(|| PathBuf::from("sweeps").join(&spec.name));
    eprintln!(
        "sweep `{}` into {}: {}, {} trials, {} at a time, early stopping {}{}",
        spec.name,
        sweep_dir.display(),
        format!("{:?}", spec.strategy).to_lowercase(),
        spec.max_trials,
        spec.max_parallel,
        spec.rule.name(),
        if spec.rungs.is_empty() { String::new() } else { format!(" at steps {:?}", spec.rungs) }
    );
    let opts = SweepOptions {
        sweep_dir: sweep_dir.clone(),
        exe: std::env::current_exe().context("locating the lmforge executable for the trials")?,
        db: ctx.db_path(),
        interrupt: Some(process::interrupt_flag()),
    };
    let result = sweep::run(&spec, &opts)?;
    print!("{}", sweep::table(&spec, &result.trials));
    match result.best {
        Some(b) => {
            let t = &result.trials[b];
            println!(
                "best: trial {} with {} {:.4}; config: {}",
                t.id,
                spec.metric,
                t.metric.unwrap_or(f64::NAN),
                sweep_dir.join("best.toml").display()
            );
        }
        None => println!("no trial has finished yet"),
    }
    println!("trials: {}", sweep_dir.join("trials.jsonl").display());
    Ok(match result.outcome {
        SweepOutcome::Complete => 0,
        SweepOutcome::BudgetSpent => {
            eprintln!("the time budget ({} s) is spent; raise sweep.time_budget_s to go on", spec.time_budget_s);
            0
        }
        SweepOutcome::Interrupted => {
            eprintln!("interrupted; run the same command again to continue");
            130
        }
    })
}
