//! `lmforge quickstart`: the bundled recipe end to end, then a streamed sample.

use super::RunArgs;
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::train::TrainOptions;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Text the sample continues.
    #[arg(long, default_value = "ROMEO:")]
    prompt: String,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let run_dir = a.run.run_dir.unwrap_or_else(|| process::default_run_dir("quickstart"));
    let opts = TrainOptions {
        interrupt: Some(process::interrupt_flag()),
        observers: lmforge_track::observers(&ctx.db_path(), "quickstart", None, ""),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    eprintln!("quickstart: training into {}", run_dir.display());
    let mut stdout = std::io::stdout();
    let mut header_done = false;
    let prompt = a.prompt;
    let report = lmforge::quickstart::run(&run_dir, &a.run.set, &opts, &prompt, |piece| {
        if !header_done {
            print!("\n--- sample ---\n{prompt}");
            header_done = true;
        }
        print!("{piece}");
        let _ = stdout.flush();
        Ok(())
    })?;
    println!("\n--------------");
    super::train::print_summary(&report.summary);
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(process::stop_status(report.summary.interrupted))
}
