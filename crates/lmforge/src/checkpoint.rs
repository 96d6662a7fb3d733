//! The run directory and its checkpoints, and loading a model from any path a user may give.
//!
//! ```text
//! RUN_DIR/config.toml                     the resolved run config
//! RUN_DIR/metrics.jsonl                   one JSON object per train / val measurement
//! RUN_DIR/data/                           prepared token shards + tokenizer.json
//! RUN_DIR/checkpoints/step-NNNNNNNN/      a Hugging Face folder (config.json,
//!     model.safetensors, tokenizer.json) plus optimizer.safetensors,
//!     trainer_state.json, run_config.toml and manifest.json
//! ```
//! A checkpoint is staged in a hidden folder, fsynced and renamed, so a crash never leaves a
//! half-written `step-*` folder. Its `manifest.json`, written last, holds every file's size
//! and SHA-256: loading verifies it, so a checkpoint damaged later (a copy cut short, a bad
//! disk) is reported, never silently loaded, and a run resumes from the newest intact one.
//! Retention (last K plus best validation) is a pure function.

use crate::error::{Error, IoContext, Result};
use crate::fsio::{self, StagedDir};
use crate::models::{hf, Decoder, Encoder, Family, ModelSpec};
use crate::nn::ParamStore;
use crate::tokenizer::TextTokenizer;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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
    /// The best value of the selection metric (the validation loss for pretraining) and the
    /// validations since it improved: the best model, early stopping.
    #[serde(default)]
    pub selection: crate::patience::Patience,
    /// Where `selection.best` was measured.
    pub best_step: Option<u64>,
    /// The best validation loss, as checkpoints written before `selection` recorded it; read
    /// into `selection` on load.
    #[serde(default, rename = "best_val_loss", skip_serializing)]
    pub legacy_best_val_loss: Option<f64>,
    /// Seconds of training before this checkpoint (for elapsed_s continuity).
    pub elapsed_s: f64,
    /// Reduce-on-plateau state (`schedule.kind = "plateau"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plateau: Option<crate::optim::Plateau>,
    /// Fault counts, the rollback LR scale and the running loss mean.
    #[serde(default)]
    pub faults: crate::faults::FaultState,
    /// Tasks trained in epochs: where in which pass over the data the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<EpochCursor>,
    /// Early stopping ended the run: it is complete, and a resume has nothing left to do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
}

/// The data position of a task trained in epochs. Each epoch's order is a pure function of
/// the seed and the epoch, so this cursor fully determines the batches from here on; a resume
/// refuses a dataset whose epoch has another length.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochCursor {
    /// Completed passes over the training data.
    pub epoch: u64,
    /// Batches of the current pass already trained.
    pub batch: u64,
    pub steps_per_epoch: u64,
}

impl EpochCursor {
    /// The cursor after `step` completed steps.
    pub fn at(step: u64, steps_per_epoch: u64) -> Self {
        let n = steps_per_epoch.max(1);
        Self { epoch: step / n, batch: step % n, steps_per_epoch }
    }
}

/// `[checkpoint]`: retention and what a failed write does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// How many of the most recent checkpoints to keep (the best-validation one is kept too).
    pub keep_last: usize,
    pub keep_best: bool,
    /// A checkpoint write fails (disk full, permission denied): "stop" (default) with an error,
    /// or "continue" training and try again at the next checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_write_error: Option<crate::faults::OnWriteError>,
}

impl CheckpointConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        crate::config::check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, ">= 1")
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { keep_last: 2, keep_best: true, on_write_error: None }
    }
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
    checkpoints_to_delete_on(steps, keep_last, best, |_| true)
}

/// The same where only the steps `scheduled` says are on the checkpoint schedule count: a
/// checkpoint written off the schedule (for a stop: Ctrl-C, `--stop-after`) is deleted once a
/// newer one exists, so the checkpoints a run keeps do not depend on when it was stopped.
pub fn checkpoints_to_delete_on(
    steps: &[u64],
    keep_last: usize,
    best: Option<u64>,
    scheduled: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let newest = steps.last().copied();
    let on: Vec<u64> = steps.iter().copied().filter(|&s| scheduled(s)).collect();
    let cut = on.len().saturating_sub(keep_last);
    let old_scheduled = on[..cut].iter().copied().filter(|s| Some(*s) != best);
    let stale_stops = steps.iter().copied().filter(|&s| !scheduled(s) && Some(s) != newest);
    let mut out: Vec<u64> = old_scheduled.chain(stale_stops).collect();
    out.sort_unstable();
    out
}

