//! Fine-tuning against the references in `../shared/fixtures`: a PEFT LoRA adapter reproduces
//! transformers + peft logits and merges exactly; `BertForSequenceClassification` logits, loss
//! and gradients; scikit-learn's classification metrics; and frozen parameters staying frozen
//! (no gradient, bit-identical) under LoRA and adapters.

use crate::common::{assert_grads_match, fixtures, json, load, max_rel};
use candle_core::{DType, Device, Tensor};
use lmforge::checkpoint::LoadedModel;
use lmforge::finetune::batching::{collate, Batch, Encoded};
use lmforge::finetune::dataset::LabelMap;
use lmforge::finetune::model::{self, Classifier, LoadedClassifier};
use lmforge::finetune::FinetuneConfig;
use lmforge::models::{Decoder, EncoderInput, HeadKind};
use lmforge::nn::prefix::PrefixShape;
use lmforge::nn::{peft, ParamStore};
use lmforge::ops::{Kernels, KernelsGuard};
use lmforge::optim::{named_grads, Optimizer};
use std::collections::HashMap;

/// gpt2-tiny with the fixture's PEFT adapter applied (factors frozen, as for inference).
fn gpt2_with_adapter() -> (LoadedModel, ParamStore, peft::PeftAdapter) {
    let base = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let mut store =
        ParamStore::load(&base.source.join("model.safetensors"), &base.spec.params(), &Device::Cpu).unwrap();
    let adapter =
        peft::load_peft(&fixtures().join("gpt2-tiny-lora"), &mut store, false, PrefixShape::of(&base.spec)).unwrap();
    (base, store, adapter)
}

#[test]
fn peft_lora_adapter_reproduces_transformers_logits_and_merges_exactly() {
    let (base, store, adapter) = gpt2_with_adapter();
    let cfg = json(fixtures().join("gpt2-tiny-lora/expected.json"));
    assert_eq!(adapter.spec.rank as u64, cfg["r"].as_u64().unwrap());
    assert_eq!(adapter.modules, ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]);
    let expected = load(fixtures().join("gpt2-tiny-lora/expected.safetensors"));
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        let logits = Decoder::new(&base.spec, &store).unwrap().forward(&ids, 0, None).unwrap();
        let rel = max_rel(&logits, &expected["logits"]);
        assert!(rel <= 1e-5, "{}: adapted logits max rel error {rel:e}", k.name());
        // The adapter changes the model: the base alone is far from the expected logits.
        let plain = base.decoder().unwrap().forward(&ids, 0, None).unwrap();
        assert!(max_rel(&plain, &expected["logits"]) > 1e-3, "the fixture's LoRA delta is non-zero");
    }
    // Merged into the base weights (Conv1D: Wᵀ += s·B·A) gives the same logits.
    let merged = peft::merged_tensors(&store).unwrap();
    assert!(merged.iter().all(|(n, _)| !n.contains("lora_")), "factors are folded away");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("merged.safetensors");
    std::fs::write(&path, lmforge::nn::serialize_tensors(merged.into_iter()).unwrap()).unwrap();
    let merged_store = ParamStore::load(&path, &base.spec.params(), &Device::Cpu).unwrap();
    let a = Decoder::new(&base.spec, &store).unwrap().forward(&ids, 0, None).unwrap();
    let b = Decoder::new(&base.spec, &merged_store).unwrap().forward(&ids, 0, None).unwrap();
    let rel = max_rel(&b, &a);
    assert!(rel <= 1e-5, "merged vs unmerged logits max rel error {rel:e}");
}

#[test]
fn peft_round_trip_and_refusals() {
    let (_, store, adapter) = gpt2_with_adapter();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("again");
    std::fs::create_dir_all(&out).unwrap();
    peft::save_peft(&out, &store, &adapter.spec, &adapter.spec.targets, &[], &[], "../gpt2-tiny", None).unwrap();
    let saved = load(out.join("adapter_model.safetensors"));
    let original = load(fixtures().join("gpt2-tiny-lora/adapter_model.safetensors"));
    assert_eq!(saved.len(), original.len());
    for (k, t) in &original {
        let s = saved.get(k).unwrap_or_else(|| panic!("PEFT key {k} not written"));
        assert_eq!(s.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap(), "{k}");
    }
    let cfg = json(out.join("adapter_config.json"));
    assert_eq!((cfg["peft_type"].as_str(), cfg["fan_in_fan_out"].as_bool()), (Some("LORA"), Some(true)));

    let mut text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    text = text.replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(out.join("adapter_config.json"), text).unwrap();
    let base = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let mut fresh =
        ParamStore::load(&base.source.join("model.safetensors"), &base.spec.params(), &Device::Cpu).unwrap();
    let e = peft::load_peft(&out, &mut fresh, false, PrefixShape::of(&base.spec)).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("DoRA"), "{e}");
}

