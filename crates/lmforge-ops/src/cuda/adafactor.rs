//! Adafactor's update of one f32 parameter on the GPU (`adafactor.cu`): the state, the step
//! size and the update clipping on the device, so no value is read back to the host (the
//! composed update reads RMS(p) and RMS(U) per parameter, a wait on the stream each). A matrix
//! takes five launches and about 20-28 bytes of memory traffic a parameter instead of some 28
//! four-byte passes; a vector (its moment unfactored) three. The parameter, its first moment
//! and the second-moment state are written in place through their addresses, as `adamw.rs`'s
//! table does.

use super::F32Address;
use crate::adafactor::{AdafactorStep, AdafactorUpdate, SecondMoment};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig};
use candle_core::{bail, CudaDevice, DType, Result, Tensor};

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
pub fn update(u: &AdafactorUpdate<'_>) -> Result<()> {
    let candle_core::Device::Cuda(dev) = u.param.device() else { bail!("{OP}: the parameter is not on a GPU") };
    let stream = dev.cuda_stream();
    let n = u.param.elem_count();
    if n == 0 {
        return Ok(());
    }
    let grad = u.grad.contiguous()?;
    let mut tensors: Vec<(&str, &Tensor, usize)> = vec![("param", u.param, n), ("grad", &grad, n)];
    let dims = match u.moment {
        SecondMoment::Factored { row, col } => {
            let (rows, cols) = u.param.dims2()?;
            tensors.extend([("exp_avg_sq_row", row, rows), ("exp_avg_sq_col", col, cols)]);
            Some((rows, cols))
        }
        SecondMoment::Full(v) => {
            u.param.dims1()?;
            tensors.push(("exp_avg_sq", v, n));
            None
        }
    };
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
                "{OP}: {name} {:?} {:?} does not match the {:?} f32 parameter on its GPU",
                t.dtype(),
                t.dims(),
                u.param.dims()
            );
        }
        let (address, record) = super::f32_address(storage, layout, &stream, name, OP)?;
        addresses.push(address);
        records.push(record);
    }
    let m = if u.exp_avg.is_some() { *addresses.last().expect("the first moment's address") } else { F32Address(0) };
    let at = Addresses { p: addresses[0], g: addresses[1], m };
    match dims {
        Some((rows, cols)) => matrix(dev, &u.step, at, (addresses[2], addresses[3]), rows, cols)?,
        None => vector(dev, &u.step, at, addresses[2], n)?,
    }
    drop(records);
    drop(locked);
    Ok(())
}

/// The device addresses of the parameter, its gradient and its first moment (0 without β1).
#[derive(Clone, Copy)]
struct Addresses {
    p: F32Address,
    g: F32Address,
    m: F32Address,
}

