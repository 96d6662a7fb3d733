//! What differs between model families, as one trait: an [`Architecture`] is implemented once
//! per family, in a file of its own (`gpt2.rs`, `llama.rs`, `bert.rs`), and listed in the
//! registry ([`super::Style::arch`]). Everything else — the generic [`super::ModelSpec`], the
//! decoder and encoder networks, loading and saving, the trainer, `plan` — asks the
//! architecture instead of matching on the family. `models/README.md` is the checklist for
//! adding one.

use super::decoder::{DecoderEnds, LayerParts};
use super::{ModelSpec, ParamInfo, ParamKind, Style};
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::Kernels;
use serde_json::Value;

/// Which network a family builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Causal decoder (`models::Decoder`): next-token LM, KV-cache generation.
    Decoder,
    /// Bidirectional encoder (`models::Encoder`): masked LM.
    Encoder,
}

/// What a head on the backbone predicts: a label per text (`*ForSequenceClassification`), a
/// label per token (`*ForTokenClassification`), or an answer span's start and end logits per
/// token (`*ForQuestionAnswering`, two outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadKind {
    Sequence,
    Token,
    Span,
}

impl HeadKind {
    pub const ALL: [HeadKind; 3] = [Self::Sequence, Self::Token, Self::Span];

    /// Whether the head reads every position (token and span heads) rather than one pooled
    /// feature per text.
    pub fn per_token(self) -> bool {
        self != Self::Sequence
    }
}

/// A head of a family, as Hugging Face's `*ForSequenceClassification` /
/// `*ForTokenClassification` / `*ForQuestionAnswering` names and shapes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassificationHead {
    /// The head's module name (`classifier`, `score`).
    pub module: &'static str,
    /// The HF class a classifier folder's `config.json` names.
    pub hf_class: &'static str,
    /// Whether the head Linear has a bias.
    pub bias: bool,
    /// Prefixes of backbone parameters this class does not have (`BertForTokenClassification`
    /// builds its encoder without the pooler).
    pub unused: &'static [&'static str],
    /// Whether lmforge can save this class under Hugging Face's names (LlamaForQuestionAnswering
    /// names its backbone `transformer.` where lmforge's Llama is `model.`; not yet mapped).
    pub supported: bool,
}

pub trait Architecture: Send + Sync {
    fn style(&self) -> Style;

    /// `config.json`'s `model_type`.
    fn model_type(&self) -> &'static str;

    fn family(&self) -> Family;

