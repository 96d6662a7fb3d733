//! GGUF, llama.cpp's model file: export (`lmforge quantize`, `lmforge export gguf`) with the
//! metadata llama.cpp reads — architecture keys, context, rope settings, and the tokenizer as
//! `tokenizer.ggml.*` (byte-level BPE as llama.cpp's `gpt2` model: tokens, token types, merges,
//! special ids; SentencePiece-style BPE as its `llama` model: pieces, scores, types) plus the exact
//! `tokenizer.json` as `tokenizer.huggingface.json` — and the weights in a GGML type (candle's
//! quantizers: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, and the Q4_K_M mix); and import, which
//! reads ours and llama.cpp-made files of GPT-2 and Llama models back into a [`LoadedModel`].
//!
//! Names and layouts follow llama.cpp's converter (`convert_hf_to_gguf.py`): GPT-2's Conv1D
//! weights are stored as Linear (out, in); Llama's q and k projections are permuted from Hugging
//! Face's rotate-half layout to GGML's interleaved RoPE pairs (undone on import); a tied GPT-2
//! head is written as `output.weight` too. 1-D tensors stay F32, and a matrix whose rows do not
//! divide into the type's blocks falls back to Q8_0, else F16 (as llama.cpp does).
//!
//! Import keeps the quantized matrices in their blocks (`ParamStore::quantized`): the Linears
//! run them through candle's quantized matmul (activations quantized to 8 bits per block, as
//! llama.cpp does), the token embedding looks rows up in them and the LM head multiplies by
//! them; only vectors (norms, biases), GPT-2's position table and f32 / f16 / bf16 matrices are
//! dense f32. Llama's q / k rows are permuted back at load, block rows moved whole.

use crate::checkpoint::LoadedModel;
use crate::checkpoint::Network;
use crate::error::{Error, IoContext, Result};
use crate::models::{ModelSpec, Style};
use crate::nn::{ParamKind, ParamStore};
use crate::tokenizer::TextTokenizer;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// The weight types `quantize --to` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output matrix and for `attn_v` / `ffn_down`
    /// in the first and last eighth of the layers and every third one between.
    Q4KM,
}

impl QuantType {
    pub const NAMES: [&'static str; 8] = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "bf16" => Self::Bf16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k" | "q4_k_s" => Self::Q4K,
            "q6_k" => Self::Q6K,
            "q4_k_m" => Self::Q4KM,
            _ => return Err(Error::config("--to", format!("{s:?}: expected one of {}", Self::NAMES.join(", ")))),
        })
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4K => 14,
            Self::Q4KM => 15,
            Self::Q6K => 18,
            Self::Bf16 => 32,
        }
    }

    /// The GGML type of matrix `name` (layer `layer` of `n_layer`).
    fn matrix_type(self, name: &str, layer: Option<usize>, n_layer: usize) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Bf16 => GgmlDType::BF16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q4KM => {
                let more_bits = |i: usize| i < n_layer / 8 || i >= 7 * n_layer / 8 || (i - n_layer / 8) % 3 == 2;
                let sensitive = name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight");
                match (name == "output.weight", layer) {
                    (true, _) => GgmlDType::Q6K,
                    (false, Some(i)) if sensitive && more_bits(i) => GgmlDType::Q6K,
                    _ => GgmlDType::Q4K,
                }
            }
        }
    }
}

