//! The fine-tuning config (`lmforge finetune --config FILE`): task, labelled data files and
//! how to read them, the base model, the method (full / LoRA / adapters), optimizer and
//! schedule (the pretraining `[optim]` / `[schedule]` tables), training, early stopping,
//! checkpoints, processes. Resolved like the run config: defaults < TOML file < `--set
//! section.key=value`, relative paths in the file against its folder, unknown keys and bad
//! values are errors naming the dotted key.

use crate::checkpoint::CheckpointConfig;
use crate::config::{self, bad, check, given, readable};
use crate::device::{DeviceChoice, Precision};
use crate::distributed::DistributedConfig;
use crate::error::{Error, Result};
use crate::faults::{FaultConfig, FaultPolicy, OnNonFinite};
use crate::metrics::generation::GENERATION_METRIC_NAMES;
use crate::metrics::regression::REGRESSION_METRIC_NAMES;
use crate::metrics::seqeval::ENTITY_METRIC_NAMES;
use crate::metrics::squad::QA_METRIC_NAMES;
use crate::metrics::METRIC_NAMES;
use crate::models::HeadKind;
use crate::nn::recompute::Checkpointing;
use crate::optim::{OptimConfig, OptimSpec, ScheduleConfig, ScheduleKind};
use crate::progress::LogConfig;
use crate::train::config::MAX_BATCH;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub task: TaskConfig,
    pub data: ClsDataConfig,
    pub model: BaseModelConfig,
    pub finetune: MethodConfig,
    pub lora: LoraConfig,
    pub adapter: AdapterConfig,
    /// Prefix tuning (`finetune.method = "prefix"`); left out of the saved config at its
    /// defaults.
    #[serde(skip_serializing_if = "PrefixConfig::is_default")]
    pub prefix: PrefixConfig,
    /// Causal-LM fine-tuning (`task.kind = "causal_lm"`): columns, chat template, loss mask,
    /// generation during validation; left out of the saved config at its defaults.
    #[serde(skip_serializing_if = "SftConfig::is_default")]
    pub sft: SftConfig,
    /// Extractive question answering (`task.kind = "question_answering"`): windows and answer
    /// search; left out of the saved config at its defaults.
    #[serde(skip_serializing_if = "QaConfig::is_default")]
    pub qa: QaConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub train: FtTrainConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    /// Multi-process runs (`mpirun -np N lmforge finetune`); left out of the saved config at
    /// its defaults.
    #[serde(skip_serializing_if = "DistributedConfig::is_default")]
    pub distributed: DistributedConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            task: TaskConfig::default(),
            data: ClsDataConfig::default(),
            model: BaseModelConfig::default(),
            finetune: MethodConfig::default(),
            lora: LoraConfig::default(),
            adapter: AdapterConfig::default(),
            prefix: PrefixConfig::default(),
            sft: SftConfig::default(),
            qa: QaConfig::default(),
            // Fine-tuning's usual settings (BERT paper, HF Trainer): small LR, light decay,
            // linear decay to zero.
            optim: OptimConfig { lr: 2e-5, weight_decay: 0.01, ..OptimConfig::default() },
            schedule: ScheduleConfig {
                kind: ScheduleKind::Linear,
                warmup_steps: 0,
                min_lr_ratio: 0.0,
                ..Default::default()
            },
            train: FtTrainConfig::default(),
            // The best model is exported to RUN_DIR/model/; checkpoints are for resuming.
            checkpoint: CheckpointConfig { keep_best: false, ..CheckpointConfig::default() },
            log: LogConfig::default(),
            distributed: DistributedConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// "classification" (a label per text), "regression" (a number per text),
    /// "token_classification" (a tag per word: named entities, chunks) or "causal_lm"
    /// (instruction / completion tuning of a GPT-2 or Llama model).
    pub kind: TaskKind,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self { kind: TaskKind::Classification }
    }
}

