//! `lmforge export`: a model in another format.

use anyhow::Result;
use lmforge::checkpoint::LoadedModel;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A Hugging Face folder: config.json, model.safetensors, tokenizer.json.
    Hf {
        /// A run dir, checkpoint dir or Hugging Face folder.
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Hf { model, out } => {
            let m = LoadedModel::load(&model, &lmforge::Device::Cpu)?;
            let dir = m.export_hf(&out)?;
            eprintln!("exported {} -> {}", m.source.display(), dir.display());
        }
    }
    Ok(0)
}