/// Partial-sum buffers every element of which its kernel writes before a later one reads it.
fn scratch(dev: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: adafactor.cu writes each of these buffers whole (every row of every column tile,
    // every column of every row tile, a value a block) before any kernel reads it.
    unsafe { dev.alloc::<f32>(len) }
}

/// A matrix's five launches: tile sums, factors, Σ U², scalars, the update.
fn matrix(
    dev: &CudaDevice,
    h: &AdafactorStep,
    at: Addresses,
    state: (F32Address, F32Address),
    rows: usize,
    cols: usize,
) -> Result<()> {
    let row_tiles = rows.div_ceil(ROWS);
    if rows > i32::MAX as usize || cols > i32::MAX as usize || row_tiles > 65535 {
        bail!("{OP}: a {rows} × {cols} matrix is past the kernels' grid");
    }
    let (Addresses { p, g, m }, (row_state, col_state)) = (at, state);
    let col_tiles = cols.div_ceil(THREADS as usize);
    let blocks = rows.min(MAX_BLOCKS);
    let part_row = scratch(dev, col_tiles * rows)?;
    let part_col = scratch(dev, row_tiles * cols)?;
    let part_p = scratch(dev, row_tiles * col_tiles)?;
    let (r_fac, c_fac, part_u, scalars) =
        (scratch(dev, rows)?, scratch(dev, cols)?, scratch(dev, blocks)?, scratch(dev, 2)?);
    let (rows_i, cols_i) = (rows as i32, cols as i32);
    let (col_tiles_i, row_tiles_i) = (col_tiles as i32, row_tiles as i32);

    let tiles = super::kernel(dev, &IMAGE, "adafactor_tiles")?;
    let (eps1, with_p, grad_scale) = (h.eps1 as f32, i32::from(h.scale_parameter), h.grad_scale as f32);
    let mut launch = tiles.builder();
    launch.arg(&g).arg(&grad_scale).arg(&p).arg(&rows_i).arg(&cols_i).arg(&eps1).arg(&with_p);
    launch.arg(&part_row).arg(&part_col).arg(&part_p);
    // SAFETY: the arguments match adafactor_tiles' signature; g and p hold rows × cols f32.
    unsafe { launch.launch(config((col_tiles as u32, row_tiles as u32), THREADS)) }?;

    let factors = super::kernel(dev, &IMAGE, "adafactor_factors")?;
    let (beta2t, one_minus) = (h.beta2t as f32, (1.0 - h.beta2t) as f32);
    let mut launch = factors.builder();
    launch.arg(&part_row).arg(&part_col).arg(&rows_i).arg(&cols_i).arg(&col_tiles_i).arg(&row_tiles_i);
    launch.arg(&beta2t).arg(&one_minus).arg(&row_state).arg(&col_state).arg(&r_fac).arg(&c_fac);
    // SAFETY: the arguments match adafactor_factors' signature; the states hold rows and cols f32.
    unsafe { launch.launch(config((1, 1), ONE_BLOCK)) }?;

    let update_sq = super::kernel(dev, &IMAGE, "adafactor_update_sq")?;
    let mut launch = update_sq.builder();
    launch.arg(&g).arg(&grad_scale).arg(&r_fac).arg(&c_fac).arg(&rows_i).arg(&cols_i).arg(&part_u);
    // SAFETY: the arguments match adafactor_update_sq's signature.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }?;

    step_scalars(dev, h, (&part_u, blocks), (&part_p, row_tiles * col_tiles), rows * cols, &scalars)?;

    let apply = super::kernel(dev, &IMAGE, "adafactor_apply")?;
    let (has_m, b1, one_minus_b1, has_decay) = first_moment_and_decay(h, m);
    let mut launch = apply.builder();
    launch.arg(&p).arg(&g).arg(&grad_scale).arg(&m).arg(&r_fac).arg(&c_fac).arg(&scalars).arg(&rows_i).arg(&cols_i);
    launch.arg(&has_m).arg(&b1).arg(&one_minus_b1).arg(&has_decay);
    // SAFETY: the arguments match adafactor_apply's signature; m is read only with has_m.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }?;
    Ok(())
}

/// A vector's three launches: its moment and the partial sums of U² and p², scalars, the update.
fn vector(dev: &CudaDevice, h: &AdafactorStep, at: Addresses, v_state: F32Address, n: usize) -> Result<()> {
    let Addresses { p, g, m } = at;
    let blocks = n.div_ceil(THREADS as usize).min(MAX_BLOCKS);
    let (part_u, part_p, scalars) = (scratch(dev, blocks)?, scratch(dev, blocks)?, scratch(dev, 2)?);
    let (eps1, with_p, grad_scale) = (h.eps1 as f32, i32::from(h.scale_parameter), h.grad_scale as f32);
    let (beta2t, one_minus) = (h.beta2t as f32, (1.0 - h.beta2t) as f32);

    let sq = super::kernel(dev, &IMAGE, "adafactor_vector_sq")?;
    let mut launch = sq.builder();
    launch.arg(&g).arg(&grad_scale).arg(&p).arg(&n).arg(&eps1).arg(&with_p).arg(&beta2t).arg(&one_minus);
    launch.arg(&v_state).arg(&part_u).arg(&part_p);
    // SAFETY: the arguments match adafactor_vector_sq's signature; g, p and v hold n f32.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }?;

    step_scalars(dev, h, (&part_u, blocks), (&part_p, blocks), n, &scalars)?;

    let apply = super::kernel(dev, &IMAGE, "adafactor_vector_apply")?;
    let (has_m, b1, one_minus_b1, has_decay) = first_moment_and_decay(h, m);
    let mut launch = apply.builder();
    launch.arg(&p).arg(&g).arg(&grad_scale).arg(&m).arg(&v_state).arg(&scalars).arg(&n);
    launch.arg(&has_m).arg(&b1).arg(&one_minus_b1).arg(&has_decay);
    // SAFETY: the arguments match adafactor_vector_apply's signature; m is read only with has_m.
    unsafe { launch.launch(config((blocks as u32, 1), THREADS)) }?;
    Ok(())
}

/// adafactor_scalars: the update's factor and the decay from the partial sums of U² and p².
fn step_scalars(
    dev: &CudaDevice,
    h: &AdafactorStep,
    part_u: (&CudaSlice<f32>, usize),
    part_p: (&CudaSlice<f32>, usize),
    n: usize,
    scalars: &CudaSlice<f32>,
) -> Result<()> {
    let kernel = super::kernel(dev, &IMAGE, "adafactor_scalars")?;
    let (u_parts, p_parts) = (part_u.1 as i32, part_p.1 as i32);
    let (count, scale_parameter) = (n as f64, i32::from(h.scale_parameter));
    let mut launch = kernel.builder();
    launch.arg(part_u.0).arg(&u_parts).arg(part_p.0).arg(&p_parts).arg(&count).arg(&h.rel).arg(&h.lr_scale);
    launch.arg(&h.eps2).arg(&scale_parameter).arg(&h.clip_threshold).arg(&h.weight_decay).arg(scalars);
    // SAFETY: the arguments match adafactor_scalars' signature.
    unsafe { launch.launch(config((1, 1), THREADS)) }?;
    Ok(())
}

/// The apply kernels' first-moment and decay arguments: has_m (a first moment was given: its
/// address `m` is not 0), β1, 1 − β1, has_decay.
fn first_moment_and_decay(h: &AdafactorStep, m: F32Address) -> (i32, f32, f32, i32) {
    let beta1 = h.beta1.unwrap_or(0.0);
    (i32::from(m.0 != 0), beta1 as f32, (1.0 - beta1) as f32, i32::from(h.weight_decay != 0.0))
}
