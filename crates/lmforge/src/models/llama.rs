//! Llama (Touvron et al. 2023; Hugging Face `LlamaForCausalLM`): no position embeddings but
//! RoPE (rotate-half) on queries and keys, pre-RMSNorm blocks with separate q, k, v projections
//! and grouped-query attention (K key/value heads shared by H/K query heads each), a SwiGLU MLP,
//! no biases, an untied LM head by default. Weights are `nn.Linear`'s (out, in).

use super::arch::{Architecture, ClassificationHead, Family, HeadKind, HfFields, ParamList};
use super::decoder::{DecoderEnds, LayerParts, Mlp, Qkv};
use super::{ModelSpec, ParamInfo, ParamKind, Style};
use crate::error::{Error, Result};
use crate::nn::{Norm, ParamStore};
use crate::ops::Kernels;
use serde_json::{json, Value};

pub struct Llama;

/// A Llama shape.
fn llama(
    vocab: usize,
    context: usize,
    d_model: usize,
    n_layer: usize,
    n_head: usize,
    n_kv_head: usize,
    d_ff: usize,
) -> ModelSpec {
    ModelSpec {
        style: Style::Llama,
        vocab_size: vocab,
        context,
        d_model,
        n_layer,
        n_head,
        n_kv_head,
        head_dim: d_model / n_head.max(1),
        d_ff,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_embeddings: false,
        type_vocab_size: 0,
    }
}

impl Architecture for Llama {
    fn style(&self) -> Style {
        Style::Llama
    }

