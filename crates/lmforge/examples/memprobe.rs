//! Live heap bytes through one training step, counted by a global allocator: the measurement
//! behind `models::memory` (forward activations, backward peak). Not part of the library.
//!
//! `cargo run --release -p lmforge --example memprobe -- PRESET BATCH SEQ [fused|reference]`

use candle_core::{Device, Tensor};
use lmforge::models::{Decoder, ModelSpec};
use lmforge::nn::{InitScheme, ParamStore};
use lmforge::optim::{clip_grad_norm, named_grads, param_groups, Optimizer, ParamRole};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        PEAK.fetch_max(LIVE.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Prints live and peak bytes since the last mark, then restarts the peak.
fn mark(what: &str) {
    let mb = |x: usize| x as f64 / 1e6;
    println!("{what:<10} live {:>9.2} MB  peak {:>9.2} MB", mb(LIVE.load(Relaxed)), mb(PEAK.load(Relaxed)));
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: memprobe PRESET BATCH SEQ [fused|reference]";
    let spec = ModelSpec::preset(args.get(1).ok_or(anyhow::anyhow!(usage))?).ok_or(anyhow::anyhow!(usage))?;
    let b: usize = args.get(2).ok_or(anyhow::anyhow!(usage))?.parse()?;
    let t: usize = args.get(3).ok_or(anyhow::anyhow!(usage))?.parse()?;
    let kernels =
        lmforge::ops::Kernels::parse(args.get(4).map_or("fused", |s| s.as_str())).ok_or(anyhow::anyhow!(usage))?;
    let _k = lmforge::ops::KernelsGuard::set(kernels);
    let dev = Device::Cpu;
    let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 1, &dev)?;
    let roles = spec.params().into_iter().map(|p| (p.name, ParamRole::from_shape(&p.shape)));
    let mut opt =
        Optimizer::from_config(&Default::default(), params.vars(), param_groups(&Default::default(), roles)?)?;
    let model = Decoder::new(&spec, &params)?;
    mark("model");
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7) % spec.vocab_size) as u32).collect();
    let x = Tensor::from_vec(ids.clone(), (b, t), &dev)?;
    let y = Tensor::from_vec(ids, (b, t), &dev)?;
    let loss = model.loss(&x, &y, None)?;
    mark("forward");
    let store = loss.backward()?;
    mark("backward");
    let mut grads = named_grads(params.vars(), &store)?;
    drop((store, loss));
    clip_grad_norm(&mut grads, 1.0)?;
    opt.step(params.vars(), &grads, 1e-3)?;
    mark("step");
    let est = spec.cpu_train_memory(b, t, opt.state_bytes() as u64, lmforge::nn::recompute::Checkpointing::Off);
    println!("predicted forward activations {:.2} MB", est.activations as f64 / 1e6);
    Ok(())
}
