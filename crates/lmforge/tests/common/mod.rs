//! Helpers shared by the integration tests: the reference fixtures and relative errors.
#![allow(dead_code)] // each test executable (api, parity, presence) uses a subset

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `../shared/fixtures`, or the folder `LMFORGE_FIXTURES` names (a test executable run on a
/// GPU machine, away from the checkout it was built in).
pub fn fixtures() -> PathBuf {
    let p = match std::env::var_os("LMFORGE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    assert!(
        p.join("README.md").is_file(),
        "reference fixtures not found at {} (CI places shared/ beside the checkout)",
        p.display()
    );
    p
}

/// The device the device-aware tests run on: `LMFORGE_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`;
/// default `cpu`). Naming a device this build or machine cannot open fails the test: asking
/// for a GPU and silently testing the CPU would pass for the wrong reason.
pub fn device() -> Device {
    let name = std::env::var("LMFORGE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice = lmforge::device::DeviceChoice::parse(&name).unwrap_or_else(|e| panic!("LMFORGE_TEST_DEVICE: {e}"));
    choice.resolve("LMFORGE_TEST_DEVICE").unwrap_or_else(|e| panic!("{e}"))
}

/// "cpu" / "cuda": the device the tests run on, for labels.
pub fn device_name() -> &'static str {
    lmforge::device::device_name(&device())
}

pub fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// max |a - b| / max |b|: the relative error scale used by the fixture README.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = &a.to_device(b.device()).unwrap().to_dtype(b.dtype()).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d / s.max(1e-30)
}

/// ||a - b|| / ||b||.
pub fn norm_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = &a.to_device(b.device()).unwrap().to_dtype(b.dtype()).unwrap();
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (n(&(a - b).unwrap()) / n(b).max(1e-30)).sqrt()
}

/// Every gradient of `grads` against the fixture's `reference` (transformers' names): max rel
/// ≤ 1e-4 each, one gradient per parameter. A key bias's true gradient is 0 (softmax cancels a
/// bias added to every key), so both sides hold rounding noise: compared absolutely against the
/// largest gradient.
pub fn assert_grads_match(
    label: &str,
    grads: &std::collections::BTreeMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
) {
    assert_grads_match_with(label, grads, reference, &[])
}

/// [`assert_grads_match`] with more parameters whose true gradient is 0 (`zero`: whole names),
/// compared absolutely as the key biases are.
pub fn assert_grads_match_with(
    label: &str,
    grads: &std::collections::BTreeMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
    zero: &[&str],
) {
    assert_eq!(grads.len(), reference.len(), "{label}: one gradient per parameter");
    let max_abs = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = reference.values().map(max_abs).fold(0.0, f64::max);
    for (name, want) in reference {
        let got = grads.get(name).unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        if name.ends_with("attention.self.key.bias") || zero.contains(&name.as_str()) {
            let d = max_abs(&(got - want).unwrap());
            assert!(d <= 1e-6 * scale, "{label}: grad {name}: |diff| {d:e}");
            continue;
        }
        let rel = max_rel(got, want);
        assert!(rel <= 1e-4, "{label}: grad {name}: max rel {rel:e}");
    }
}

/// A classifier folder of transformers (`dir`) saved back by lmforge for `task.kind = task`
/// is the same Hugging Face folder: the class in `config.json`, the tensor names, and the same
/// logits when read back.
#[allow(dead_code)]
pub fn assert_saves_with_hf_names(dir: &std::path::Path, task: &str) -> serde_json::Value {
    use lmforge::finetune::{batching::Batch, model, model::LoadedClassifier, FinetuneConfig};
    let m = LoadedClassifier::load(dir, &Device::Cpu).unwrap();
    let cfg = FinetuneConfig::resolve(
        None,
        &[
            "data.train=unused".into(),
            format!("model.base={:?}", dir.display().to_string()),
            format!("task.kind={task}"),
        ],
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("model");
    model::save(&saved, &m.spec, &m.labels, &m.params, &m.tokenizer, &cfg, None).unwrap();
    let config = json(saved.join("config.json"));
    let name = dir.display();
    assert_eq!(config["architectures"], json(dir.join("config.json"))["architectures"], "{name}");
    let mut a: Vec<String> = load(saved.join("model.safetensors")).into_keys().collect();
    let mut b: Vec<String> = load(dir.join("model.safetensors")).into_keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: tensor names");
    let again = LoadedClassifier::load(&saved, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[5u32, 6, 7, 8]], &Device::Cpu).unwrap();
    let batch = Batch { ids: ids.clone(), type_ids: ids.zeros_like().unwrap(), lengths: vec![4], labels: None };
    let l1 = m.classifier.logits(&batch, None).unwrap();
    let l2 = again.classifier.logits(&batch, None).unwrap();
    assert_eq!(max_rel(&l2, &l1), 0.0, "{name}");
    config
}
