//! `[model]`: a preset and any overrides of its shape, dropout and initialisation. The
//! section is the models'; [`super::ModelSpec::from_config`] resolves it.

use super::Style;
use crate::nn::InitScheme;
use serde::{Deserialize, Serialize};

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
        }
    }
}
