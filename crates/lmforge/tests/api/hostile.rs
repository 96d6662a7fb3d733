//! Hostile inputs: every parser a user's file reaches — run config, HF config.json,
//! tokenizer.json, token shards, safetensors weights, checkpoint manifests, corpus files,
//! fine-tuning rows (TSV / CSV / JSONL) — is
//! fed random and mutated bytes (proptest, a bounded number of cases so CI stays fast; the
//! cargo-fuzz targets in `fuzz/` run the same entry points for hours) and crafted lies (wrong
//! shapes and dtypes, headers claiming 2^60 tokens or exabyte tensors). Each must answer with
//! a value or an error: never a panic, never a huge allocation.

use lmforge::checkpoint::verify_manifest;
use lmforge::corpus::clean::{decode, normalize, Normalization};
use lmforge::corpus::reader::{DocMode, DocReader};
use lmforge::models::{hf, ModelSpec};
use lmforge::nn::ParamStore;
use lmforge::shards::{ShardHeader, TokenShardWriter};
use lmforge::tokenizer::TextTokenizer;
use lmforge::train::RunConfig;
use lmforge::Device;
use proptest::prelude::*;
use std::path::Path;

const MICRO_GPT2: &str = r#"{"model_type": "gpt2", "vocab_size": 16, "n_positions": 8, "n_embd": 8,
    "n_layer": 1, "n_head": 2}"#;

fn micro_spec() -> ModelSpec {
    hf::parse_config(MICRO_GPT2).unwrap()
}

fn valid_safetensors() -> Vec<u8> {
    let spec = micro_spec();
    let p = ParamStore::init(&spec.params(), lmforge::nn::InitScheme::Gpt2, 1, 3, &Device::Cpu).unwrap();
    p.to_safetensors().unwrap()
}

fn valid_tokenizer_json() -> Vec<u8> {
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(20);
    let tk = TextTokenizer::train_bpe(text.lines(), 280, &["<|endoftext|>".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tk.save(&dir.path().join("t.json")).unwrap();
    std::fs::read(dir.path().join("t.json")).unwrap()
}

fn valid_shard() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.bin");
    let mut w = TokenShardWriter::create(&p, 300).unwrap();
    for doc in [vec![1, 2, 3], vec![], vec![299, 0, 7, 7]] {
        w.push_document(&doc).unwrap();
    }
    w.finish().unwrap();
    std::fs::read(p).unwrap()
}

/// Overwrites bytes at (position mod `focus`) and cuts the result to (cut mod (len + 1)) when
/// `cut` is set: mutations concentrated on the first `focus` bytes (the header).
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>, focus: usize) -> Vec<u8> {
    let focus = focus.min(bytes.len()).max(1);
    for &(i, b) in edits {
        if !bytes.is_empty() {
            bytes[i % focus] = b;
        }
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
    bytes
}

fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (prop::collection::vec((any::<usize>(), any::<u8>()), 0..8), prop::option::of(any::<usize>()))
}

/// Config keys with values that stress them: huge, negative, zero, fractional, NaN, strings.
fn override_strategy() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "model.n_layer",
        "model.d_model",
        "model.n_head",
        "model.n_kv_head",
        "model.vocab_size",
        "model.context",
        "model.d_ff",
        "model.preset",
        "model.style",
        "train.batch_size",
        "train.grad_accum",
        "train.seq_len",
        "train.max_steps",
        "train.eval_batches",
        "train.on_nonfinite",
        "train.max_consecutive_faults",
        "train.rollback_lr_factor",
        "train.spike_ratio",
        "optim.lr",
        "optim.name",
        "optim.groups",
        "schedule.kind",
        "data.val_fraction",
        "checkpoint.keep_last",
    ]);
    let values = prop::sample::select(vec![
        "0",
        "1",
        "-1",
        "3",
        "0.5",
        "1e300",
        "nan",
        "inf",
        "9223372036854775807",
        "18446744073709551615",
        "1152921504606846976",
        "\"llama-7b\"",
        "\"llama\"",
        "\"rollback\"",
        "[{pattern = \"*\"}]",
        "[1, 2]",
        "{a = 1}",
        "plain words",
    ]);
    (keys, values).prop_map(|(k, v)| format!("{k}={v}"))
}

