//! `lmforge quantize` / `lmforge export gguf`: a causal LM (and an optional LoRA adapter, merged)
//! as a GGUF file of GGML-typed weights that llama.cpp loads.

use anyhow::Result;
use lmforge::checkpoint::LoadedModel;
use lmforge::gguf::{export, QuantType};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run dir, checkpoint dir or Hugging Face folder (GPT-2 or Llama).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub adapter: super::AdapterArg,
    /// f32, f16, bf16, q8_0, q4_0, q4_k, q6_k or q4_k_m (Q4_K with Q6_K for the sensitive matrices).
    #[arg(long)]
    pub to: String,
    /// The .gguf file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<i32> {
    let to = QuantType::parse(&a.to)?;
    let m = LoadedModel::load_with_adapter(&a.model, a.adapter.get(), &lmforge::Device::Cpu)?;
    let name = m.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "lmforge".into());
    export(&m, to, &a.out, &name)?;
    let size = std::fs::metadata(&a.out)?.len();
    eprintln!("{} ({}) -> {} ({:.2} MiB)", m.source.display(), a.to, a.out.display(), size as f64 / (1 << 20) as f64);
    Ok(0)
}