/// lmforge's parameter name → llama.cpp's tensor name, and whether it is a GPT-2 Conv1D
/// weight (stored transposed) or a Llama q / k projection (permuted).
fn gguf_name(spec: &ModelSpec, name: &str) -> Option<(String, Layout)> {
    let (layer, rest) = match name.split('.').collect::<Vec<_>>().as_slice() {
        ["transformer", "h", i, rest @ ..] | ["model", "layers", i, rest @ ..] => {
            (Some(i.parse::<usize>().ok()?), rest.join("."))
        }
        _ => (None, name.to_string()),
    };
    let (base, layout) = match (spec.style, rest.as_str()) {
        (Style::Gpt2, "transformer.wte.weight") => ("token_embd.weight", Layout::Plain),
        (Style::Gpt2, "transformer.wpe.weight") => ("position_embd.weight", Layout::Plain),
        (Style::Gpt2, "transformer.ln_f.weight") => ("output_norm.weight", Layout::Plain),
        (Style::Gpt2, "transformer.ln_f.bias") => ("output_norm.bias", Layout::Plain),
        (Style::Gpt2, "ln_1.weight") => ("attn_norm.weight", Layout::Plain),
        (Style::Gpt2, "ln_1.bias") => ("attn_norm.bias", Layout::Plain),
        (Style::Gpt2, "attn.c_attn.weight") => ("attn_qkv.weight", Layout::Conv1d),
        (Style::Gpt2, "attn.c_attn.bias") => ("attn_qkv.bias", Layout::Plain),
        (Style::Gpt2, "attn.c_proj.weight") => ("attn_output.weight", Layout::Conv1d),
        (Style::Gpt2, "attn.c_proj.bias") => ("attn_output.bias", Layout::Plain),
        (Style::Gpt2, "ln_2.weight") => ("ffn_norm.weight", Layout::Plain),
        (Style::Gpt2, "ln_2.bias") => ("ffn_norm.bias", Layout::Plain),
        (Style::Gpt2, "mlp.c_fc.weight") => ("ffn_up.weight", Layout::Conv1d),
        (Style::Gpt2, "mlp.c_fc.bias") => ("ffn_up.bias", Layout::Plain),
        (Style::Gpt2, "mlp.c_proj.weight") => ("ffn_down.weight", Layout::Conv1d),
        (Style::Gpt2, "mlp.c_proj.bias") => ("ffn_down.bias", Layout::Plain),
        (Style::Llama, "model.embed_tokens.weight") => ("token_embd.weight", Layout::Plain),
        (Style::Llama, "model.norm.weight") => ("output_norm.weight", Layout::Plain),
        (Style::Llama, "lm_head.weight") => ("output.weight", Layout::Plain),
        (Style::Llama, "input_layernorm.weight") => ("attn_norm.weight", Layout::Plain),
        (Style::Llama, "self_attn.q_proj.weight") => ("attn_q.weight", Layout::Rope(spec.n_head)),
        (Style::Llama, "self_attn.k_proj.weight") => ("attn_k.weight", Layout::Rope(spec.n_kv_head)),
        (Style::Llama, "self_attn.v_proj.weight") => ("attn_v.weight", Layout::Plain),
        (Style::Llama, "self_attn.o_proj.weight") => ("attn_output.weight", Layout::Plain),
        (Style::Llama, "post_attention_layernorm.weight") => ("ffn_norm.weight", Layout::Plain),
        (Style::Llama, "mlp.gate_proj.weight") => ("ffn_gate.weight", Layout::Plain),
        (Style::Llama, "mlp.up_proj.weight") => ("ffn_up.weight", Layout::Plain),
        (Style::Llama, "mlp.down_proj.weight") => ("ffn_down.weight", Layout::Plain),
        _ => return None,
    };
    Some((layer.map_or(base.to_string(), |i| format!("blk.{i}.{base}")), layout))
}

/// How a tensor is stored in GGUF relative to lmforge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Plain,
    /// (in, out) here, (out, in) there.
    Conv1d,
    /// Rows permuted from rotate-half to interleaved pairs, per head (of this many heads).
    Rope(usize),
}

