//! A sequence classifier on any lmforge backbone, with Hugging Face's `*ForSequenceClassification`
//! semantics and names: a BERT encoder classifies its pooled [CLS] through dropout and a
//! `classifier` Linear with bias; a GPT-2 / Llama decoder classifies the hidden state of each
//! row's last real token through a `score` Linear without bias. Also: which parameters train
//! for each method (full / LoRA / adapters), the saved model folder (HF config with
//! `id2label`, merged weights, tokenizer, the fine-tune config, and PEFT files for LoRA), and
//! loading it back.
//!
//! Dimension letters: B batch, T longest row, C d_model, L labels.

use super::batching::Batch;
use super::config::{FinetuneConfig, Method};
use super::dataset::LabelMap;
use crate::checkpoint::{resolve_model_dir, verify_manifest, write_manifest, Network};
use crate::error::{Error, IoContext, Result};
use crate::fsio::StagedDir;
use crate::models::{hf, EncoderInput, Family, HeadKind, ModelSpec, ParamInfo, ParamKind};
use crate::nn::peft::{self, LinearModule, LoraSpec};
use crate::nn::prefix::{self, PrefixShape};
use crate::nn::recompute::Checkpointing;
use crate::nn::{seed_for, DropoutRng, Linear, ParamStore};
use crate::ops;
use crate::tokenizer::TextTokenizer;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The classification head's module name, as in the HF class of each style.
pub fn head_module(spec: &ModelSpec, kind: HeadKind) -> &'static str {
    spec.arch().classification_head(kind).module
}

/// HF's class for this style with a classification head.
pub fn hf_architecture(spec: &ModelSpec, kind: HeadKind) -> &'static str {
    spec.arch().classification_head(kind).hf_class
}

/// The head's parameters: weight (L, C), and a bias where the family's head has one.
pub fn head_params(spec: &ModelSpec, kind: HeadKind, num_labels: usize) -> Vec<ParamInfo> {
    let (m, c) = (head_module(spec, kind), spec.d_model);
    let mut out = vec![ParamInfo {
        name: format!("{m}.weight"),
        shape: vec![num_labels, c],
        kind: ParamKind::Matrix,
        fans: (c, num_labels),
    }];
    if spec.arch().classification_head(kind).bias {
        out.push(ParamInfo {
            name: format!("{m}.bias"),
            shape: vec![num_labels],
            kind: ParamKind::Bias,
            fans: (c, num_labels),
        });
    }
    out
}

/// Pretraining heads a classifier does not use (the LM head, BERT's MLM / NSP heads).
fn is_pretraining_head(name: &str) -> bool {
    name == "lm_head.weight" || name.starts_with("cls.")
}

/// The backbone's parameters: the model's, less its pretraining heads and what the head's HF
/// class leaves out (BERT's pooler under a token head).
pub fn backbone_params(spec: &ModelSpec, kind: HeadKind) -> Vec<ParamInfo> {
    spec.params().into_iter().filter(|p| !left_out(spec, kind, &p.name)).collect()
}

/// Whether a tensor of a base folder is left out under a `kind` head: a pretraining head, or a
/// backbone part the head's class does not have.
fn left_out(spec: &ModelSpec, kind: HeadKind, name: &str) -> bool {
    is_pretraining_head(name) || spec.arch().classification_head(kind).unused.iter().any(|u| name.starts_with(u))
}

/// LoRA's default targets: the attention query and value projections (the LoRA paper's choice).
pub fn default_lora_targets(spec: &ModelSpec) -> Vec<String> {
    spec.arch().lora_targets().iter().map(|s| s.to_string()).collect()
}

/// The Linears that get bottleneck adapters: the configured targets, or every output
/// projection (after attention and after the MLP).
pub fn adapter_modules(spec: &ModelSpec, targets: &[String]) -> Result<Vec<LinearModule>> {
    let all = peft::linear_modules(&backbone_params(spec, HeadKind::Sequence));
    if targets.is_empty() {
        return Ok(all.into_iter().filter(|m| m.output_projection).collect());
    }
    Ok(peft::select_modules(&all, targets, "adapter.target_modules")?.into_iter().cloned().collect())
}