/// Labelled files and how their rows are read (the reader settings are saved with the model,
/// so `predict` and `eval classification` read new files the same way).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClsDataConfig {
    pub train: PathBuf,
    /// Early stopping and best-model selection; empty: none (the last model is kept).
    pub validation: PathBuf,
    /// Final metrics in results.json; empty: the validation set's.
    pub test: PathBuf,
    /// "auto" (by extension: .tsv, .csv, .jsonl / .json, .conll / .iob / .bio), "tsv", "csv",
    /// "jsonl" or "conll" (token classification: a word and its tag per line, the tag in the
    /// last column, a blank line between sentences).
    pub format: DataFormat,
    /// TSV / CSV: the first line names the columns.
    pub header: bool,
    /// TSV / CSV: honour "..." quoting; unset: CSV yes, TSV no (GLUE's QUOTE_NONE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quoting: Option<bool>,
    /// A column name (header or JSONL field) or a 0-based index (headerless files).
    #[serde(deserialize_with = "column")]
    pub text_column: String,
    /// The second text of pair tasks (NLI, paraphrase); empty: none.
    #[serde(deserialize_with = "column")]
    pub text_pair_column: String,
    #[serde(deserialize_with = "column")]
    pub label_column: String,
    /// Token classification, JSONL: the field holding the list of words, and the field with
    /// their tags (strings, or ids into `data.labels`).
    pub tokens_column: String,
    pub tags_column: String,
    /// The label set in id order; empty: the distinct train labels, numerically sorted when
    /// all are integers, else lexicographically.
    pub labels: Vec<String>,
    /// Rows with a missing label, an unknown label or an empty text: "skip" (counted and
    /// reported) or "fail" (the first one is an error).
    pub bad_rows: BadRowPolicy,
    /// Use a seeded random subset of this many train rows (0: all).
    pub max_train_rows: usize,
    /// Use the first N validation rows (0: all).
    pub max_validation_rows: usize,
    /// k-fold cross-validation (`lmforge finetune --folds K` sets these): the train rows are
    /// dealt into `folds` folds (stratified by label for classification) and fold `fold` is
    /// the validation split; 0: no folds.
    #[serde(skip_serializing_if = "is_zero")]
    pub folds: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub fold: usize,
    /// Shares of the train file's rows held out as the validation / test split when
    /// `data.validation` / `data.test` are not given (classification, regression); 0: none.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub validation_fraction: f64,
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub test_fraction: f64,
    /// How those rows are drawn: "label" (per class, so small classes appear in every split;
    /// regression: per score decile) or "random".
    #[serde(skip_serializing_if = "is_by_label")]
    pub split_by: super::splits::SplitBy,
    /// EDA augmentation of the training rows (`[data.augment]`, classification and regression).
    #[serde(skip_serializing_if = "super::augment::AugmentConfig::is_default")]
    pub augment: super::augment::AugmentConfig,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_by_label(v: &super::splits::SplitBy) -> bool {
    *v == super::splits::SplitBy::Label
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Default for ClsDataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            validation: PathBuf::new(),
            test: PathBuf::new(),
            format: DataFormat::Auto,
            header: true,
            quoting: None,
            text_column: "text".into(),
            text_pair_column: String::new(),
            label_column: "label".into(),
            tokens_column: "tokens".into(),
            tags_column: "tags".into(),
            labels: Vec::new(),
            bad_rows: BadRowPolicy::Skip,
            max_train_rows: 0,
            max_validation_rows: 0,
            folds: 0,
            validation_fraction: 0.0,
            test_fraction: 0.0,
            split_by: super::splits::SplitBy::Label,
            augment: Default::default(),
            fold: 0,
        }
    }
}

/// How a labelled file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// By the file's extension: .tsv / .txt, .csv, .jsonl / .json / .ndjson, .conll / .iob /
    /// .bio.
    Auto,
    Tsv,
    Csv,
    Jsonl,
    /// CoNLL columns: a word per line (first column), its tag last, sentences separated by a
    /// blank line, `-DOCSTART-` lines skipped.
    Conll,
}

