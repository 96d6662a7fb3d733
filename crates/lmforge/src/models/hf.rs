//! Hugging Face `config.json` for the two decoder styles (`GPT2LMHeadModel`,
//! `LlamaForCausalLM`) and the BERT encoder (`BertForPreTraining`; `BertModel` and other BERT
//! folders read too). Parameter names already are HF names (see `ModelSpec::params`), so this
//! file is the whole interoperability layer: it maps config fields both ways and refuses
//! variants lmforge does not implement (other activations, RoPE scaling, biases in Llama).

use super::{ModelSpec, Style};
use crate::error::{Error, IoContext, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Reads an HF `config.json` into a spec.
pub fn read_config(path: &Path) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_config(&text).map_err(|msg| Error::format(path, msg))
}

/// A spec from the text of an HF `config.json`; the error says what is wrong.
pub fn parse_config(text: &str) -> std::result::Result<ModelSpec, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    spec_from_json(&v)
}

fn spec_from_json(v: &Value) -> std::result::Result<ModelSpec, String> {
    let model_type = v.get("model_type").and_then(Value::as_str).ok_or("missing `model_type`")?;
    let int = |k: &str| -> std::result::Result<usize, String> {
        v.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| format!("missing or non-integer `{k}`"))
    };
    let float = |k: &str, default: f64| v.get(k).and_then(Value::as_f64).unwrap_or(default);
    let spec = match model_type {
        "gpt2" => {
            let act = v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                return Err(format!("activation_function {act:?} is not supported (gelu_new only)"));
            }
            if v.get("scale_attn_by_inverse_layer_idx").and_then(Value::as_bool) == Some(true)
                || v.get("reorder_and_upcast_attn").and_then(Value::as_bool) == Some(true)
            {
                return Err("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported".into());
            }
            let d = int("n_embd")?;
            let h = int("n_head")?;
            let d_ff = v.get("n_inner").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(d.saturating_mul(4));
            ModelSpec {
                style: Style::Gpt2,
                vocab_size: int("vocab_size")?,
                context: int("n_positions")?,
                d_model: d,
                n_layer: int("n_layer")?,
                n_head: h,
                n_kv_head: h,
                head_dim: d / h.max(1),
                d_ff,
                norm_eps: float("layer_norm_epsilon", 1e-5),
                rope_theta: 10_000.0,
                tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
                type_vocab_size: 0,
            }
        }
        "llama" => {
            let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
            if act != "silu" {
                return Err(format!("hidden_act {act:?} is not supported (silu only)"));
            }
            for k in ["attention_bias", "mlp_bias"] {
                if v.get(k).and_then(Value::as_bool) == Some(true) {
                    return Err(format!("`{k}` = true is not supported"));
                }
            }
            // transformers 5 nests RoPE settings in `rope_parameters`; older files use
            // top-level `rope_theta` and `rope_scaling`.
            let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling")).filter(|r| !r.is_null());
            if let Some(kind) = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Value::as_str)
            {
                if kind != "default" {
                    return Err(format!("RoPE scaling {kind:?} is not supported"));
                }
            }
            let theta = rope
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or_else(|| float("rope_theta", 10_000.0));
            let d = int("hidden_size")?;
            let h = int("num_attention_heads")?;
            ModelSpec {
                style: Style::Llama,
                vocab_size: int("vocab_size")?,
                context: int("max_position_embeddings")?,
                d_model: d,
                n_layer: int("num_hidden_layers")?,
                n_head: h,
                n_kv_head: v.get("num_key_value_heads").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(h),
                head_dim: v.get("head_dim").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(d / h.max(1)),
                d_ff: int("intermediate_size")?,
                norm_eps: float("rms_norm_eps", 1e-6),
                rope_theta: theta,
                tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
                type_vocab_size: 0,
            }
        }
        "bert" => {
            let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
            if act != "gelu" {
                return Err(format!("hidden_act {act:?} is not supported (gelu, the erf form, only)"));
            }
            let pos = v.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
            if pos != "absolute" {
                return Err(format!("position_embedding_type {pos:?} is not supported (absolute only)"));
            }
            let d = int("hidden_size")?;
            let h = int("num_attention_heads")?;
            ModelSpec {
                style: Style::Bert,
                vocab_size: int("vocab_size")?,
                context: int("max_position_embeddings")?,
                d_model: d,
                n_layer: int("num_hidden_layers")?,
                n_head: h,
                n_kv_head: h,
                head_dim: d / h.max(1),
                d_ff: int("intermediate_size")?,
                norm_eps: float("layer_norm_eps", 1e-12),
                rope_theta: 10_000.0,
                tie_embeddings: true,
                type_vocab_size: v.get("type_vocab_size").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(2),
            }
        }
        other => return Err(format!("model_type {other:?} is not supported (gpt2, llama, bert)")),
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// The parameter a tensor key of an HF `model.safetensors` holds, in lmforge's naming (the
/// `BertForPreTraining` / `GPT2LMHeadModel` / `LlamaForCausalLM` names); `None` for buffers and
/// tied copies that are not parameters.
pub fn param_name(spec: &ModelSpec, key: &str) -> Option<String> {
    let buffer = key.ends_with(".attn.bias")
        || key.ends_with(".attn.masked_bias")
        || key.ends_with("inv_freq")
        || key.ends_with("embeddings.position_ids")
        // Tied to the embeddings; older BERT files also repeat the MLM bias as the decoder's.
        || (spec.tie_embeddings && key == "lm_head.weight")
        || key.starts_with("cls.predictions.decoder.");
    if buffer {
        return None;
    }
    // A `BertModel` folder (no task head) names the backbone without the `bert.` prefix.
    if spec.style == Style::Bert
        && (key.starts_with("embeddings.") || key.starts_with("encoder.") || key.starts_with("pooler."))
    {
        return Some(format!("bert.{key}"));
    }
    Some(key.to_string())
}

