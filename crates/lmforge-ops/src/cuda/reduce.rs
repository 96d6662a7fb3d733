//! Launches `reduce.cu`: the column sums of a (rows, C) tensor in f32, a linear layer's bias
//! gradient, read once in the activations' dtype and coalesced (candle's sum over dim 0 casts
//! to f32 first and reads each column with a block of its own, C elements between loads).

use super::{cuda_storage, suffix, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Result, Storage, Tensor};

pub(crate) const IMAGE: super::Image = super::image!("reduce");

/// Rows a block sums (reduce.cu's COLUMN_SUM_ROWS), and columns (threads) a block.
const ROWS: usize = 64;
const COLUMNS: usize = 256;

/// Σ over the rows of x (rows, C), f32 or bf16, as f32 (C): a block's partial sums of 64 rows,
/// then the partials summed the same way until one row is left (16,384 rows: three launches).
pub fn column_sums(x: &Tensor) -> Result<Tensor> {
    let op = "lmforge-column-sums";
    let (mut rows, c) = x.dims2()?;
    if rows == 0 {
        return Tensor::zeros(c, DType::F32, x.device());
    }
    let mut sums = x.contiguous()?;
    loop {
        let blocks = rows.div_ceil(ROWS);
        let partials = {
            let (s, l) = sums.storage_and_layout();
            let s = cuda_storage(&s, op)?;
            match s.dtype() {
                DType::BF16 => partials::<half::bf16>(s, l, rows, c)?,
                DType::F32 => partials::<f32>(s, l, rows, c)?,
                other => bail!("{op}: {other:?} rows (f32 or bf16 expected)"),
            }
        };
        sums = Tensor::from_storage(Storage::Cuda(partials), (blocks, c), BackpropOp::none(), false);
        rows = blocks;
        if rows == 1 {
            return sums.reshape(c);
        }
    }
}

/// One pass: (rows, c) → (⌈rows / 64⌉, c) f32 partial sums.
fn partials<T: CudaDType + DeviceRepr + super::Elem>(
    s: &CudaStorage,
    l: &candle_core::Layout,
    rows: usize,
    c: usize,
) -> Result<CudaStorage> {
    let op = "lmforge-column-sums";
    let dev = s.device().clone();
    let x = view::<T>(s, l, op)?;
    let blocks = rows.div_ceil(ROWS);
    // SAFETY: the kernel writes every element (every block's row of every column).
    let out = unsafe { dev.alloc::<f32>(blocks * c)? };
    if c > 0 {
        let func = super::kernel(&dev, &IMAGE, &format!("column_partials_{}", suffix(s.dtype(), op)?))?;
        let (rows_arg, c_arg) = (rows as i32, c as i32);
        let mut args = func.builder();
        args.arg(&x);
        args.arg(&out);
        args.arg(&rows_arg);
        args.arg(&c_arg);
        let config = LaunchConfig {
            grid_dim: (blocks as u32, c.div_ceil(COLUMNS) as u32, 1),
            block_dim: (COLUMNS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature (reduce.cu).
        unsafe { args.launch(config) }?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
