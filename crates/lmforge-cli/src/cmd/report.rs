//! `lmforge report`: a self-contained HTML page of charts for a run or a sweep.

use crate::Ctx;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run dir, a sweep dir, or a run in the store (id, id prefix or name).
    target: String,
    /// The HTML file (default: report.html in the run or sweep dir).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let path = lmforge_track::report::write_report(&a.target, a.out.as_deref(), &ctx.db_path())?;
    println!("{}", path.display());
    Ok(0)
}
