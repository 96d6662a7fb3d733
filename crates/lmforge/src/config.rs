//! The run config: one tree describing data, model, optimizer, schedule, training, checkpoints
//! and logging. It is resolved once — built-in defaults < TOML file < `--set section.key=value`
//! overrides — into plain structs, then validated. Unknown keys, wrong types and out-of-range
//! values are errors naming the dotted key, the value and what is allowed; nothing is written
//! before a config has resolved cleanly.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    /// Masked-LM settings (read with `train.objective = "mlm"` or `"mlm+nsp"`); left out of the
    /// saved config (and its hash) while at their defaults, so older runs still resume.
    #[serde(skip_serializing_if = "MlmConfig::is_default")]
    pub mlm: MlmConfig,
    /// Left out of the serialised config (and so the hash) while it holds the defaults, so
    /// configs written before multi-process training still resume.
    #[serde(skip_serializing_if = "DistributedConfig::is_default")]
    pub distributed: DistributedConfig,
}

/// Where the text comes from and how it becomes tokens: inputs, cleaning, quality filters,
/// deduplication, splits and tokenizer (the `corpus` module runs them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A text / JSONL file (optionally .gz / .zst) or a folder of them.
    pub path: PathBuf,
    /// More inputs, prepared together with `path`.
    pub inputs: Vec<PathBuf>,
    /// An already prepared folder (`lmforge data prepare --out DIR`) to train from.
    pub prepared: PathBuf,
    /// An existing `tokenizer.json` to use; empty: train a byte-level BPE on the train split.
    pub tokenizer: PathBuf,
    /// Vocabulary size for a trained tokenizer; 0: the model's vocabulary size.
    pub vocab_size: usize,
    /// Special tokens of a trained tokenizer, in id order from 0.
    pub special_tokens: Vec<String>,
    /// Documents of a text file: "file" (the whole file), "paragraph" (blank-line separated), "line".
    pub doc_mode: String,
    /// The text field of JSONL records.
    pub jsonl_field: String,
    /// Invalid UTF-8: "repair" (replace, counted) or "drop" (reject the document).
    pub invalid_utf8: String,
    /// Unicode normalisation: "nfc", "nfkc" or "none".
    pub normalize: String,
    pub min_chars: usize,
    pub max_chars: usize,
    pub min_words: usize,
    pub max_words: usize,
    pub max_non_alpha_frac: f64,
    pub max_dup_line_frac: f64,
    pub min_mean_word_len: f64,
    pub max_mean_word_len: f64,
    /// Minimum count of English stop words per document (Gopher uses 2); 0 = off.
    pub min_stop_words: usize,
    pub exact_dedup: bool,
    pub near_dedup: bool,
    /// Word n-gram size of the MinHash shingles.
    pub minhash_ngram: usize,
    pub minhash_perms: usize,
    /// Estimated Jaccard similarity at or above which two documents are near duplicates.
    pub near_dup_threshold: f64,
    /// LSH bands (rows = perms / bands); 0: chosen for the threshold.
    pub lsh_bands: usize,
    /// Fractions of documents (by a stable hash of their text) held out for validation / test.
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// Seed of the split hash and the MinHash permutations.
    pub seed: u64,
    /// End every document with the end-of-text token (GPT-style packing).
    pub append_eos: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            inputs: Vec::new(),
            prepared: PathBuf::new(),
            tokenizer: PathBuf::new(),
            vocab_size: 0,
            special_tokens: vec![crate::tokenizer::END_OF_TEXT.to_string()],
            doc_mode: "paragraph".into(),
            jsonl_field: "text".into(),
            invalid_utf8: "repair".into(),
            normalize: "nfc".into(),
            min_chars: 1,
            max_chars: 10_000_000,
            min_words: 1,
            max_words: 1_000_000,
            max_non_alpha_frac: 0.5,
            max_dup_line_frac: 0.5,
            min_mean_word_len: 1.5,
            max_mean_word_len: 20.0,
            min_stop_words: 0,
            exact_dedup: true,
            near_dedup: true,
            minhash_ngram: 5,
            minhash_perms: 128,
            near_dup_threshold: 0.8,
            lsh_bands: 0,
            val_fraction: 0.1,
            test_fraction: 0.0,
            seed: 0,
            append_eos: true,
        }
    }
}