/// lmforge → GGUF.
fn to_gguf(t: &Tensor, layout: Layout) -> Result<Tensor> {
    Ok(match layout {
        Layout::Plain => t.clone(),
        Layout::Conv1d => t.t()?.contiguous()?,
        Layout::Rope(heads) => {
            let (out, inp) = t.dims2()?;
            t.reshape((heads, 2, out / heads / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?
        }
    })
}

/// GGUF → lmforge.
fn from_gguf(t: &Tensor, layout: Layout) -> Result<Tensor> {
    Ok(match layout {
        Layout::Plain => t.clone(),
        Layout::Conv1d => t.t()?.contiguous()?,
        Layout::Rope(heads) => {
            let (out, inp) = t.dims2()?;
            t.reshape((heads, out / heads / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?
        }
    })
}

/// [`from_gguf`]'s `Rope` row permutation on a quantized matrix: rows hold whole blocks, so
/// they move as bytes. GGUF interleaves each head's rotary pairs (row 2j + a), lmforge's
/// rotate-half keeps the halves apart (row a·D/2 + j).
fn unpermute_rows(qt: &QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let (out, inp) = qt.shape().dims2()?;
    let dtype = qt.dtype();
    let row = inp / dtype.block_size() * dtype.type_size();
    let data = qt.data()?;
    if heads == 0 || out % (2 * heads) != 0 || data.len() != out * row {
        return Err(Error::Invalid(format!("{out} rows of {row} bytes do not split into {heads} rotary heads")));
    }
    let (per_head, half) = (out / heads, out / heads / 2);
    let mut moved = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..half {
            for a in 0..2 {
                let (to, from) = (h * per_head + a * half + j, h * per_head + 2 * j + a);
                moved[to * row..(to + 1) * row].copy_from_slice(&data[from * row..(from + 1) * row]);
            }
        }
    }
    Ok(QTensor::new(QStorage::from_data(std::borrow::Cow::Owned(moved), device, dtype)?, (out, inp))?)
}

/// Quantizes `t` to `dtype`, or the nearest type its rows divide into.
fn quantize(t: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let cols = *t.dims().last().unwrap_or(&1);
    let dtype = if t.rank() < 2 {
        GgmlDType::F32
    } else if cols % dtype.block_size() == 0 {
        dtype
    } else if cols % GgmlDType::Q8_0.block_size() == 0 && dtype.block_size() > 1 {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F16
    };
    Ok(QTensor::quantize(t, dtype)?)
}

/// The tokenizer metadata llama.cpp reads, from a BPE `tokenizer.json`: byte-level (GPT-2,
/// Llama-3: llama.cpp's `gpt2` model) or SentencePiece-style with byte fallback (Llama-2,
/// Mistral, TinyLlama: its `llama` model, [`sentencepiece_metadata`]).
fn tokenizer_metadata(tok: &TextTokenizer, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let json: Json = serde_json::from_str(&tok.to_json()?).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(Error::Invalid(format!(
            "GGUF export writes BPE tokenizers (byte-level or SentencePiece-style); this one is {}",
            model["type"]
        )));
    }
    if is_sentencepiece(&json) {
        return sentencepiece_metadata(tok, &json, vocab_size);
    }
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![1i32; vocab_size]; // 1: normal
    let mut seen = vec![false; vocab_size];
    for (piece, id) in model["vocab"].as_object().into_iter().flatten() {
        if let Some(i) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) {
            tokens[i] = piece.clone();
            seen[i] = true;
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(i), Some(content)) = (added["id"].as_u64().map(|i| i as usize), added["content"].as_str()) {
            if i < vocab_size {
                tokens[i] = content.to_string();
                seen[i] = true;
                types[i] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
                // control / user
            }
        }
    }
    for i in 0..vocab_size {
        if !seen[i] {
            tokens[i] = format!("[PAD{i}]");
            types[i] = 5; // unused
        }
    }
    let merges: Vec<Value> = merges_of(model).into_iter().map(Value::String).collect();
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(false)),
        ("tokenizer.huggingface.json".to_string(), Value::String(tok.to_json()?)),
    ];
    if let Some(eos) = tok.eos_id() {
        out.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
        out.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(eos)));
    }
    Ok(out)
}

/// A `tokenizer.json` BPE model's merges as GGUF writes them, "left right", in rank order
/// (`tokenizers` saves them as such strings or, since 0.20, as pairs).
fn merges_of(model: &Json) -> Vec<String> {
    model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .collect()
}

/// A SentencePiece-style BPE: byte-fallback pieces, or "▁" standing for spaces.
fn is_sentencepiece(json: &Json) -> bool {
    json["model"]["byte_fallback"] == true
        || json["normalizer"].to_string().contains('\u{2581}')
        || json["pre_tokenizer"].to_string().contains("Metaspace")
}

