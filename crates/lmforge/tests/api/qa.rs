//! Extractive QA against transformers and the SQuAD scripts: `BertForQuestionAnswering` and
//! `GPT2ForQuestionAnswering` fixtures (`tests/fixtures/*-qa-tiny`, made by
//! `scripts/make_qa_fixtures.py`) — `run_qa.py`'s windows (ids, segment ids, context offsets,
//! start / end targets), the start and end logits, the loss and every parameter's gradient; the
//! folder saved back under Hugging Face's names; the real MiniLM tokenizer's windows with a
//! stride; the official SQuAD v1.1 / v2.0 scores (`tests/data/squad.json`, made by
//! `scripts/make_squad_expected.py` with the official scripts).

use crate::common::{assert_grads_match_with, json, load, max_rel};
use candle_core::{Device, Tensor};
use lmforge::finetune::batching::Batch;
use lmforge::finetune::model::LoadedClassifier;
use lmforge::finetune::qa_data::{encode_questions, Answer, QaFeature, Question};
use lmforge::finetune::qa_run::span_labels;
use lmforge::finetune::qa_task::span_loss;
use lmforge::metrics::generation::normalize_answer;
use lmforge::metrics::squad::{evaluate, v1_score, v2_score, Scored, SquadVersion};
use lmforge::models::{EncoderInput, HeadKind};
use lmforge::ops::{Kernels, KernelsGuard};
use lmforge::optim::named_grads;
use lmforge::tokenizer::TextTokenizer;
use serde_json::Value;
use std::path::PathBuf;

fn local(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

fn question(q: &str, context: &str, answer: &str, start: Option<u64>) -> Question {
    Question {
        id: "q".into(),
        at: "line 1".into(),
        question: q.trim_start().into(),
        context: context.into(),
        answers: start.map(|s| vec![Answer { text: answer.into(), start: s as usize }]).unwrap_or_default(),
    }
}

fn numbers(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn offsets(v: &Value) -> Vec<Option<(usize, usize)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_array().map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize)))
        .collect()
}

