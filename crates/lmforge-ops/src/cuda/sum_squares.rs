//! Launches `sum_squares.cu`: Σ x² over every gradient of a step, for global-norm clipping
//! ([`crate::sum_squares_all`] on a GPU), in two launches whatever the number of tensors and
//! in a fixed order. Composed, each gradient took a square (a gradient-sized temporary) and a
//! sum, and the sums a stack and another sum: some 300 launches a GPT-2 step, each too small to
//! fill the GPU, and 12 bytes of traffic a parameter where this reads 4.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{bail, DType, Result, Tensor};

pub(crate) const IMAGE: super::Image = super::image!("sum_squares");
/// sum_squares.cu's SQ_WORDS, SQ_THREADS, SQ_PER_BLOCK and SQ_TOTAL_THREADS.
const WORDS: usize = 3;
const THREADS: u32 = 256;
const PER_BLOCK: usize = 256 * 16;
const TOTAL_THREADS: u32 = 256;
const OP: &str = "lmforge-sum-squares";

/// Σ x² over `xs` (f32, on one GPU; made contiguous where they are not), in f64.
pub fn sum_squares_all(xs: &[&Tensor]) -> Result<f64> {
    let Some(first) = xs.first() else { return Ok(0.0) };
    let candle_core::Device::Cuda(dev) = first.device() else { bail!("{OP}: the tensors are not on a GPU") };
    let stream = dev.cuda_stream();
    let xs: Vec<Tensor> = xs.iter().map(|x| x.contiguous()).collect::<Result<_>>()?;
    // The storages stay read-locked until the launch is queued: their buffers cannot be
    // replaced meanwhile.
    let locked: Vec<_> = xs.iter().map(|x| x.storage_and_layout()).collect();
    let mut records = Vec::with_capacity(xs.len());
    let mut table = Vec::with_capacity(WORDS * xs.len());
    let mut blocks = 0usize;
    for (x, (storage, layout)) in xs.iter().zip(&locked) {
        if x.dtype() != DType::F32 || !x.device().same_device(first.device()) {
            bail!("{OP}: a {:?} {:?} tensor among f32 ones on one GPU", x.dtype(), x.dims());
        }
        let (address, record) = super::f32_address(storage, layout, &stream, "gradient", OP)?;
        records.push(record);
        let n = x.elem_count();
        table.extend([address.0, n as u64, blocks as u64]);
        blocks += n.div_ceil(PER_BLOCK);
    }
    if blocks == 0 {
        return Ok(0.0);
    }
    if blocks > i32::MAX as usize {
        bail!("{OP}: {blocks} blocks exceed a grid's limit");
    }
    let table = dev.clone_htod(&table)?;
    let tensors = xs.len() as i32;
    // SAFETY: the first kernel writes every block's partial before the second reads them.
    let partials = unsafe { dev.alloc::<f32>(blocks)? };
    let total = dev.alloc_zeros::<f64>(1)?;
    let func = super::kernel(dev, &IMAGE, "sum_squares_blocks")?;
    let mut launch = func.builder();
    launch.arg(&table).arg(&tensors).arg(&partials);
    let config = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table's addresses are live f32 buffers of the sizes it gives (locked above);
    // partials holds a value a block.
    unsafe { launch.launch(config) }?;
    drop(records);
    drop(locked);
    let func = super::kernel(dev, &IMAGE, "sum_squares_total")?;
    let count = blocks as u64;
    let mut launch = func.builder();
    launch.arg(&partials).arg(&count).arg(&total);
    let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (TOTAL_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: partials holds `count` values, total one.
    unsafe { launch.launch(config) }?;
    Ok(dev.clone_dtoh(&total)?[0])
}
