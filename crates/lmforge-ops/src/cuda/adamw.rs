//! AdamW on the GPU: every tensor of a step updated by one kernel launch (`adamw.cu`), each
//! element in one pass (read g, m, v, p; write m, v, p). Three passes a tensor, as the CPU
//! kernel makes them, would read the gradient and the moments twice, and launch three kernels
//! per parameter — ~900 a Llama-7B step. The kernel finds its tensor from a table of device
//! addresses, sizes and scalars uploaded with the launch (10 words a tensor).

use crate::adamw::AdamWUpdate;
use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{bail, DType, Result};

pub(crate) const IMAGE: super::Image = super::image!("adamw");
/// adamw.cu's ADAMW_WORDS, ADAMW_THREADS and ADAMW_PER_THREAD.
const WORDS: usize = 10;
const THREADS: usize = 256;
const PER_BLOCK: usize = THREADS * 8;
const OP: &str = "lmforge-adamw-all";

/// Two f32 in one table word, the first in the low half.
fn pair(lo: f32, hi: f32) -> u64 {
    u64::from(lo.to_bits()) | (u64::from(hi.to_bits()) << 32)
}

/// Updates every parameter of `updates` and its moments in place (all f32, contiguous, on one
/// GPU), in one launch.
pub fn adamw_all<'a>(updates: &[AdamWUpdate<'a>]) -> Result<()> {
    let Some(first) = updates.first() else { return Ok(()) };
    let candle_core::Device::Cuda(dev) = first.param.device() else { bail!("{OP}: the parameters are not on a GPU") };
    let stream = dev.cuda_stream();
    // The storages stay read-locked until the launch is queued: their buffers cannot be
    // replaced meanwhile. The kernel writes p, m and v through their addresses, as an in-place
    // op would through a write lock (nothing else touches them during the optimizer step).
    let tensors = |u: &AdamWUpdate<'a>| [("param", u.param), ("grad", u.grad), ("exp_avg", u.m), ("exp_avg_sq", u.v)];
    let locked: Vec<_> = updates.iter().flat_map(tensors).map(|(_, t)| t.storage_and_layout()).collect();
    // Each address's use is recorded (for candle's cross-stream tracking) after the launch.
    let mut records = Vec::with_capacity(locked.len());
    let mut table = Vec::with_capacity(WORDS * updates.len());
    let mut blocks = 0usize;
    for (u, locked) in updates.iter().zip(locked.chunks(4)) {
        let n = u.param.elem_count();
        let mut words = [0u64; WORDS];
        for (slot, ((name, t), (storage, layout))) in tensors(u).into_iter().zip(locked).enumerate() {
            if t.elem_count() != n || t.dtype() != DType::F32 || !t.device().same_device(first.param.device()) {
                bail!("{OP}: {name} {:?} {:?} does not match its parameter ({n} f32 on one GPU)", t.dtype(), t.dims());
            }
            let (address, record) = super::f32_address(storage, layout, &stream, name, OP)?;
            words[slot] = address.0;
            records.push(record);
        }
        let h = &u.step;
        let bc1 = 1.0 - h.beta1.powi(h.t as i32);
        let bc2_sqrt = (1.0 - h.beta2.powi(h.t as i32)).sqrt();
        words[4] = n as u64;
        words[5] = blocks as u64;
        words[6] = pair((1.0 - h.lr * h.weight_decay) as f32, (h.lr / bc1) as f32);
        words[7] = pair(bc2_sqrt as f32, h.eps as f32);
        words[8] = pair(h.beta1 as f32, h.beta2 as f32);
        words[9] = pair(h.grad_scale as f32, 0.0);
        table.extend(words);
        blocks += n.div_ceil(PER_BLOCK);
    }
    if blocks == 0 {
        return Ok(());
    }
    if blocks > i32::MAX as usize {
        bail!("{OP}: {blocks} blocks exceed a grid's limit");
    }
    let table = dev.clone_htod(&table)?;
    let tensors = updates.len() as i32;
    let func = super::kernel(dev, &IMAGE, "adamw_all")?;
    let mut launch = func.builder();
    launch.arg(&table);
    launch.arg(&tensors);
    let config =
        LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS as u32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table's addresses are live f32 buffers of the sizes it gives (locked above);
    // the arguments match the kernel's signature (adamw.cu).
    unsafe { launch.launch(config) }?;
    drop(records);
    Ok(())
}
