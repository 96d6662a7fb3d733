//! Prefix tuning (Li & Liang, 2021) as Hugging Face PEFT's `PREFIX_TUNING` does it: N trainable
//! virtual tokens whose keys and values every attention layer reads before the real tokens'.
//! The base model is frozen; the models ([`crate::models`]) build a [`Prefix`] from the store
//! when it holds one and put its keys / values in front of each layer's own — the encoder
//! concatenates them, the decoder pre-fills its KV cache with them — and the real tokens take
//! the positions after the prefix (N, N+1, …), as transformers does with `past_key_values`.
//!
//! ```text
//!   embedding (N, W)                         W = L · 2 · K·D (direct), or
//!   embedding (N, K·D) ─► Linear ─► tanh ─► Linear ─► (N, W)   (reparameterised, `projection`)
//!   (N, W) viewed (N, L, 2, K, D): layer l reads keys [:, l, 0] and values [:, l, 1]
//! ```
//! L layers, K key/value heads (grouped-query models' fewer heads), D head dim; PEFT calls K·D
//! `token_dim` and K `num_attention_heads`. Parameter names follow PEFT without the adapter
//! name: `prompt_encoder.embedding.weight`, `prompt_encoder.transform.{0,2}.{weight,bias}`.
//! PEFT saves the prefix already projected (`prompt_embeddings`, (N, W)), the MLP dropped, and
//! so does [`save_peft`]; a loaded prefix is that table alone.

use super::{seed_for, ParamInfo, ParamKind, ParamStore};
use crate::error::{Error, Result};
use crate::models::ModelSpec;
use crate::ops;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde_json::{json, Value};
use std::path::Path;

/// The virtual tokens' table: their keys and values directly, or the MLP's input.
pub const EMBEDDING: &str = "prompt_encoder.embedding.weight";

/// A parameter of the reparameterisation MLP: `layer` 0 (in) or 2 (out), `which` weight / bias.
pub fn transform_param(layer: usize, which: &str) -> String {
    format!("prompt_encoder.transform.{layer}.{which}")
}

/// Whether a parameter belongs to a prefix.
pub fn is_prefix_param(name: &str) -> bool {
    name.starts_with("prompt_encoder.")
}

/// What a model's layers take as a prefix: L layers of K key/value heads of D dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixShape {
    pub n_layer: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl PrefixShape {
    pub fn of(spec: &ModelSpec) -> Self {
        Self { n_layer: spec.n_layer, n_kv_head: spec.n_kv_head, head_dim: spec.head_dim }
    }
    /// One layer's keys (or values) per virtual token: PEFT's `token_dim`.
    pub fn token_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    /// Every layer's keys and values per virtual token.
    pub fn width(&self) -> usize {
        self.n_layer * 2 * self.token_dim()
    }
}

/// Prefix-tuning hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixSpec {
    pub num_virtual_tokens: usize,
    /// The reparameterisation MLP's hidden width (PEFT's `prefix_projection` with
    /// `encoder_hidden_size`); None: the keys and values are trained directly.
    pub projection: Option<usize>,
}

/// The parameters of a prefix for a model of `shape`.
pub fn params(spec: &PrefixSpec, shape: PrefixShape) -> Vec<ParamInfo> {
    let n = spec.num_virtual_tokens;
    let p = |name: String, shape: Vec<usize>, kind, fans| ParamInfo { name, shape, kind, fans };
    match spec.projection {
        None => vec![p(EMBEDDING.into(), vec![n, shape.width()], ParamKind::Embedding, (n, shape.width()))],
        Some(hidden) => {
            let (c, w) = (shape.token_dim(), shape.width());
            vec![
                p(EMBEDDING.into(), vec![n, c], ParamKind::Embedding, (n, c)),
                p(transform_param(0, "weight"), vec![hidden, c], ParamKind::Matrix, (c, hidden)),
                p(transform_param(0, "bias"), vec![hidden], ParamKind::Bias, (c, hidden)),
                p(transform_param(2, "weight"), vec![w, hidden], ParamKind::Matrix, (hidden, w)),
                p(transform_param(2, "bias"), vec![w], ParamKind::Bias, (hidden, w)),
            ]
        }
    }
}