/// The LoRA settings of a config, targets resolved for `spec`.
pub fn lora_spec(spec: &ModelSpec, cfg: &FinetuneConfig) -> LoraSpec {
    let l = &cfg.lora;
    let targets = if l.target_modules.is_empty() { default_lora_targets(spec) } else { l.target_modules.clone() };
    LoraSpec { rank: l.rank, alpha: l.alpha, dropout: l.dropout, targets }
}

/// The backbone, its features (pooled for a sequence head, every position for a token head)
/// and the head.
pub struct Classifier {
    pub spec: ModelSpec,
    pub kind: HeadKind,
    network: Network,
    head: Linear,
    /// Dropout on the features (BERT's classifier dropout, every token head's; HF's GPT-2 /
    /// Llama sequence heads have none).
    head_dropout: f64,
}

impl Classifier {
    pub fn new(spec: &ModelSpec, params: &ParamStore, dropout: f64, kind: HeadKind) -> Result<Self> {
        let head = spec.arch().classification_head(kind);
        // BERT's sequence head and every token head have dropout before the Linear; the QA
        // heads (`*ForQuestionAnswering`) and GPT-2 / Llama sequence heads have none.
        let has_dropout = match kind {
            HeadKind::Sequence => spec.arch().family() == Family::Encoder,
            HeadKind::Token => true,
            HeadKind::Span => false,
        };
        let head_dropout = if has_dropout { dropout } else { 0.0 };
        let head = params.linear(head.module, true, head.bias)?;
        Ok(Self { spec: spec.clone(), kind, network: Network::new(spec, params)?, head, head_dropout })
    }

    /// Activation checkpointing in a decoder backbone (blocks recomputed in the backward); an
    /// encoder has none, and is refused, as is a count of more blocks than the backbone has.
    pub fn with_activation_checkpointing(mut self, checkpointing: Checkpointing) -> Result<Self> {
        checkpointing.check(self.spec.n_layer, "train.activation_checkpointing")?;
        self.network =
            match self.network {
                Network::Decoder(d) => Network::Decoder(d.with_activation_checkpointing(checkpointing)),
                Network::Encoder(_) if checkpointing.is_on() => return Err(Error::config(
                    "train.activation_checkpointing",
                    "is implemented for decoder backbones (gpt2 / llama styles); BERT-style encoders train without it",
                )),
                n => n,
            };
        Ok(self)
    }

    /// Logits, f32: (B, L) for a sequence head, (B, T, L) for a token or span head (padding positions
    /// included; callers read the real ones). With a dropout generator (training), dropout
    /// applies in the backbone, LoRA inputs and before the head.
    pub fn logits(&self, batch: &Batch, mut dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        let features = match (&self.network, self.kind) {
            (Network::Encoder(enc), HeadKind::Token | HeadKind::Span) => {
                let input = EncoderInput {
                    ids: batch.ids.clone(),
                    type_ids: batch.type_ids.clone(),
                    lengths: batch.lengths.clone(),
                };
                enc.hidden(&input, dropout.as_deref_mut())?
            }
            (Network::Decoder(dec), HeadKind::Token | HeadKind::Span) => {
                dec.hidden(&batch.ids, 0, None, dropout.as_deref_mut())?
            }
            (Network::Encoder(enc), HeadKind::Sequence) => {
                let input = EncoderInput {
                    ids: batch.ids.clone(),
                    type_ids: batch.type_ids.clone(),
                    lengths: batch.lengths.clone(),
                };
                let h = enc.hidden(&input, dropout.as_deref_mut())?;
                enc.pooled(&h)?
            }
            (Network::Decoder(dec), HeadKind::Sequence) => {
                // The last real token of each row: causal attention never lets it see the
                // right padding, so padded and unpadded rows give the same features.
                let h = dec.hidden(&batch.ids, 0, None, dropout.as_deref_mut())?; // (B, T, C)
                let (b, t, c) = h.dims3()?;
                let rows: Vec<u32> = batch.lengths.iter().enumerate().map(|(i, &n)| (i * t + n - 1) as u32).collect();
                h.reshape((b * t, c))?.index_select(&Tensor::from_vec(rows, b, h.device())?, 0)?
            }
        };
        let features = match dropout {
            Some(d) => d.apply_with(&features, self.head_dropout)?,
            None => features,
        };
        Ok(self.head.forward(&features)?.to_dtype(candle_core::DType::F32)?)
    }
}