/// llama.cpp's `llama` (SentencePiece) vocabulary from a Llama-2-style `tokenizer.json`: pieces
/// as they are ("▁" for a space), a score per piece that orders the merges as the BPE does (the
/// piece made by merge i scores −i; llama.cpp's SentencePiece tokenizer merges the pair whose
/// piece scores highest), token types (`<0xXX>` byte pieces 6, the unknown piece 2, special
/// added tokens 3), the merges themselves (transformers' GGUF reader uses them), `<s>` / `</s>`
/// / `<unk>` ids, and whether a BOS is added (the post-processor's template).
fn sentencepiece_metadata(tok: &TextTokenizer, json: &Json, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let model = &json["model"];
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![5i32; vocab_size]; // unused until seen
    let mut scores = vec![0f32; vocab_size];
    let mut ids: std::collections::HashMap<String, usize> = Default::default();
    for (piece, id) in model["vocab"].as_object().into_iter().flatten() {
        if let Some(i) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) {
            let byte = piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>');
            types[i] = if byte { 6 } else { 1 };
            tokens[i] = piece.clone();
            ids.insert(piece.clone(), i);
        }
    }
    let merges = merges_of(model);
    let mut scored = vec![false; vocab_size];
    for (rank, m) in merges.iter().enumerate() {
        if let Some(&i) = m.split_once(' ').and_then(|(a, b)| ids.get(&format!("{a}{b}"))) {
            if !scored[i] {
                scores[i] = -(rank as f32);
                scored[i] = true;
            }
        }
    }
    let unk = model["unk_token"].as_str().and_then(|u| ids.get(u).copied());
    if let Some(u) = unk {
        types[u] = 2;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(i), Some(content)) = (added["id"].as_u64().map(|i| i as usize), added["content"].as_str()) {
            if i < vocab_size && Some(i) != unk {
                tokens[i] = content.to_string();
                types[i] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
            }
        }
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if types[i] == 5 {
            *t = format!("[PAD{i}]");
        }
    }
    let id_of = |name: &str| tok.token_id(name);
    let add_bos = json["post_processor"].to_string().contains("\"<s>\"");
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.scores".to_string(), Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(add_bos)),
        ("tokenizer.ggml.add_eos_token".to_string(), Value::Bool(false)),
        (
            "tokenizer.ggml.add_space_prefix".to_string(),
            Value::Bool(json["normalizer"].to_string().contains("Prepend")),
        ),
        ("tokenizer.huggingface.json".to_string(), Value::String(tok.to_json()?)),
    ];
    for (key, id) in
        [("bos", id_of("<s>")), ("eos", id_of("</s>").or(tok.eos_id())), ("unknown", unk.map(|u| u as u32))]
    {
        if let Some(id) = id {
            out.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    Ok(out)
}

/// Writes `m` as a GGUF file of `to` weights (staged and renamed).
pub fn export(m: &LoadedModel, to: QuantType, out: &Path, name: &str) -> Result<()> {
    let spec = &m.spec;
    let arch = match spec.style {
        Style::Gpt2 => "gpt2",
        Style::Llama => "llama",
        Style::Bert => return Err(Error::Invalid("GGUF export is for causal LMs (GPT-2, Llama); this is BERT".into())),
    };
    if m.params.tensors().iter().any(|(n, _)| n.contains(".adapter.")) {
        return Err(Error::Invalid("bottleneck adapters cannot be written to GGUF (merge LoRA instead)".into()));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(to.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("context_length"), Value::U32(spec.context as u32)),
        (k("embedding_length"), Value::U32(spec.d_model as u32)),
        (k("feed_forward_length"), Value::U32(spec.d_ff as u32)),
        (k("block_count"), Value::U32(spec.n_layer as u32)),
        (k("attention.head_count"), Value::U32(spec.n_head as u32)),
    ];
    match spec.style {
        Style::Gpt2 => meta.push((k("attention.layer_norm_epsilon"), Value::F32(spec.norm_eps as f32))),
        _ => meta.extend([
            (k("attention.head_count_kv"), Value::U32(spec.n_kv_head as u32)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(spec.norm_eps as f32)),
            (k("rope.dimension_count"), Value::U32(spec.head_dim as u32)),
            (k("rope.freq_base"), Value::F32(spec.rope_theta as f32)),
            (k("vocab_size"), Value::U32(spec.vocab_size as u32)),
        ]),
    }
    meta.extend(tokenizer_metadata(&m.tokenizer, spec.vocab_size)?);
    // LoRA folded in; names in lmforge's (HF) form.
    crate::nn::peft::check_mergeable(&m.params)?;
    let tensors: Vec<(String, Tensor)> = crate::nn::peft::merged_tensors(&m.params)?;
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &tensors {
        let (gname, layout) = gguf_name(spec, name)
            .ok_or_else(|| Error::Invalid(format!("no GGUF name for parameter `{name}` of a {arch} model")))?;
        let layer = gname.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse().ok());
        let t = to_gguf(&t.to_dtype(DType::F32)?, layout)?;
        q.push((gname.clone(), quantize(&t, to.matrix_type(&gname, layer, spec.n_layer))?));
        if spec.style == Style::Gpt2 && gname == "token_embd.weight" {
            // llama.cpp's GPT-2 reads its head as `output.weight` (the converter writes the tied copy).
            q.push(("output.weight".into(), quantize(&t, to.matrix_type("output.weight", None, spec.n_layer))?));
        }
    }
    q.sort_by(|a, b| a.0.cmp(&b.0));
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &meta_refs, &tensor_refs).map_err(|e| Error::Invalid(format!("writing GGUF: {e}")))?;
    crate::fsio::write_atomic(out, bytes.get_ref())
}