/// What a checkpoint writes.
pub struct CheckpointContents<'a> {
    /// Writes the model's files into the (staged) checkpoint folder.
    pub write_model: &'a dyn Fn(&Path) -> Result<()>,
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
    (c.write_model)(p)?;
    let opt = crate::nn::serialize_tensors(c.optimizer_state.iter().cloned())?;
    write_staged(&p.join("optimizer.safetensors"), &opt)?;
    let state = serde_json::to_string_pretty(c.state).expect("trainer state serialises");
    write_staged(&p.join("trainer_state.json"), state.as_bytes())?;
    write_staged(&p.join("run_config.toml"), c.run_config_toml.as_bytes())?;
    write_manifest(p)?;
    crate::testhooks::checkpoint_write_pause();
    staged.commit()
}

/// One file into a staged checkpoint folder (with the test hook that slows checkpoint writes).
pub fn write_staged(path: &Path, bytes: &[u8]) -> Result<()> {
    fsio::write_file(path, bytes)?;
    crate::testhooks::checkpoint_write_pause();
    Ok(())
}

/// `config.json`, `model.safetensors`, `tokenizer.json` and `generation_config.json` into an
/// existing folder (plain writes: callers stage the folder).
pub fn write_hf_files(dir: &Path, spec: &ModelSpec, params: &ParamStore, tokenizer: &TextTokenizer) -> Result<()> {
    let eos = tokenizer.eos_id();
    let mut config = hf::config_json(spec, eos);
    let arch = spec.arch();
    let decoder = arch.family() == Family::Decoder;
    let headless = spec.params().iter().any(|p| arch.is_optional_param(&p.name) && !params.contains(&p.name));
    if let Some(class) = arch.backbone_class().filter(|_| headless) {
        // A backbone without its pretraining heads (loaded from a `BertModel` folder).
        config["architectures"] = serde_json::json!([class]);
    }
    let cfg = serde_json::to_string_pretty(&config).expect("json");
    write_staged(&dir.join("config.json"), cfg.as_bytes())?;
    if decoder {
        let gen = serde_json::json!({ "bos_token_id": eos, "eos_token_id": eos });
        write_staged(&dir.join("generation_config.json"), gen.to_string().as_bytes())?;
    }
    // A LoRA-adapted store is written merged: a plain folder any tool loads.
    let weights = match params.lora().is_empty() {
        true => params.to_safetensors()?,
        false => crate::nn::serialize_tensors(crate::nn::peft::merged_tensors(params)?.into_iter())?,
    };
    write_staged(&dir.join("model.safetensors"), &weights)?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    crate::testhooks::checkpoint_write_pause();
    Ok(())
}

/// `manifest.json` of a checkpoint or exported folder: every other file's size and SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always "lmforge-manifest".
    pub format: String,
    pub version: u32,
    pub files: BTreeMap<String, FileDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: &str = "lmforge-manifest";

/// Hashes every file of `dir` (read back from disk, so the manifest describes what was
/// written, not what was meant to be) and writes `manifest.json` beside them. Called last,
/// inside the staged folder, before its rename.
pub fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !path.is_file() || name == MANIFEST_FILE {
            continue;
        }
        files.insert(name, digest_file(&path)?);
    }
    let m = Manifest { format: MANIFEST_FORMAT.into(), version: 1, files };
    let text = serde_json::to_string_pretty(&m).expect("manifest serialises");
    fsio::write_file(&dir.join(MANIFEST_FILE), text.as_bytes())
}

/// Size and SHA-256 of a file, streamed (checkpoints can be far larger than memory).
fn digest_file(path: &Path) -> Result<FileDigest> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest { bytes, sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect() })
}

/// What [`verify_manifest`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every file listed in the manifest has its recorded size and checksum.
    Verified,
    /// No `manifest.json`: a folder from another tool (a Hugging Face download) or from an
    /// lmforge older than manifests. Loaded as is.
    Unverified,
}

/// Checks a folder against its `manifest.json`. A missing, truncated or altered file, or an
/// unreadable manifest, is an error naming the file.
pub fn verify_manifest(dir: &Path) -> Result<Integrity> {
    let mpath = dir.join(MANIFEST_FILE);
    if !mpath.exists() {
        return Ok(Integrity::Unverified);
    }
    let text = std::fs::read_to_string(&mpath).at(&mpath)?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| Error::format(&mpath, format!("invalid manifest: {e}")))?;
    if m.format != MANIFEST_FORMAT || m.version != 1 {
        return Err(Error::format(&mpath, format!("unknown manifest format {:?} version {}", m.format, m.version)));
    }
    for (name, want) in &m.files {
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(Error::format(&mpath, format!("file name {name:?} is not a plain name")));
        }
        let path = dir.join(name);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::format(&path, format!("listed in {MANIFEST_FILE} but cannot be read: {e}")))?
            .len();
        if size != want.bytes {
            return Err(Error::format(
                &path,
                format!(
                    "{size} bytes, but {MANIFEST_FILE} says {}: the file is truncated or was partially written",
                    want.bytes
                ),
            ));
        }
        if digest_file(&path)?.sha256 != want.sha256 {
            return Err(Error::format(&path, format!("SHA-256 differs from {MANIFEST_FILE}: the file is corrupt")));
        }
    }
    Ok(Integrity::Verified)
}