/// Mean cross-entropy of `logits` (B, L) against `labels` (B), with label smoothing ε as
/// torch's `CrossEntropyLoss(label_smoothing=ε)`: (1−ε)·NLL + ε·mean over classes of −log p.
pub fn loss(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    if smoothing == 0.0 {
        return Ok(ops::cross_entropy(logits, labels)?);
    }
    let logp = ops::log_softmax_last_dim(logits)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
    let uniform = logp.mean_all()?.neg()?;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// The head a folder's `config.json` names in `architectures` (None: neither classification
/// class).
pub fn head_kind_of(config: &Path) -> Result<Option<HeadKind>> {
    let text = std::fs::read_to_string(config).at(config)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(config, format!("invalid JSON: {e}")))?;
    let classes = v.get("architectures").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(classes.iter().filter_map(Value::as_str).find_map(|c| {
        if c.ends_with("ForTokenClassification") {
            Some(HeadKind::Token)
        } else if c.ends_with("ForQuestionAnswering") {
            Some(HeadKind::Span)
        } else if c.ends_with("ForSequenceClassification") {
            Some(HeadKind::Sequence)
        } else {
            None
        }
    }))
}

/// PEFT's `task_type` of an adapter for a `kind` head.
fn peft_task_type(kind: HeadKind) -> &'static str {
    match kind {
        HeadKind::Sequence => "SEQ_CLS",
        HeadKind::Token => "TOKEN_CLS",
        HeadKind::Span => "QUESTION_ANS",
    }
}

/// Mean squared error of one-output logits (B, 1) against targets (B), as transformers'
/// `MSELoss()(logits.squeeze(), labels.squeeze())` for `num_labels = 1`.
pub fn mse_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let pred = logits.squeeze(1)?;
    let targets = targets.to_dtype(pred.dtype())?;
    Ok((pred - targets)?.sqr()?.mean_all()?)
}

/// Whether a classifier folder is a regression (one output): `problem_type = "regression"`,
/// or one label without a `problem_type`, as transformers decides at its forward.
pub fn is_regression(config: &Path, labels: &LabelMap) -> Result<bool> {
    let text = std::fs::read_to_string(config).at(config)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(config, format!("invalid JSON: {e}")))?;
    Ok(match v.get("problem_type").and_then(Value::as_str) {
        Some(p) => p == "regression",
        None => labels.len() == 1,
    })
}

/// Reads `config.json`'s `id2label` (ids 0..L-1).
pub fn read_labels(config: &Path) -> Result<Option<LabelMap>> {
    let text = std::fs::read_to_string(config).at(config)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(config, format!("invalid JSON: {e}")))?;
    let Some(map) = v.get("id2label").and_then(Value::as_object) else { return Ok(None) };
    let mut labels = vec![None; map.len()];
    for (k, name) in map {
        let id: usize = k.parse().map_err(|_| Error::format(config, format!("id2label key {k:?} is not an id")))?;
        let slot = labels.get_mut(id).ok_or_else(|| Error::format(config, format!("id2label id {id} out of range")))?;
        *slot = Some(name.as_str().unwrap_or_default().to_string());
    }
    let labels: Option<Vec<String>> = labels.into_iter().collect();
    labels.map(|labels| Some(LabelMap { labels })).ok_or_else(|| Error::format(config, "id2label ids are not 0..L-1"))
}

