//! `lmforge export`: a model in another format (a Hugging Face folder, a GGUF file).

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
    /// A GGUF file (llama.cpp): `lmforge quantize` with `--to f16` by default.
    Gguf {
        /// A run dir, checkpoint dir or Hugging Face folder (GPT-2 or Llama).
        model: PathBuf,
        #[command(flatten)]
        adapter: super::AdapterArg,
        #[arg(long, default_value = "f16")]
        to: String,
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
        Command::Gguf { model, adapter, to, out } => {
            return super::quantize::run(super::quantize::Args { model, adapter, to, out });
        }
    }
    Ok(0)
}