impl DataConfig {
    /// All inputs: `path` (if set) then `inputs`.
    pub fn all_inputs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if !self.path.as_os_str().is_empty() {
            v.push(self.path.clone());
        }
        v.extend(self.inputs.iter().cloned());
        v
    }

    pub fn validate(&self) -> Result<()> {
        check(
            (0.0..1.0).contains(&self.val_fraction)
                && (0.0..1.0).contains(&self.test_fraction)
                && self.val_fraction + self.test_fraction < 1.0,
            "data.val_fraction",
            self.val_fraction,
            "0 <= val_fraction, test_fraction and val + test < 1",
        )?;
        check(
            self.vocab_size == 0 || self.vocab_size >= 256 + self.special_tokens.len(),
            "data.vocab_size",
            self.vocab_size,
            "0 (the model's) or at least 256 bytes + the special tokens",
        )?;
        check(
            (0.0..=1.0).contains(&self.near_dup_threshold) && self.near_dup_threshold > 0.0,
            "data.near_dup_threshold",
            self.near_dup_threshold,
            "0 < threshold <= 1",
        )?;
        check(self.minhash_perms >= 1, "data.minhash_perms", self.minhash_perms, ">= 1")?;
        check(self.minhash_ngram >= 1, "data.minhash_ngram", self.minhash_ngram, ">= 1")?;
        check(self.lsh_bands <= self.minhash_perms, "data.lsh_bands", self.lsh_bands, "0 (auto) or <= minhash_perms")?;
        check(self.min_chars <= self.max_chars, "data.min_chars", self.min_chars, "<= data.max_chars")?;
        check(self.min_words <= self.max_words, "data.min_words", self.min_words, "<= data.max_words")?;
        check(
            (0.0..=1.0).contains(&self.max_non_alpha_frac),
            "data.max_non_alpha_frac",
            self.max_non_alpha_frac,
            "0..=1",
        )?;
        check(
            (0.0..=1.0).contains(&self.max_dup_line_frac),
            "data.max_dup_line_frac",
            self.max_dup_line_frac,
            "0..=1",
        )?;
        check(
            self.min_mean_word_len <= self.max_mean_word_len,
            "data.min_mean_word_len",
            self.min_mean_word_len,
            "<= data.max_mean_word_len",
        )?;
        crate::corpus::reader::DocMode::parse(&self.doc_mode)?;
        const UTF8: [&str; 2] = ["repair", "drop"];
        if !UTF8.contains(&self.invalid_utf8.as_str()) {
            return Err(bad("data.invalid_utf8", &self.invalid_utf8, &UTF8.join(", ")));
        }
        const NORM: [&str; 3] = ["nfc", "nfkc", "none"];
        if !NORM.contains(&self.normalize.as_str()) {
            return Err(bad("data.normalize", &self.normalize, &NORM.join(", ")));
        }
        Ok(())
    }
}

/// A preset name plus optional overrides of its fields (resolved by `models::ModelSpec`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub preset: String,
    pub style: Option<String>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_kv_head: Option<usize>,
    pub d_model: Option<usize>,
    pub d_ff: Option<usize>,
    pub context: Option<usize>,
    pub vocab_size: Option<usize>,
    pub norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub tie_embeddings: Option<bool>,
    /// BERT's token-type (segment) vocabulary.
    pub type_vocab_size: Option<usize>,
    /// Dropout on attention probabilities, residual branches and embeddings during training.
    pub dropout: f64,
    /// Weight initialisation: "gpt2" (normal 0.02, residual projections / sqrt(2 layers)),
    /// "glorot" (uniform) or "he" (normal).
    pub init: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            style: None,
            n_layer: None,
            n_head: None,
            n_kv_head: None,
            d_model: None,
            d_ff: None,
            context: None,
            vocab_size: None,
            norm_eps: None,
            rope_theta: None,
            tie_embeddings: None,
            type_vocab_size: None,
            dropout: 0.0,
            init: "gpt2".into(),
        }
    }
}