fn batch_of(x: &HashMap<String, Tensor>) -> Batch {
    let input =
        EncoderInput::from_mask(x["input_ids"].clone(), x["token_type_ids"].clone(), &x["attention_mask"]).unwrap();
    Batch {
        ids: input.ids,
        type_ids: input.type_ids,
        lengths: input.lengths,
        labels: Some(x["labels"].to_dtype(DType::U32).unwrap()),
    }
}

#[test]
fn bert_sequence_classification_matches_transformers() {
    let dir = fixtures().join("bert-cls-tiny");
    let x = load(dir.join("expected.safetensors"));
    let want_loss = json(dir.join("expected.json"))["loss"].as_f64().unwrap();
    let reference = load(dir.join("grads.safetensors"));
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        let label = k.name();
        let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(m.labels.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
        let batch = batch_of(&x);
        assert!(batch.lengths.iter().any(|&l| l < 20), "the fixture has a padded row");
        let logits = m.classifier.logits(&batch, None).unwrap();
        let rel = max_rel(&logits, &x["logits"]);
        assert!(rel <= 1e-5, "{label}: logits max rel error {rel:e}");
        let loss = model::loss(&logits, batch.labels.as_ref().unwrap(), 0.0).unwrap();
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(((got - want_loss) / want_loss).abs() <= 1e-5, "{label}: loss {got} vs {want_loss}");

        let grads = named_grads(m.params.vars(), &loss.backward().unwrap()).unwrap();
        assert_grads_match(label, &grads, &reference);
    }
}

/// `BertForSequenceClassification` with `num_labels = 1`, `problem_type = "regression"`
/// (`tests/fixtures/bert-regression-tiny`, `scripts/make_regression_fixture.py`): the one
/// logit, transformers' MSE loss and every gradient.
#[test]
fn bert_regression_matches_transformers() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-regression-tiny");
    let x = load(dir.join("expected.safetensors"));
    let want_loss = json(dir.join("expected.json"))["loss"].as_f64().unwrap();
    let reference = load(dir.join("grads.safetensors"));
    let m = LoadedClassifier::load(&dir, &Device::Cpu).unwrap();
    assert!(m.regression && m.labels.len() == 1, "problem_type = regression, one output");
    let input =
        EncoderInput::from_mask(x["input_ids"].clone(), x["token_type_ids"].clone(), &x["attention_mask"]).unwrap();
    let batch = Batch { ids: input.ids, type_ids: input.type_ids, lengths: input.lengths, labels: None };
    let logits = m.classifier.logits(&batch, None).unwrap();
    let rel = max_rel(&logits, &x["logits"]);
    assert!(rel <= 1e-5, "logits max rel error {rel:e}");
    let loss = model::mse_loss(&logits, &x["labels"]).unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(((got - want_loss) / want_loss).abs() <= 1e-5, "loss {got} vs {want_loss}");
    let grads = named_grads(m.params.vars(), &loss.backward().unwrap()).unwrap();
    assert_grads_match("bert-regression-tiny", &grads, &reference);
}