/// What a row with a missing or unknown label, or an empty text, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRowPolicy {
    /// Skipped, counted and reported.
    Skip,
    /// The first one is an error naming the file and line.
    Fail,
}

/// What trains in a fine-tuning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every weight.
    Full,
    /// Low-rank deltas on the target Linears; the base is frozen.
    Lora,
    /// Bottleneck adapters after the target Linears; the base is frozen.
    Adapter,
    /// Trainable key / value prefixes in every attention layer; the base is frozen.
    Prefix,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Lora => "lora",
            Self::Adapter => "adapter",
            Self::Prefix => "prefix",
        }
    }
}

/// The task a fine-tuning run learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// One label per text (or text pair).
    Classification,
    /// One tag per word (named entities, chunks), scored with seqeval's entity metrics.
    #[serde(rename = "token_classification")]
    TokenClassification,
    /// One number per text (or text pair): a one-output head trained with the mean squared
    /// error, as Hugging Face's `num_labels = 1` (STS-B).
    Regression,
    /// Next-token prediction on the completion / assistant tokens of prompt–completion pairs
    /// or chat conversations.
    #[serde(rename = "causal_lm")]
    CausalLm,
    /// The answer to a question as a span of a context (SQuAD v1.1 / v2.0), scored with the
    /// official exact match and F1.
    #[serde(rename = "question_answering")]
    QuestionAnswering,
}

/// How extractive QA cuts contexts into windows and picks answers (`run_qa.py`'s arguments).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QaConfig {
    /// Tokens shared by consecutive windows of a context longer than `model.max_length`.
    pub doc_stride: usize,
    /// The longest answer, in tokens.
    pub max_answer_length: usize,
    /// Start and end candidates paired per window.
    pub n_best: usize,
    /// SQuAD v2.0: "no answer" wins when its score beats the best span's by more than this.
    pub null_score_diff_threshold: f64,
    /// Whether questions may have no answer (SQuAD v2.0); unset: from the training file (its
    /// `version`, or an unanswerable question in it), saved with the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_2_with_negative: Option<bool>,
}

impl Default for QaConfig {
    fn default() -> Self {
        Self {
            doc_stride: 128,
            max_answer_length: 30,
            n_best: 20,
            null_score_diff_threshold: 0.0,
            version_2_with_negative: None,
        }
    }
}

impl QaConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::TokenClassification => "token_classification",
            Self::Regression => "regression",
            Self::CausalLm => "causal_lm",
            Self::QuestionAnswering => "question_answering",
        }
    }
}

/// What causal-LM fine-tuning reads and how it trains and validates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Prompt–completion rows: the prompt's field (JSONL) or column (TSV / CSV).
    #[serde(deserialize_with = "column")]
    pub prompt_column: String,
    #[serde(deserialize_with = "column")]
    pub completion_column: String,
    /// Chat rows (JSONL): a list of {"role", "content"} (system / user / assistant).
    pub messages_column: String,
    /// Chat rows: "auto" (the model folder's `tokenizer_config.json` template, else ChatML)
    /// or "chatml".
    pub chat_template: String,
    /// A file holding a Jinja chat template, used instead of `chat_template`.
    pub chat_template_file: PathBuf,
    /// Which tokens the loss is on: "completion" (the completion / assistant turns; prompts
    /// masked, as TRL's completion-only collator) or "all".
    pub train_on: TrainOn,
    /// Prompt–completion rows: append the end-of-text token to the completion (so the model
    /// learns to stop).
    pub add_eos: bool,
    /// Generate for the first `generate_rows` validation rows (greedy) and score BLEU, chrF,
    /// ROUGE, exact match and token F1 every N evaluations (and at the last); 0: never, unless
    /// `train.metric` is a generation metric (then every evaluation).
    pub generate_every: u64,
    pub generate_rows: usize,
    pub max_new_tokens: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            prompt_column: "prompt".into(),
            completion_column: "completion".into(),
            messages_column: "messages".into(),
            chat_template: "auto".into(),
            chat_template_file: PathBuf::new(),
            train_on: TrainOn::Completion,
            add_eos: true,
            generate_every: 0,
            generate_rows: 64,
            max_new_tokens: 64,
        }
    }
}