/// The optimizer and its hyperparameters. Keys every optimizer reads are plain values; keys
/// only some optimizers read are `Option`s, resolved per optimizer (defaults, ranges, and a
/// key set for an optimizer that does not read it is an error) by `optim::OptimSpec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// "adamw" | "adam" | "sgd" | "adafactor" | "lamb" | "lion" | "muon".
    pub name: String,
    pub lr: f64,
    // Field order as before the optimizer suite, so a config.toml written then (which spells out
    // beta1, beta2, eps) serialises, and hashes, the same: such runs still resume.
    /// adamw, adam, lamb, lion, muon (its AdamW part), adafactor (unset there: no first moment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// adamw, adam, lamb, lion, muon (its AdamW part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// adamw, adam, lamb, muon (its AdamW part), adafactor (the squared-gradient regulariser).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Weight decay for the parameters that decay (matrices; see `decay_embeddings` and
    /// `groups`): decoupled for adamw, adafactor, lion, muon; added to the gradient (L2) for
    /// adam and sgd, as torch does; added to the Adam step for lamb.
    pub weight_decay: f64,
    /// Whether embeddings (token and position) are decayed too.
    pub decay_embeddings: bool,
    /// Global-norm gradient clipping threshold; 0 disables clipping.
    pub grad_clip: f64,
    /// adamw, adam: keep the running maximum of the second moment (AMSGrad).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amsgrad: Option<bool>,
    /// sgd, muon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// sgd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
    /// sgd, muon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// adafactor: the parameter-scale floor (HF `eps[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps2: Option<f64>,
    /// adafactor: second-moment decay exponent (beta2ₜ = 1 − t^decay_rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_rate: Option<f64>,
    /// adafactor: the update's RMS is clipped to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_threshold: Option<f64>,
    /// adafactor: ignore `lr` and the schedule; use min(1e-2, 1/√t) (or min(1e-6·t, 1/√t)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_step: Option<bool>,
    /// adafactor: scale the step by max(eps2, RMS(p)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_parameter: Option<bool>,
    /// adafactor (with relative_step): the relative step grows as 1e-6·t.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_init: Option<bool>,
    /// lamb: the weight norm in the trust ratio is clamped to [0, clamp_value].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamp_value: Option<f64>,
    /// lamb: bias-correct the moments (torch_optimizer's `debias`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debias: Option<bool>,
    /// muon: Newton–Schulz iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_steps: Option<usize>,
    /// muon: learning rate of the AdamW-updated parameters (embeddings, head, norms, biases)
    /// as a fraction of `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_lr_ratio: Option<f64>,
    /// Parameter groups by name pattern; the first matching group wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<ParamGroupConfig>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: "adamw".into(),
            lr: 6e-4,
            weight_decay: 0.1,
            decay_embeddings: false,
            grad_clip: 1.0,
            beta1: None,
            beta2: None,
            eps: None,
            amsgrad: None,
            momentum: None,
            dampening: None,
            nesterov: None,
            eps2: None,
            decay_rate: None,
            clip_threshold: None,
            relative_step: None,
            scale_parameter: None,
            warmup_init: None,
            clamp_value: None,
            debias: None,
            ns_steps: None,
            adam_lr_ratio: None,
            groups: Vec::new(),
        }
    }
}

/// One `[[optim.groups]]` table: parameters whose Hugging Face name matches `pattern` (a
/// substring, or a glob where `*` matches any run of characters) get this learning-rate
/// multiplier and weight decay. Unset fields keep the default rule's values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupConfig {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// "cosine" | "linear" | "constant" | "inverse_sqrt" | "wsd" | "plateau".
    pub kind: String,
    pub warmup_steps: u64,
    /// Cosine decays to `min_lr_ratio * lr` (0 = to zero).
    pub min_lr_ratio: f64,
    /// WSD: fraction of the steps spent in the final (cosine) decay.
    pub decay_fraction: f64,
    /// plateau: multiply the LR by this when validation loss stops improving (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_factor: Option<f64>,
    /// plateau: validations without improvement tolerated before a reduction (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_patience: Option<u64>,
    /// plateau: relative improvement that counts (loss < best·(1 − threshold); default 1e-4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_threshold: Option<f64>,
    /// plateau: validations to wait after a reduction before counting again (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau_cooldown: Option<u64>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: "cosine".into(),
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            decay_fraction: 0.2,
            plateau_factor: None,
            plateau_patience: None,
            plateau_threshold: None,
            plateau_cooldown: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub max_steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients are averaged over them).
    pub grad_accum: usize,
    /// Tokens per training sequence; 0: the model's context length.
    pub seq_len: usize,
    /// Validate every N steps (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// Validation batches per evaluation (fixed windows, the same every time).
    pub eval_batches: usize,
    /// Checkpoint every N steps (and at the end); 0: only at the end.
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub seed: u64,
    /// Non-finite loss or gradient norm: "skip" (default) the update, or "rollback" to the
    /// last checkpoint with the LR times `rollback_lr_factor`. Unset keys are left out of the
    /// saved config (and its hash) so runs from before these keys still resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_nonfinite: Option<String>,
    /// Consecutive faulty steps before training stops with an error (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consecutive_faults: Option<u32>,
    /// LR multiplier applied at each rollback (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_lr_factor: Option<f64>,
    /// A loss above `spike_ratio` x its running mean is flagged as a spike (default 1.5; 0 = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spike_ratio: Option<f64>,
    /// "causal" (next token; GPT-2 / Llama), "mlm" (masked LM) or "mlm+nsp" (masked LM and
    /// next-sentence prediction; BERT). Omitted from the saved config when "causal".
    #[serde(skip_serializing_if = "is_causal")]
    pub objective: String,
    /// Recompute each block's activations in the backward instead of keeping them (decoder
    /// models): less memory, about a third more compute. Omitted from the saved config when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

