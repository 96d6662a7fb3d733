//! GGUF export and import on the fixture models: every weight type round-trips through
//! lmforge's reader (tensors, metadata, the tokenizer's encoding of a text), F32 bit for bit;
//! Q8_0 logits stay within a stated tolerance of fp32; the metadata llama.cpp needs is there;
//! truncated and inconsistent files are clear errors, never panics.

use crate::common::{fixtures, max_rel};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use lmforge::checkpoint::LoadedModel;
use lmforge::gguf::{export, QuantType};

fn logits(m: &LoadedModel, ids: &[u32]) -> Tensor {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    m.decoder().unwrap().forward(&x, 0, None).unwrap()
}

/// A written GGUF file's content, and the open file for reading its tensors.
fn read_gguf(path: &std::path::Path) -> (std::fs::File, gguf_file::Content) {
    let mut f = std::fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    (f, c)
}

#[test]
fn every_type_round_trips_and_q8_0_stays_close() {
    let text = "ROMEO:\nWhat light through yonder window breaks? It is the east.\n";
    for name in ["gpt2-tiny", "llama-tiny"] {
        let m = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let ids = m.tokenizer.encode(text).unwrap();
        let reference = logits(&m, &ids);
        let dir = tempfile::tempdir().unwrap();
        for to in QuantType::NAMES {
            let path = dir.path().join(format!("{name}-{to}.gguf"));
            export(&m, QuantType::parse(to).unwrap(), &path, name).unwrap();
            let back = LoadedModel::load(&path, &Device::Cpu).unwrap();
            let blocks = !matches!(to, "f32" | "f16" | "bf16");
            assert_eq!(lmforge::gguf::holds_quantized_weights(&path), blocks, "{name} {to}: quantized or not");
            assert_eq!(back.spec, m.spec, "{name} {to}: the shape from the metadata");
            assert_eq!(back.tokenizer.encode(text).unwrap(), ids, "{name} {to}: the same tokenizer");
            let rel = max_rel(&logits(&back, &ids), &reference);
            eprintln!("{name} {to}: logits max rel error {rel:e}");
            match to {
                "f32" => {
                    for (k, t) in m.params.tensors() {
                        let b = back.params.get(&k).unwrap();
                        let diff = (t - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                        assert_eq!(diff, 0.0, "{name}: {k} round-trips exactly in f32");
                    }
                }
                // Max |Δlogit| / max |logit| on the random fixtures, measured: q8_0 1.3e-2 and
                // 1.6e-2, f16 5e-4 and 6e-4, bf16 3e-3 and 5e-3 (gpt2-tiny, llama-tiny).
                "q8_0" => assert!(rel <= 3e-2, "{name} q8_0: logits max rel error {rel:e}"),
                "f16" => assert!(rel <= 2e-3, "{name} f16: logits max rel error {rel:e}"),
                "bf16" => assert!(rel <= 1e-2, "{name} bf16: logits max rel error {rel:e}"),
                _ => assert!(rel.is_finite() && rel < 1.0, "{name} {to}: logits max rel error {rel:e}"),
            }
        }
        // A checkpoint folder, its safetensors file, a missing path: not quantized GGUF files.
        assert!(!lmforge::gguf::holds_quantized_weights(&fixtures().join(name)));
        assert!(!lmforge::gguf::holds_quantized_weights(&fixtures().join(name).join("model.safetensors")));
        assert!(!lmforge::gguf::holds_quantized_weights(&dir.path().join("missing.gguf")));
    }
}

#[test]
fn the_metadata_llama_cpp_reads_is_there() {
    let m = LoadedModel::load(&fixtures().join("llama-tiny"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    export(&m, QuantType::Q8_0, &path, "llama-tiny").unwrap();
    let (mut f, c) = read_gguf(&path);
    let s = |k: &str| c.metadata[k].to_string().unwrap().clone();
    let u = |k: &str| c.metadata[k].to_u32().unwrap() as usize;
    assert_eq!(s("general.architecture"), "llama");
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(u("llama.block_count"), m.spec.n_layer);
    assert_eq!(u("llama.attention.head_count_kv"), m.spec.n_kv_head);
    assert_eq!(u("llama.rope.dimension_count"), m.spec.head_dim);
    assert_eq!(c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(), m.spec.vocab_size);
    assert!(c.metadata["tokenizer.ggml.merges"].to_vec().unwrap().len() > 100);
    let q = &c.tensor_infos["blk.0.attn_q.weight"];
    assert_eq!(
        q.shape.dims(),
        [m.spec.n_head * m.spec.head_dim, m.spec.d_model],
        "(out, in), as llama.cpp's converter"
    );
    assert_eq!(c.tensor_infos["blk.0.attn_norm.weight"].ggml_dtype, candle_core::quantized::GgmlDType::F32);
    // The q projection is stored permuted to GGML's interleaved RoPE layout.
    let stored = c.tensor(&mut f, "blk.0.attn_q.weight", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
    let original = m.params.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert!(max_rel(&stored, &original) > 0.1, "q is permuted, not copied");
    let _ = DType::F32;
}

#[test]
fn damaged_files_are_errors_naming_the_file() {
    let m = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    export(&m, QuantType::Q8_0, &path, "gpt2-tiny").unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header only", bytes[..64].to_vec()),
        ("not gguf", b"GGML not really".to_vec()),
        ("empty", Vec::new()),
    ] {
        let bad = dir.path().join(format!("{}.gguf", what.replace(' ', "-")));
        std::fs::write(&bad, &damaged).unwrap();
        let e = match LoadedModel::load(&bad, &Device::Cpu) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(bad.file_name().unwrap().to_str().unwrap()), "{what}: {e}");
    }
    // Metadata that contradicts the tensors: a wrong layer count.
    let (mut f, c) = read_gguf(&path);
    let mut meta: Vec<(String, gguf_file::Value)> = c.metadata.clone().into_iter().collect();
    for (k, v) in meta.iter_mut() {
        if k == "gpt2.embedding_length" {
            *v = gguf_file::Value::U32(48);
        }
    }
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        c.tensor_infos.keys().map(|k| (k.clone(), c.tensor(&mut f, k, &Device::Cpu).unwrap())).collect();
    let bad = dir.path().join("inconsistent.gguf");
    let mut out = std::fs::File::create(&bad).unwrap();
    let mr: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &mr, &tr).unwrap();
    drop(out);
    let e = match LoadedModel::load(&bad, &Device::Cpu) {
        Ok(_) => panic!("inconsistent metadata loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("inconsistent.gguf") && e.contains("tensor"), "{e}");
}

/// A quantized file runs on its blocks: every matrix (the token embedding and the LM head
/// included) stays quantized, with no dense copy, and the logits match a model holding the
/// same weights dequantized, up to the 8-bit quantization of the activations that quantized
/// products do (candle's kernels, as llama.cpp's).
#[test]
fn quantized_files_run_on_their_blocks() {
    use lmforge::models::Decoder;
    use lmforge::nn::{ParamKind, ParamStore};
    let text = "ROMEO:\nWhat light through yonder window breaks? It is the east.\n";
    for name in ["gpt2-tiny", "llama-tiny"] {
        let m = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let ids = m.tokenizer.encode(text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for to in [QuantType::Q8_0, QuantType::Q4KM] {
            let path = dir.path().join(format!("{name}.gguf"));
            export(&m, to, &path, name).unwrap();
            let back = LoadedModel::load(&path, &Device::Cpu).unwrap();
            for p in back.spec.params() {
                let matrix = matches!(p.kind, ParamKind::Matrix | ParamKind::ResidualProjection)
                    || p.name == back.spec.embedding_name()
                    || p.name == "lm_head.weight";
                // A matrix whose rows do not divide into blocks of 32 was written as F16: dense.
                let blocks = p.shape.len() == 2 && p.shape.iter().all(|d| d % 32 == 0);
                let quantized = back.params.quantized(&p.name).is_some();
                assert!(quantized == (matrix && blocks) || (matrix && quantized), "{name} {to:?}: {}", p.name);
            }
            let (fp32, quant) = (m.params.weight_bytes(), back.params.weight_bytes());
            assert!(quant * 2 < fp32, "{name} {to:?}: {quant} bytes of weights against {fp32} in fp32");
            let dense_weights = back.params.tensors().into_iter().collect();
            let specs = back.spec.params();
            let (dense, _) =
                ParamStore::from_tensors(dense_weights, &specs, &Device::Cpu, &path, &|k| Some(k.into()), &|_| false)
                    .unwrap();
            let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
            let want = Decoder::new(&back.spec, &dense).unwrap().forward(&x, 0, None).unwrap();
            let rel = max_rel(&logits(&back, &ids), &want);
            eprintln!("{name} {to:?}: quantized products vs dequantized weights, logits max rel error {rel:e}");
            assert!(rel <= 2e-2, "{name} {to:?}: logits max rel error {rel:e}");
        }
    }
}

/// llama.cpp's SentencePiece tokenization (`llm_tokenizer_spm`) over a GGUF vocabulary: "▁"
/// for spaces and one in front, single characters as symbols, the adjacent pair whose joined
/// piece scores highest merged first (ties: leftmost), and pieces not in the vocabulary spelled
/// as `<0xXX>` byte pieces.
fn llama_cpp_spm(tokens: &[String], scores: &[f32], text: &str) -> Vec<u32> {
    let id: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let text = format!("\u{2581}{}", text.replace(' ', "\u{2581}"));
    let mut symbols: Vec<String> = text.chars().map(String::from).collect();
    loop {
        let best = (0..symbols.len().saturating_sub(1))
            .filter_map(|i| id.get(format!("{}{}", symbols[i], symbols[i + 1]).as_str()).map(|&t| (scores[t], i)))
            .fold(None, |b: Option<(f32, usize)>, (s, i)| match b {
                Some((bs, _)) if bs >= s => b,
                _ => Some((s, i)),
            });
        let Some((_, i)) = best else { break };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
    symbols
        .iter()
        .flat_map(|s| match id.get(s.as_str()) {
            Some(&t) => vec![t as u32],
            None => s.bytes().map(|b| id[format!("<0x{b:02X}>").as_str()] as u32).collect(),
        })
        .collect()
}

/// A Llama-2-style SentencePiece tokenizer (`scripts/make_spm_tokenizer.py`) exports as
/// llama.cpp's `llama` vocabulary: pieces, merge-ordered scores, byte / unknown / control
/// types, special ids, BOS added; llama.cpp's algorithm over the written pieces and scores
/// tokenizes as the tokenizer.json does.
#[test]
fn sentencepiece_tokenizers_export_as_llama_vocabularies() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tokenizer");
    let mut m = LoadedModel::load(&fixtures().join("llama-tiny"), &Device::Cpu).unwrap();
    m.tokenizer = lmforge::tokenizer::TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("spm.gguf");
    export(&m, QuantType::F32, &path, "llama-tiny-spm").unwrap();
    let (mut f, c) = read_gguf(&path);
    let s = |k: &str| c.metadata[k].to_string().unwrap().clone();
    let u = |k: &str| c.metadata[k].to_u32().unwrap();
    assert_eq!((s("tokenizer.ggml.model").as_str(), s("tokenizer.ggml.pre").as_str()), ("llama", "default"));
    assert_eq!(
        (u("tokenizer.ggml.unknown_token_id"), u("tokenizer.ggml.bos_token_id"), u("tokenizer.ggml.eos_token_id")),
        (0, 1, 2)
    );
    assert!(c.metadata["tokenizer.ggml.add_bos_token"].to_bool().unwrap());
    assert!(c.metadata["tokenizer.ggml.add_space_prefix"].to_bool().unwrap());
    let tokens: Vec<String> =
        c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect();
    let scores: Vec<f32> =
        c.metadata["tokenizer.ggml.scores"].to_vec().unwrap().iter().map(|v| v.to_f32().unwrap()).collect();
    let types: Vec<i32> =
        c.metadata["tokenizer.ggml.token_type"].to_vec().unwrap().iter().map(|v| v.to_i32().unwrap()).collect();
    assert_eq!((tokens.len(), scores.len(), types.len()), (1000, 1000, 1000));
    assert_eq!(
        (&tokens[0][..], types[0], &tokens[1][..], types[1], &tokens[3][..], types[3]),
        ("<unk>", 2, "<s>", 3, "<0x00>", 6)
    );
    assert!(types[259..].iter().all(|&t| t == 1), "pieces are normal tokens");
    assert!(scores.iter().filter(|&&s| s < 0.0).count() > 500, "merged pieces carry their merge rank");
    for text in [
        "ROMEO: What light through yonder window breaks?",
        "  two leading spaces, and the end. ",
        "Ünïcødé, 中文 and 🦀 fall back to bytes",
        "First Citizen:\nBefore we proceed any further, hear me speak.",
    ] {
        let want = m.tokenizer.encode(text).unwrap();
        let want: Vec<u32> = want.into_iter().filter(|&i| i != 1).collect(); // without the BOS
        assert_eq!(llama_cpp_spm(&tokens, &scores, text), want, "{text:?}");
    }
    // lmforge reads the file back with the same tokenizer: its tokenizer.json copy, or, as in
    // llama.cpp's files, only the pieces, scores and types (merges recovered from the scores).
    let back = LoadedModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.tokenizer.encode("What light").unwrap(), m.tokenizer.encode("What light").unwrap());
    let bare = tmp.path().join("bare.gguf");
    let meta: Vec<(String, gguf_file::Value)> = c
        .metadata
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "tokenizer.huggingface.json" | "tokenizer.ggml.merges"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        c.tensor_infos.keys().map(|k| (k.clone(), c.tensor(&mut f, k, &Device::Cpu).unwrap())).collect();
    let mut out = std::fs::File::create(&bare).unwrap();
    gguf_file::write(
        &mut out,
        &meta.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
        &tensors.iter().map(|(k, t)| (k.as_str(), t)).collect::<Vec<_>>(),
    )
    .unwrap();
    drop(out);
    let rebuilt = LoadedModel::load(&bare, &Device::Cpu).unwrap().tokenizer;
    for text in ["ROMEO: What light through yonder window breaks?", "  two leading spaces", "Ünïcødé 中文 🦀"] {
        assert_eq!(rebuilt.encode(text).unwrap(), m.tokenizer.encode(text).unwrap(), "{text:?}");
        let ids = m.tokenizer.encode(text).unwrap();
        assert_eq!(rebuilt.decode(&ids).unwrap(), m.tokenizer.decode(&ids).unwrap());
    }
}
