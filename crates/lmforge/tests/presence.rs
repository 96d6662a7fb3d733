//! The silent-cut check: after one backward, every trainable parameter of every architecture
//! and head has a finite, non-zero f32 gradient — in fp32 and in bf16-mixed, with the fused
//! kernels and with the reference ops, with and without activation checkpointing. A fused forward that records no backward (the trap in
//! candle's own `softmax_last_dim`, `rms_norm`, `layer_norm`, `rope`) leaves the parameters
//! before it with a zero gradient, which no loss comparison of a single step notices.
//!
//! Runs on the device `LMFORGE_TEST_DEVICE` names (default `cpu`; `cuda` in a CUDA build on a
//! GPU machine: `scripts/gpu-check.sh`).

mod common;

use candle_core::{DType, Tensor};
use lmforge::device::Precision;
use lmforge::finetune::batching::Batch;
use lmforge::finetune::model::{self, Classifier};
use lmforge::finetune::qa_task::span_loss;
use lmforge::finetune::token_task::token_loss;
use lmforge::models::{Decoder, Encoder, EncoderInput, HeadKind, ModelSpec};
use lmforge::nn::recompute::Checkpointing;
use lmforge::nn::{DropoutRng, InitScheme, ParamStore};
use lmforge::ops::{Kernels, KernelsGuard};

const PRECISIONS: [Precision; 2] = [Precision::Fp32, Precision::Bf16Mixed];
const KERNELS: [Kernels; 2] = [Kernels::Fused, Kernels::Reference];

fn store(spec: &ModelSpec, params: &[lmforge::nn::ParamInfo], precision: Precision) -> ParamStore {
    let device = common::device();
    ParamStore::init(params, InitScheme::Gpt2, spec.n_layer, 5, &device).unwrap().with_precision(precision)
}

/// Deterministic token ids (rows, cols) below `vocab`.
fn ids(rows: usize, cols: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..rows * cols).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
    Tensor::from_vec(v, (rows, cols), &common::device()).unwrap()
}

/// Every trainable parameter of `params` has a finite, non-zero f32 gradient from `loss`.
/// BERT's key biases are in the graph but their true gradient is 0 (adding b to every key adds
/// q·b to a whole score row, which the softmax cancels): they must be reached, finite and
/// tiny against the largest gradient.
fn assert_all_reached(label: &str, params: &ParamStore, loss: &Tensor) {
    assert_all_reached_but(label, params, loss, &[])
}

/// [`assert_all_reached`] where the parameters named in `zero` (by their ends) have a true
/// gradient of 0, as a key bias does.
fn assert_all_reached_but(label: &str, params: &ParamStore, loss: &Tensor, zero: &[&str]) {
    let l = loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
    assert!(l.is_finite(), "{label}: loss {l}");
    let store = loss.backward().unwrap();
    let mut norms = Vec::new();
    for (name, v) in params.vars() {
        let g = lmforge::ops::param_grads::gradient(v.as_tensor(), &store)
            .unwrap()
            .unwrap_or_else(|| panic!("{label}: {name} is cut off the graph: no gradient"));
        assert_eq!(g.dtype(), DType::F32, "{label}: {name}'s gradient is not accumulated in f32");
        let sq = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(sq.is_finite(), "{label}: {name}'s gradient is not finite");
        norms.push((name, sq.sqrt()));
    }
    let largest = norms.iter().map(|n| n.1).fold(0.0, f32::max);
    for (name, norm) in norms {
        if name.ends_with("attention.self.key.bias") || zero.iter().any(|z| name.ends_with(z)) {
            assert!(norm <= 1e-2 * largest, "{label}: {name}: {norm} (should be ~0)");
        } else {
            assert!(norm > 0.0, "{label}: {name} gets a zero gradient");
        }
    }
}

fn each_setting(mut f: impl FnMut(&str, Precision)) {
    for k in KERNELS {
        let _k = KernelsGuard::set(k);
        for p in PRECISIONS {
            f(&format!("{} kernels, {}, {}", k.name(), p.name(), common::device_name()), p);
        }
    }
}