fn meta_u32(c: &gguf_file::Content, key: &str, path: &Path) -> Result<usize> {
    c.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)))
        .map(|v| v as usize)
        .ok_or_else(|| Error::format(path, format!("GGUF metadata `{key}` is missing or not an integer")))
}

/// A float of the metadata (stored as f32), read back as the decimal it was written from
/// (1e-5, not 9.99999974e-6).
fn meta_f32(c: &gguf_file::Content, key: &str) -> Option<f64> {
    let v = c.metadata.get(key).and_then(|v| v.to_f32().ok())?;
    v.to_string().parse().ok()
}

/// A buffered file that knows its position: candle's GGUF reader reads the metadata value by
/// value and asks for its position before every string, and from a plain `File` a 50k-token
/// vocabulary was ~700k read and seek calls (a second of loading); a `BufReader` still asks the
/// OS for every position.
struct PositionedFile {
    inner: std::io::BufReader<std::fs::File>,
    pos: u64,
}

fn open_positioned(path: &Path) -> Result<PositionedFile> {
    Ok(PositionedFile { inner: std::io::BufReader::new(std::fs::File::open(path).at(path)?), pos: 0 })
}

impl std::io::Read for PositionedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for PositionedFile {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        if to != std::io::SeekFrom::Current(0) {
            self.pos = self.inner.seek(to)?;
        }
        Ok(self.pos)
    }
}

/// Whether `path` is a GGUF file holding quantized (block) weights, not only f32 / f16 / bf16
/// tensors; false for anything else, an unreadable file included (loading it reports why).
pub fn holds_quantized_weights(path: &Path) -> bool {
    let Ok(mut file) = open_positioned(path) else { return false };
    let Ok(content) = gguf_file::Content::read(&mut file) else { return false };
    content.tensor_infos.values().any(|t| !matches!(t.ggml_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16))
}