fn is_causal(objective: &str) -> bool {
    objective == "causal"
}

/// The masked-LM objective: which tokens are selected and what replaces them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MlmConfig {
    /// Probability that a (non-special, non-padding) token — or a whole word — is selected.
    pub mask_prob: f64,
    /// Of the selected: replaced by [MASK] ...
    pub mask_token_frac: f64,
    /// ... by a random token (the rest stay unchanged).
    pub random_token_frac: f64,
    /// Select whole words (all their pieces) instead of single tokens.
    pub whole_word: bool,
    /// Probability of a shorter target length for a sentence pair (BERT's 0.1).
    pub short_seq_prob: f64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        Self { mask_prob: 0.15, mask_token_frac: 0.8, random_token_frac: 0.1, whole_word: false, short_seq_prob: 0.1 }
    }
}

impl MlmConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            seq_len: 0,
            eval_every: 200,
            eval_batches: 16,
            checkpoint_every: 500,
            log_every: 10,
            seed: 1337,
            on_nonfinite: None,
            max_consecutive_faults: None,
            rollback_lr_factor: None,
            spike_ratio: None,
            objective: "causal".into(),
            activation_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// How many of the most recent checkpoints to keep (the best-validation one is kept too).
    pub keep_last: usize,
    pub keep_best: bool,
    /// A checkpoint write fails (disk full, permission denied): "stop" (default) with an error,
    /// or "continue" training and try again at the next checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_write_error: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { keep_last: 2, keep_best: true, on_write_error: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "auto" (a bar on a terminal, lines otherwise) | "bar" | "lines" | "off".
    pub progress: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { progress: "auto".into() }
    }
}

/// Multi-process data-parallel training (`mpirun -np N lmforge train`; see `distributed`).
/// The process count is not part of the config: a run saved with N processes resumes with M.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// ZeRO stage: 0 = every process keeps the whole optimizer state (plain data parallel);
    /// 1 = each process keeps and updates the state of its share of the parameters.
    pub zero: u8,
    /// Seconds a collective may wait for the other processes before the run fails (a process
    /// died or hangs). Also bounds how long the others wait while rank 0 writes a checkpoint.
    pub timeout_s: f64,
    /// Gradients are all-reduced in buckets of about this many MB (several parameters per
    /// message; a larger parameter travels alone).
    pub bucket_mb: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { zero: 0, timeout_s: 600.0, bucket_mb: 25.0 }
    }
}

