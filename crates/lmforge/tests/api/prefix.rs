//! Prefix tuning against Hugging Face PEFT (`tests/fixtures/prefix-*`, made by
//! `scripts/make_prefix_fixtures.py`): a BERT sequence classifier with the reparameterisation
//! MLP (transformers 4.46: BERT dropped `past_key_values` in 5.0), GPT-2 with a direct prefix and
//! grouped-query Llama with the MLP as causal LMs — logits, loss and the prefix's (and head's)
//! gradients in training form, the same logits from PEFT's saved folder (`prompt_embeddings`),
//! and a prefix saved by lmforge that reads back the same. Also: a prefix-tuned decoder's KV-cache
//! decode equals its full forward.

use crate::common::{assert_grads_match, fixtures, json, load, max_rel};
use candle_core::{DType, Device, Tensor};
use lmforge::checkpoint::LoadedModel;
use lmforge::finetune::batching::Batch;
use lmforge::finetune::model::Classifier;
use lmforge::models::{Decoder, EncoderInput, HeadKind, KvCache, ModelSpec, Piece};
use lmforge::nn::peft;
use lmforge::nn::prefix::{self, PrefixShape, PrefixSpec};
use lmforge::nn::ParamStore;
use lmforge::ops::{Kernels, KernelsGuard};
use lmforge::optim::named_grads;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn local(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// The base folder's weights with the fixture's training-form tensors (the prompt encoder, the
/// head) inserted as trainable parameters.
fn store_with(base: &Path, spec: &ModelSpec, trained: &HashMap<String, Tensor>) -> ParamStore {
    let mut store = ParamStore::load(&base.join("model.safetensors"), &spec.params(), &Device::Cpu).unwrap();
    store.freeze_where(|_| true);
    for (name, t) in trained {
        store.insert(name, t.clone(), true).unwrap();
    }
    store
}

/// HF's causal loss: mean cross-entropy of each position's next token, ignoring label -100.
fn causal_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (b, t, v) = logits.dims3().unwrap();
    let labels: Vec<Vec<i64>> = labels.to_dtype(DType::I64).unwrap().to_vec2().unwrap();
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (i, row) in labels.iter().enumerate() {
        for j in 0..t - 1 {
            if row[j + 1] >= 0 {
                rows.push((i * t + j) as u32);
                targets.push(row[j + 1] as u32);
            }
        }
    }
    let n = rows.len();
    let picked =
        logits.reshape((b * t, v)).unwrap().index_select(&Tensor::from_vec(rows, n, &Device::Cpu).unwrap(), 0).unwrap();
    lmforge::ops::cross_entropy(&picked, &Tensor::from_vec(targets, n, &Device::Cpu).unwrap()).unwrap()
}

/// One fixture: its folder, the shared base folder and spec, inputs and logits, metadata, the
/// training-form tensors and their gradients.
struct Case {
    dir: PathBuf,
    base: PathBuf,
    spec: ModelSpec,
    x: HashMap<String, Tensor>,
    meta: serde_json::Value,
    trained: HashMap<String, Tensor>,
    reference: HashMap<String, Tensor>,
}

fn case(name: &str, base: &str) -> Case {
    let (dir, base) = (local(name), fixtures().join(base));
    Case {
        spec: lmforge::models::hf::read_config(&base.join("config.json")).unwrap(),
        x: load(dir.join("expected.safetensors")),
        meta: json(dir.join("expected.json")),
        trained: load(dir.join("prompt_encoder.safetensors")),
        reference: load(dir.join("grads.safetensors")),
        dir,
        base,
    }
}

fn assert_close(label: &str, got: f64, want: f64) {
    assert!(((got - want) / want).abs() <= 1e-5, "{label}: {got} vs {want}");
}