/// Reads a GGUF file of a GPT-2 or Llama model (ours or llama.cpp's), dequantized to fp32.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let mut file = open_positioned(path)?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| Error::format(path, format!("not a readable GGUF file: {e}")))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .ok_or_else(|| Error::format(path, "GGUF metadata `general.architecture` is missing"))?;
    let style = match arch.as_str() {
        "gpt2" => Style::Gpt2,
        "llama" => Style::Llama,
        a => return Err(Error::format(path, format!("architecture {a:?}: lmforge reads gpt2 and llama GGUF files"))),
    };
    let k = |s: &str| format!("{arch}.{s}");
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| Error::format(path, "no `token_embd.weight` tensor"))?;
    let vocab_size = embd.shape.dims()[0];
    let (d_model, n_head) =
        (meta_u32(&content, &k("embedding_length"), path)?, meta_u32(&content, &k("attention.head_count"), path)?);
    if n_head == 0 || d_model % n_head != 0 {
        return Err(Error::format(
            path,
            format!("embedding_length {d_model} is not a multiple of head_count {n_head}"),
        ));
    }
    let spec = ModelSpec {
        style,
        vocab_size,
        context: meta_u32(&content, &k("context_length"), path)?,
        d_model,
        n_layer: meta_u32(&content, &k("block_count"), path)?,
        n_head,
        n_kv_head: meta_u32(&content, &k("attention.head_count_kv"), path).unwrap_or(n_head),
        head_dim: d_model / n_head,
        d_ff: meta_u32(&content, &k("feed_forward_length"), path)?,
        norm_eps: meta_f32(&content, &k("attention.layer_norm_epsilon"))
            .or_else(|| meta_f32(&content, &k("attention.layer_norm_rms_epsilon")))
            .unwrap_or(1e-5),
        rope_theta: meta_f32(&content, &k("rope.freq_base")).unwrap_or(10000.0),
        tie_embeddings: style == Style::Gpt2 || !content.tensor_infos.contains_key("output.weight"),
        type_vocab_size: 0,
    };
    spec.validate().map_err(|e| Error::format(path, format!("inconsistent GGUF metadata: {e}")))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (mut dense, mut blocks) = (Vec::new(), Vec::new());
    for p in spec.params() {
        let (gname, layout) = gguf_name(&spec, &p.name)
            .ok_or_else(|| Error::format(path, format!("no GGUF name for parameter `{}`", p.name)))?;
        if !content.tensor_infos.contains_key(&gname) {
            return Err(Error::format(path, format!("tensor `{gname}` is missing")));
        }
        let qt = content
            .tensor(&mut file, &gname, device)
            .map_err(|e| Error::format(path, format!("tensor `{gname}`: {e}")))?;
        let matrix = matches!(p.kind, ParamKind::Matrix | ParamKind::ResidualProjection)
            || p.name == spec.embedding_name()
            || p.name == "lm_head.weight";
        if matrix && !matches!(qt.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            // Kept in blocks, (out, in) as GGUF stores every matrix.
            let mut want = p.shape.clone();
            if layout == Layout::Conv1d {
                want.reverse();
            }
            if qt.shape().dims() != want.as_slice() {
                return Err(Error::format(
                    path,
                    format!("tensor `{gname}` is {:?}, the metadata implies {want:?}", qt.shape().dims()),
                ));
            }
            let qt = match layout {
                Layout::Rope(heads) => unpermute_rows(&qt, heads, device)
                    .map_err(|e| Error::format(path, format!("tensor `{gname}`: {e}")))?,
                _ => qt,
            };
            blocks.push((p.name.clone(), qt, layout == Layout::Conv1d));
            continue;
        }
        dense.push(p.clone());
        let t = from_gguf(&qt.dequantize(device)?, layout)?;
        if t.dims() != p.shape.as_slice() {
            return Err(Error::format(
                path,
                format!("tensor `{gname}` is {:?}, the metadata implies {:?}", t.dims(), p.shape),
            ));
        }
        tensors.insert(p.name.clone(), t);
    }
    let (mut params, _) =
        ParamStore::from_tensors(tensors, &dense, device, path, &|k| Some(k.to_string()), &|_| false)?;
    for (name, qt, transposed) in blocks {
        params.insert_quantized(&name, qt, transposed)?;
    }
    let tokenizer = match content.metadata.get("tokenizer.huggingface.json").and_then(|v| v.to_string().ok()) {
        Some(json) => TextTokenizer::from_bytes(json.as_bytes())?,
        None if content.metadata.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).map(String::as_str)
            == Some("llama") =>
        {
            TextTokenizer::from_bytes(sentencepiece_json(&content).map_err(|e| Error::format(path, e))?.as_bytes())?
        }
        None => {
            use candle_core::quantized::tokenizer::TokenizerFromGguf;
            let t = tokenizers::Tokenizer::from_gguf(&content)
                .map_err(|e| Error::format(path, format!("tokenizer: {e}")))?;
            TextTokenizer::from_tokenizer(t)
        }
    };
    let network = Network::new(&spec, &params)?;
    Ok(LoadedModel { spec, params, network, tokenizer, source: path.to_path_buf(), adapter: None })
}