    /// The presets of this family, by name (listed in [`super::PRESETS`]).
    fn preset_names(&self) -> &'static [&'static str];

    /// The shape behind one of [`Self::preset_names`].
    fn preset(&self, name: &str) -> Option<ModelSpec>;

    /// Whether key/value heads may be fewer than query heads (grouped-query attention).
    fn grouped_query_attention(&self) -> bool {
        false
    }

    /// The family's own shape rules, past the generic ones in [`ModelSpec::validate`].
    fn validate(&self, spec: &ModelSpec) -> Result<()>;

    /// Every parameter in Hugging Face naming, in a stable order (the untied LM head last).
    fn params(&self, spec: &ModelSpec) -> Vec<ParamInfo>;

    /// The token-embedding table (also the LM head when tied).
    fn embedding_name(&self) -> &'static str;

    /// A spec from an HF `config.json` of this `model_type`; the error says what is wrong
    /// (variants lmforge does not implement are refused here).
    fn spec_from_hf(&self, config: &Value) -> std::result::Result<ModelSpec, String>;

    /// The HF `config.json` fields of a spec (`torch_dtype` and token ids are added by
    /// `hf::config_json`).
    fn hf_config(&self, spec: &ModelSpec) -> Value;

    /// The parameter an HF tensor key names, for keys this family spells differently from its
    /// own class (a `BertModel` folder drops the `bert.` prefix). Buffers are handled generically.
    fn hf_param_name(&self, key: &str) -> String {
        key.to_string()
    }

    /// Parameters a folder may lack (heads a backbone-only export does not have).
    fn is_optional_param(&self, _name: &str) -> bool {
        false
    }

    /// The HF class of a folder that has the backbone without the optional heads.
    fn backbone_class(&self) -> Option<&'static str> {
        None
    }

    fn classification_head(&self, kind: HeadKind) -> ClassificationHead;

    /// LoRA's default target modules (the LoRA paper's choice: the attention query and value
    /// projections).
    fn lora_targets(&self) -> &'static [&'static str];

    /// Decoder families: layer `i`'s norms, projections and MLP from `p`.
    fn decoder_layer(&self, p: &ParamStore, spec: &ModelSpec, i: usize) -> Result<LayerParts>;

    /// Decoder families: what surrounds the layers (learned positions, final norm, RoPE).
    fn decoder_ends(&self, p: &ParamStore, spec: &ModelSpec) -> Result<DecoderEnds>;

    /// fp32 elements one layer keeps per token for the backward on the CPU (`models::memory`),
    /// given the attention scores' count per token for the reference kernels.
    fn cpu_layer_elems(&self, spec: &ModelSpec, scores: u64, kernels: Kernels) -> u64;

    /// fp32 elements kept per token outside the layers (embedding, final norm, head).
    fn cpu_head_elems(&self, spec: &ModelSpec, kernels: Kernels) -> u64;

    /// Activations the MLP keeps per hidden unit and token for the backward (`plan`'s GPU
    /// estimate): 2 for GELU (its input and output), 4 for SwiGLU (gate, up, SiLU, product).
    fn mlp_activations(&self) -> u64;
}

/// Builds a parameter list: [`ParamInfo`]s in order, with the usual Linear and norm pairs.
pub struct ParamList(pub Vec<ParamInfo>);

impl ParamList {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn add(&mut self, name: impl Into<String>, shape: Vec<usize>, kind: ParamKind, fans: (usize, usize)) {
        self.0.push(ParamInfo { name: name.into(), shape, kind, fans });
    }

    /// `name.weight` stored (out, in) as `nn.Linear`, and `name.bias` when `bias`.
    pub fn linear(&mut self, name: &str, fan_in: usize, fan_out: usize, kind: ParamKind, bias: bool) {
        self.add(format!("{name}.weight"), vec![fan_out, fan_in], kind, (fan_in, fan_out));
        if bias {
            self.add(format!("{name}.bias"), vec![fan_out], ParamKind::Bias, (fan_in, fan_out));
        }
    }

    /// `name.weight` and `name.bias` of a LayerNorm over `c` features.
    pub fn layer_norm(&mut self, name: &str, c: usize) {
        self.add(format!("{name}.weight"), vec![c], ParamKind::NormWeight, (c, c));
        self.add(format!("{name}.bias"), vec![c], ParamKind::NormBias, (c, c));
    }

    /// The untied LM head (V, C), when the spec does not tie it to the embeddings.
    pub fn lm_head(&mut self, spec: &ModelSpec) {
        if !spec.tie_embeddings {
            let (v, c) = (spec.vocab_size, spec.d_model);
            self.add("lm_head.weight", vec![v, c], ParamKind::Matrix, (c, v));
        }
    }
}

impl Default for ParamList {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `config.json` fields: integers required, floats and flags with defaults.
pub struct HfFields<'a>(pub &'a Value);

impl HfFields<'_> {
    pub fn int(&self, k: &str) -> std::result::Result<usize, String> {
        self.0.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| format!("missing or non-integer `{k}`"))
    }

    pub fn int_or(&self, k: &str, default: usize) -> usize {
        self.0.get(k).and_then(Value::as_u64).map_or(default, |x| x as usize)
    }

    pub fn float(&self, k: &str, default: f64) -> f64 {
        self.0.get(k).and_then(Value::as_f64).unwrap_or(default)
    }

    pub fn flag(&self, k: &str) -> Option<bool> {
        self.0.get(k).and_then(Value::as_bool)
    }

    pub fn text(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(Value::as_str)
    }
}
