//! Adafactor's factored update of one f32 matrix on the GPU (`adafactor.cu`): the state, the
//! step size and the update clipping on the device, so no value is read back to the host (the
//! composed update reads RMS(p) and RMS(U) per parameter, a wait on the stream each), and about
//! 20-28 bytes of memory traffic a parameter in five launches instead of some 28 four-byte passes. The
//! parameter, its first moment and the row / column state are written in place through their
//! addresses, as `adamw.rs`'s table does.

use crate::adafactor::AdafactorMatrix;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, DType, Result, Tensor};

pub(crate) const IMAGE: super::Image = super::image!("adafactor");
/// adafactor.cu's AF_THREADS, AF_ROWS, AF_ONE_BLOCK and AF_MAX_BLOCKS.
const THREADS: u32 = 256;
const ROWS: usize = 64;
const ONE_BLOCK: u32 = 1024;
const MAX_BLOCKS: usize = 1024;
const OP: &str = "lmforge-adafactor";

fn config(grid: (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// One step of `u` in place (every tensor f32, contiguous, on one GPU).
pub fn update(u: &AdafactorMatrix<'_>) -> Result<()> {
    let candle_core::Device::Cuda(dev) = u.param.device() else { bail!("{OP}: the parameter is not on a GPU") };
    let stream = dev.cuda_stream();
    let (rows, cols) = u.param.dims2()?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let row_tiles = rows.div_ceil(ROWS);
    if rows > i32::MAX as usize || cols > i32::MAX as usize || row_tiles > 65535 {
        bail!("{OP}: a {rows} × {cols} matrix is past the kernels' grid");
    }
    let grad = u.grad.contiguous()?;
    let n = rows * cols;
    let mut tensors: Vec<(&str, &Tensor, usize)> = vec![
        ("param", u.param, n),
        ("grad", &grad, n),
        ("exp_avg_sq_row", u.row, rows),
        ("exp_avg_sq_col", u.col, cols),
    ];
    if let Some(m) = u.exp_avg {
        tensors.push(("exp_avg", m, n));
    }
    // The storages stay read-locked until the launches are queued (their buffers cannot be
    // replaced meanwhile); the kernels write the parameter and the state through the addresses.
    let locked: Vec<_> = tensors.iter().map(|(_, t, _)| t.storage_and_layout()).collect();
    let mut addresses = Vec::with_capacity(tensors.len());
    let mut records = Vec::with_capacity(tensors.len());
    for ((name, t, want), (storage, layout)) in tensors.iter().zip(&locked) {
        if t.elem_count() != *want || t.dtype() != DType::F32 || !t.device().same_device(u.param.device()) {
            bail!(
                "{OP}: {name} {:?} {:?} does not match a {rows} × {cols} f32 parameter on its GPU",
                t.dtype(),
                t.dims()
            );
        }
        let (address, record) = super::f32_address(storage, layout, &stream, name, OP)?;
        addresses.push(address);
        records.push(record);
    }
    let (p, g, row_state, col_state) = (addresses[0], addresses[1], addresses[2], addresses[3]);
    let m = addresses.get(4).copied().unwrap_or(0);
    let h = &u.step;
    let col_tiles = cols.div_ceil(THREADS as usize);
    let blocks = rows.min(MAX_BLOCKS);
    // SAFETY: each kernel writes every element of its outputs before a later one reads them
    // (adafactor.cu: every row of every column tile, every column of every row tile, a value
    // a block).
    let (part_row, part_col, part_p, r_fac, c_fac, p_sq, part_u, scalars) = unsafe {
        (
            dev.alloc::<f32>(col_tiles * rows)?,
            dev.alloc::<f32>(row_tiles * cols)?,
            dev.alloc::<f32>(row_tiles * col_tiles)?,
            dev.alloc::<f32>(rows)?,
            dev.alloc::<f32>(cols)?,
            dev.alloc::<f32>(1)?,
            dev.alloc::<f32>(blocks)?,
            dev.alloc::<f32>(2)?,
        )
    };
    let (rows_i, cols_i) = (rows as i32, cols as i32);
    let (col_tiles_i, row_tiles_i, blocks_i) = (col_tiles as i32, row_tiles as i32, blocks as i32);

    let tiles = super::kernel(dev, &IMAGE, "adafactor_tiles")?;
    let (eps1, with_p, grad_scale) = (h.eps1 as f32, i32::from(h.scale_parameter), h.grad_scale as f32);
    let mut launch = tiles.builder();
    launch.arg(&g).arg(&grad_scale).arg(&p).arg(&rows_i).arg(&cols_i).arg(&eps1).arg(&with_p);
    launch.arg(&part_row).arg(&part_col).arg(&part_p);
    // SAFETY: the arguments match adafactor_tiles' signature; g and p hold rows × cols f32.
    unsafe { launch.launch(config((col_tiles as u32, row_tiles as u32), THREADS)) }.w()?;

    let factors = super::kernel(dev, &IMAGE, "adafactor_factors")?;
    let (beta2t, one_minus) = (h.beta2t as f32, (1.0 - h.beta2t) as f32);
    let mut launch = factors.builder();
    launch.arg(&part_row).arg(&part_col).arg(&part_p).arg(&rows_i).arg(&cols_i).arg(&col_tiles_i).arg(&row_tiles_i);
    launch.arg(&beta2t).arg(&one_minus).arg(&row_state).arg(&col_state).arg(&r_fac).arg(&c_fac).arg(&p_sq);
    // SAFETY: the arguments match adafactor_factors' signature; the states hold rows and cols f32.
    unsafe { launch.launch(config((1, 1), ONE_BLOCK)) }.w()?;

    let update_sq = super::kernel(dev, &IMAGE, "adafactor_update_sq")?;
    let mut launch = update_sq.builder();
    launch.arg(&g).arg(&grad_scale).arg(&r_fac).arg(&c_fac).arg(&rows_i).arg(&cols_i).arg(&part_u);
    // SAFETY: the arguments match adafactor_update_sq's signature.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }.w()?;

    let scalars_kernel = super::kernel(dev, &IMAGE, "adafactor_scalars")?;
    let (count, scale_parameter) = (n as f64, i32::from(h.scale_parameter));
    let mut launch = scalars_kernel.builder();
    launch.arg(&part_u).arg(&blocks_i).arg(&p_sq).arg(&count).arg(&h.rel).arg(&h.lr_scale).arg(&h.eps2);
    launch.arg(&scale_parameter).arg(&h.clip_threshold).arg(&h.weight_decay).arg(&scalars);
    // SAFETY: the arguments match adafactor_scalars' signature.
    unsafe { launch.launch(config((1, 1), THREADS)) }.w()?;

    let apply = super::kernel(dev, &IMAGE, "adafactor_apply")?;
    let beta1 = h.beta1.unwrap_or(0.0);
    let (has_m, b1, one_minus_b1) = (i32::from(u.exp_avg.is_some()), beta1 as f32, (1.0 - beta1) as f32);
    let has_decay = i32::from(h.weight_decay != 0.0);
    let mut launch = apply.builder();
    launch.arg(&p).arg(&g).arg(&grad_scale).arg(&m).arg(&r_fac).arg(&c_fac).arg(&scalars).arg(&rows_i).arg(&cols_i);
    launch.arg(&has_m).arg(&b1).arg(&one_minus_b1).arg(&has_decay);
    // SAFETY: the arguments match adafactor_apply's signature; m is read only with has_m.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }.w()?;
    drop(records);
    drop(locked);
    Ok(())
}
