//! Token classification against transformers: `BertForTokenClassification` and
//! `GPT2ForTokenClassification` fixtures (`tests/fixtures/*-token-cls-tiny`, made by
//! `scripts/make_token_cls_fixtures.py`) — the word / sub-word alignment of `run_ner.py`, the
//! logits, the loss over the first sub-words and every parameter's gradient; the folder saved
//! back under Hugging Face's names; the real MiniLM tokenizer's word alignment.

use crate::common::{assert_grads_match, json, load, max_rel};
use candle_core::{DType, Device};
use lmforge::finetune::batching::Batch;
use lmforge::finetune::dataset::LabelMap;
use lmforge::finetune::model::LoadedClassifier;
use lmforge::finetune::tagged::{encode_sentences, Sentence};
use lmforge::finetune::token_task::token_loss;
use lmforge::models::{EncoderInput, HeadKind};
use lmforge::ops::{Kernels, KernelsGuard};
use lmforge::optim::named_grads;
use std::path::PathBuf;

fn local(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn strings(v: &serde_json::Value) -> Vec<Vec<String>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .collect()
}

/// The fixture's sentences with their gold tags.
fn sentences(meta: &serde_json::Value, labels: &LabelMap) -> Vec<Sentence> {
    strings(&meta["words"])
        .into_iter()
        .zip(strings(&meta["tags"]))
        .enumerate()
        .map(|(i, (words, tags))| Sentence {
            line: i as u64 + 1,
            words,
            tags: Some(tags.iter().map(|t| labels.id(t).unwrap()).collect()),
        })
        .collect()
}

#[test]
fn token_classifiers_match_transformers() {
    for name in ["bert-token-cls-tiny", "gpt2-token-cls-tiny"] {
        let dir = local(name);
        let x = load(dir.join("expected.safetensors"));
        let meta = json(dir.join("expected.json"));
        let reference = load(dir.join("grads.safetensors"));
        let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(m.classifier.kind, HeadKind::Token, "{name}: the class in config.json picks the token head");
        assert_eq!(m.labels.labels, ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]);

        // run_ner.py's alignment: the same ids, each word's tag on its first sub-word only.
        let ids = x["input_ids"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        let labels = x["labels"].to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
        let mask = x["attention_mask"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        let pieces = encode_sentences(&sentences(&meta, &m.labels), &m.tokenizer, 512).unwrap();
        assert_eq!(pieces.len(), 2, "{name}: no sentence is split");
        let (mut rows, mut tags) = (Vec::new(), Vec::new());
        for (b, p) in pieces.iter().enumerate() {
            let n = mask[b].iter().filter(|&&v| v == 1).count();
            assert_eq!(p.input.ids, ids[b][..n], "{name}: sentence {b} ids");
            let want: Vec<(usize, usize)> =
                labels[b].iter().enumerate().filter(|(_, &l)| l != -100).map(|(pos, &l)| (pos, l as usize)).collect();
            assert_eq!(p.targets(), want, "{name}: sentence {b} tagged positions");
            for (pos, tag) in want {
                rows.push((b * ids[b].len() + pos) as u32);
                tags.push(tag as u32);
            }
        }
        assert!(rows.len() < mask.iter().flatten().filter(|&&v| v == 1).count(), "{name}: words of several sub-words");

        for k in [Kernels::Fused, Kernels::Reference] {
            let _k = KernelsGuard::set(k);
            let label = format!("{name}, {}", k.name());
            let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
            let input =
                EncoderInput::from_mask(x["input_ids"].clone(), x["token_type_ids"].clone(), &x["attention_mask"])
                    .unwrap();
            let batch =
                Batch { ids: input.ids, type_ids: input.type_ids, lengths: input.lengths.clone(), labels: None };
            let logits = m.classifier.logits(&batch, None).unwrap();
            // Real positions only (what padding positions see differs between implementations
            // and is never read).
            for (b, &n) in input.lengths.iter().enumerate() {
                let got = logits.get(b).unwrap().narrow(0, 0, n).unwrap();
                let want = x["logits"].get(b).unwrap().narrow(0, 0, n).unwrap();
                let rel = max_rel(&got, &want);
                assert!(rel <= 1e-5, "{label}: row {b} logits max rel error {rel:e}");
            }
            let loss = token_loss(&logits, &rows, &tags).unwrap();
            let (got, want) = (loss.to_scalar::<f32>().unwrap() as f64, meta["loss"].as_f64().unwrap());
            assert!(((got - want) / want).abs() <= 1e-5, "{label}: loss {got} vs {want}");

            let grads = named_grads(m.params.vars(), &loss.backward().unwrap()).unwrap();
            assert_grads_match(&label, &grads, &reference);
        }
    }
}

/// A token classifier saved by lmforge is the Hugging Face folder again: the same class, labels
/// and tensor names (no pooler for BERT), and the same logits when read back.
#[test]
fn token_classifier_folders_save_with_hugging_face_names() {
    for name in ["bert-token-cls-tiny", "gpt2-token-cls-tiny"] {
        let dir = local(name);
        let config = crate::common::assert_saves_with_hf_names(&dir, "token_classification");
        assert_eq!(config["id2label"], json(dir.join("config.json"))["id2label"], "{name}");
    }
}

/// The real MiniLM tokenizer (WordPiece with [CLS] / [SEP]) splits words into the sub-words the
/// `tokenizers` library gives for `is_pretokenized=True`.
#[test]
fn word_alignment_matches_tokenizers_on_minilm() {
    let data = crate::common::fixtures().join("../data/models/all-minilm-l6-v2/tokenizer.json");
    let tk = lmforge::tokenizer::TextTokenizer::load(&data).unwrap();
    let doc = json(local("minilm_alignment.json"));
    for case in doc["cases"].as_array().unwrap() {
        let words: Vec<&str> = case["words"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        let enc = tk.encode_words(std::slice::from_ref(&words), 0).unwrap().remove(0);
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let word_ids: Vec<Option<u32>> =
            case["word_ids"].as_array().unwrap().iter().map(|v| v.as_u64().map(|w| w as u32)).collect();
        assert_eq!((enc.ids, enc.word_ids), (ids, word_ids), "{words:?}");
    }
}
