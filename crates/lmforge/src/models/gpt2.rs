//! GPT-2 (Radford et al. 2019; Hugging Face `GPT2LMHeadModel`): learned positions,
//! pre-LayerNorm blocks with a packed q|k|v projection and a tanh-GELU MLP, biases everywhere,
//! the LM head tied to the token embeddings by default. Its `Conv1D` weights are stored
//! (in, out).

use super::arch::{Architecture, ClassificationHead, Family, HeadKind, HfFields, ParamList};
use super::decoder::{DecoderEnds, LayerParts, Mlp, Qkv};
use super::{ModelSpec, ParamInfo, ParamKind, Style};
use crate::error::{Error, Result};
use crate::nn::{Norm, ParamStore};
use crate::ops::Kernels;
use serde_json::{json, Value};

pub struct Gpt2;

/// A GPT-2 shape: MLP 4·C wide, full multi-head attention.
fn gpt2(vocab: usize, context: usize, d_model: usize, n_layer: usize, n_head: usize) -> ModelSpec {
    ModelSpec {
        style: Style::Gpt2,
        vocab_size: vocab,
        context,
        d_model,
        n_layer,
        n_head,
        n_kv_head: n_head,
        head_dim: d_model / n_head,
        d_ff: 4 * d_model,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_embeddings: true,
        type_vocab_size: 0,
    }
}

impl Architecture for Gpt2 {
    fn style(&self) -> Style {
        Style::Gpt2
    }

    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn family(&self) -> Family {
        Family::Decoder
    }

