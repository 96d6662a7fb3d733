//! Hugging Face `config.json` and tensor names, through the registry: each architecture maps
//! its own fields both ways and refuses the variants lmforge does not implement (other
//! activations, RoPE scaling, biases in Llama; see `gpt2.rs`, `llama.rs`, `bert.rs`); this file
//! picks the architecture by `model_type` and handles what all share (buffers and tied copies
//! that are not parameters, dtype and token ids). Parameter names already are HF names (see
//! `ModelSpec::params`).

use super::{Family, ModelSpec, Style};
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
    let arch = Style::ALL.iter().map(|s| s.arch()).find(|a| a.model_type() == model_type).ok_or_else(|| {
        let known: Vec<&str> = Style::ALL.iter().map(|s| s.arch().model_type()).collect();
        format!("model_type {model_type:?} is not supported ({})", known.join(", "))
    })?;
    let spec = arch.spec_from_hf(v)?;
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
    Some(spec.arch().hf_param_name(key))
}

/// Parameters a folder may lack: BERT's pooler and pretraining heads (a `BertModel` backbone
/// has none of the heads, some exports have no pooler).
pub fn is_optional_param(spec: &ModelSpec, name: &str) -> bool {
    spec.arch().is_optional_param(name)
}

/// The HF `config.json` for a spec. `eos_id` is the tokenizer's end-of-text id, if any.
pub fn config_json(spec: &ModelSpec, eos_id: Option<u32>) -> Value {
    let mut v = spec.arch().hf_config(spec);
    v["torch_dtype"] = json!("float32");
    if let (Some(eos), Family::Decoder) = (eos_id, spec.arch().family()) {
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