/// The newest checkpoint of a run whose manifest verifies, as (step, folder). Damaged newer
/// ones are reported with a warning (and, with `set_aside`, renamed to `step-N.damaged` so
/// they are neither listed nor overwritten: the caller must hold the run lock). Errors when
/// checkpoints exist but none is intact; `None` when there are none.
pub fn latest_good_checkpoint(run_dir: &Path, set_aside: bool) -> Result<Option<(u64, PathBuf)>> {
    let steps = list_checkpoints(run_dir)?;
    let mut damaged = Vec::new();
    for &step in steps.iter().rev() {
        let dir = checkpoint_dir(run_dir, step);
        match verify_manifest(&dir) {
            Ok(integrity) => {
                if integrity == Integrity::Unverified {
                    tracing::warn!("{} has no {MANIFEST_FILE} (written before manifests); not verified", dir.display());
                }
                return Ok(Some((step, dir)));
            }
            Err(e) => {
                let aside = dir.with_file_name(format!("step-{step:08}.damaged"));
                let moved = set_aside && std::fs::rename(&dir, &aside).is_ok();
                tracing::warn!(
                    "checkpoint step {step} is damaged ({e}); {}using the previous one",
                    if moved { format!("moved to {}; ", aside.display()) } else { String::new() }
                );
                damaged.push(format!("{e}"));
            }
        }
    }
    if damaged.is_empty() {
        Ok(None)
    } else {
        Err(Error::Invalid(format!(
            "{}: no intact checkpoint ({} damaged: {})",
            run_dir.display(),
            damaged.len(),
            damaged.join("; ")
        )))
    }
}

pub fn read_trainer_state(ckpt: &Path) -> Result<TrainerState> {
    let p = ckpt.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).at(&p)?;
    let mut state: TrainerState =
        serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("invalid trainer state: {e}")))?;
    if state.selection.best.is_none() {
        state.selection.best = state.legacy_best_val_loss.take();
    }
    Ok(state)
}

/// The network a loaded model runs.
pub enum Network {
    Decoder(Decoder),
    Encoder(Encoder),
}