#[test]
fn bert_prefix_classifier_matches_peft() {
    let Case { dir, base, spec, x, meta, trained, reference } = case("prefix-bert-cls", "bert-tiny");
    let input =
        EncoderInput::from_mask(x["input_ids"].clone(), x["token_type_ids"].clone(), &x["attention_mask"]).unwrap();
    let labels: Vec<u32> = x["labels"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let batch = Batch { ids: input.ids, type_ids: input.type_ids, lengths: input.lengths, labels: None };
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        let label = format!("prefix-bert-cls, {}", k.name());
        let store = store_with(&base, &spec, &trained);
        let classifier = Classifier::new(&spec, &store, 0.0, HeadKind::Sequence).unwrap();
        let logits = classifier.logits(&batch, None).unwrap();
        let rel = max_rel(&logits, &x["logits"]);
        assert!(rel <= 1e-5, "{label}: logits max rel {rel:e}");
        let targets = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let loss = lmforge::ops::cross_entropy(&logits, &targets).unwrap();
        assert_close(&label, loss.to_scalar::<f32>().unwrap() as f64, meta["loss"].as_f64().unwrap());
        let grads = named_grads(store.vars(), &loss.backward().unwrap()).unwrap();
        assert_grads_match(&label, &grads, &reference);
    }

    // PEFT's saved folder: the prefix already projected, the head as modules_to_save.
    let store = peft_store(&base, &spec, &dir.join("peft"), HeadKind::Sequence);
    let logits = Classifier::new(&spec, &store, 0.0, HeadKind::Sequence).unwrap().logits(&batch, None).unwrap();
    let rel = max_rel(&logits, &x["logits"]);
    assert!(rel <= 1e-5, "PEFT folder: logits max rel {rel:e}");
}

/// The base (without pretraining heads, with a placeholder head) and PEFT's folder on top.
fn peft_store(base: &Path, spec: &ModelSpec, adapter: &Path, kind: HeadKind) -> ParamStore {
    let heads = lmforge::finetune::model::head_params(spec, kind, 3);
    let mut store = store_with(base, spec, &HashMap::new());
    for p in heads {
        store.insert(&p.name, Tensor::zeros(p.shape.as_slice(), DType::F32, &Device::Cpu).unwrap(), false).unwrap();
    }
    let a = peft::load_peft(adapter, &mut store, false, PrefixShape::of(spec)).unwrap();
    assert!(a.replaced.iter().any(|n| n.starts_with("classifier.")), "{:?}", a.replaced);
    store
}

#[test]
fn causal_prefixes_match_peft() {
    for (name, base) in [("prefix-gpt2-lm", "gpt2-tiny"), ("prefix-llama-lm", "llama-tiny")] {
        let Case { dir, base, spec, x, meta, trained, reference } = case(name, base);
        let ids = x["input_ids"].to_dtype(DType::U32).unwrap();
        for k in [Kernels::Fused, Kernels::Reference] {
            let _k = KernelsGuard::set(k);
            let label = format!("{name}, {}", k.name());
            let store = store_with(&base, &spec, &trained);
            let decoder = Decoder::new(&spec, &store).unwrap();
            assert_eq!(decoder.prefix_len(), meta["num_virtual_tokens"].as_u64().unwrap() as usize);
            let logits = decoder.forward(&ids, 0, None).unwrap();
            // Padded positions' logits are not compared (transformers masks their keys only).
            let mask: Vec<Vec<i64>> = x["attention_mask"].to_dtype(DType::I64).unwrap().to_vec2().unwrap();
            for (row, m) in mask.iter().enumerate() {
                let real = m.iter().filter(|v| **v == 1).count();
                let got = logits.get(row).unwrap().narrow(0, 0, real).unwrap();
                let want = x["logits"].get(row).unwrap().narrow(0, 0, real).unwrap();
                let rel = max_rel(&got, &want);
                assert!(rel <= 1e-5, "{label}: row {row} logits max rel {rel:e}");
            }
            let loss = causal_loss(&logits, &x["labels"]);
            assert_close(&label, loss.to_scalar::<f32>().unwrap() as f64, meta["loss"].as_f64().unwrap());
            let grads = named_grads(store.vars(), &loss.backward().unwrap()).unwrap();
            assert_grads_match(&label, &grads, &reference);
        }

        // PEFT's folder through the CLI's loader (`--adapter`).
        let m = LoadedModel::load_with_adapter(&base, Some(&dir.join("peft")), &Device::Cpu).unwrap();
        let logits = m.decoder().unwrap().forward(&ids.narrow(0, 0, 1).unwrap(), 0, None).unwrap();
        let want = x["logits"].narrow(0, 0, 1).unwrap();
        let rel = max_rel(&logits, &want);
        assert!(rel <= 1e-5, "{name}: PEFT folder logits max rel {rel:e}");
    }
}

