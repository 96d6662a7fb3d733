//! Helpers shared by the integration tests: the reference fixtures and relative errors.
#![allow(dead_code)] // each test crate uses a subset

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    assert!(
        p.join("README.md").is_file(),
        "reference fixtures not found at {} (CI places shared/ beside the checkout)",
        p.display()
    );
    p
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
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d / s.max(1e-30)
}

/// ||a - b|| / ||b||.
pub fn norm_rel(a: &Tensor, b: &Tensor) -> f64 {
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (n(&(a - b).unwrap()) / n(b).max(1e-30)).sqrt()
}