    fn model_type(&self) -> &'static str {
        "llama"
    }

    fn family(&self) -> Family {
        Family::Decoder
    }

    fn preset_names(&self) -> &'static [&'static str] {
        &["llama-tiny", "llama-small", "llama-1b", "llama-7b", "bench-llama"]
    }

    fn preset(&self, name: &str) -> Option<ModelSpec> {
        Some(match name {
            "llama-tiny" => llama(1024, 128, 64, 2, 4, 2, 176),
            "llama-small" => llama(4096, 256, 384, 6, 6, 2, 1024),
            // The 1B GPU benchmark shape of ../shared/bench/pytorch_gpt_bench.py (Llama-3.2-1B's
            // layers, heads and widths with Llama 2's vocabulary and an untied head).
            "llama-1b" => llama(32000, 2048, 2048, 16, 32, 8, 8192),
            // Llama-2-7B.
            "llama-7b" => llama(32000, 4096, 4096, 32, 32, 32, 11008),
            "bench-llama" => llama(8192, 256, 256, 4, 8, 2, 688),
            _ => return None,
        })
    }

    fn grouped_query_attention(&self) -> bool {
        true
    }

    fn validate(&self, s: &ModelSpec) -> Result<()> {
        if s.head_dim % 2 != 0 {
            return Err(Error::config("model.n_head", "RoPE needs an even head dimension"));
        }
        Ok(())
    }

    fn params(&self, s: &ModelSpec) -> Vec<ParamInfo> {
        let (c, f, v) = (s.d_model, s.d_ff, s.vocab_size);
        let (q, kv) = (s.n_head * s.head_dim, s.n_kv_head * s.head_dim);
        let mut out = ParamList::new();
        out.add("model.embed_tokens.weight", vec![v, c], ParamKind::Embedding, (v, c));
        let rms = |out: &mut ParamList, name: String| out.add(name, vec![c], ParamKind::NormWeight, (c, c));
        for i in 0..s.n_layer {
            let p = format!("model.layers.{i}");
            rms(&mut out, format!("{p}.input_layernorm.weight"));
            out.linear(&format!("{p}.self_attn.q_proj"), c, q, ParamKind::Matrix, false);
            out.linear(&format!("{p}.self_attn.k_proj"), c, kv, ParamKind::Matrix, false);
            out.linear(&format!("{p}.self_attn.v_proj"), c, kv, ParamKind::Matrix, false);
            out.linear(&format!("{p}.self_attn.o_proj"), q, c, ParamKind::ResidualProjection, false);
            rms(&mut out, format!("{p}.post_attention_layernorm.weight"));
            out.linear(&format!("{p}.mlp.gate_proj"), c, f, ParamKind::Matrix, false);
            out.linear(&format!("{p}.mlp.up_proj"), c, f, ParamKind::Matrix, false);
            out.linear(&format!("{p}.mlp.down_proj"), f, c, ParamKind::ResidualProjection, false);
        }
        rms(&mut out, "model.norm.weight".into());
        out.lm_head(s);
        out.0
    }

    fn embedding_name(&self) -> &'static str {
        "model.embed_tokens.weight"
    }

    fn spec_from_hf(&self, v: &Value) -> std::result::Result<ModelSpec, String> {
        let f = HfFields(v);
        let act = f.text("hidden_act").unwrap_or("silu");
        if act != "silu" {
            return Err(format!("hidden_act {act:?} is not supported (silu only)"));
        }
        for k in ["attention_bias", "mlp_bias"] {
            if f.flag(k) == Some(true) {
                return Err(format!("`{k}` = true is not supported"));
            }
        }
        // transformers 5 nests RoPE settings in `rope_parameters`; older files use top-level
        // `rope_theta` and `rope_scaling`.
        let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling")).filter(|r| !r.is_null());
        if let Some(kind) = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Value::as_str) {
            if kind != "default" {
                return Err(format!("RoPE scaling {kind:?} is not supported"));
            }
        }
        let theta = rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or_else(|| f.float("rope_theta", 10_000.0));
        let (d, h) = (f.int("hidden_size")?, f.int("num_attention_heads")?);
        let mut s = llama(
            f.int("vocab_size")?,
            f.int("max_position_embeddings")?,
            d,
            f.int("num_hidden_layers")?,
            h,
            f.int_or("num_key_value_heads", h),
            f.int("intermediate_size")?,
        );
        s.head_dim = f.int_or("head_dim", d / h.max(1));
        s.norm_eps = f.float("rms_norm_eps", 1e-6);
        s.rope_theta = theta;
        s.tie_embeddings = f.flag("tie_word_embeddings").unwrap_or(false);
        Ok(s)
    }

    fn hf_config(&self, s: &ModelSpec) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": s.vocab_size,
            "max_position_embeddings": s.context,
            "hidden_size": s.d_model,
            "intermediate_size": s.d_ff,
            "num_hidden_layers": s.n_layer,
            "num_attention_heads": s.n_head,
            "num_key_value_heads": s.n_kv_head,
            "head_dim": s.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": s.norm_eps,
            "rope_theta": s.rope_theta,
            "attention_bias": false,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "tie_word_embeddings": s.tie_embeddings,
            "use_cache": true,
        })
    }

    fn classification_head(&self, kind: HeadKind) -> ClassificationHead {
        match kind {
            HeadKind::Sequence => ClassificationHead {
                module: "score",
                hf_class: "LlamaForSequenceClassification",
                bias: false,
                unused: &[],
                supported: true,
            },
            HeadKind::Token => ClassificationHead {
                module: "score",
                hf_class: "LlamaForTokenClassification",
                bias: true,
                unused: &[],
                supported: true,
            },
            HeadKind::Span => ClassificationHead {
                module: "qa_outputs",
                hf_class: "LlamaForQuestionAnswering",
                bias: true,
                unused: &[],
                supported: false,
            },
        }
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn decoder_layer(&self, p: &ParamStore, s: &ModelSpec, i: usize) -> Result<LayerParts> {
        let n = |name: &str| format!("model.layers.{i}.{name}");
        let lin = |name: &str| p.linear(&n(name), true, false);
        let rms = |name: &str| -> Result<Norm> {
            Ok(Norm::Rms { w: p.get(&n(&format!("{name}.weight")))?, eps: s.norm_eps })
        };
        Ok(LayerParts {
            norm1: rms("input_layernorm")?,
            qkv: Qkv::Split { q: lin("self_attn.q_proj")?, k: lin("self_attn.k_proj")?, v: lin("self_attn.v_proj")? },
            o: lin("self_attn.o_proj")?,
            norm2: rms("post_attention_layernorm")?,
            mlp: Mlp::SwiGlu { gate: lin("mlp.gate_proj")?, up: lin("mlp.up_proj")?, down: lin("mlp.down_proj")? },
        })
    }

    fn decoder_ends(&self, p: &ParamStore, s: &ModelSpec) -> Result<DecoderEnds> {
        Ok(DecoderEnds {
            positions: None,
            norm_f: Norm::Rms { w: p.get("model.norm.weight")?, eps: s.norm_eps },
            rope: true,
        })
    }

    fn cpu_layer_elems(&self, s: &ModelSpec, scores: u64, kernels: Kernels) -> u64 {
        let (c, f, h) = (s.d_model as u64, s.d_ff as u64, s.n_head as u64);
        let (q, kv) = ((s.n_head * s.head_dim) as u64, (s.n_kv_head * s.head_dim) as u64);
        match kernels {
            // RMSNorm 3C (+5) twice · q, k, v projections and contiguous heads 2Q + 4KV · RoPE
            // (neg half, cat, ×cos, ×sin, +) 4.5 per element of q and k · AV and its copy 2Q ·
            // o_proj C · residuals 2C · gate, up, SiLU, product 4F · down_proj C.
            Kernels::Reference => 10 * c + (17 * q) / 2 + (17 * kv) / 2 + 4 * f + scores + 10,
            // RMSNorm C twice · q, k, v projections Q + 2KV · RoPE outputs Q + KV · attention Q
            // (+H) · o_proj C · residuals 2C · gate, up, SwiGLU 3F · down_proj C.
            Kernels::Fused => 6 * c + 3 * q + 3 * kv + 3 * f + h,
        }
    }

    fn cpu_head_elems(&self, s: &ModelSpec, kernels: Kernels) -> u64 {
        let (c, v) = (s.d_model as u64, s.vocab_size as u64);
        match kernels {
            // Lookup C · final RMSNorm 3C (+5) · logits and the log-softmax 4V (+3).
            Kernels::Reference => c + 3 * c + 5 + 4 * v + 3,
            // Lookup C · final norm C · the LM-head loss's d hidden C (+1).
            Kernels::Fused => c + c + c + 1,
        }
    }

    fn mlp_activations(&self) -> u64 {
        4
    }
}