/// A prefix saved in PEFT's format by lmforge reads back as the same model, and a folder for
/// another geometry is refused by name.
#[test]
fn saved_prefix_reads_back_and_checks_its_geometry() {
    let base = fixtures().join("llama-tiny");
    let spec = lmforge::models::hf::read_config(&base.join("config.json")).unwrap();
    let shape = PrefixShape::of(&spec);
    let mut store = store_with(&base, &spec, &HashMap::new());
    let pspec = PrefixSpec { num_virtual_tokens: 4, projection: Some(12) };
    prefix::add_prefix(&mut store, &pspec, shape, 7).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 2, 40, 7]], &Device::Cpu).unwrap();
    let want = Decoder::new(&spec, &store).unwrap().forward(&ids, 0, None).unwrap();

    let out = tempfile::tempdir().unwrap();
    prefix::save_peft(out.path(), &store, &pspec, shape, &[], "llama-tiny", "CAUSAL_LM").unwrap();
    let cfg = json(out.path().join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!((cfg["num_layers"].as_u64(), cfg["num_attention_heads"].as_u64()), (Some(2), Some(2)));
    assert_eq!(cfg["token_dim"].as_u64(), Some(32), "grouped-query: K·D, not d_model");
    let m = LoadedModel::load_with_adapter(&base, Some(out.path()), &Device::Cpu).unwrap();
    let got = m.decoder().unwrap().forward(&ids, 0, None).unwrap();
    assert!(max_rel(&got, &want) <= 1e-6);

    let gpt2 = LoadedModel::load_with_adapter(&fixtures().join("gpt2-tiny"), Some(out.path()), &Device::Cpu);
    let e = gpt2.err().expect("another model's prefix").to_string();
    assert!(e.contains("adapter_config.json") && e.contains("another model"), "{e}");
}

/// Generation's path (continuous batching's cache, a token at a time) sees the prefix as the
/// full forward does, for both architectures, on the host cache and the tensor cache.
#[test]
fn prefix_decoder_decodes_as_it_forwards() {
    for preset in ["tiny", "llama-tiny"] {
        let spec = ModelSpec::preset(preset).unwrap();
        let mut store =
            ParamStore::init(&spec.params(), lmforge::nn::InitScheme::Gpt2, spec.n_layer, 3, &Device::Cpu).unwrap();
        prefix::add_prefix(
            &mut store,
            &PrefixSpec { num_virtual_tokens: 3, projection: None },
            PrefixShape::of(&spec),
            1,
        )
        .unwrap();
        let decoder = Decoder::new(&spec, &store).unwrap();
        let tokens = [4u32, 17, 9, 33, 2, 8];
        let full =
            decoder.forward(&Tensor::new(&[tokens], &Device::Cpu).unwrap(), 0, None).unwrap().squeeze(0).unwrap();

        let mut cache = KvCache::new(spec.n_layer);
        let prompt =
            decoder.forward_pieces(&mut [Piece { tokens: &tokens[..2], start: 0, cache: &mut cache }]).unwrap();
        let rel = max_rel(&prompt.squeeze(0).unwrap(), &full.get(1).unwrap());
        assert!(rel <= 1e-5, "{preset}: prompt: max rel {rel:e}");
        for i in 2..tokens.len() {
            assert_eq!(cache.len(), i, "the cache counts tokens, not virtual tokens");
            let l =
                decoder.forward_pieces(&mut [Piece { tokens: &tokens[i..=i], start: i, cache: &mut cache }]).unwrap();
            let rel = max_rel(&l.squeeze(0).unwrap(), &full.get(i).unwrap());
            assert!(rel <= 1e-5, "{preset}: token {i}: max rel {rel:e}");
        }
        // The tensor cache (`forward` with a cache), a token at a time.
        let mut cache = KvCache::new(spec.n_layer);
        for (i, t) in tokens.iter().enumerate() {
            let l = decoder.forward(&Tensor::new(&[[*t]], &Device::Cpu).unwrap(), i, Some(&mut cache)).unwrap();
            let rel = max_rel(&l.squeeze(0).unwrap().squeeze(0).unwrap(), &full.get(i).unwrap());
            assert!(rel <= 1e-5, "{preset}: tensor cache token {i}: max rel {rel:e}");
        }
    }
}