const VALID_HTML: &str = "<html><head><meta charset=utf-8><script>x()</script></head><body><nav>Home</nav>\
    <article><p>A paragraph of text long enough to count as the main content of the page.</p></article></body></html>";

/// A WARC with a response (chunked, HTML), a resource and a conversion record.
fn valid_warc() -> Vec<u8> {
    let record = |kind: &str, ct: &str, body: &[u8]| {
        let mut r = format!(
            "WARC/1.1\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:1>\r\nWARC-Date: 2026-01-01T00:00:00Z\r\n\
             WARC-Target-URI: https://example.com/\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let http = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{VALID_HTML}\r\n0\r\n\r\n",
        VALID_HTML.len()
    );
    [
        record("response", "application/http; msgtype=response", http.as_bytes()),
        record("resource", "text/html", VALID_HTML.as_bytes()),
        record("conversion", "text/plain", b"plain text"),
    ]
    .concat()
}

fn doc_reader_survives(bytes: &[u8], name: &str, mode: DocMode) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let mut r = DocReader::new(vec![p], mode, "text");
    // Compressed input may expand a thousandfold: a budget of document bytes, not a count.
    let mut seen = 0usize;
    while seen < 1 << 20 {
        match r.next_doc() {
            Ok(Some(doc)) => {
                seen += doc.bytes.len() + 1;
                if let lmforge::corpus::reader::DocKind::Html { charset } = &doc.kind {
                    let _ = lmforge::corpus::web::html_text(&doc.bytes, charset.as_deref(), None);
                }
                if let Ok((text, _)) = decode(doc.bytes, true) {
                    normalize(&text, Normalization::Nfkc);
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn run_config_text_never_panics(text in ".{0,200}") {
        let _ = RunConfig::from_toml_str(&text, &[]);
    }

    #[test]
    fn run_config_overrides_never_panic_and_what_resolves_can_be_sized(
        sets in prop::collection::vec(override_strategy(), 0..6)
    ) {
        if let Ok(cfg) = RunConfig::from_toml_str("", &sets) {
            let spec = ModelSpec::from_config(&cfg.model).unwrap();
            let optim = lmforge::optim::OptimSpec::from_config(&cfg.optim).unwrap();
            let seq = if cfg.train.seq_len == 0 { spec.context } else { cfg.train.seq_len };
            // The refusal check sizes the run with saturating arithmetic: no overflow.
            let _ = lmforge::train::check_fits(&spec, cfg.train.batch_size, seq, "x", &optim, cfg.train.activation_checkpointing);
            let _ = spec.train_flops_per_token(seq);
        }
    }

    #[test]
    fn hf_config_json_never_panics(
        model_type in prop::sample::select(vec!["gpt2", "llama", "bert", ""]),
        ints in prop::collection::vec((prop::sample::select(vec![
            "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "hidden_size",
            "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "head_dim",
            "intermediate_size", "max_position_embeddings"]), any::<u64>()), 0..14),
    ) {
        let mut v = serde_json::json!({ "model_type": model_type });
        for (k, x) in ints {
            v[k] = serde_json::json!(x % 5 * (x >> 60) + (x & 0xff));
        }
        if let Ok(spec) = hf::parse_config(&v.to_string()) {
            prop_assert!(spec.num_params() > 0);
        }
    }

    #[test]
    fn tokenizer_json_mutations_never_panic((e, cut) in edits()) {
        let bytes = mutate(valid_tokenizer_json(), &e, cut, usize::MAX);
        if let Ok(tk) = TextTokenizer::from_bytes(&bytes) {
            if let Ok(ids) = tk.encode("hostile ✓ input\n") {
                let _ = tk.decode(&ids);
            }
        }
    }

    #[test]
    fn shard_mutations_are_errors_or_consistent((e, cut) in edits()) {
        let bytes = mutate(valid_shard(), &e, cut, usize::MAX);
        if let Ok(h) = ShardHeader::parse(&bytes, Path::new("s.bin")) {
            prop_assert_eq!(bytes.len(), 64 + h.n_tokens * h.width + (h.n_docs + 1) * 8);
        }
    }

    #[test]
    fn safetensors_mutations_never_panic((e, cut) in edits()) {
        let valid = valid_safetensors();
        let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let bytes = mutate(valid, &e, cut, header + 16);
        let _ = ParamStore::from_safetensors_bytes(&bytes, &micro_spec().params(), &Device::Cpu, Path::new("m"));
    }

    #[test]
    fn corpus_files_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        name in prop::sample::select(vec!["a.jsonl", "a.txt", "a.txt.gz", "a.jsonl.zst"]),
        mode in prop::sample::select(vec![DocMode::File, DocMode::Paragraph, DocMode::Line]),
    ) {
        doc_reader_survives(&bytes, name, mode);
    }

    #[test]
    fn web_files_never_panic((e, cut) in edits(), warc in any::<bool>()) {
        let (bytes, name) = if warc { (valid_warc(), "a.warc") } else { (VALID_HTML.as_bytes().to_vec(), "a.html") };
        let focus = bytes.len();
        doc_reader_survives(&mutate(bytes, &e, cut, focus), name, DocMode::Paragraph);
    }

    #[test]
    fn dataset_rows_never_panic(
        selector in any::<u8>(),
        rows in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
        tabs in prop::collection::vec(0usize..40, 0..12),
    ) {
        // Rows of random bytes with some field separators, quotes and braces sprinkled in.
        let mut bytes = b"label\tsentence\tpair\n".to_vec();
        for (i, mut r) in rows.into_iter().enumerate() {
            if let Some(&at) = tabs.get(i) {
                if at < r.len() {
                    r[at] = [b'\t', b',', b'"', b'{'][i % 4];
                }
            }
            bytes.extend_from_slice(&r);
            bytes.push(b'\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let _ = lmforge::finetune::dataset::read_bytes_for_fuzzing(dir.path(), selector, &bytes);
    }

    #[test]
    fn manifest_mutations_are_errors((e, cut) in edits()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        lmforge::checkpoint::write_manifest(dir.path()).unwrap();
        let m = dir.path().join("manifest.json");
        let original = std::fs::read(&m).unwrap();
        let bytes = mutate(original.clone(), &e, cut, usize::MAX);
        std::fs::write(&m, &bytes).unwrap();
        let r = verify_manifest(dir.path());
        if bytes != original {
            // Only a change that leaves the JSON meaning the same may pass (e.g. whitespace).
            if r.is_ok() {
                let a: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let b: serde_json::Value = serde_json::from_slice(&original).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }
}

/// safetensors bytes with a hand-written header.
fn safetensors_with(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn crafted_weights_wrong_shape_dtype_or_absurd_size_are_errors() {
    let params = micro_spec().params();
    let load = |bytes: &[u8]| {
        ParamStore::from_safetensors_bytes(bytes, &params, &Device::Cpu, Path::new("model.safetensors"))
            .err()
            .expect("must be refused")
            .to_string()
    };
    // An exabyte tensor claimed by a 4-byte file.
    let e = load(&safetensors_with(
        r#"{"transformer.wte.weight":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#,
        &[0; 4],
    ));
    assert!(e.contains("model.safetensors"), "{e}");
    // A header length of 2^60.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(load(&huge).contains("model.safetensors"));
    // Offsets beyond the data.
    let e = load(&safetensors_with(
        r#"{"transformer.wte.weight":{"dtype":"F32","shape":[16,8],"data_offsets":[0,1152921504606846976]}}"#,
        &[0; 16],
    ));
    assert!(e.contains("model.safetensors"), "{e}");
    // Wrong shape: the right name, the wrong size, named in the error.
    let e = load(&safetensors_with(
        r#"{"transformer.wte.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        &[0; 16],
    ));
    assert!(e.contains("transformer.wte.weight") && e.contains("[2, 2]") && e.contains("[16, 8]"), "{e}");
    // Wrong dtype: integers where floats belong.
    let e = load(&safetensors_with(
        r#"{"transformer.wte.weight":{"dtype":"I64","shape":[16,8],"data_offsets":[0,1024]}}"#,
        &[0; 1024],
    ));
    assert!(e.contains("transformer.wte.weight") && e.contains("I64"), "{e}");
}

#[test]
fn crafted_configs_with_absurd_sizes_are_refused_by_key() {
    let cases = [
        (
            r#"{"model_type":"gpt2","vocab_size":16,"n_positions":8,"n_embd":8,"n_layer":1000000000000,"n_head":2}"#,
            "n_layer",
        ),
        (
            r#"{"model_type":"gpt2","vocab_size":1099511627776,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#,
            "vocab_size",
        ),
        (
            r#"{"model_type":"gpt2","vocab_size":16,"n_positions":8,"n_embd":18446744073709551615,"n_layer":1,"n_head":1}"#,
            "model.",
        ),
        (
            r#"{"model_type":"llama","vocab_size":16,"max_position_embeddings":8,"hidden_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"intermediate_size":16,"head_dim":1152921504606846976}"#,
            "head_dim",
        ),
    ];
    for (json, key) in cases {
        let e = hf::parse_config(json).unwrap_err();
        assert!(e.contains(key), "{json}: {e}");
    }
    for (set, key) in [
        ("train.batch_size=1152921504606846976", "train.batch_size"),
        ("model.n_layer=1000000", "model.n_layer"),
        ("model.d_model=1099511627776", "model.d_model"),
    ] {
        let e = RunConfig::from_toml_str("", &[set.to_string()]).unwrap_err().to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
}

#[test]
fn crafted_shards_claiming_2_pow_60_tokens_are_errors() {
    let mut bytes = valid_shard();
    bytes[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = ShardHeader::parse(&bytes, Path::new("train.bin")).unwrap_err().to_string();
    assert!(e.contains("train.bin") && e.contains("1152921504606846976"), "{e}");
    // Token count times width overflowing u64.
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(ShardHeader::parse(&bytes, Path::new("train.bin")).unwrap_err().to_string().contains("impossible"));
    // Documents beyond the tokens.
    let mut bytes = valid_shard();
    let n = bytes.len();
    bytes[n - 16..n - 8].copy_from_slice(&1000u64.to_le_bytes());
    assert!(ShardHeader::parse(&bytes, Path::new("train.bin")).unwrap_err().to_string().contains("document index"));
}

#[test]
fn crafted_optimizer_state_with_wrong_shapes_is_an_error() {
    let spec = micro_spec();
    let params = ParamStore::init(&spec.params(), lmforge::nn::InitScheme::Gpt2, 1, 3, &Device::Cpu).unwrap();
    let cfg = RunConfig::from_toml_str("", &[]).unwrap();
    let groups = lmforge::optim::param_groups(
        &cfg.optim,
        spec.params().into_iter().map(|p| (p.name.clone(), lmforge::train::param_role(&p))),
    )
    .unwrap();
    let mut opt = lmforge::optim::Optimizer::from_config(&cfg.optim, params.vars(), groups).unwrap();
    let mut state: std::collections::HashMap<_, _> = opt.state_tensors().into_iter().collect();
    let key = state.keys().next().unwrap().clone();
    state.insert(key.clone(), candle_core::Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap());
    let e = opt.load_state(state, 1).unwrap_err().to_string();
    assert!(e.contains(&key) && e.contains("[3, 3]"), "{e}");
}

/// The `tokenizers` crate panics (`expect("Helper")`, `expect("Precompiled")`) on these; they
/// must come back as errors (found by proptest and cargo-fuzz).
#[test]
fn tokenizer_json_that_panics_the_tokenizers_crate_is_an_error() {
    let valid: serde_json::Value = serde_json::from_slice(&valid_tokenizer_json()).unwrap();
    let text = valid.to_string();
    let cases = [
        // A lone surrogate and a raw control character inside the decoder's strings.
        text.replacen(r#""decoder":{"#, r#""decoder":{"x":"\ud800","#, 1),
        text.replacen(r#""decoder":{"#, "\"decoder\":{\"x\":\"a\u{1}b\",", 1),
        // Well-formed JSON, mistyped field.
        text.replacen(r#""normalizer":null"#, r#""normalizer":{"type":"Precompiled","precompiled_charsmap":5}"#, 1),
    ];
    for case in cases {
        assert_ne!(case, text, "the edit applies");
        let e = TextTokenizer::from_bytes(case.as_bytes()).err().expect("refused").to_string();
        assert!(e.contains("not a valid tokenizer.json"), "{e}");
    }
}
