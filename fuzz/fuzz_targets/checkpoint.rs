//! A model folder's `config.json` and `model.safetensors`: the input is a little-endian u16
//! length, that many bytes of config.json, then the safetensors bytes. Whatever loads must
//! build a model and run a forward pass.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::models::{hf, Decoder};
use lmforge::nn::ParamStore;
use lmforge::Device;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (config, weights) = rest.split_at(n.min(rest.len()));
    let Ok(spec) = hf::parse_config(&String::from_utf8_lossy(config)) else { return };
    let path = std::path::Path::new("model.safetensors");
    let Ok(params) = ParamStore::from_safetensors_bytes(weights, &spec.params(), &Device::Cpu, path) else { return };
    let decoder = Decoder::new(&spec, &params).expect("loaded weights build a model");
    let t = spec.context.min(4);
    let ids: Vec<u32> = (0..t as u32).map(|i| i % spec.vocab_size as u32).collect();
    let x = candle_core::Tensor::from_slice(&ids, (1, t), &Device::Cpu).expect("tensor");
    let _ = decoder.loss(&x, &x, None);
});