/// A `tokenizer.json` for a GGUF `llama` (SentencePiece) vocabulary without one (llama.cpp's
/// files): BPE with byte fallback over its pieces, "▁" for spaces (and in front, unless
/// `add_space_prefix` is false), `<s>` added when `add_bos_token`; merges as the file lists them
/// or, as transformers recovers them, every split of a piece into two pieces, best-scored first.
fn sentencepiece_json(c: &gguf_file::Content) -> std::result::Result<String, String> {
    let array = |k: &str| c.metadata.get(k).and_then(|v| v.to_vec().ok()).ok_or_else(|| format!("no {k}"));
    let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| format!("tokenizer.ggml.tokens: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    let scores: Vec<f32> = match array("tokenizer.ggml.scores") {
        Ok(v) => v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect(),
        Err(_) => vec![0.0; tokens.len()],
    };
    let types: Vec<i32> = match array("tokenizer.ggml.token_type") {
        Ok(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        Err(_) => vec![1; tokens.len()],
    };
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(format!("{} tokens but {} scores and {} types", tokens.len(), scores.len(), types.len()));
    }
    let flag = |k: &str, default: bool| c.metadata.get(k).and_then(|v| v.to_bool().ok()).unwrap_or(default);
    let id =
        |k: &str| c.metadata.get(k).and_then(|v| v.to_u32().ok()).map(|i| i as usize).filter(|&i| i < tokens.len());
    let vocab: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let merges: Vec<(String, String)> = match array("tokenizer.ggml.merges") {
        Ok(m) => m
            .iter()
            .filter_map(|v| v.to_string().ok()?.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect(),
        Err(_) => {
            let mut all = Vec::new();
            for (i, t) in tokens.iter().enumerate().filter(|(i, _)| types[*i] == 1) {
                for (at, _) in t.char_indices().skip(1) {
                    let (l, r) = t.split_at(at);
                    if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                        all.push((scores[i], l.chars().count(), r.chars().count(), li, ri));
                    }
                }
            }
            all.sort_by(|a, b| {
                b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)).then((a.3, a.4).cmp(&(b.3, b.4)))
            });
            all.into_iter().map(|(_, _, _, l, r)| (tokens[l].clone(), tokens[r].clone())).collect()
        }
    };
    let unk = id("tokenizer.ggml.unknown_token_id").or_else(|| types.iter().position(|&t| t == 2));
    let added: Vec<Json> = (0..tokens.len())
        .filter(|&i| types[i] == 3 || types[i] == 4 || Some(i) == unk)
        .map(|i| {
            serde_json::json!({ "id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": types[i] != 4 })
        })
        .collect();
    let mut normalizers =
        vec![serde_json::json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" })];
    if flag("tokenizer.ggml.add_space_prefix", true) {
        normalizers.insert(0, serde_json::json!({ "type": "Prepend", "prepend": "\u{2581}" }));
    }
    let bos = id("tokenizer.ggml.bos_token_id").filter(|_| flag("tokenizer.ggml.add_bos_token", true));
    let post = bos.map(|b| {
        let t = &tokens[b];
        serde_json::json!({ "type": "TemplateProcessing",
            "single": [{ "SpecialToken": { "id": t, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } }],
            "pair": [{ "SpecialToken": { "id": t, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } },
                     { "SpecialToken": { "id": t, "type_id": 1 } }, { "Sequence": { "id": "B", "type_id": 1 } }],
            "special_tokens": { t.clone(): { "id": t, "ids": [b], "tokens": [t] } } })
    });
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": { "type": "Sequence", "normalizers": normalizers },
        "pre_tokenizer": null,
        "post_processor": post,
        "decoder": { "type": "Sequence", "decoders": [
            { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
            { "type": "ByteFallback" }, { "type": "Fuse" }, { "type": "Strip", "content": " ", "start": 1, "stop": 0 } ] },
        "model": { "type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false,
            "vocab": tokens.iter().enumerate().map(|(i, t)| (t.clone(), Json::from(i))).collect::<serde_json::Map<_, _>>(),
            "merges": merges.into_iter().map(|(a, b)| Json::from(vec![a, b])).collect::<Vec<_>>() },
    });
    Ok(json.to_string())
}
