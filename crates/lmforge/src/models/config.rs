//! `[model]`: a preset and any overrides of its shape, dropout and initialisation. The
//! section is the models'; [`super::ModelSpec::from_config`] resolves it.

use super::{ModelSpec, Style};
use crate::error::{Error, Result};
use crate::nn::InitScheme;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A preset name plus optional overrides of its fields (resolved by `models::ModelSpec`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub preset: String,
    pub style: Option<Style>,
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
    pub init: InitScheme,
    /// Start from these weights instead (continued pretraining): a run dir, checkpoint dir or
    /// Hugging Face folder. The shape is the source's (`preset` is then ignored; a shape key set
    /// here must agree with it), and so is the tokenizer unless `data.tokenizer` names one.
    /// Left out of the saved config while empty.
    #[serde(skip_serializing_if = "path_is_empty")]
    pub init_from: PathBuf,
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl ModelConfig {
    /// That every shape key set here agrees with `source` (the spec of `model.init_from`): an
    /// error names the key and both values.
    pub fn check_agrees_with(&self, source: &ModelSpec) -> Result<()> {
        fn differ<T: PartialEq + std::fmt::Debug>(key: &str, set: Option<T>, source: T) -> Result<()> {
            match set {
                Some(v) if v != source => Err(Error::config(
                    key,
                    format!("{v:?} conflicts with {source:?} of model.init_from (leave it unset or make it agree)"),
                )),
                _ => Ok(()),
            }
        }
        let s = source;
        differ("model.style", self.style, s.style)?;
        differ("model.n_layer", self.n_layer, s.n_layer)?;
        differ("model.n_head", self.n_head, s.n_head)?;
        differ("model.n_kv_head", self.n_kv_head, s.n_kv_head)?;
        differ("model.d_model", self.d_model, s.d_model)?;
        differ("model.d_ff", self.d_ff, s.d_ff)?;
        differ("model.context", self.context, s.context)?;
        differ("model.vocab_size", self.vocab_size, s.vocab_size)?;
        differ("model.norm_eps", self.norm_eps, s.norm_eps)?;
        differ("model.rope_theta", self.rope_theta, s.rope_theta)?;
        differ("model.tie_embeddings", self.tie_embeddings, s.tie_embeddings)?;
        differ("model.type_vocab_size", self.type_vocab_size, s.type_vocab_size)
    }
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
            init: InitScheme::Gpt2,
            init_from: PathBuf::new(),
        }
    }
}