/// Adds a trainable prefix with PEFT's (torch's) initialisation: the embedding N(0, 1), the
/// MLP's Linears U(±1/√fan_in) for weights and biases alike.
pub fn add_prefix(store: &mut ParamStore, spec: &PrefixSpec, shape: PrefixShape, seed: u64) -> Result<()> {
    let device = store.device().clone();
    for p in params(spec, shape) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &p.name));
        let data: Vec<f32> = match p.kind {
            ParamKind::Embedding => {
                let d = Normal::new(0.0f32, 1.0).expect("std > 0");
                (0..p.numel()).map(|_| d.sample(&mut rng)).collect()
            }
            _ => {
                let bound = 1.0 / (p.fans.0 as f32).sqrt();
                let d = Uniform::new_inclusive(-bound, bound).expect("bound > 0");
                (0..p.numel()).map(|_| d.sample(&mut rng)).collect()
            }
        };
        store.insert(&p.name, Tensor::from_vec(data, p.shape.as_slice(), &device)?, true)?;
    }
    Ok(())
}

/// A model's prefix: views of the store's tensors, its keys and values computed at each forward
/// (they change as the parameters train).
pub struct Prefix {
    embedding: Tensor,
    /// (w0, b0, w2, b2) of the reparameterisation MLP.
    transform: Option<(Tensor, Tensor, Tensor, Tensor)>,
    shape: PrefixShape,
}

impl Prefix {
    /// The prefix in `store` for a model of `shape`, if it holds one.
    pub fn from_store(store: &ParamStore, shape: PrefixShape) -> Result<Option<Self>> {
        if !store.contains(EMBEDDING) {
            return Ok(None);
        }
        let embedding = store.get(EMBEDDING)?;
        let transform = match store.contains(&transform_param(0, "weight")) {
            true => {
                let get = |l, w| store.get(&transform_param(l, w));
                Some((get(0, "weight")?, get(0, "bias")?, get(2, "weight")?, get(2, "bias")?))
            }
            false => None,
        };
        let prefix = Self { embedding, transform, shape };
        let out = prefix.table()?.dim(1)?;
        if out != shape.width() {
            return Err(Error::Invalid(format!(
                "the prefix gives {out} values per virtual token; this model's {} layers of {} key/value heads \
                 × {} dims take {}",
                shape.n_layer,
                shape.n_kv_head,
                shape.head_dim,
                shape.width()
            )));
        }
        Ok(Some(prefix))
    }

    /// Number of virtual tokens.
    pub fn len(&self) -> usize {
        self.embedding.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every virtual token's keys and values, (N, W): the embedding, or the MLP of it.
    pub fn table(&self) -> Result<Tensor> {
        Ok(match &self.transform {
            None => self.embedding.clone(),
            Some((w0, b0, w2, b2)) => {
                let h = ops::linear(&self.embedding, w0, Some(b0), true)?.tanh()?;
                ops::linear(&h, w2, Some(b2), true)?
            }
        })
    }

    /// Each layer's keys and values for a batch of `batch` rows, (B, N, K·D) each, in `dtype`:
    /// the token layout of the models' k / v projections.
    pub fn layers(&self, batch: usize, dtype: DType) -> Result<Vec<(Tensor, Tensor)>> {
        let (n, c) = (self.len(), self.shape.token_dim());
        let table = self.table()?.to_dtype(dtype)?.reshape((n, self.shape.n_layer * 2, c))?;
        let row = |i: usize| -> Result<Tensor> {
            Ok(table.narrow(1, i, 1)?.squeeze(1)?.unsqueeze(0)?.broadcast_as((batch, n, c))?.contiguous()?)
        };
        (0..self.shape.n_layer).map(|l| Ok((row(2 * l)?, row(2 * l + 1)?))).collect()
    }
}

/// The key prefix of the tensors a prompt-learning adapter saves from the base model
/// (`modules_to_save`): the wrapped model is `base_model` itself.
const PEFT_PREFIX: &str = "base_model.";

/// Writes `adapter_config.json` and `adapter_model.safetensors` in PEFT's `PREFIX_TUNING`
/// format into `dir`: `prompt_embeddings` (N, W), the prefix with its MLP applied, and the
/// `saved_tensors` (the head) under `base_model.` names, their modules as `modules_to_save`.
/// PEFT loads it in inference mode.
pub fn save_peft(
    dir: &Path,
    store: &ParamStore,
    spec: &PrefixSpec,
    shape: PrefixShape,
    saved_tensors: &[String],
    base_model: &str,
    task_type: &str,
) -> Result<()> {
    let modules_to_save = super::peft::modules_of(saved_tensors);
    let prefix = Prefix::from_store(store, shape)?.ok_or_else(|| Error::Invalid("the model has no prefix".into()))?;
    let config = json!({
        "peft_type": "PREFIX_TUNING",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": prefix.len(),
        "token_dim": shape.token_dim(),
        "num_attention_heads": shape.n_kv_head,
        "num_layers": shape.n_layer,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": spec.projection.unwrap_or(shape.token_dim()),
        "prefix_projection": spec.projection.is_some(),
        "modules_to_save": if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) },
        "inference_mode": true,
        "init_weights": null,
        "revision": null,
        "auto_mapping": null,
    });
    crate::fsio::write_json_atomic(&dir.join("adapter_config.json"), &config)?;
    let mut tensors = vec![("prompt_embeddings".to_string(), prefix.table()?.detach())];
    for name in saved_tensors {
        tensors.push((format!("{PEFT_PREFIX}{name}"), store.get(name)?));
    }
    let bytes = super::serialize_tensors(tensors.into_iter())?;
    crate::fsio::write_atomic(&dir.join("adapter_model.safetensors"), &bytes)
}

