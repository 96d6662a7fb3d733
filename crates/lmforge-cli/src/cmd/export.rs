//! `lmforge export`: a model in another format.

use anyhow::Result;
use lmforge::checkpoint::LoadedModel;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A Hugging Face folder: config.json, model.safetensors, tokenizer.json. With
    /// `--adapter`, the LoRA is merged into the weights (a plain folder any tool loads).
    Hf {
        /// A run dir, checkpoint dir or Hugging Face folder.
        model: PathBuf,
        #[command(flatten)]
        adapter: super::AdapterArg,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Hf { model, adapter, out } => {
            let m = LoadedModel::load_with_adapter(&model, adapter.get(), &lmforge::Device::Cpu)?;
            let dir = m.export_hf(&out)?;
            eprintln!("exported {} -> {}", m.source.display(), dir.display());
        }
    }
    Ok(0)
}
