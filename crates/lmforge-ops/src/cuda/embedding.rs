//! Launches `embedding.cu` for [`crate::embedding`]'s op on a GPU: the rows of an f32 table for
//! u32 ids, and the table's gradient — the positions sorted by (token, position) with a bitonic
//! sort (the steps within a tile of 2048 keys in shared memory, the wider ones a launch each:
//! 10 launches for 16,384 positions where one a step would be 105), then each token's rows of d
//! out summed in position order by a block of its own.

use super::{elementwise, view};
use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{bail, Layout, Result, Shape};

pub(crate) const IMAGE: super::Image = super::image!("embedding");
/// embedding.cu's SORT_TILE: keys a block sorts in shared memory.
const SORT_TILE: usize = 2048;

/// Rows `ids` (N) of `table` (V, C) → (N, C); an id past the table gives zeros.
pub fn rows((ts, tl): (&CudaStorage, &Layout), (is, il): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let (v, c) = tl.shape().dims2()?;
    let n = il.shape().elem_count();
    let (table, ids) = (view::<f32>(ts, tl, "embedding")?, view::<u32>(is, il, "embedding")?);
    let dev = ts.device.clone();
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<f32>(n * c)? };
    if n * c > 0 {
        let func = super::kernel(&dev, &IMAGE, "embedding_rows")?;
        let mut args = func.builder();
        args.arg(&table).arg(&ids).arg(&out).arg(&n).arg(&c).arg(&v);
        // SAFETY: the arguments match the kernel's signature (embedding.cu).
        unsafe { args.launch(elementwise(n * c)) }?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((n, c))))
}

/// The gradient (V, C) of a (V, C) table whose rows `ids` (N) gave an output of gradient `dy`
/// (N, C, f32): row t is the sum of dy's rows at the positions of token t, in position order.
pub fn grad(
    (ds, dl): (&CudaStorage, &Layout),
    (is, il): (&CudaStorage, &Layout),
    v: usize,
) -> Result<(CudaStorage, Shape)> {
    let (n, c) = dl.shape().dims2()?;
    if il.shape().elem_count() != n {
        bail!("embedding-grad: {} ids for {n} rows of d out", il.shape().elem_count());
    }
    let (dy, ids) = (view::<f32>(ds, dl, "embedding-grad")?, view::<u32>(is, il, "embedding-grad")?);
    let dev = ds.device.clone();
    let dtable = dev.alloc_zeros::<f32>(v * c)?;
    if n == 0 || c == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(dtable, dev), Shape::from((v, c))));
    }
    let padded = n.next_power_of_two();
    // SAFETY: embedding_keys writes every key.
    let keys = unsafe { dev.alloc::<u64>(padded)? };
    let func = super::kernel(&dev, &IMAGE, "embedding_keys")?;
    let mut args = func.builder();
    args.arg(&ids).arg(&keys).arg(&n).arg(&padded);
    // SAFETY: the arguments match the kernel's signature (embedding.cu).
    unsafe { args.launch(elementwise(padded)) }?;
    // The bitonic sort: every step within a tile of SORT_TILE keys in one launch (shared memory),
    // then for each wider k the steps across tiles one launch each and the rest of k in one.
    let tile = padded.min(SORT_TILE);
    let local = super::kernel(&dev, &IMAGE, "embedding_bitonic_local")?;
    let tiles = LaunchConfig {
        grid_dim: ((padded / tile) as u32, 1, 1),
        block_dim: ((tile / 2).max(1) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let sort_tiles = |k_from: usize, k_to: usize| -> Result<()> {
        let j_from = tile / 2;
        let mut args = local.builder();
        args.arg(&keys).arg(&padded).arg(&k_from).arg(&k_to).arg(&j_from);
        // SAFETY: the arguments match the kernel's signature (embedding.cu).
        unsafe { args.launch(tiles) }?;
        Ok(())
    };
    sort_tiles(2, tile)?;
    let across = super::kernel(&dev, &IMAGE, "embedding_bitonic")?;
    let mut k = 2 * tile;
    while k <= padded {
        let mut j = k / 2;
        while j >= tile {
            let mut args = across.builder();
            args.arg(&keys).arg(&padded).arg(&k).arg(&j);
            // SAFETY: as above.
            unsafe { args.launch(elementwise(padded)) }?;
            j /= 2;
        }
        sort_tiles(k, k)?;
        k *= 2;
    }
    let func = super::kernel(&dev, &IMAGE, "embedding_grad")?;
    let mut args = func.builder();
    args.arg(&keys).arg(&dy).arg(&dtable).arg(&n).arg(&c).arg(&v);
    let threads = c.next_multiple_of(32).clamp(32, 256) as u32;
    let config = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: as above; one block per sorted position.
    unsafe { args.launch(config) }?;
    Ok((CudaStorage::wrap_cuda_slice(dtable, dev), Shape::from((v, c))))
}