/// Parameters a folder may lack: BERT's pooler and pretraining heads (a `BertModel` backbone
/// has none of the heads, some exports have no pooler).
pub fn is_optional_param(spec: &ModelSpec, name: &str) -> bool {
    spec.style == Style::Bert && (name.starts_with("cls.") || name.starts_with("bert.pooler."))
}

/// The HF `config.json` for a spec. `eos_id` is the tokenizer's end-of-text id, if any.
pub fn config_json(spec: &ModelSpec, eos_id: Option<u32>) -> Value {
    let mut v = match spec.style {
        Style::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": spec.vocab_size,
            "n_positions": spec.context,
            "n_embd": spec.d_model,
            "n_layer": spec.n_layer,
            "n_head": spec.n_head,
            "n_inner": spec.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": spec.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": true,
            "initializer_range": 0.02,
            "tie_word_embeddings": spec.tie_embeddings,
            "use_cache": true,
        }),
        Style::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": spec.vocab_size,
            "max_position_embeddings": spec.context,
            "hidden_size": spec.d_model,
            "intermediate_size": spec.d_ff,
            "num_hidden_layers": spec.n_layer,
            "num_attention_heads": spec.n_head,
            "num_key_value_heads": spec.n_kv_head,
            "head_dim": spec.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": spec.norm_eps,
            "rope_theta": spec.rope_theta,
            "attention_bias": false,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "tie_word_embeddings": spec.tie_embeddings,
            "use_cache": true,
        }),
        Style::Bert => json!({
            "architectures": ["BertForPreTraining"],
            "model_type": "bert",
            "vocab_size": spec.vocab_size,
            "max_position_embeddings": spec.context,
            "type_vocab_size": spec.type_vocab_size,
            "hidden_size": spec.d_model,
            "intermediate_size": spec.d_ff,
            "num_hidden_layers": spec.n_layer,
            "num_attention_heads": spec.n_head,
            "hidden_act": "gelu",
            "layer_norm_eps": spec.norm_eps,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "position_embedding_type": "absolute",
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
        }),
    };
    v["torch_dtype"] = json!("float32");
    if let (Some(eos), false) = (eos_id, spec.style == Style::Bert) {
        v["bos_token_id"] = json!(eos);
        v["eos_token_id"] = json!(eos);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_for_every_preset() {
        for name in super::super::PRESETS {
            let spec = ModelSpec::preset(name).unwrap();
            let back = spec_from_json(&config_json(&spec, Some(0))).unwrap();
            assert_eq!(spec, back, "{name}");
        }
    }

    #[test]
    fn unsupported_variants_are_refused() {
        let mut v = config_json(&ModelSpec::preset("llama-tiny").unwrap(), None);
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(spec_from_json(&v).unwrap_err().contains("yarn"));
        let mut v = config_json(&ModelSpec::preset("tiny").unwrap(), None);
        v["activation_function"] = json!("relu");
        assert!(spec_from_json(&v).unwrap_err().contains("relu"));
    }
}
