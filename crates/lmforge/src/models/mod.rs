//! Model shapes and the architecture registry. A [`ModelSpec`] is the resolved description of
//! one network — a decoder (GPT-2 or Llama style) or a BERT encoder: it names every parameter
//! with its Hugging Face key and shape, so parameter counts and memory estimates come without
//! allocating a single weight, and the same list drives initialisation, loading and saving.
//!
//! What differs between families lives in one file each — [`gpt2`], [`llama`], [`bert`] —
//! behind the [`arch::Architecture`] trait: presets, parameter lists, the Hugging Face name map
//! and `config.json` mapping, classification heads, LoRA defaults, decoder wiring and memory
//! terms. [`Style::arch`] is the registry. The networks are generic: [`decoder`] (pre-norm
//! causal decoder) and [`encoder`] (BERT); [`hf`] reads and writes `config.json` through the
//! registry. `models/README.md` says how to add an architecture.

pub mod arch;
pub mod bert;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod gpt2;
pub mod hf;
pub mod llama;
pub mod memory;
mod ragged;

use crate::error::{Error, Result};
pub use config::ModelConfig;
use serde::{Deserialize, Serialize};

pub use arch::{Architecture, ClassificationHead, Family, HeadKind};
pub use decoder::{Decoder, KvCache, Piece};
pub use encoder::{Encoder, EncoderInput};
pub use memory::CpuTrainMemory;

/// The architectures: two decoder styles and the BERT encoder. Each names its
/// [`Architecture`] in [`Style::arch`], the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// LayerNorm, GELU-tanh MLP, learned positions, biases, (by default) tied head.
    Gpt2,
    /// RMSNorm, SwiGLU MLP, RoPE (rotate-half), grouped-query attention, no biases, untied head.
    Llama,
    /// Bidirectional encoder: post-LayerNorm blocks, erf GELU, learned positions and token
    /// types, pooler, MLM head tied to the word embeddings, NSP head (`BertForPreTraining`).
    Bert,
}

impl Style {
    /// The registry: every architecture lmforge implements, by style.
    pub fn arch(self) -> &'static dyn Architecture {
        match self {
            Style::Gpt2 => &gpt2::Gpt2,
            Style::Llama => &llama::Llama,
            Style::Bert => &bert::Bert,
        }
    }

    pub const ALL: [Style; 3] = [Style::Gpt2, Style::Llama, Style::Bert];
}

/// A fully resolved decoder shape: no defaults left to fill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub style: Style,
    pub vocab_size: usize,
    /// Maximum sequence length (learned positions for GPT-2, RoPE table length for Llama).
    pub context: usize,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    /// Token-type (segment) embeddings, BERT only (0 for decoders).
    #[serde(default)]
    pub type_vocab_size: usize,
}

/// Parameters as named shapes (defined with the parameter store, which initialises them).
pub use crate::nn::{ParamInfo, ParamKind};

/// Upper bounds of a model's sizes (vocabulary, context, widths), layers, heads and parameters:
/// 100x beyond today's largest models, and small enough that memory estimates cannot overflow.
pub const MAX_WIDTH: usize = 1 << 22;
pub const MAX_LAYERS: usize = 4096;
pub const MAX_HEADS: usize = 1 << 14;
pub const MAX_PARAMS: u128 = 1 << 50;

/// Named shapes users can start from, in the order `lmforge presets` lists them (each defined
/// by its architecture's file); `model.*` keys override any field.
pub const PRESETS: &[&str] = &[
    "tiny",
    "quickstart",
    "gpt-small",
    "gpt2-124m",
    "gpt2-355m",
    "llama-tiny",
    "llama-small",
    "llama-1b",
    "llama-7b",
    "bench-gpt",
    "bench-llama",
    "bert-tiny",
    "bert-mini",
    "bert-quickstart",
    "bert-base",
];

impl ModelSpec {
    /// The shape behind a preset name.
    pub fn preset(name: &str) -> Option<Self> {
        Style::ALL.iter().find_map(|s| s.arch().preset(name))
    }