/// Pad id for batches: the tokenizer's pad token, else end-of-text, else 0. Padding never
/// reaches the features (masked in the encoder, after the last token in the decoder).
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    ["[PAD]", "<pad>"].iter().find_map(|t| tokenizer.token_id(t)).or_else(|| tokenizer.eos_id()).unwrap_or(0)
}

/// The base model's weights for fine-tuning: the backbone (fp16 / bf16 converted to f32), and
/// the head when the folder is already a classifier for the same labels (continued
/// fine-tuning); otherwise the head is left out, to be initialised.
pub fn load_base(
    path: &Path,
    labels: &LabelMap,
    kind: HeadKind,
    device: &Device,
) -> Result<(ModelSpec, ParamStore, TextTokenizer)> {
    let folder = resolve_model_dir(path)?;
    let config = folder.join("config.json");
    let spec = hf::read_config(&config)?;
    let same_kind = head_kind_of(&config)? == Some(kind);
    let reuse_head = same_kind && read_labels(&config)?.is_some_and(|l| &l == labels);
    let head = head_module(&spec, kind);
    let mut params = backbone_params(&spec, kind);
    if reuse_head {
        params.extend(head_params(&spec, kind, labels.len()));
    }
    let (store, _) = ParamStore::load_with(
        &folder.join("model.safetensors"),
        &params,
        device,
        &|k| {
            let name = hf::param_name(&spec, k)?;
            // Another head (another kind's, or one for other labels) is left for a fresh one.
            let foreign_head = HeadKind::ALL
                .iter()
                .map(|k| spec.arch().classification_head(*k).module)
                .any(|h| (!reuse_head || h != head) && name.strip_prefix(h).is_some_and(|r| r.starts_with('.')));
            (!left_out(&spec, kind, &name) && !foreign_head).then_some(name)
        },
        &|_| false,
    )?;
    let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"))?;
    Ok((spec, store, tokenizer))
}

/// What a method trains, for the report at the start of a run and in results.json.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamReport {
    pub method: String,
    pub total_params: usize,
    pub trainable_params: usize,
    pub trainable_fraction: f64,
    pub optimizer_state_bytes: usize,
}

/// Sets up the method on a freshly loaded base: freezes the base (LoRA / adapters / prefix;
/// norms stay trainable with `finetune.train_norms`), initialises the head if the base had
/// none, adds the LoRA factors, adapters or prefix. Returns the LoRA settings when the method
/// is LoRA.
pub fn prepare(
    store: &mut ParamStore,
    spec: &ModelSpec,
    cfg: &FinetuneConfig,
    labels: &LabelMap,
) -> Result<Option<LoraSpec>> {
    let seed = cfg.train.seed;
    let method = cfg.finetune.method;
    let kind = cfg.head_kind();
    if method != Method::Full {
        let norms: Vec<String> = backbone_params(spec, kind)
            .into_iter()
            .filter(|p| matches!(p.kind, ParamKind::NormWeight | ParamKind::NormBias))
            .map(|p| p.name)
            .collect();
        let head = head_module(spec, kind);
        let train_norms = cfg.finetune.train_norms;
        let head = format!("{head}.");
        store.freeze_where(|n| !(n.starts_with(&head) || (train_norms && norms.iter().any(|m| m == n))));
    }
    for p in head_params(spec, kind, labels.len()) {
        if !store.contains(&p.name) {
            let t = match p.kind {
                ParamKind::Bias => Tensor::zeros(p.shape.as_slice(), DType::F32, store.device())?,
                _ => {
                    // HF's init for the head: N(0, initializer_range = 0.02).
                    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &p.name));
                    let d = Normal::new(0.0f32, 0.02).expect("std > 0");
                    let v: Vec<f32> = (0..p.numel()).map(|_| d.sample(&mut rng)).collect();
                    Tensor::from_vec(v, p.shape.as_slice(), store.device())?
                }
            };
            store.insert(&p.name, t, true)?;
        }
    }
    match method {
        Method::Lora => {
            let l = lora_spec(spec, cfg);
            let all = peft::linear_modules(&backbone_params(spec, kind));
            let chosen = peft::select_modules(&all, &l.targets, "lora.target_modules")?;
            peft::add_lora(store, &chosen, &l, seed)?;
            Ok(Some(l))
        }
        Method::Adapter => {
            let mods = adapter_modules(spec, &cfg.adapter.target_modules)?;
            peft::add_adapters(store, &mods.iter().collect::<Vec<_>>(), cfg.adapter.size, seed)?;
            Ok(None)
        }
        Method::Prefix => {
            let shape = PrefixShape::of(spec);
            prefix::add_prefix(store, &cfg.prefix.spec(shape), shape, seed)?;
            Ok(None)
        }
        Method::Full => Ok(None),
    }
}