impl DistributedConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RunConfig {
    /// Resolves defaults < `file` < `overrides` (each `section.key=value`, value in TOML syntax,
    /// bare words taken as strings) and validates the result.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: Self = deserialize_table(layered_table(file, overrides)?)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Resolves from a TOML string (the recipes bundled in the binary use this).
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table = text.parse::<toml::Table>().map_err(|e| Error::Invalid(format!("invalid TOML: {e}")))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Self = deserialize_table(table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        check(o.lr.is_finite() && o.lr > 0.0, "optim.lr", o.lr, "a positive number")?;
        check(o.weight_decay >= 0.0, "optim.weight_decay", o.weight_decay, ">= 0")?;
        check(o.grad_clip >= 0.0, "optim.grad_clip", o.grad_clip, ">= 0 (0 disables)")?;
        // Name, per-optimizer keys, their ranges, and the parameter groups.
        crate::optim::OptimSpec::from_config(o)?;

        let s = &self.schedule;
        const KINDS: [&str; 6] = ["cosine", "linear", "constant", "inverse_sqrt", "wsd", "plateau"];
        if !KINDS.contains(&s.kind.as_str()) {
            return Err(bad("schedule.kind", &s.kind, &KINDS.join(", ")));
        }
        let plateau_keys = [
            ("schedule.plateau_factor", s.plateau_factor.is_some()),
            ("schedule.plateau_patience", s.plateau_patience.is_some()),
            ("schedule.plateau_threshold", s.plateau_threshold.is_some()),
            ("schedule.plateau_cooldown", s.plateau_cooldown.is_some()),
        ];
        if s.kind == "plateau" {
            let r = crate::optim::PlateauRule::from_config(s);
            check(r.factor > 0.0 && r.factor < 1.0, "schedule.plateau_factor", r.factor, "0 < factor < 1")?;
            check(r.threshold >= 0.0, "schedule.plateau_threshold", r.threshold, ">= 0")?;
            check(
                self.train.eval_every >= 1,
                "train.eval_every",
                self.train.eval_every,
                ">= 1 with schedule.kind = \"plateau\" (it is driven by validation loss)",
            )?;
        } else if let Some((key, _)) = plateau_keys.iter().find(|(_, set)| *set) {
            return Err(Error::config(*key, format!("is only read by schedule.kind = \"plateau\", not {:?}", s.kind)));
        }
        check((0.0..=1.0).contains(&s.min_lr_ratio), "schedule.min_lr_ratio", s.min_lr_ratio, "0 <= ratio <= 1")?;
        check(
            (0.0..=1.0).contains(&s.decay_fraction),
            "schedule.decay_fraction",
            s.decay_fraction,
            "0 <= fraction <= 1",
        )?;

        let t = &self.train;
        check(t.max_steps >= 1, "train.max_steps", t.max_steps, ">= 1")?;
        // Upper bounds keep batch arithmetic from overflowing on a hostile config.
        const MAX_BATCH: usize = 1 << 20;
        check((1..=MAX_BATCH).contains(&t.batch_size), "train.batch_size", t.batch_size, "1 ..= 1048576")?;
        check((1..=MAX_BATCH).contains(&t.grad_accum), "train.grad_accum", t.grad_accum, "1 ..= 1048576")?;
        check((1..=MAX_BATCH).contains(&t.eval_batches), "train.eval_batches", t.eval_batches, "1 ..= 1048576")?;
        check(t.log_every >= 1, "train.log_every", t.log_every, ">= 1")?;
        crate::faults::FaultPolicy::from_config(self)?;

        self.data.validate()?;

        let m = &self.model;
        check((0.0..1.0).contains(&m.dropout), "model.dropout", m.dropout, "0 <= p < 1")?;
        const INITS: [&str; 3] = ["gpt2", "glorot", "he"];
        if !INITS.contains(&m.init.as_str()) {
            return Err(bad("model.init", &m.init, &INITS.join(", ")));
        }
        // Preset name and shape overrides are checked when the spec is resolved.
        let spec = crate::models::ModelSpec::from_config(m)?;
        const OBJECTIVES: [&str; 3] = ["causal", "mlm", "mlm+nsp"];
        if !OBJECTIVES.contains(&t.objective.as_str()) {
            return Err(bad("train.objective", &t.objective, &OBJECTIVES.join(", ")));
        }
        let encoder = spec.style == crate::models::Style::Bert;
        if encoder == (t.objective == "causal") {
            return Err(Error::config(
                "train.objective",
                format!(
                    "{:?} does not fit model style {:?}: causal goes with gpt2 / llama, mlm and mlm+nsp with bert",
                    t.objective, spec.style
                ),
            ));
        }
        if encoder && t.activation_checkpointing {
            return Err(Error::config(
                "train.activation_checkpointing",
                "is implemented for decoder models (gpt2 / llama styles); BERT-style encoders train without it",
            ));
        }
        let k = &self.mlm;
        check((0.0..1.0).contains(&k.mask_prob) && k.mask_prob > 0.0, "mlm.mask_prob", k.mask_prob, "0 < p < 1")?;
        check(
            k.mask_token_frac >= 0.0 && k.random_token_frac >= 0.0 && k.mask_token_frac + k.random_token_frac <= 1.0,
            "mlm.mask_token_frac",
            k.mask_token_frac,
            "fractions >= 0 with mask_token_frac + random_token_frac <= 1",
        )?;
        check((0.0..=1.0).contains(&k.short_seq_prob), "mlm.short_seq_prob", k.short_seq_prob, "0..=1")?;

        check(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", self.checkpoint.keep_last, ">= 1")?;
        let d = &self.distributed;
        check(d.zero <= 1, "distributed.zero", d.zero, "0 (replicated optimizer state) or 1 (sharded, ZeRO stage 1)")?;
        check(
            d.timeout_s.is_finite() && d.timeout_s > 0.0,
            "distributed.timeout_s",
            d.timeout_s,
            "a positive number of seconds",
        )?;
        check(
            d.bucket_mb.is_finite() && d.bucket_mb > 0.0,
            "distributed.bucket_mb",
            d.bucket_mb,
            "a positive number of MB",
        )?;
        const PROGRESS: [&str; 4] = ["auto", "bar", "lines", "off"];
        if !PROGRESS.contains(&self.log.progress.as_str()) {
            return Err(bad("log.progress", &self.log.progress, &PROGRESS.join(", ")));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serialises to TOML")
    }

    /// A short stable hash of the resolved config, recorded in every checkpoint.
    pub fn hash(&self) -> String {
        config_hash(self)
    }
}

/// 16 hex digits of SHA-256 over a config's JSON: the run config's hash (in checkpoints and the
/// experiment store), and the same for other config kinds (fine-tuning).
pub fn config_hash<T: Serialize>(cfg: &T) -> String {
    let json = serde_json::to_string(cfg).expect("a config always serialises to JSON");
    let digest = Sha256::digest(json.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A config (any serialisable one, or a parsed TOML table) as dotted keys (`optim.lr`) to their
/// TOML values; arrays and tables of arrays (`data.inputs`, `optim.groups`) stay whole values.
/// Runs are compared and filtered by these.
pub fn flatten<T: Serialize>(cfg: &T) -> std::collections::BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, v: toml::Value, out: &mut std::collections::BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    let value = toml::Value::try_from(cfg).expect("a config always serialises to TOML");
    walk("", value, &mut out);
    out
}

pub(crate) fn check(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(bad(key, &value.to_string(), allowed))
    }
}

pub(crate) fn bad(key: &str, value: &str, allowed: &str) -> Error {
    Error::config(key, format!("invalid value {value:?}; expected {allowed}"))
}

/// The TOML table of `file` (empty without one) with `overrides` applied.
pub fn layered_table(file: Option<&Path>, overrides: &[String]) -> Result<toml::Table> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).at(path)?;
            text.parse::<toml::Table>().map_err(|e| Error::format(path, format!("invalid TOML: {e}")))?
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    Ok(table)
}