/// Label smoothing as torch's CrossEntropyLoss(label_smoothing=0.1), worked by hand.
#[test]
fn label_smoothing_matches_torch_definition() {
    let logits = Tensor::new(&[[2.0f32, 0.0, -1.0]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let lse = (2f64.exp() + 1.0 + (-1f64).exp()).ln();
    let logp = [2.0 - lse, -lse, -1.0 - lse];
    let want = 0.9 * -logp[0] + 0.1 * -(logp.iter().sum::<f64>() / 3.0);
    let got = model::loss(&logits, &y, 0.1).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn classification_metrics_match_scikit_learn_exactly() {
    let m = json(fixtures().join("metrics.json"));
    let c = &m["classification"];
    let ids = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
    };
    let labels: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let got = lmforge::metrics::classification(&ids(&c["y_true"]), &ids(&c["y_pred"]), &labels);
    assert_eq!(got.accuracy, c["accuracy"].as_f64().unwrap());
    let cm: Vec<Vec<u64>> = c["confusion_matrix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ids(r).into_iter().map(|v| v as u64).collect())
        .collect();
    assert_eq!(got.confusion_matrix, cm);
    for (avg, prf) in [("macro", got.macro_avg), ("micro", got.micro), ("weighted", got.weighted)] {
        for (field, v) in [("precision", prf.precision), ("recall", prf.recall), ("f1", prf.f1)] {
            assert_eq!(v, c[avg][field].as_f64().unwrap(), "{avg} {field}");
        }
    }
    let b = &c["binary"];
    let two: Vec<String> = vec!["0".into(), "1".into()];
    let got = lmforge::metrics::classification(&ids(&b["y_true"]), &ids(&b["y_pred"]), &two);
    let bin = got.binary.unwrap();
    assert_eq!(got.accuracy, b["accuracy"].as_f64().unwrap());
    assert_eq!(
        (bin.precision, bin.recall, bin.f1),
        (b["precision"].as_f64().unwrap(), b["recall"].as_f64().unwrap(), b["f1"].as_f64().unwrap())
    );
}

fn config(base: &str, method: &str) -> FinetuneConfig {
    FinetuneConfig::resolve(
        None,
        &[
            "data.train=unused.tsv".into(),
            format!("model.base={base:?}"),
            format!("finetune.method={method}"),
            "finetune.train_norms=true".into(),
            "model.dropout=0.1".into(),
            "lora.dropout=0.1".into(),
            "optim.lr=0.01".into(),
        ],
    )
    .unwrap()
}

/// Three optimizer steps of LoRA and of adapters, on a decoder and on an encoder: frozen
/// parameters get no gradient (not even computed into the gradient store) and keep every bit;
/// the trainable ones (factors / adapters, head, norms) move.
#[test]
fn frozen_parameters_get_no_gradient_and_stay_bit_identical() {
    for (fixture, method) in
        [("gpt2-tiny", "lora"), ("gpt2-tiny", "adapter"), ("bert-tiny", "lora"), ("llama-tiny", "adapter")]
    {
        let what = format!("{fixture} {method}");
        let base = fixtures().join(fixture);
        let labels = LabelMap { labels: vec!["a".into(), "b".into(), "c".into()] };
        let cfg = config(base.to_str().unwrap(), method);
        let (spec, mut store, _) = model::load_base(&base, &labels, HeadKind::Sequence, &Device::Cpu).unwrap();
        model::prepare(&mut store, &spec, &cfg, &labels).unwrap();
        assert!(!store.frozen().is_empty() && !store.vars().is_empty(), "{what}");
        assert!(
            store.vars().keys().any(|n| n.contains("norm") || n.contains("ln_") || n.contains("LayerNorm")),
            "{what}: norms train"
        );
        assert!(!store.frozen().keys().any(|n| n.starts_with("score") || n.starts_with("classifier")), "{what}");
        let frozen_before: Vec<(String, Vec<f32>)> =
            store.frozen().iter().map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap())).collect();
        let trained_before: Vec<Vec<f32>> =
            store.vars().values().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let classifier = Classifier::new(&spec, &store, 0.1, HeadKind::Sequence).unwrap();
        let groups = lmforge::optim::groups::uniform_groups(store.vars(), 0.0);
        let mut opt = Optimizer::from_config(&cfg.optim, store.vars(), groups).unwrap();
        let items = [
            Encoded { ids: vec![5, 6, 7, 8, 9], type_ids: vec![0; 5], label: Some(2) },
            Encoded { ids: vec![10, 11, 12], type_ids: vec![0; 3], label: Some(0) },
        ];
        let batch = collate(&items.iter().collect::<Vec<_>>(), 0, &Device::Cpu).unwrap();
        for step in 0..3 {
            let mut dropout = lmforge::nn::DropoutRng::new(0.1, step);
            let logits = classifier.logits(&batch, Some(&mut dropout)).unwrap();
            let loss = model::loss(&logits, batch.labels.as_ref().unwrap(), 0.1).unwrap();
            let store_grads = loss.backward().unwrap();
            for (name, t) in store.frozen() {
                assert!(store_grads.get(t).is_none(), "{what}: frozen {name} got a gradient");
            }
            let grads = named_grads(store.vars(), &store_grads).unwrap();
            opt.step(store.vars(), &grads, 0.01).unwrap();
        }
        for (name, before) in &frozen_before {
            let now: Vec<f32> = store.frozen()[name].flatten_all().unwrap().to_vec1().unwrap();
            assert!(now.iter().zip(before).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: {name} changed");
        }
        let moved = store
            .vars()
            .values()
            .zip(&trained_before)
            .filter(|(v, before)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap() != **before)
            .count();
        assert!(
            moved * 2 > store.vars().len(),
            "{what}: only {moved} of {} trainable tensors moved",
            store.vars().len()
        );
    }
}

/// A prompt–completion row and a chat, tokenized for causal fine-tuning with gpt2-tiny's
/// tokenizer: the targets are exactly the completion (and the end-of-text token) or the
/// assistant turns, and the generation prompt is the prompt's own tokens.
#[test]
fn causal_rows_target_only_the_completion_and_the_assistant() {
    use lmforge::chat::{ChatTemplate, Message};
    use lmforge::finetune::config::TrainOn;
    use lmforge::finetune::sft_data::{Conversation, SftEncoder, SftRow};
    let m = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let tok = &m.tokenizer;
    let eos = tok.eos_id().expect("gpt2-tiny has <|endoftext|>");
    let template = ChatTemplate::chatml("", "<|endoftext|>");
    let mut enc = SftEncoder {
        tokenizer: tok,
        template: &template,
        train_on: TrainOn::Completion,
        eos: Some(eos),
        max_length: 64,
    };
    let row = |prompt: &str, completion: &str| SftRow {
        line: 1,
        conversation: Conversation::Completion { prompt: prompt.into(), completion: Some(completion.into()) },
        references: vec![completion.into()],
    };
    let (e, cut) = enc.encode(&row("Reverse: a b c\n", "c b a")).unwrap();
    let e = e.unwrap();
    let p = tok.encode("Reverse: a b c\n").unwrap();
    assert!(!cut);
    assert_eq!(e.prompt, p);
    assert_eq!(*e.ids.last().unwrap(), eos);
    let targets: Vec<u32> = (p.len() as u32 - 1..e.ids.len() as u32 - 1).collect();
    assert_eq!(e.targets, targets, "the first target is the completion's first token");
    let predicted: Vec<u32> = e.targets.iter().map(|&t| e.ids[t as usize + 1]).collect();
    assert_eq!(tok.decode(&predicted[..predicted.len() - 1]).unwrap(), "c b a");

    let chat = SftRow {
        line: 2,
        conversation: Conversation::Chat(vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello."),
            Message::new("user", "Bye"),
            Message::new("assistant", "Bye!"),
        ]),
        references: vec!["Bye!".into()],
    };
    enc.max_length = m.spec.context;
    let (e, cut) = enc.encode(&chat).unwrap();
    let e = e.unwrap();
    assert!(!cut, "{} tokens", e.ids.len());
    let predicted: Vec<u32> = e.targets.iter().map(|&t| e.ids[t as usize + 1]).collect();
    assert_eq!(tok.decode(&predicted).unwrap(), "Hello.<|im_end|>\nBye!<|im_end|>\n");
    assert_eq!(tok.decode(&e.prompt).unwrap(), template.prompt(&chat_prefix(&chat)).unwrap());

    // Cut at the right to the limit; a row whose prompt fills the limit has nothing to learn.
    enc.max_length = p.len() + 1;
    let (e, cut) = enc.encode(&row("Reverse: a b c\n", "c b a")).unwrap();
    assert!(cut && e.unwrap().targets.len() == 1);
    enc.max_length = p.len();
    assert!(enc.encode(&row("Reverse: a b c\n", "c b a")).unwrap().0.is_none());

    fn chat_prefix(row: &SftRow) -> Vec<Message> {
        match &row.conversation {
            Conversation::Chat(m) => m[..m.len() - 1].to_vec(),
            _ => unreachable!(),
        }
    }
}

/// Completion-only loss on gpt2-tiny: `Decoder::loss_at` over the target positions equals the
/// hand-computed mean of −log softmax(logits)[next token] over the completion positions alone,
/// and its gradients equal the composed reference's — every position's cross-entropy weighted
/// 1/n on the completion and 0 on the prompt — so the prompt's next tokens contribute nothing.
#[test]
fn completion_only_loss_and_gradients_ignore_the_prompt() {
    let m = LoadedModel::load(&fixtures().join("gpt2-tiny"), &Device::Cpu).unwrap();
    let store = ParamStore::load(&m.source.join("model.safetensors"), &m.spec.params(), &Device::Cpu).unwrap();
    let dec = Decoder::new(&m.spec, &store).unwrap();
    let prompt = m.tokenizer.encode("Summarize in one line:\nls lists the files of a folder.\n").unwrap();
    let completion = m.tokenizer.encode("list directory contents").unwrap();
    let ids: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
    let t_len = ids.len();
    let targets: Vec<u32> = (prompt.len() as u32 - 1..t_len as u32 - 1).collect();
    let next: Vec<u32> = targets.iter().map(|&t| ids[t as usize + 1]).collect();
    let x = Tensor::from_slice(&ids, (1, t_len), &Device::Cpu).unwrap();
    let rows = Tensor::from_slice(&targets, targets.len(), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(&next, next.len(), &Device::Cpu).unwrap();
    let loss = dec.loss_at(&x, &rows, &y, None).unwrap();

    // By hand, in f64, from the logits.
    let logits: Vec<Vec<f32>> = dec.forward(&x, 0, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    let mut sum = 0.0f64;
    for (&t, &target) in targets.iter().zip(&next) {
        let row = &logits[t as usize];
        let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        sum += lse - row[target as usize] as f64;
    }
    let hand = sum / targets.len() as f64;
    let ours = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((ours - hand).abs() <= 1e-5 * hand, "completion-only loss {ours} vs by hand {hand}");

    // The composed reference: per-position cross-entropy over every position, weighted.
    let weighted = |w: Vec<f32>| {
        let logp = lmforge::ops::log_softmax_last_dim(&dec.forward(&x, 0, None).unwrap().squeeze(0).unwrap()).unwrap();
        let shifted: Vec<u32> = (0..t_len).map(|t| ids[(t + 1).min(t_len - 1)]).collect();
        let idx = Tensor::from_slice(&shifted, (t_len, 1), &Device::Cpu).unwrap();
        let nll = logp.gather(&idx, 1).unwrap().squeeze(1).unwrap().neg().unwrap();
        let w = Tensor::from_vec(w, t_len, &Device::Cpu).unwrap();
        (nll * w).unwrap().sum_all().unwrap()
    };
    let n = targets.len() as f32;
    let mask: Vec<f32> = (0..t_len).map(|t| if targets.contains(&(t as u32)) { 1.0 / n } else { 0.0 }).collect();
    let reference = weighted(mask);
    let r = reference.to_scalar::<f32>().unwrap() as f64;
    assert!((r - hand).abs() <= 1e-5 * hand, "reference {r} vs by hand {hand}");
    let grads = |l: &Tensor| named_grads(store.vars(), &l.backward().unwrap()).unwrap();
    let (g_ours, g_ref) = (grads(&loss), grads(&reference));
    for (name, g) in &g_ours {
        let rel = max_rel(g, &g_ref[name]);
        assert!(rel <= 1e-4, "{name}: gradient max rel error {rel:e}");
    }
    // Not vacuous: the prompt's targets, given any weight, change the gradients.
    let all = weighted(
        vec![1.0 / (t_len - 1) as f32; t_len]
            .into_iter()
            .enumerate()
            .map(|(t, w)| if t + 1 < t_len { w } else { 0.0 })
            .collect(),
    );
    let g_all = grads(&all);
    let name = "transformer.wte.weight";
    assert!(max_rel(&g_all[name], &g_ours[name]) > 1e-2, "training on the prompt too gives other gradients");
}