/// Writes the model folder: `config.json` (the HF classification class, `id2label`,
/// `label2id`), `model.safetensors` (LoRA merged into the base weights; adapter and prefix
/// weights kept under their own names), `tokenizer.json`, `finetune.toml`, and for LoRA and
/// prefix tuning the adapter in PEFT's format in [`ADAPTER_DIR`] (with its own manifest);
/// `manifest.json` (sizes and SHA-256, verified on load) last. Staged and renamed into place.
pub fn save(
    dir: &Path,
    spec: &ModelSpec,
    labels: &LabelMap,
    store: &ParamStore,
    tokenizer: &TextTokenizer,
    cfg: &FinetuneConfig,
    lora: Option<&LoraSpec>,
) -> Result<PathBuf> {
    let staged = StagedDir::new(dir)?;
    let p = staged.path();
    let mut config = hf::config_json(spec, tokenizer.eos_id());
    let kind = cfg.head_kind();
    config["architectures"] = json!([hf_architecture(spec, kind)]);
    config["id2label"] = labels.labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
    config["label2id"] = labels.labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    config["pad_token_id"] = json!(pad_id(tokenizer));
    if kind == HeadKind::Sequence {
        let regression = cfg.task.kind == super::config::TaskKind::Regression;
        config["problem_type"] = json!(if regression { "regression" } else { "single_label_classification" });
    }
    let text = serde_json::to_string_pretty(&config).expect("json");
    std::fs::write(p.join("config.json"), text).at(p.join("config.json"))?;
    let weights = crate::nn::serialize_tensors(peft::merged_tensors(store)?.into_iter())?;
    std::fs::write(p.join("model.safetensors"), weights).at(p.join("model.safetensors"))?;
    tokenizer.save(&p.join("tokenizer.json"))?;
    std::fs::write(p.join("finetune.toml"), cfg.to_toml()).at(p.join("finetune.toml"))?;
    // PEFT saves the head (and any other trained base tensor) as `modules_to_save`.
    let saved: Vec<String> =
        store.vars().keys().filter(|n| !peft::is_lora_factor(n) && !prefix::is_prefix_param(n)).cloned().collect();
    let modules = peft::modules_of(&saved);
    let base = cfg.model.base.display().to_string();
    let adapter = p.join(ADAPTER_DIR);
    let task_type = peft_task_type(kind);
    match (cfg.finetune.method, lora) {
        (Method::Lora, Some(l)) => {
            std::fs::create_dir_all(&adapter).at(&adapter)?;
            peft::save_peft(&adapter, store, l, &l.targets, &modules, &saved, &base, Some(task_type))?;
            write_manifest(&adapter)?;
        }
        (Method::Prefix, _) => {
            std::fs::create_dir_all(&adapter).at(&adapter)?;
            let shape = PrefixShape::of(spec);
            prefix::save_peft(&adapter, store, &cfg.prefix.spec(shape), shape, &saved, &base, task_type)?;
            write_manifest(&adapter)?;
        }
        _ => {}
    }
    write_manifest(p)?;
    staged.commit()
}

/// The sub-folder of a LoRA classifier's model folder that holds the unmerged adapter in
/// PEFT's format. Not the model folder itself: transformers' `from_pretrained` on a folder with
/// `adapter_config.json` loads that adapter onto `base_model_name_or_path` instead of the
/// folder's merged weights, and its adapter path leaves the trained head out (measured 0.17
/// max rel off on a token classifier).
pub const ADAPTER_DIR: &str = "adapter";