impl Network {
    /// The network of `spec`'s style over `params`.
    pub fn new(spec: &ModelSpec, params: &ParamStore) -> Result<Self> {
        Ok(match spec.arch().family() {
            Family::Encoder => Network::Encoder(Encoder::new(spec, params)?),
            Family::Decoder => Network::Decoder(Decoder::new(spec, params)?),
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
    /// The PEFT LoRA folder applied on top, if any.
    pub adapter: Option<PathBuf>,
}

impl LoadedModel {
    /// `path` may be a run dir (its latest checkpoint), a checkpoint dir, a Hugging Face
    /// folder (`config.json` + `model.safetensors` + `tokenizer.json`) or a `.gguf` file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_adapter(path, None, device)
    }

    /// [`Self::load`], then a PEFT LoRA folder (`adapter_config.json` +
    /// `adapter_model.safetensors`, lmforge's or Hugging Face PEFT's) applied unmerged on top.
    /// A fine-tune run dir given as `adapter` means its `model/` folder.
    pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<Self> {
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            if adapter.is_some() {
                return Err(Error::Invalid("--adapter applies to a model folder, not a GGUF file".into()));
            }
            return crate::gguf::load(path, device);
        }
        let folder = resolve_model_dir(path)?;
        verify_manifest(&folder)?;
        let spec = hf::read_config(&folder.join("config.json"))?;
        let mut params = load_params(&folder, &spec, device)?;
        let adapter = match adapter {
            Some(dir) => {
                let dir = if dir.join("model/adapter_config.json").is_file() { dir.join("model") } else { dir.into() };
                verify_manifest(&dir)?;
                crate::nn::peft::load_peft(&dir, &mut params, false, crate::nn::prefix::PrefixShape::of(&spec))?;
                Some(dir)
            }
            None => None,
        };
        let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"))?;
        if tokenizer.vocab_size() > spec.vocab_size {
            return Err(Error::format(
                folder.join("tokenizer.json"),
                format!("tokenizer has {} tokens, more than the model's {}", tokenizer.vocab_size(), spec.vocab_size),
            ));
        }
        let network = Network::new(&spec, &params)?;
        Ok(Self { spec, params, network, tokenizer, source: folder, adapter })
    }

    /// The chat template: the adapter folder's, else the model folder's
    /// (`tokenizer_config.json`), else ChatML with the tokenizer's end-of-text token.
    pub fn chat_template(&self) -> Result<crate::chat::ChatTemplate> {
        for dir in self.adapter.iter().chain([&self.source]) {
            if let Some(t) = crate::chat::ChatTemplate::from_model_dir(dir)? {
                return Ok(t);
            }
        }
        crate::chat::ChatTemplate::chatml_for(&self.tokenizer)
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
    /// A LoRA adapter is merged into the weights; bottleneck adapters and prefixes cannot be,
    /// and are refused.
    pub fn export_hf(&self, out: &Path) -> Result<PathBuf> {
        crate::nn::peft::check_mergeable(&self.params)?;
        let staged = StagedDir::new(out)?;
        write_hf_files(staged.path(), &self.spec, &self.params, &self.tokenizer)?;
        // The slow-tokenizer files of the source folder (a WordPiece `vocab.txt` and its
        // settings, the chat template) travel along, the adapter's first, so tools that read
        // them still find them.
        for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
            let from = self.adapter.iter().chain([&self.source]).map(|d| d.join(f)).find(|p| p.is_file());
            if let Some(src) = from {
                std::fs::copy(&src, staged.path().join(f)).at(&src)?;
            }
        }
        write_manifest(staged.path())?;
        staged.commit()
    }
}

/// The weights of a model folder (a checkpoint or a Hugging Face folder, HF names mapped; fp16
/// and bf16 read as fp32) for `spec`; heads a backbone-only folder may lack stay absent.
pub fn load_params(folder: &Path, spec: &ModelSpec, device: &Device) -> Result<ParamStore> {
    load_held_params(folder, spec, device, &|_| true)
}

/// [`load_params`] of the parameters for which `held` holds (ZeRO-3: this process's share).
pub fn load_held_params(
    folder: &Path,
    spec: &ModelSpec,
    device: &Device,
    held: &dyn Fn(&str) -> bool,
) -> Result<ParamStore> {
    let (params, _absent_heads) = ParamStore::load_held(
        &folder.join("model.safetensors"),
        &spec.params(),
        device,
        &|k| hf::param_name(spec, k),
        &|n| hf::is_optional_param(spec, n),
        held,
    )?;
    Ok(params)
}

/// The weights a checkpoint of this run wrote (`dir/model.safetensors`: lmforge's names, every
/// parameter present) for which `held` holds: what a resume or a rollback reads.
pub fn load_checkpoint_params(
    dir: &Path,
    spec: &ModelSpec,
    device: &Device,
    held: &dyn Fn(&str) -> bool,
) -> Result<ParamStore> {
    let path = dir.join("model.safetensors");
    Ok(ParamStore::load_held(&path, &spec.params(), device, &|k| Some(k.to_string()), &|_| false, held)?.0)
}

/// Finds the folder holding `config.json` + `model.safetensors` for a user-given path.
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::format(path, "no such file or folder"));
    }
    if path.join("config.json").is_file() && path.join("model.safetensors").is_file() {
        return Ok(path.to_path_buf());
    }
    // A run dir: its newest intact checkpoint (the caller verifies again; cheap next to loading).
    if let Some((_, dir)) = latest_good_checkpoint(path, false)? {
        return Ok(dir);
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
                    let lock = Self { path };
                    // Holding the lock, whatever a killed process left half-written is garbage.
                    let removed =
                        fsio::remove_stale_temps(run_dir)? + fsio::remove_stale_temps(&checkpoints_dir(run_dir))?;
                    if removed > 0 {
                        tracing::info!("removed {removed} temporary file(s) left by a process that was killed");
                    }
                    return Ok(lock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
                    if let Some(pid) = owner.filter(|p| *p != std::process::id() && fsio::process_alive(*p)) {
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
        fsio::process_alive(pid).then_some(pid)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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

    /// A checkpoint written for a stop (step 23 of a schedule of every 2) stays while it is the
    /// newest, then goes: the run ends with the checkpoints an unstopped run keeps.
    #[test]
    fn a_stop_checkpoint_is_replaced_by_the_next_one() {
        let every2 = |s: u64| s % 2 == 0;
        assert_eq!(checkpoints_to_delete_on(&[20, 22, 23], 2, None, every2), Vec::<u64>::new());
        assert_eq!(checkpoints_to_delete_on(&[20, 22, 23, 24], 2, None, every2), vec![20, 23]);
        assert_eq!(checkpoints_to_delete_on(&[22, 23], 1, Some(22), every2), Vec::<u64>::new());
        assert_eq!(checkpoints_to_delete_on(&[22, 23, 24], 1, Some(22), every2), vec![23]);
        assert_eq!(checkpoints_to_delete_on(&[21, 23, 24], 2, None, every2), vec![21, 23]);
    }
}