/// A config struct from a table; an unknown key or a wrong type is an error naming its dotted
/// path.
pub fn deserialize_table<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim_end_matches('\n').to_string();
        Error::config(if key == "." { "(top level)".into() } else { key }, inner)
    })
}

/// Applies one `a.b.c=value` override to the table, creating sections as needed.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) =
        spec.split_once('=').ok_or_else(|| Error::config(spec, "an override must look like section.key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    // A value in TOML syntax (numbers, booleans, quoted strings, arrays); otherwise a bare string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "an override key must look like section.key"));
    }
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::config(key, format!("`{part}` is a value, not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml_str(text, &o).unwrap_err().to_string()
    }

    #[test]
    fn layering_defaults_file_overrides() {
        let cfg = RunConfig::from_toml_str(
            "[train]\nmax_steps = 50\nbatch_size = 4\n",
            &["train.batch_size=8".into(), "optim.lr=1e-3".into()],
        )
        .unwrap();
        assert_eq!(cfg.train.max_steps, 50);
        assert_eq!(cfg.train.batch_size, 8);
        assert_eq!(cfg.optim.lr, 1e-3);
        assert_eq!(cfg.train.seed, TrainConfig::default().seed);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[train]\nmax_stepz = 5\n", &[]);
        assert!(e.contains("train") && e.contains("max_stepz"), "{e}");
        let e = err("", &["optim.learning_rate=0.1"]);
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err("[train]\nbatch_size = \"big\"\n", &[]);
        assert!(e.contains("train.batch_size"), "{e}");
    }

    #[test]
    fn bad_value_names_key_value_and_range() {
        let e = err("", &["optim.lr=-1"]);
        assert!(e.contains("optim.lr") && e.contains("-1") && e.contains("positive"), "{e}");
        let e = err("", &["schedule.kind=triangle"]);
        assert!(e.contains("schedule.kind") && e.contains("cosine"), "{e}");
        let e = err("", &["model.preset=nope"]);
        assert!(e.contains("model.preset") && e.contains("nope"), "{e}");
        let e = err("", &["model.preset=bert-tiny", "train.objective=mlm", "train.activation_checkpointing=true"]);
        assert!(e.contains("train.activation_checkpointing") && e.contains("decoder"), "{e}");
        let ok = RunConfig::from_toml_str("", &["train.activation_checkpointing=true".to_string()]).unwrap();
        assert!(ok.train.activation_checkpointing);
    }

    #[test]
    fn plateau_keys_belong_to_the_plateau_schedule() {
        let e = err("", &["schedule.plateau_patience=3"]);
        assert!(e.contains("schedule.plateau_patience") && e.contains("plateau") && e.contains("cosine"), "{e}");
        let e = err("", &["schedule.kind=plateau", "train.eval_every=0"]);
        assert!(e.contains("train.eval_every") && e.contains("validation"), "{e}");
        let e = err("", &["schedule.kind=plateau", "schedule.plateau_factor=1.5"]);
        assert!(e.contains("schedule.plateau_factor"), "{e}");
        let ok = RunConfig::from_toml_str("", &["schedule.kind=plateau".into(), "schedule.plateau_patience=2".into()]);
        assert_eq!(ok.unwrap().schedule.plateau_patience, Some(2));
    }

    /// A config.toml written before the optimizer suite spells out beta1, beta2 and eps; it must
    /// serialise (and so hash) exactly as then, or its runs could no longer resume.
    #[test]
    fn pre_suite_optim_section_serialises_as_before() {
        let cfg = RunConfig::from_toml_str("[optim]\nname = \"adamw\"\nbeta1 = 0.9\nbeta2 = 0.95\neps = 1e-8\n", &[])
            .unwrap();
        assert_eq!(
            serde_json::to_string(&cfg.optim).unwrap(),
            r#"{"name":"adamw","lr":0.0006,"beta1":0.9,"beta2":0.95,"eps":1e-8,"weight_decay":0.1,"decay_embeddings":false,"grad_clip":1.0}"#
        );
    }

    #[test]
    fn flatten_gives_dotted_keys() {
        let cfg = RunConfig::from_toml_str("", &["optim.lr=0.01".into()]).unwrap();
        let flat = flatten(&cfg);
        assert_eq!(flat["optim.lr"], toml::Value::Float(0.01));
        assert_eq!(flat["model.preset"], toml::Value::String("tiny".into()));
        assert!(!flat.contains_key("optim.momentum"), "unset optional keys are absent");
    }

    #[test]
    fn distributed_section_is_validated_and_hashed_only_when_set() {
        let e = err("", &["distributed.zero=2"]);
        assert!(e.contains("distributed.zero") && e.contains("ZeRO"), "{e}");
        let e = err("", &["distributed.timeout_s=0"]);
        assert!(e.contains("distributed.timeout_s"), "{e}");
        assert!(!RunConfig::default().to_toml().contains("distributed"));
        let zero1 = RunConfig::from_toml_str("[distributed]\nzero = 1\n", &[]).unwrap();
        assert_ne!(zero1.hash(), RunConfig::default().hash());
        assert_eq!(RunConfig::from_toml_str(&zero1.to_toml(), &[]).unwrap(), zero1);
    }

    #[test]
    fn round_trips_through_toml_and_hash_is_stable() {
        let cfg = RunConfig::from_toml_str("", &["train.seed=7".into()]).unwrap();
        let back = RunConfig::from_toml_str(&cfg.to_toml(), &[]).unwrap();
        assert_eq!(cfg, back);
        assert_eq!(cfg.hash(), back.hash());
        assert_ne!(cfg.hash(), RunConfig::default().hash());
    }
}