/// A classifier folder loaded for inference.
pub struct LoadedClassifier {
    pub spec: ModelSpec,
    pub labels: LabelMap,
    pub params: ParamStore,
    pub classifier: Classifier,
    pub tokenizer: TextTokenizer,
    /// The fine-tune config it was trained with (reader settings, max length), when lmforge
    /// wrote the folder; defaults otherwise.
    pub config: Option<FinetuneConfig>,
    pub source: PathBuf,
    /// A one-output regression head (its single logit is the predicted value).
    pub regression: bool,
}

impl LoadedClassifier {
    /// `path`: a fine-tune run dir (its `model/`), a model folder, or any HF
    /// `*ForSequenceClassification` / `*ForTokenClassification` folder of a supported
    /// architecture (the class in `config.json`'s `architectures` says which head).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_adapter(path, None, device)
    }

    /// [`Self::load`] with a PEFT LoRA folder applied on top (its `modules_to_save`, such as
    /// the head, replace the folder's).
    pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<Self> {
        let path =
            if path.join("model").join("config.json").is_file() { path.join("model") } else { path.to_path_buf() };
        let folder = resolve_model_dir(&path)?;
        verify_manifest(&folder)?;
        let config_path = folder.join("config.json");
        let spec = hf::read_config(&config_path)?;
        // A folder without `architectures` (or another class) is read as a sequence classifier.
        let kind = head_kind_of(&config_path)?.unwrap_or(HeadKind::Sequence);
        // A span head's two outputs need no names (transformers 5 saves no default `id2label`).
        let labels = match read_labels(&config_path)? {
            Some(labels) => labels,
            None if kind == HeadKind::Span => super::qa_run::span_labels(),
            None => {
                return Err(Error::format(
                    &config_path,
                    "no `id2label`: not a classification model (fine-tune one with `lmforge finetune`)",
                ))
            }
        };
        let ft_path = folder.join("finetune.toml");
        let config = if ft_path.is_file() {
            let text = std::fs::read_to_string(&ft_path).at(&ft_path)?;
            Some(FinetuneConfig::from_toml_str(&text).map_err(|e| Error::format(&ft_path, e.to_string()))?)
        } else {
            None
        };
        let mut params = backbone_params(&spec, kind);
        params.extend(head_params(&spec, kind, labels.len()));
        match config.as_ref().map(|c| (c, c.finetune.method)) {
            Some((c, Method::Adapter)) => {
                let mods = adapter_modules(&spec, &c.adapter.target_modules)?;
                params.extend(peft::adapter_params(&mods.iter().collect::<Vec<_>>(), c.adapter.size));
            }
            Some((c, Method::Prefix)) => {
                let shape = PrefixShape::of(&spec);
                params.extend(prefix::params(&c.prefix.spec(shape), shape));
            }
            _ => {}
        }
        let (mut params, _) = ParamStore::load_with(
            &folder.join("model.safetensors"),
            &params,
            device,
            &|k| hf::param_name(&spec, k).filter(|n| !left_out(&spec, kind, n)),
            &|_| false,
        )?;
        if let Some(dir) = adapter {
            verify_manifest(dir)?;
            peft::load_peft(dir, &mut params, false, PrefixShape::of(&spec))?;
        }
        let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"))?;
        let classifier = Classifier::new(&spec, &params, 0.0, kind)?;
        let regression = kind == HeadKind::Sequence && is_regression(&config_path, &labels)?;
        Ok(Self { spec, labels, params, classifier, tokenizer, config, source: folder, regression })
    }

    /// Tokens per example: the trained `model.max_length`, else the context.
    pub fn max_length(&self) -> usize {
        match self.config.as_ref().map(|c| c.model.max_length) {
            Some(n) if n > 0 => n.min(self.spec.context),
            _ => self.spec.context,
        }
    }
}