impl SftConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The positions the causal fine-tuning loss is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    Completion,
    All,
}

/// A column: a name, or a 0-based index written as a string or a bare integer (`--set
/// data.text_column=1`).
fn column<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Column {
        Name(String),
        Index(u64),
    }
    Ok(match Column::deserialize(d)? {
        Column::Name(s) => s,
        Column::Index(i) => i.to_string(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BaseModelConfig {
    /// A run dir, checkpoint dir or Hugging Face folder (GPT-2 / Llama decoder, BERT encoder).
    pub base: PathBuf,
    /// Dropout in the backbone (where it has dropout) and before the classification head.
    pub dropout: f64,
    /// Tokens per example after truncation (special tokens included); 0: the model's context.
    pub max_length: usize,
}

impl Default for BaseModelConfig {
    fn default() -> Self {
        Self { base: PathBuf::new(), dropout: 0.1, max_length: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// "full" (every weight trains), "lora", "adapter" or "prefix" (the base is frozen).
    pub method: Method,
    /// LoRA / adapter / prefix: train the LayerNorm / RMSNorm weights too (the head always trains).
    pub train_norms: bool,
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self { method: Method::Full, train_norms: false }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Linears to adapt, PEFT's rule (a module name or its last parts, or a glob with `*`);
    /// empty: the attention query and value projections (GPT-2: c_attn, Llama: q_proj and
    /// v_proj, BERT: query and value).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.0, target_modules: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    /// Bottleneck width.
    pub size: usize,
    /// Linears whose output gets an adapter; empty: every attention-output and MLP-output
    /// projection (Houlsby et al.'s placement).
    pub target_modules: Vec<String>,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self { size: 64, target_modules: Vec::new() }
    }
}

/// Prefix tuning, as PEFT's `PrefixTuningConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixConfig {
    /// Virtual tokens whose keys and values every layer reads first.
    pub num_virtual_tokens: usize,
    /// Train them through a two-layer tanh MLP (Li & Liang's reparameterisation, PEFT's
    /// `prefix_projection`); saved projected, so the MLP is a training device only.
    pub projection: bool,
    /// The MLP's hidden width; 0: the model's key/value width (PEFT's default).
    pub encoder_hidden_size: usize,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self { num_virtual_tokens: 20, projection: false, encoder_hidden_size: 0 }
    }
}

impl PrefixConfig {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The prefix of this config for a model of `shape`.
    pub fn spec(&self, shape: crate::nn::prefix::PrefixShape) -> crate::nn::prefix::PrefixSpec {
        let hidden = if self.encoder_hidden_size == 0 { shape.token_dim() } else { self.encoder_hidden_size };
        crate::nn::prefix::PrefixSpec {
            num_virtual_tokens: self.num_virtual_tokens,
            projection: self.projection.then_some(hidden),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FtTrainConfig {
    pub epochs: u64,
    /// Stop after this many optimizer steps (0: `epochs` full passes).
    pub max_steps: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step: a step trains on `batch_size · grad_accum` examples.
    pub grad_accum: usize,
    pub eval_batch_size: usize,
    /// Evaluate on the validation set every N steps; 0: after every epoch.
    pub eval_every: u64,
    /// Batches whose examples are sorted by length together (less padding); 1: no bucketing.
    pub bucket_batches: usize,
    pub label_smoothing: f64,
    /// The validation metric that picks the best model: "loss" / "ppl" (lower is better) or a
    /// metric name (higher is better): classification's accuracy, macro_f1, weighted_f1,
    /// binary_f1, ...; causal_lm's bleu, chrf, rouge_l, exact_match, token_f1, ... Unset: the
    /// task's (accuracy; loss for causal_lm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Stop after this many evaluations without an improvement of more than `min_delta`;
    /// 0: never stop early (the best model is still kept).
    pub patience: u64,
    pub min_delta: f64,
    pub log_every: u64,
    pub seed: u64,
    /// Checkpoint (for `--resume`) every N steps; 0: at the end of every epoch. Always at the
    /// last step.
    pub checkpoint_every: u64,
    /// Non-finite loss or gradient norm: "skip" the update (default) or "rollback" to the last
    /// checkpoint with a lower LR (see `lmforge train`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_nonfinite: Option<OnNonFinite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consecutive_faults: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_lr_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spike_ratio: Option<f64>,
    /// Recompute decoder blocks' activations in the backward (GPT-2 / Llama backbones): `true`
    /// every block, a number `n` the first `n` (as `lmforge train`).
    #[serde(skip_serializing_if = "Checkpointing::is_off")]
    pub activation_checkpointing: Checkpointing,
    /// "auto", "cpu", "cuda" or "cuda:N" (as `lmforge train`).
    #[serde(skip_serializing_if = "DeviceChoice::is_auto")]
    pub device: DeviceChoice,
    /// "fp32" or "bf16-mixed".
    #[serde(skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

impl Default for FtTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: 0,
            batch_size: 32,
            eval_batch_size: 64,
            eval_every: 0,
            bucket_batches: 50,
            label_smoothing: 0.0,
            metric: None,
            patience: 0,
            min_delta: 0.0,
            log_every: 10,
            seed: 42,
            grad_accum: 1,
            checkpoint_every: 0,
            on_nonfinite: None,
            max_consecutive_faults: None,
            rollback_lr_factor: None,
            spike_ratio: None,
            activation_checkpointing: Checkpointing::Off,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
        }
    }
}

impl FinetuneConfig {
    /// Keys holding paths: relative ones in a config file resolve against its folder.
    pub const PATH_KEYS: [&'static str; 5] =
        ["data.train", "data.validation", "data.test", "model.base", "sft.chat_template_file"];

    /// Resolves defaults < `file` < `overrides` and validates.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: Self = config::load(file, overrides, &Self::PATH_KEYS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A saved `config.toml` or `finetune.toml`, read as written.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_toml_with(text, &[])
    }

    /// Resolved TOML text (its paths as they are) with `overrides` on top, validated: a
    /// sweep's trial config.
    pub fn from_toml_with(text: &str, overrides: &[String]) -> Result<Self> {
        let cfg: Self = config::parse(text, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        config::to_toml(self)
    }

    pub fn hash(&self) -> String {
        config::config_hash(self)
    }

    /// That the data files and the base can be read, before anything is written.
    pub fn check_paths(&self) -> Result<()> {
        readable("data.train", &self.data.train)?;
        for (key, p) in [("data.validation", &self.data.validation), ("data.test", &self.data.test)] {
            if let Some(p) = given(p) {
                readable(key, p)?;
            }
        }
        if let Some(p) = given(&self.sft.chat_template_file) {
            readable("sft.chat_template_file", p)?;
        }
        readable("model.base", &self.model.base)
    }

    /// The selection metric: `train.metric`, else the task's default.
    pub fn metric(&self) -> &str {
        match (&self.train.metric, self.task.kind) {
            (Some(m), _) => m,
            (None, TaskKind::Classification) => "accuracy",
            (None, TaskKind::TokenClassification) => "f1",
            (None, TaskKind::Regression) => "loss",
            (None, TaskKind::CausalLm) => "loss",
            (None, TaskKind::QuestionAnswering) => "f1",
        }
    }

    /// The classification head the task trains (a causal LM's is its LM head; Sequence is
    /// never asked of it).
    pub fn head_kind(&self) -> HeadKind {
        match self.task.kind {
            TaskKind::TokenClassification => HeadKind::Token,
            TaskKind::QuestionAnswering => HeadKind::Span,
            TaskKind::Classification | TaskKind::Regression | TaskKind::CausalLm => HeadKind::Sequence,
        }
    }

    /// Whether `metric()` is one that needs generations.
    pub fn selects_by_generation(&self) -> bool {
        GENERATION_METRIC_NAMES.contains(&self.metric())
    }

    fn validate_sft(&self) -> Result<()> {
        let metric = self.metric();
        if !["loss", "ppl"].contains(&metric) && !self.selects_by_generation() {
            return Err(bad(
                "train.metric",
                metric,
                &format!("loss, ppl, {} (causal_lm)", GENERATION_METRIC_NAMES.join(", ")),
            ));
        }
        let s = &self.sft;
        for (key, v) in [
            ("sft.prompt_column", &s.prompt_column),
            ("sft.completion_column", &s.completion_column),
            ("sft.messages_column", &s.messages_column),
        ] {
            check(!v.is_empty(), key, v, "a field / column name")?;
        }
        check(
            ["auto", "chatml"].contains(&s.chat_template.as_str()),
            "sft.chat_template",
            &s.chat_template,
            "auto or chatml (or a file in sft.chat_template_file)",
        )?;
        if self.selects_by_generation() && s.generate_every > 1 {
            return Err(Error::config(
                "sft.generate_every",
                format!(
                    "is {}, but train.metric = {metric:?} needs generations at every evaluation: set it to 1 (or 0)",
                    s.generate_every
                ),
            ));
        }
        if (s.generate_every > 0 || self.selects_by_generation()) && self.data.validation.as_os_str().is_empty() {
            return Err(Error::config("data.validation", "missing: generation metrics are scored on validation rows"));
        }
        check(s.generate_rows >= 1, "sft.generate_rows", s.generate_rows, ">= 1")?;
        check(s.max_new_tokens >= 1, "sft.max_new_tokens", s.max_new_tokens, ">= 1")?;
        check(
            self.train.label_smoothing == 0.0,
            "train.label_smoothing",
            self.train.label_smoothing,
            "0 for causal_lm",
        )?;
        Ok(())
    }

    /// The fault keys of `[train]` and `[checkpoint]`.
    pub fn fault_policy(&self) -> Result<FaultPolicy> {
        let t = &self.train;
        FaultPolicy::resolve(&FaultConfig {
            on_nonfinite: t.on_nonfinite,
            max_consecutive_faults: t.max_consecutive_faults,
            rollback_lr_factor: t.rollback_lr_factor,
            spike_ratio: t.spike_ratio,
            on_write_error: self.checkpoint.on_write_error,
        })
    }

    /// Everything types alone cannot express (the data-dependent part, the number of steps,
    /// is resolved when the data is read).
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if d.train.as_os_str().is_empty() {
            return Err(Error::config("data.train", "missing: the labelled training file"));
        }
        if self.model.base.as_os_str().is_empty() {
            return Err(Error::config("model.base", "missing: a run dir, checkpoint dir or Hugging Face folder"));
        }
        check((0.0..1.0).contains(&self.model.dropout), "model.dropout", self.model.dropout, "0 <= p < 1")?;
        check(
            self.model.max_length == 0 || self.model.max_length >= 4,
            "model.max_length",
            self.model.max_length,
            "0 (the context) or >= 4",
        )?;
        let l = &self.lora;
        check(l.rank >= 1, "lora.rank", l.rank, ">= 1")?;
        check(l.alpha.is_finite() && l.alpha > 0.0, "lora.alpha", l.alpha, "a positive number")?;
        check((0.0..1.0).contains(&l.dropout), "lora.dropout", l.dropout, "0 <= p < 1")?;
        check(self.adapter.size >= 1, "adapter.size", self.adapter.size, ">= 1")?;
        let n = self.prefix.num_virtual_tokens;
        check(n >= 1, "prefix.num_virtual_tokens", n, ">= 1")?;
        OptimSpec::from_config(&self.optim)?;
        if self.schedule.kind == ScheduleKind::Plateau {
            return Err(bad(
                "schedule.kind",
                "plateau",
                "cosine, linear, constant, inverse_sqrt, wsd (fine-tuning's schedules follow the step count; \
                 early stopping is train.patience)",
            ));
        }
        self.schedule.resolve(1)?;
        let t = &self.train;
        check(t.epochs >= 1 || t.max_steps >= 1, "train.epochs", t.epochs, ">= 1 (or train.max_steps >= 1)")?;
        check((1..=MAX_BATCH).contains(&t.batch_size), "train.batch_size", t.batch_size, "1 ..= 1048576")?;
        check((1..=MAX_BATCH).contains(&t.grad_accum), "train.grad_accum", t.grad_accum, "1 ..= 1048576")?;
        check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, ">= 1")?;
        check(t.bucket_batches >= 1, "train.bucket_batches", t.bucket_batches, ">= 1")?;
        check(t.log_every >= 1, "train.log_every", t.log_every, ">= 1")?;
        check((0.0..1.0).contains(&t.label_smoothing), "train.label_smoothing", t.label_smoothing, "0 <= e < 1")?;
        check(t.min_delta >= 0.0, "train.min_delta", t.min_delta, ">= 0")?;
        if d.folds > 0 {
            check(d.folds >= 2, "data.folds", d.folds, ">= 2 (0: no cross-validation)")?;
            check(d.fold < d.folds, "data.fold", d.fold, &format!("0 ..= {}", d.folds - 1))?;
            check(
                d.validation.as_os_str().is_empty(),
                "data.validation",
                d.validation.display(),
                "empty with data.folds (the held-out fold validates)",
            )?;
            check(self.task.kind != TaskKind::CausalLm, "data.folds", d.folds, "0 for causal_lm")?;
        }
        for (key, f, file) in [
            ("data.validation_fraction", d.validation_fraction, &d.validation),
            ("data.test_fraction", d.test_fraction, &d.test),
        ] {
            check((0.0..1.0).contains(&f), key, f, "0 <= fraction < 1")?;
            if f > 0.0 {
                let split = key.trim_start_matches("data.").trim_end_matches("_fraction");
                check(file.as_os_str().is_empty(), key, f, &format!("0 when data.{split} names a file"))?;
                check(
                    matches!(self.task.kind, TaskKind::Classification | TaskKind::Regression),
                    key,
                    f,
                    "0 for this task (held-out fractions are for classification and regression; give a file)",
                )?;
            }
        }
        check(
            d.validation_fraction + d.test_fraction < 1.0,
            "data.validation_fraction",
            d.validation_fraction,
            "validation_fraction + test_fraction < 1 (rows must remain to train on)",
        )?;
        check(
            d.folds == 0 || d.validation_fraction == 0.0,
            "data.validation_fraction",
            d.validation_fraction,
            "0 with data.folds (the held-out fold validates)",
        )?;
        d.augment.validate()?;
        check(
            d.augment.copies == 0 || matches!(self.task.kind, TaskKind::Classification | TaskKind::Regression),
            "data.augment.copies",
            d.augment.copies,
            "0 for this task (word edits would misalign tags, answer spans and completions)",
        )?;
        let metric = self.metric();
        match self.task.kind {
            TaskKind::Classification => {
                if metric != "loss" && !METRIC_NAMES.contains(&metric) {
                    return Err(bad("train.metric", metric, &format!("loss, {}", METRIC_NAMES.join(", "))));
                }
                check(
                    !d.text_column.is_empty() && !d.label_column.is_empty(),
                    "data.text_column",
                    &d.text_column,
                    "a column name or 0-based index",
                )?;
            }
            TaskKind::TokenClassification => {
                if metric != "loss" && !ENTITY_METRIC_NAMES.contains(&metric) {
                    return Err(bad(
                        "train.metric",
                        metric,
                        &format!("loss, {} (token_classification)", ENTITY_METRIC_NAMES.join(", ")),
                    ));
                }
                check(
                    !d.tokens_column.is_empty() && !d.tags_column.is_empty(),
                    "data.tokens_column",
                    &d.tokens_column,
                    "a field name",
                )?;
                check(
                    self.train.label_smoothing == 0.0,
                    "train.label_smoothing",
                    self.train.label_smoothing,
                    "0 for token_classification",
                )?;
            }
            TaskKind::Regression => {
                if metric != "loss" && !REGRESSION_METRIC_NAMES.contains(&metric) {
                    return Err(bad(
                        "train.metric",
                        metric,
                        &format!("loss, {} (regression)", REGRESSION_METRIC_NAMES.join(", ")),
                    ));
                }
                check(
                    self.train.label_smoothing == 0.0,
                    "train.label_smoothing",
                    self.train.label_smoothing,
                    "0 for regression",
                )?;
                check(d.labels.is_empty(), "data.labels", format!("{:?}", d.labels), "empty for regression")?;
            }
            TaskKind::CausalLm => self.validate_sft()?,
            TaskKind::QuestionAnswering => {
                if metric != "loss" && !QA_METRIC_NAMES.contains(&metric) {
                    return Err(bad(
                        "train.metric",
                        metric,
                        "loss, exact, f1, has_ans_exact, has_ans_f1, no_ans_exact, no_ans_f1 (question_answering)",
                    ));
                }
                let q = &self.qa;
                check(q.max_answer_length >= 1, "qa.max_answer_length", q.max_answer_length, ">= 1")?;
                check(q.n_best >= 1, "qa.n_best", q.n_best, ">= 1")?;
                check(
                    q.null_score_diff_threshold.is_finite(),
                    "qa.null_score_diff_threshold",
                    q.null_score_diff_threshold,
                    "a number",
                )?;
                let window = if self.model.max_length == 0 { usize::MAX } else { self.model.max_length };
                check(q.doc_stride < window, "qa.doc_stride", q.doc_stride, "< model.max_length")?;
                check(
                    self.train.label_smoothing == 0.0,
                    "train.label_smoothing",
                    self.train.label_smoothing,
                    "0 for question_answering",
                )?;
                check(d.folds == 0, "data.folds", d.folds, "0 for question_answering")?;
            }
        }
        self.fault_policy()?;
        self.checkpoint.validate()?;
        self.distributed.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(sets: &[&str]) -> String {
        let mut all = vec!["data.train=t.tsv".to_string(), "model.base=m".to_string()];
        all.extend(sets.iter().map(|s| s.to_string()));
        FinetuneConfig::resolve(None, &all).unwrap_err().to_string()
    }

    #[test]
    fn keys_and_values_are_checked_by_name() {
        assert!(err(&["finetune.method=qlora"]).contains("finetune.method"));
        assert!(err(&["lora.rnak=4"]).contains("rnak"));
        assert!(err(&["train.metric=auc"]).contains("train.metric"));
        assert!(err(&["schedule.kind=plateau"]).contains("schedule.kind"));
        assert!(err(&["data.bad_rows=ignore"]).contains("data.bad_rows"));
        let e = FinetuneConfig::resolve(None, &[]).unwrap_err().to_string();
        assert!(e.contains("data.train"), "{e}");
        let ok = FinetuneConfig::resolve(None, &["data.train=t.tsv".into(), "model.base=m".into()]).unwrap();
        let idx = FinetuneConfig::resolve(
            None,
            &["data.train=t".into(), "model.base=m".into(), "data.label_column=0".into()],
        );
        assert_eq!(idx.unwrap().data.label_column, "0", "a bare integer is a column index");
        assert_eq!((ok.optim.lr, ok.schedule.kind), (2e-5, ScheduleKind::Linear));
        assert_eq!(FinetuneConfig::from_toml_str(&ok.to_toml()).unwrap(), ok);
    }
}
