//! `lmforge generate`: streamed sampling from a causal LM.

use anyhow::Result;
use lmforge::checkpoint::LoadedModel;
use lmforge::generate::{generate_text, SamplingConfig};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run dir, checkpoint dir or Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// 0 = no top-k filter.
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(a: Args) -> Result<i32> {
    let cfg = SamplingConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        eos_id: None,
    };
    cfg.validate()?;
    let m = LoadedModel::load(&a.model, &a.device.resolve()?)?;
    let mut stdout = std::io::stdout();
    print!("{}", a.prompt);
    generate_text(&m, &a.prompt, &cfg, |piece| {
        print!("{piece}");
        let _ = stdout.flush();
        Ok(())
    })?;
    println!();
    Ok(0)
}
