//! `lmforge serve`: an OpenAI-compatible server over a causal LM (and an optional LoRA adapter),
//! with continuous batching (`lmforge-serve`).

use anyhow::Result;
use lmforge::checkpoint::LoadedModel;
use lmforge_serve::{serve, ServeOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run dir, checkpoint dir or Hugging Face folder (a causal LM).
    #[arg(long)]
    pub(crate) model: PathBuf,
    #[command(flatten)]
    adapter: super::AdapterArg,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0: any free port (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences in one batched forward at most.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests in flight (running or queued) before new ones get a 429.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    /// The KV-cache pool in MiB: a request is admitted when its prompt + max_tokens fit.
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: usize,
    /// Prompt tokens prefilled per step at most (long prompts are prefilled in chunks).
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Require `Authorization: Bearer KEY` (default: $LMFORGE_API_KEY, else none).
    #[arg(long, env = "LMFORGE_API_KEY")]
    api_key: Option<String>,
    /// The model id clients name (default: the model folder's name).
    #[arg(long)]
    model_id: Option<String>,
    /// After SIGTERM, seconds running streams may take before the server exits anyway.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(a: Args) -> Result<i32> {
    let m = LoadedModel::load_with_adapter(&a.model, a.adapter.get(), &a.device.resolve()?)?;
    let model_id = a.model_id.unwrap_or_else(|| {
        let named = a.adapter.get().unwrap_or(&a.model);
        let name = named.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        name.unwrap_or_else(|| "lmforge".into())
    });
    serve(
        m,
        ServeOptions {
            host: a.host,
            port: a.port,
            max_batch: a.max_batch,
            max_concurrent: a.max_concurrent,
            kv_cache_mb: a.kv_cache_mb,
            prefill_tokens: a.prefill_tokens,
            api_key: a.api_key,
            model_id,
            drain: std::time::Duration::from_secs(a.drain_seconds),
        },
    )?;
    Ok(0)
}
