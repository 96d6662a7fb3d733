//! The run directory and its checkpoints, and loading a model from any path a user may give.
//!
//! ```text
//! RUN_DIR/config.toml                     the resolved run config
//! RUN_DIR/metrics.jsonl                   one JSON object per train / val measurement
//! RUN_DIR/data/                           prepared token shards + tokenizer.json
//! RUN_DIR/checkpoints/step-NNNNNNNN/      a Hugging Face folder (config.json,
//!     model.safetensors, tokenizer.json) plus optimizer.safetensors,
//!     trainer_state.json and run_config.toml
//! ```
//! A checkpoint is staged in a hidden folder, fsynced and renamed, so a crash never leaves a
//! half-written `step-*` folder. Retention (last K plus best validation) is a pure function.

use crate::error::{Error, IoContext, Result};
use crate::fsio::{self, StagedDir};
use crate::models::{hf, Decoder, Encoder, ModelSpec, Style};
use crate::nn::ParamStore;
use crate::tokenizer::TextTokenizer;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Completed optimizer steps.
    pub step: u64,
    pub tokens_seen: u64,
    /// Micro-batches consumed; batches are a pure function of (seed, step, micro), so this
    /// cursor and the seed fully determine the data order from here on.
    pub data_cursor: u64,
    /// Seed of every random stream (batches, dropout); each is re-derived per step, so no
    /// generator position needs saving beyond the step.
    pub seed: u64,
    pub config_hash: String,
    /// Validation loss measured at this step, if any.
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Seconds of training before this checkpoint (for elapsed_s continuity).
    pub elapsed_s: f64,
    /// Reduce-on-plateau state (`schedule.kind = "plateau"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plateau: Option<crate::optim::Plateau>,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step:08}"))
}

/// Steps of the complete checkpoints in a run, ascending. Staging folders are hidden
/// (`.step-*.tmp-PID`) and never listed.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<u64>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut steps: Vec<u64> = std::fs::read_dir(&dir)
        .at(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Which checkpoints to delete: all but the last `keep_last` and (if kept) the best one.
pub fn checkpoints_to_delete(steps: &[u64], keep_last: usize, best: Option<u64>) -> Vec<u64> {
    let cut = steps.len().saturating_sub(keep_last);
    steps[..cut].iter().copied().filter(|s| Some(*s) != best).collect()
}

/// What a checkpoint writes.
pub struct CheckpointContents<'a> {
    pub spec: &'a ModelSpec,
    pub params: &'a ParamStore,
    pub tokenizer: &'a TextTokenizer,
    pub optimizer_state: Vec<(String, candle_core::Tensor)>,
    pub state: &'a TrainerState,
    pub run_config_toml: &'a str,
}

/// Writes `RUN_DIR/checkpoints/step-NNNNNNNN/` atomically and returns its path.
pub fn write_checkpoint(run_dir: &Path, c: &CheckpointContents) -> Result<PathBuf> {
    let target = checkpoint_dir(run_dir, c.state.step);
    std::fs::create_dir_all(checkpoints_dir(run_dir)).at(checkpoints_dir(run_dir))?;
    let staged = StagedDir::new(&target)?;
    let p = staged.path();
    write_hf_files(p, c.spec, c.params, c.tokenizer)?;
    let opt = crate::nn::serialize_tensors(c.optimizer_state.iter().cloned())?;
    std::fs::write(p.join("optimizer.safetensors"), opt).at(p.join("optimizer.safetensors"))?;
    let state = serde_json::to_string_pretty(c.state).expect("trainer state serialises");
    std::fs::write(p.join("trainer_state.json"), state).at(p.join("trainer_state.json"))?;
    std::fs::write(p.join("run_config.toml"), c.run_config_toml).at(p.join("run_config.toml"))?;
    staged.commit()
}

/// `config.json`, `model.safetensors`, `tokenizer.json` and `generation_config.json` into an
/// existing folder (plain writes: callers stage the folder).
fn write_hf_files(dir: &Path, spec: &ModelSpec, params: &ParamStore, tokenizer: &TextTokenizer) -> Result<()> {
    let eos = tokenizer.eos_id();
    let mut config = hf::config_json(spec, eos);
    if spec.style == Style::Bert && !params.vars().contains_key("cls.predictions.bias") {
        // A backbone without pretraining heads (loaded from a `BertModel` folder).
        config["architectures"] = serde_json::json!(["BertModel"]);
    }
    let cfg = serde_json::to_string_pretty(&config).expect("json");
    std::fs::write(dir.join("config.json"), cfg).at(dir.join("config.json"))?;
    if spec.style != Style::Bert {
        let gen = serde_json::json!({ "bos_token_id": eos, "eos_token_id": eos });
        std::fs::write(dir.join("generation_config.json"), gen.to_string()).at(dir.join("generation_config.json"))?;
    }
    std::fs::write(dir.join("model.safetensors"), params.to_safetensors()?).at(dir.join("model.safetensors"))?;
    tokenizer.save(&dir.join("tokenizer.json"))
}

pub fn read_trainer_state(ckpt: &Path) -> Result<TrainerState> {
    let p = ckpt.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).at(&p)?;
    serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("invalid trainer state: {e}")))
}

/// The network a loaded model runs.
pub enum Network {
    Decoder(Decoder),
    Encoder(Encoder),
}