    /// This spec's architecture.
    pub fn arch(&self) -> &'static dyn Architecture {
        self.style.arch()
    }

    /// Resolves `[model]`: the preset, then each explicit override, then validation.
    pub fn from_config(m: &ModelConfig) -> Result<Self> {
        let mut s = Self::preset(&m.preset).ok_or_else(|| {
            Error::config(
                "model.preset",
                format!("unknown preset {:?}; expected one of {}", m.preset, PRESETS.join(", ")),
            )
        })?;
        if let Some(style) = m.style {
            s.style = style;
            // A style switch keeps the preset's sizes but not its style-specific fields.
            s.type_vocab_size = if s.arch().family() == Family::Encoder { s.type_vocab_size.max(2) } else { 0 };
        }
        let head_dim_was_derived = s.head_dim == s.d_model / s.n_head;
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = m.$field { s.$field = v; } )* };
        }
        take!(
            n_layer,
            n_head,
            d_model,
            d_ff,
            context,
            vocab_size,
            norm_eps,
            rope_theta,
            tie_embeddings,
            type_vocab_size
        );
        let gqa = s.arch().grouped_query_attention();
        s.n_kv_head = m.n_kv_head.unwrap_or(if gqa { s.n_kv_head.min(s.n_head) } else { s.n_head });
        if head_dim_was_derived && s.n_head > 0 {
            s.head_dim = s.d_model / s.n_head;
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks the shape: every size positive and below the limits ([`MAX_WIDTH`], ...), heads
    /// dividing the width, norms and RoPE settings valid.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("model.vocab_size", self.vocab_size),
            ("model.context", self.context),
            ("model.d_model", self.d_model),
            ("model.n_layer", self.n_layer),
            ("model.n_head", self.n_head),
            ("model.n_kv_head", self.n_kv_head),
            ("model.d_ff", self.d_ff),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "invalid value 0; expected >= 1"));
            }
        }
        // Far beyond any real model, and small enough that no size computed from them
        // overflows: a hostile config.json is refused here, before anything is allocated.
        let limits = [
            ("model.vocab_size", self.vocab_size, MAX_WIDTH),
            ("model.context", self.context, MAX_WIDTH),
            ("model.d_model", self.d_model, MAX_WIDTH),
            ("model.d_ff", self.d_ff, MAX_WIDTH),
            ("model.n_layer", self.n_layer, MAX_LAYERS),
            ("model.n_head", self.n_head, MAX_HEADS),
            ("model.n_kv_head", self.n_kv_head, MAX_HEADS),
            ("model.head_dim", self.head_dim, MAX_WIDTH),
        ];
        for (key, v, max) in limits {
            if v > max {
                return Err(Error::config(key, format!("invalid value {v}; expected at most {max}")));
            }
        }
        let params: u128 = self.params().iter().map(|p| p.shape.iter().map(|&d| d as u128).product::<u128>()).sum();
        if params > MAX_PARAMS {
            return Err(Error::config("model", format!("{params} parameters; at most {MAX_PARAMS} are supported")));
        }
        if self.n_head % self.n_kv_head != 0 {
            return Err(Error::config(
                "model.n_kv_head",
                format!("n_head {} is not a multiple of n_kv_head {}", self.n_head, self.n_kv_head),
            ));
        }
        self.arch().validate(self)?;
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(Error::config("model.norm_eps", "norm_eps and rope_theta must be positive"));
        }
        Ok(())
    }

    /// Every parameter in Hugging Face naming, in a stable order.
    pub fn params(&self) -> Vec<ParamInfo> {
        self.arch().params(self)
    }

    /// Exact parameter count (tied weights counted once), without allocating.
    pub fn num_params(&self) -> u64 {
        self.params().iter().map(|p| p.numel() as u64).sum()
    }

    /// Name of the token-embedding table (also the LM head when tied).
    pub fn embedding_name(&self) -> &'static str {
        self.arch().embedding_name()
    }

    /// Forward + backward FLOPs per trained token: 6 per weight (matmuls) plus attention's
    /// 12·L·T·d (QKᵀ and AV, forward and backward), as in the PaLM / nanoGPT estimates.
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let non_embedding: u64 = self
            .params()
            .iter()
            .filter(|p| p.kind != ParamKind::Embedding || (self.tie_embeddings && p.name == self.embedding_name()))
            .map(|p| p.numel() as u64)
            .sum();
        6.0 * non_embedding as f64 + 12.0 * (self.n_layer * seq_len * self.n_head * self.head_dim) as f64
    }

    /// Exact parameter counts by component, from [`Self::params`] (tied weights counted once,
    /// as embeddings).
    pub fn param_breakdown(&self) -> ParamBreakdown {
        let mut out = ParamBreakdown::default();
        for p in self.params() {
            let n = p.numel() as u64;
            let slot = match p.kind {
                ParamKind::Embedding => &mut out.embeddings,
                ParamKind::NormWeight | ParamKind::NormBias => &mut out.norms,
                _ if p.name == "lm_head.weight" || p.name.starts_with("cls.") || p.name.contains(".pooler.") => {
                    &mut out.head
                }
                _ if p.name.contains(".attn.") || p.name.contains(".self_attn.") || p.name.contains(".attention.") => {
                    &mut out.attention
                }
                _ => &mut out.mlp,
            };
            *slot += n;
        }
        out
    }
}