/// Applies a PEFT `PREFIX_TUNING` folder (config already read) to `store`: its
/// `prompt_embeddings` become the prefix table, its `modules_to_save` tensors replace the
/// base's. Returns the replaced tensors' names. The geometry it was made for must be the
/// model's (`shape`): PEFT's `num_layers`, `num_attention_heads`, `token_dim`.
pub fn load_peft(
    dir: &Path,
    cfg: &Value,
    store: &mut ParamStore,
    trainable: bool,
    shape: PrefixShape,
) -> Result<Vec<String>> {
    let cfg_path = dir.join("adapter_config.json");
    check_fits(&cfg_path, cfg, shape)?;
    let bad = |msg: String| Error::format(&cfg_path, msg);
    let num = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    if num("num_transformer_submodules").is_some_and(|s| s != 1) {
        return Err(bad("num_transformer_submodules != 1 (an encoder-decoder prefix) is not supported".into()));
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, store.device())
        .map_err(|e| Error::format(&weights_path, format!("cannot read safetensors: {e}")))?;
    let mut replaced = Vec::new();
    let mut table = None;
    for (key, t) in tensors {
        let t = t.to_dtype(DType::F32)?;
        if key == "prompt_embeddings" {
            table = Some(t);
            continue;
        }
        // Not `base_model.model.` as LoRA's: a prompt-learning PeftModel wraps the model itself
        // (and Llama's own names start with `model.`).
        let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        if !store.contains(name) {
            return Err(Error::format(&weights_path, format!("tensor `{key}` matches no parameter of the base model")));
        }
        store.set(name, &t).map_err(|e| Error::format(&weights_path, e.to_string()))?;
        replaced.push(name.to_string());
    }
    let table = table.ok_or_else(|| Error::format(&weights_path, "no `prompt_embeddings` tensor"))?;
    let (n, w) = table.dims2().map_err(|_| Error::format(&weights_path, "`prompt_embeddings` is not 2-D"))?;
    if num("num_virtual_tokens").is_some_and(|v| v != n) {
        return Err(bad(format!("num_virtual_tokens does not match prompt_embeddings' {n} rows")));
    }
    if w != shape.width() {
        return Err(bad(format!(
            "prompt_embeddings is {n} × {w}; the base model's {} layers × 2 × token_dim {} take {}",
            shape.n_layer,
            shape.token_dim(),
            shape.width()
        )));
    }
    store.insert(EMBEDDING, table, trainable)?;
    Ok(replaced)
}

/// Checks an adapter config's geometry against the model it is applied to.
fn check_fits(cfg_path: &Path, cfg: &Value, shape: PrefixShape) -> Result<()> {
    let num = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let want =
        [("num_layers", shape.n_layer), ("num_attention_heads", shape.n_kv_head), ("token_dim", shape.token_dim())];
    for (key, value) in want {
        if let Some(have) = num(key).filter(|h| *h != value) {
            return Err(Error::format(
                cfg_path,
                format!("{key} = {have}, but the base model has {value} (a prefix made for another model)"),
            ));
        }
    }
    Ok(())
}