impl Network {
    /// The network of `spec`'s style over `params`.
    pub fn new(spec: &ModelSpec, params: &ParamStore) -> Result<Self> {
        Ok(match spec.style {
            Style::Bert => Network::Encoder(Encoder::new(spec, params)?),
            Style::Gpt2 | Style::Llama => Network::Decoder(Decoder::new(spec, params)?),
        })
    }
}

/// A model ready for inference: spec, weights, network, tokenizer.
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub params: ParamStore,
    pub network: Network,
    pub tokenizer: TextTokenizer,
    /// The folder the weights came from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// `path` may be a run dir (its latest checkpoint), a checkpoint dir, or a Hugging Face
    /// folder (`config.json` + `model.safetensors` + `tokenizer.json`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let folder = resolve_model_dir(path)?;
        let spec = hf::read_config(&folder.join("config.json"))?;
        let (params, _absent_heads) = ParamStore::load_with(
            &folder.join("model.safetensors"),
            &spec.params(),
            device,
            &|k| hf::param_name(&spec, k),
            &|n| hf::is_optional_param(&spec, n),
        )?;
        let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"))?;
        if tokenizer.vocab_size() > spec.vocab_size {
            return Err(Error::format(
                folder.join("tokenizer.json"),
                format!("tokenizer has {} tokens, more than the model's {}", tokenizer.vocab_size(), spec.vocab_size),
            ));
        }
        let network = Network::new(&spec, &params)?;
        Ok(Self { spec, params, network, tokenizer, source: folder })
    }

    /// The causal LM, for commands that need one (perplexity, generation).
    pub fn decoder(&self) -> Result<&Decoder> {
        match &self.network {
            Network::Decoder(d) => Ok(d),
            Network::Encoder(_) => Err(Error::Invalid(format!(
                "{} is a BERT encoder (masked LM); this command needs a causal LM (GPT-2 / Llama style)",
                self.source.display()
            ))),
        }
    }

    /// The encoder, for commands that need one.
    pub fn encoder(&self) -> Result<&Encoder> {
        match &self.network {
            Network::Encoder(e) => Ok(e),
            Network::Decoder(_) => Err(Error::Invalid(format!(
                "{} is a causal LM; this command needs a BERT encoder",
                self.source.display()
            ))),
        }
    }

    /// Writes a Hugging Face folder that `transformers` loads with `from_pretrained`.
    pub fn export_hf(&self, out: &Path) -> Result<PathBuf> {
        let staged = StagedDir::new(out)?;
        write_hf_files(staged.path(), &self.spec, &self.params, &self.tokenizer)?;
        // The slow-tokenizer files of the source folder (a WordPiece `vocab.txt` and its
        // settings) travel along, so tools that read them still find them.
        for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
            let src = self.source.join(f);
            if src.is_file() {
                std::fs::copy(&src, staged.path().join(f)).at(&src)?;
            }
        }
        staged.commit()
    }
}

/// Finds the folder holding `config.json` + `model.safetensors` for a user-given path.
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::format(path, "no such file or folder"));
    }
    if path.join("config.json").is_file() && path.join("model.safetensors").is_file() {
        return Ok(path.to_path_buf());
    }
    let steps = list_checkpoints(path)?;
    if let Some(last) = steps.last() {
        return Ok(checkpoint_dir(path, *last));
    }
    Err(Error::format(
        path,
        "not a model: expected a run dir with checkpoints/, a checkpoint dir, or a Hugging Face folder \
         (config.json + model.safetensors + tokenizer.json)",
    ))
}

/// `RUN_DIR/.lock` holds the pid of the process training in that run dir, so a second
/// `lmforge train` on the same folder refuses instead of interleaving checkpoints. A lock left
/// by a process that no longer runs (a crash, kill -9) is detected and taken over. Dropping the
/// lock removes the file.
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(".lock");
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    writeln!(f, "{}", std::process::id()).and_then(|_| f.sync_all()).at(&path)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
                    if let Some(pid) = owner.filter(|p| *p != std::process::id() && process_alive(*p)) {
                        return Err(Error::Invalid(format!(
                            "{} is in use by another lmforge process (pid {pid}); wait for it to finish or stop it",
                            run_dir.display()
                        )));
                    }
                    tracing::warn!("taking over the stale lock {} (owner {owner:?} is not running)", path.display());
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&path, e)),
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }
}

impl RunLock {
    /// The pid of a live process holding `run_dir`'s lock, if any.
    pub fn holder(run_dir: &Path) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(run_dir.join(".lock")).ok()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this pid exists. On Linux, /proc tells (a zombie — exited, not yet
/// reaped, as a killed MPI rank can be for a while — counts as gone); elsewhere the lock is
/// assumed live, the safe answer (a stale lock must then be removed by hand).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    } else {
        true
    }
}

/// Writes `text` to `path` atomically (used for the run's resolved config).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    fsio::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_last_k_and_best() {
        assert_eq!(checkpoints_to_delete(&[10, 20, 30, 40], 2, Some(10)), vec![20]);
        assert_eq!(checkpoints_to_delete(&[10, 20, 30, 40], 2, Some(20)), vec![10]);
        assert_eq!(checkpoints_to_delete(&[10, 20, 30, 40], 1, None), vec![10, 20, 30]);
        assert_eq!(checkpoints_to_delete(&[10], 3, None), Vec::<u64>::new());
    }
}