    fn preset_names(&self) -> &'static [&'static str] {
        &["tiny", "quickstart", "gpt-small", "gpt2-124m", "gpt2-355m", "bench-gpt"]
    }

    fn preset(&self, name: &str) -> Option<ModelSpec> {
        Some(match name {
            "tiny" => gpt2(1024, 128, 64, 2, 4),
            "quickstart" => gpt2(1024, 128, 192, 4, 6),
            "gpt-small" => gpt2(4096, 256, 384, 6, 6),
            "gpt2-124m" => gpt2(50257, 1024, 768, 12, 12),
            "gpt2-355m" => gpt2(50257, 1024, 1024, 24, 16),
            "bench-gpt" => gpt2(8192, 256, 256, 4, 4),
            _ => return None,
        })
    }

    fn validate(&self, s: &ModelSpec) -> Result<()> {
        if s.head_dim * s.n_head != s.d_model {
            return Err(Error::config(
                "model.n_head",
                format!("d_model {} is not divisible by n_head {}", s.d_model, s.n_head),
            ));
        }
        if s.n_kv_head != s.n_head {
            return Err(Error::config(
                "model.n_kv_head",
                "GPT-2 and BERT styles use full multi-head attention: n_kv_head must equal n_head",
            ));
        }
        Ok(())
    }

    fn params(&self, s: &ModelSpec) -> Vec<ParamInfo> {
        let (c, f, v) = (s.d_model, s.d_ff, s.vocab_size);
        let mut out = ParamList::new();
        out.add("transformer.wte.weight", vec![v, c], ParamKind::Embedding, (v, c));
        out.add("transformer.wpe.weight", vec![s.context, c], ParamKind::Embedding, (s.context, c));
        for i in 0..s.n_layer {
            let p = format!("transformer.h.{i}");
            out.layer_norm(&format!("{p}.ln_1"), c);
            conv1d(&mut out, &format!("{p}.attn.c_attn"), c, 3 * c, ParamKind::Matrix);
            conv1d(&mut out, &format!("{p}.attn.c_proj"), c, c, ParamKind::ResidualProjection);
            out.layer_norm(&format!("{p}.ln_2"), c);
            conv1d(&mut out, &format!("{p}.mlp.c_fc"), c, f, ParamKind::Matrix);
            conv1d(&mut out, &format!("{p}.mlp.c_proj"), f, c, ParamKind::ResidualProjection);
        }
        out.layer_norm("transformer.ln_f", c);
        out.lm_head(s);
        out.0
    }

    fn embedding_name(&self) -> &'static str {
        "transformer.wte.weight"
    }

    fn spec_from_hf(&self, v: &Value) -> std::result::Result<ModelSpec, String> {
        let f = HfFields(v);
        let act = f.text("activation_function").unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!("activation_function {act:?} is not supported (gelu_new only)"));
        }
        if f.flag("scale_attn_by_inverse_layer_idx") == Some(true) || f.flag("reorder_and_upcast_attn") == Some(true) {
            return Err("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported".into());
        }
        let (d, h) = (f.int("n_embd")?, f.int("n_head")?);
        let mut s = gpt2(f.int("vocab_size")?, f.int("n_positions")?, d, f.int("n_layer")?, h.max(1));
        s.n_head = h;
        s.n_kv_head = h;
        s.d_ff = f.int_or("n_inner", d.saturating_mul(4));
        s.norm_eps = f.float("layer_norm_epsilon", 1e-5);
        s.tie_embeddings = f.flag("tie_word_embeddings").unwrap_or(true);
        Ok(s)
    }

    fn hf_config(&self, s: &ModelSpec) -> Value {
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": s.vocab_size,
            "n_positions": s.context,
            "n_embd": s.d_model,
            "n_layer": s.n_layer,
            "n_head": s.n_head,
            "n_inner": s.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": s.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": true,
            "initializer_range": 0.02,
            "tie_word_embeddings": s.tie_embeddings,
            "use_cache": true,
        })
    }

    fn classification_head(&self, kind: HeadKind) -> ClassificationHead {
        match kind {
            HeadKind::Sequence => ClassificationHead {
                module: "score",
                hf_class: "GPT2ForSequenceClassification",
                bias: false,
                unused: &[],
                supported: true,
            },
            HeadKind::Token => ClassificationHead {
                module: "classifier",
                hf_class: "GPT2ForTokenClassification",
                bias: true,
                unused: &[],
                supported: true,
            },
            HeadKind::Span => ClassificationHead {
                module: "qa_outputs",
                hf_class: "GPT2ForQuestionAnswering",
                bias: true,
                unused: &[],
                supported: true,
            },
        }
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["c_attn"]
    }

    fn decoder_layer(&self, p: &ParamStore, s: &ModelSpec, i: usize) -> Result<LayerParts> {
        let n = |name: &str| format!("transformer.h.{i}.{name}");
        let conv1d = |name: &str| p.linear(&n(name), false, true);
        let ln = |name: &str| layer_norm(p, &n(name), s.norm_eps);
        Ok(LayerParts {
            norm1: ln("ln_1")?,
            qkv: Qkv::Packed(conv1d("attn.c_attn")?),
            o: conv1d("attn.c_proj")?,
            norm2: ln("ln_2")?,
            mlp: Mlp::Gelu { fc: conv1d("mlp.c_fc")?, proj: conv1d("mlp.c_proj")? },
        })
    }

    fn decoder_ends(&self, p: &ParamStore, s: &ModelSpec) -> Result<DecoderEnds> {
        Ok(DecoderEnds {
            positions: Some(p.get("transformer.wpe.weight")?),
            norm_f: layer_norm(p, "transformer.ln_f", s.norm_eps)?,
            rope: false,
        })
    }

    fn cpu_layer_elems(&self, s: &ModelSpec, scores: u64, kernels: Kernels) -> u64 {
        let (c, f, h) = (s.d_model as u64, s.d_ff as u64, s.n_head as u64);
        match kernels {
            // ln_1 5C (+7 per-token stats) · c_attn matmul + bias 6C · q, k, v: copy out of the
            // fused output and make heads contiguous 6C · AV and its contiguous copy 2C · c_proj
            // + bias 2C · residual C · ln_2 5C (+7) · c_fc + bias 2F · GELU F · c_proj + bias 2C
            // · residual C.
            Kernels::Reference => 30 * c + 3 * f + scores + 14,
            // The fused attention keeps y and one log-sum-exp per head (H); q, k, v are read
            // where the projection wrote them. ln_1 C · c_attn 3C (bias added in place) ·
            // attention C (+H) · c_proj C · residual C · ln_2 C · c_fc F · GELU F · c_proj C ·
            // residual C.
            Kernels::Fused => 10 * c + 2 * f + h,
        }
    }

    fn cpu_head_elems(&self, s: &ModelSpec, kernels: Kernels) -> u64 {
        let (c, v) = (s.d_model as u64, s.vocab_size as u64);
        match kernels {
            // Lookup and position add 2C · ln_f 5C (+7) · logits and the log-softmax's shifted,
            // exp and output 4V (+3).
            Kernels::Reference => 2 * c + 5 * c + 7 + 4 * v + 3,
            // Lookup and position add 2C · ln_f C · the LM-head loss's d hidden C (+1).
            Kernels::Fused => 2 * c + c + c + 1,
        }
    }

    fn mlp_activations(&self) -> u64 {
        2
    }
}

/// A `Conv1D` (weight stored (in, out)) and its bias.
fn conv1d(out: &mut ParamList, name: &str, fan_in: usize, fan_out: usize, kind: ParamKind) {
    out.add(format!("{name}.weight"), vec![fan_in, fan_out], kind, (fan_in, fan_out));
    out.add(format!("{name}.bias"), vec![fan_out], ParamKind::Bias, (fan_in, fan_out));
}

/// A LayerNorm's `name.weight` and `name.bias`.
pub fn layer_norm(p: &ParamStore, name: &str, eps: f64) -> Result<Norm> {
    Ok(Norm::Layer { w: p.get(&format!("{name}.weight"))?, b: p.get(&format!("{name}.bias"))?, eps })
}