/// Our windows of one case against `run_qa.py`'s. Its start target is taken as given except
/// where `run_qa.py`'s scan runs past the context (an answer ending the context puts its start
/// on the `[SEP]` after it, past the end target): there ours is the answer's token.
fn assert_windows(label: &str, got: &[QaFeature], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{label}: window count");
    for (i, (f, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(f.input.ids, numbers(&w["ids"]), "{label}: window {i} ids");
        assert_eq!(f.input.type_ids, numbers(&w["type_ids"]), "{label}: window {i} type ids");
        let offs = offsets(&w["context_offsets"]);
        assert_eq!(f.context_offsets, offs, "{label}: window {i} context offsets");
        let (start, end) = (w["start"].as_u64().unwrap() as usize, w["end"].as_u64().unwrap() as usize);
        if start > end && offs[start].is_none() {
            assert_eq!((f.start, f.end), (end, end), "{label}: window {i}: run_qa.py's start past the context");
        } else {
            assert_eq!((f.start, f.end), (start, end), "{label}: window {i} targets");
        }
    }
}

#[test]
fn qa_models_match_transformers() {
    for name in ["bert-qa-tiny", "gpt2-qa-tiny"] {
        let dir = local("fixtures").join(name);
        let x = load(dir.join("expected.safetensors"));
        let meta = json(dir.join("expected.json"));
        let reference = load(dir.join("grads.safetensors"));
        let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(m.classifier.kind, HeadKind::Span, "{name}: the class in config.json picks the span head");

        let q = question(
            meta["question"].as_str().unwrap(),
            meta["context"].as_str().unwrap(),
            meta["answer"].as_str().unwrap(),
            meta["answer_start"].as_u64(),
        );
        let (max_len, stride) = (meta["max_length"].as_u64().unwrap(), meta["stride"].as_u64().unwrap());
        let (features, rejected) =
            encode_questions(std::slice::from_ref(&q), &m.tokenizer, max_len as usize, stride as usize).unwrap();
        assert!(rejected.is_empty());
        assert_windows(name, &features, &meta["windows"]);

        let batch_rows: Vec<usize> =
            meta["batch"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let starts: Vec<u32> = batch_rows.iter().map(|&i| features[i].start as u32).collect();
        let ends: Vec<u32> = batch_rows.iter().map(|&i| features[i].end as u32).collect();
        assert_eq!(starts, numbers(&Value::from(x["start_positions"].to_vec1::<i64>().unwrap())));
        assert_eq!(ends, numbers(&Value::from(x["end_positions"].to_vec1::<i64>().unwrap())));

        for k in [Kernels::Fused, Kernels::Reference] {
            let _k = KernelsGuard::set(k);
            let label = format!("{name}, {}", k.name());
            let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
            let input =
                EncoderInput::from_mask(x["input_ids"].clone(), x["token_type_ids"].clone(), &x["attention_mask"])
                    .unwrap();
            let lengths = input.lengths.clone();
            let batch = Batch { ids: input.ids, type_ids: input.type_ids, lengths: lengths.clone(), labels: None };
            let logits = m.classifier.logits(&batch, None).unwrap(); // (B, T, 2)
            for (side, key) in ["start_logits", "end_logits"].iter().enumerate() {
                let got = logits.narrow(2, side, 1).unwrap().squeeze(2).unwrap();
                let rel = max_rel(&got, &x[*key]);
                assert!(rel <= 1e-5, "{label}: {key} max rel error {rel:e}");
            }
            let loss = span_loss(&logits, &lengths, &starts, &ends).unwrap();
            let (got, want) = (loss.to_scalar::<f32>().unwrap() as f64, meta["loss"].as_f64().unwrap());
            assert!(((got - want) / want).abs() <= 1e-5, "{label}: loss {got} vs {want}");
            let grads = named_grads(m.params.vars(), &loss.backward().unwrap()).unwrap();
            // The span softmax runs over positions, so whatever adds the same to every
            // position's features or logits has a true gradient of 0: the head's bias and the
            // last norm's bias.
            let last = format!("bert.encoder.layer.{}.output.LayerNorm.bias", m.spec.n_layer - 1);
            assert_grads_match_with(&label, &grads, &reference, &["qa_outputs.bias", "transformer.ln_f.bias", &last]);
        }
    }
}

/// Padding positions take no probability: a window's loss is the same alone or padded in a
/// batch with a longer one.
#[test]
fn span_loss_leaves_padding_out() {
    let logits = Tensor::new(&[[[0.5f32, -1.0], [2.0, 0.3], [-0.7, 1.1], [9.0, 9.0]]], &Device::Cpu).unwrap();
    let padded = span_loss(&logits, &[3], &[1], &[2]).unwrap().to_scalar::<f32>().unwrap();
    let alone = span_loss(&logits.narrow(1, 0, 3).unwrap(), &[3], &[1], &[2]).unwrap().to_scalar::<f32>().unwrap();
    assert!((padded - alone).abs() < 1e-6, "{padded} vs {alone}");
}

#[test]
fn qa_model_folders_save_with_hugging_face_names() {
    for name in ["bert-qa-tiny", "gpt2-qa-tiny"] {
        let dir = local("fixtures").join(name);
        assert_eq!(LoadedClassifier::load(&dir, &Device::Cpu).unwrap().labels, span_labels());
        crate::common::assert_saves_with_hf_names(&dir, "question_answering");
    }
}

/// The real MiniLM tokenizer (WordPiece, `[CLS] q [SEP] c [SEP]`): the windows transformers'
/// fast tokenizer gives with a stride, character offsets of accented text, a question that
/// leaves a small window, an unanswerable question.
#[test]
fn windows_match_run_qa_on_minilm() {
    let path = crate::common::fixtures().join("../data/models/all-minilm-l6-v2/tokenizer.json");
    let tk = TextTokenizer::load(&path).unwrap();
    let doc = json(local("fixtures/minilm_qa_windows.json"));
    for (n, case) in doc["cases"].as_array().unwrap().iter().enumerate() {
        let q = question(
            case["question"].as_str().unwrap(),
            case["context"].as_str().unwrap(),
            case["answer"].as_str().unwrap(),
            case["answer_start"].as_u64(),
        );
        let (max_len, stride) = (case["max_length"].as_u64().unwrap(), case["stride"].as_u64().unwrap());
        let (features, rejected) = encode_questions(&[q], &tk, max_len as usize, stride as usize).unwrap();
        assert!(rejected.is_empty(), "case {n}: {rejected:?}");
        assert_windows(&format!("case {n}"), &features, &case["windows"]);
    }
    // A question longer than the window has none, and says why.
    let long = question(&"why ".repeat(40), "a short context", "", None);
    let (features, rejected) = encode_questions(&[long], &tk, 32, 8).unwrap();
    assert!(features.is_empty() && rejected[0].1.contains("leaving none for the context"), "{rejected:?}");
}

/// Exact match and F1 of the official SQuAD v1.1 and v2.0 scripts: answer normalization, single
/// pairs (hand-made and random) and whole datasets, bit for bit.
#[test]
fn squad_scores_match_the_official_scripts() {
    let doc = json(local("data/squad.json"));
    for case in doc["normalize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(normalize_answer(text), case["v1"].as_str().unwrap(), "{text:?}");
        assert_eq!(case["v1"], case["v2"], "the scripts normalize alike");
    }
    for case in doc["pairs"].as_array().unwrap() {
        let (gold, pred) = (case["gold"].as_str().unwrap(), case["pred"].as_str().unwrap());
        let golds = vec![gold.to_string()];
        let (e1, f1) = v1_score(pred, &golds);
        let (e2, f2) = v2_score(pred, &golds);
        let want = |k: &str| case[k].as_f64().unwrap();
        assert_eq!((e1, f1), (want("v1_exact"), want("v1_f1")), "v1 {gold:?} / {pred:?}");
        assert_eq!((e2, f2), (want("v2_exact"), want("v2_f1")), "v2 {gold:?} / {pred:?}");
    }
    for (n, set) in doc["datasets"].as_array().unwrap().iter().enumerate() {
        let version = if set["version"] == "1.1" { SquadVersion::V1 } else { SquadVersion::V2 };
        let mut golds: Vec<Vec<String>> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for article in set["data"].as_array().unwrap() {
            for p in article["paragraphs"].as_array().unwrap() {
                for qa in p["qas"].as_array().unwrap() {
                    ids.push(qa["id"].as_str().unwrap().to_string());
                    golds.push(
                        qa["answers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|a| a["text"].as_str().unwrap().to_string())
                            .collect(),
                    );
                }
            }
        }
        let preds = &set["predictions"];
        let scored: Vec<Scored> =
            golds.iter().zip(&ids).map(|(g, id)| Scored { answers: g, prediction: preds[id].as_str() }).collect();
        let got = serde_json::to_value(evaluate(version, &scored)).unwrap();
        let want = &set["result"];
        let exact_key = if version == SquadVersion::V1 { "exact_match" } else { "exact" };
        assert_eq!(got["exact"], want[exact_key], "dataset {n} exact");
        assert_eq!(got["f1"], want["f1"], "dataset {n} f1");
        if version == SquadVersion::V2 {
            assert_eq!(got["total"], want["total"], "dataset {n} total");
            for part in ["HasAns", "NoAns"] {
                for k in ["exact", "f1", "total"] {
                    assert_eq!(got[part][k], want[format!("{part}_{k}")], "dataset {n} {part}_{k}");
                }
            }
        }
    }
}
