//! `lmforge presets`: the model presets with their exact parameter counts.

use anyhow::Result;
use lmforge::models::{ModelSpec, PRESETS};

pub fn run() -> Result<i32> {
    println!(
        "{:<12} {:>6} {:>15} {:>7} {:>6} {:>5} {:>5} {:>6} {:>7}",
        "preset", "style", "parameters", "vocab", "ctx", "d", "layers", "heads", "kv"
    );
    for name in PRESETS {
        let s = ModelSpec::preset(name).expect("listed presets exist");
        println!(
            "{:<12} {:>6} {:>15} {:>7} {:>6} {:>5} {:>5} {:>6} {:>7}",
            name,
            format!("{:?}", s.style).to_lowercase(),
            s.num_params(),
            s.vocab_size,
            s.context,
            s.d_model,
            s.n_layer,
            s.n_head,
            s.n_kv_head
        );
    }
    Ok(0)
}