/// Parameters by component; the fields sum to [`ModelSpec::num_params`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ParamBreakdown {
    /// Token (and GPT-2 position) embeddings; the LM head too when tied.
    pub embeddings: u64,
    /// Q, K, V and output projections with their biases.
    pub attention: u64,
    /// MLP matrices with their biases.
    pub mlp: u64,
    /// Norm gains and biases.
    pub norms: u64,
    /// The untied LM head (0 when tied to the embedding); BERT's pooler and pretraining heads.
    pub head: u64,
}

impl ParamBreakdown {
    pub fn total(&self) -> u64 {
        self.embeddings + self.attention + self.mlp + self.norms + self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_parameter_counts() {
        assert_eq!(ModelSpec::preset("gpt2-124m").unwrap().num_params(), 124_439_808);
        assert_eq!(ModelSpec::preset("llama-7b").unwrap().num_params(), 6_738_415_616);
        // pytorch_gpt_bench.py's llama-1b: 2·V·d embeddings and head, 16 layers of
        // 2·d² (q, o) + 2·d·512 (k, v: 8 KV heads of 64) + 3·d·8192 (SwiGLU) + 2·d, final norm.
        let layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048;
        assert_eq!(ModelSpec::preset("llama-1b").unwrap().num_params(), 2 * 32000 * 2048 + 16 * layer + 2048);
        // bert-base-uncased: BertModel (with pooler) 109,482,240; BertForPreTraining adds the
        // MLM transform, LayerNorm, decoder bias and NSP head.
        let bert = ModelSpec::preset("bert-base").unwrap();
        let backbone: usize = bert.params().iter().filter(|p| p.name.starts_with("bert.")).map(|p| p.numel()).sum();
        assert_eq!(backbone, 109_482_240);
        assert_eq!(bert.num_params(), 110_106_428);
    }

    #[test]
    fn breakdown_sums_to_the_exact_count() {
        let b = ModelSpec::preset("llama-7b").unwrap().param_breakdown();
        // Llama-2-7B: 32 layers × (4·4096² attention + 3·4096·11008 MLP + 2·4096 norms), a
        // 32000 × 4096 embedding and untied head, one final norm.
        assert_eq!(b.attention, 32 * 4 * 4096 * 4096);
        assert_eq!(b.mlp, 32 * 3 * 4096 * 11008);
        assert_eq!(b.norms, 32 * 2 * 4096 + 4096);
        assert_eq!((b.embeddings, b.head), (32000 * 4096, 32000 * 4096));
        assert_eq!(b.total(), 6_738_415_616);
        let g = ModelSpec::preset("gpt2-124m").unwrap().param_breakdown();
        assert_eq!(g.head, 0, "tied");
        assert_eq!(g.embeddings, (50257 + 1024) * 768);
        assert_eq!(g.total(), 124_439_808);
        for name in PRESETS {
            let s = ModelSpec::preset(name).unwrap();
            assert_eq!(s.param_breakdown().total(), s.num_params(), "{name}");
        }
    }

    /// The registry's presets are exactly the listed ones, each defined once.
    #[test]
    fn presets_come_from_the_architectures() {
        let mut defined: Vec<&str> = Style::ALL.iter().flat_map(|s| s.arch().preset_names().iter().copied()).collect();
        defined.sort_unstable();
        let mut listed = PRESETS.to_vec();
        listed.sort_unstable();
        assert_eq!(defined, listed);
        for s in Style::ALL {
            assert_eq!(s.arch().style(), s);
            for name in s.arch().preset_names() {
                assert_eq!(ModelSpec::preset(name).unwrap().style, s, "{name}");
            }
        }
    }

    #[test]
    fn every_preset_is_valid() {
        for name in PRESETS {
            let s = ModelSpec::preset(name).unwrap();
            s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(s.num_params() > 0);
        }
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let mut m = ModelConfig { preset: "tiny".into(), ..Default::default() };
        m.d_model = Some(96);
        m.n_head = Some(3);
        let s = ModelSpec::from_config(&m).unwrap();
        assert_eq!((s.d_model, s.head_dim), (96, 32));
        m.n_head = Some(5);
        assert!(ModelSpec::from_config(&m).unwrap_err().to_string().contains("model.n_head"));
    }
}
