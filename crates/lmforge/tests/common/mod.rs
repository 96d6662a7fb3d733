//! Helpers shared by the integration tests: the reference fixtures and relative errors.
#![allow(dead_code)] // each test crate uses a subset

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
    assert_eq!(grads.len(), reference.len(), "{label}: one gradient per parameter");
    let max_abs = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = reference.values().map(max_abs).fold(0.0, f64::max);
    for (name, want) in reference {
        let got = grads.get(name).unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        if name.ends_with("attention.self.key.bias") {
            let d = max_abs(&(got - want).unwrap());
            assert!(d <= 1e-6 * scale, "{label}: grad {name}: |diff| {d:e}");
            continue;
        }
        let rel = max_rel(got, want);
        assert!(rel <= 1e-4, "{label}: grad {name}: max rel {rel:e}");
    }
}