#[test]
fn every_decoder_parameter_gets_a_gradient() {
    for preset in ["tiny", "llama-tiny"] {
        let spec = ModelSpec::preset(preset).unwrap();
        each_setting(|setting, precision| {
            // The first block alone recomputed: checkpointed and plain blocks in one model.
            let (off, all, first) = (Checkpointing::Off, Checkpointing::All, Checkpointing::First(1));
            for (dropout, checkpointing) in [(0.0, off), (0.1, off), (0.1, all), (0.1, first)] {
                let params = store(&spec, &spec.params(), precision);
                let model = Decoder::new(&spec, &params).unwrap().with_activation_checkpointing(checkpointing);
                let tokens = ids(2, 17, spec.vocab_size);
                let (x, y) = (tokens.narrow(1, 0, 16).unwrap(), tokens.narrow(1, 1, 16).unwrap());
                let mut d = DropoutRng::new(dropout, 3);
                let loss = model.loss(&x, &y, Some(&mut d)).unwrap();
                let what = format!("{preset}, dropout {dropout}, checkpointing {checkpointing}, {setting}");
                assert_all_reached(&what, &params, &loss);
            }
        });
    }
}

#[test]
fn every_encoder_parameter_gets_a_gradient() {
    let spec = ModelSpec::preset("bert-tiny").unwrap();
    each_setting(|setting, precision| {
        let params = store(&spec, &spec.params(), precision);
        let model = Encoder::new(&spec, &params).unwrap();
        let device = common::device();
        let (b, t) = (2, 12);
        let tokens = ids(b, t, spec.vocab_size).flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let types: Vec<u32> = (0..b * t).map(|i| u32::from(i % t >= t / 2)).collect();
        let input = EncoderInput::new(&tokens, &types, vec![t, t - 3], t, &device).unwrap();
        let positions = Tensor::new(&[1u32, 4, 7, 13, 18], &device).unwrap();
        let targets = Tensor::new(&[5u32, 9, 2, 30, 7], &device).unwrap();
        let nsp = Tensor::new(&[0u32, 1], &device).unwrap();
        let mut d = DropoutRng::new(0.1, 3);
        let loss = model.pretraining_loss(&input, &positions, &targets, Some(&nsp), Some(&mut d)).unwrap();
        assert_all_reached(&format!("bert-tiny MLM + NSP, {setting}"), &params, &loss.total);
    });
}

#[test]
fn every_classifier_parameter_gets_a_gradient() {
    for preset in ["tiny", "llama-tiny", "bert-tiny"] {
        let spec = ModelSpec::preset(preset).unwrap();
        for kind in HeadKind::ALL {
            each_setting(|setting, precision| {
                let mut infos = model::backbone_params(&spec, kind);
                infos.extend(model::head_params(&spec, kind, if kind == HeadKind::Span { 2 } else { 3 }));
                let params = store(&spec, &infos, precision);
                let classifier = Classifier::new(&spec, &params, 0.1, kind).unwrap();
                let device = common::device();
                let batch = Batch {
                    ids: ids(3, 9, spec.vocab_size),
                    type_ids: Tensor::zeros((3, 9), DType::U32, &device).unwrap(),
                    lengths: vec![9, 5, 7],
                    labels: Some(Tensor::new(&[0u32, 2, 1], &device).unwrap()),
                };
                let mut d = DropoutRng::new(0.1, 3);
                let logits = classifier.logits(&batch, Some(&mut d)).unwrap();
                let what = format!("{preset} {kind:?} classifier, {setting}");
                assert_eq!(logits.dtype(), DType::F32, "{what}: logits are f32");
                let loss = match kind {
                    HeadKind::Sequence => model::loss(&logits, batch.labels.as_ref().unwrap(), 0.1).unwrap(),
                    // Tagged positions in every row: (row · 9 + position).
                    HeadKind::Token => token_loss(&logits, &[1, 3, 9, 12, 19, 24], &[0, 1, 2, 2, 1, 0]).unwrap(),
                    HeadKind::Span => span_loss(&logits, &batch.lengths, &[2, 0, 6], &[4, 3, 6]).unwrap(),
                };
                // A span head's softmax runs over positions: what adds the same to every
                // position (its bias, the last norm's bias) has a true gradient of 0.
                let last = format!("layer.{}.output.LayerNorm.bias", spec.n_layer - 1);
                let zero = ["qa_outputs.bias", "ln_f.bias", last.as_str()];
                assert_all_reached_but(&what, &params, &loss, if kind == HeadKind::Span { &zero } else { &[] });
            });
        }
    }
}
