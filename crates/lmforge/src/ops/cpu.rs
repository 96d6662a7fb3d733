//! Shared plumbing for the fused CPU kernels: borrowing a tensor's f32 data in place,
//! building output tensors, and matrix products into caller-owned buffers.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, StorageRef, Tensor};
use gemm::{gemm, Parallelism};

/// The f32 data of a contiguous CPU storage under `layout`, from its start offset.
pub fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: input must be contiguous") };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// u32 data of a contiguous CPU storage (class ids).
pub fn slice_u32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: input must be contiguous") };
    Ok(&s.as_slice::<u32>()?[start..end])
}

/// A read lock on a contiguous CPU tensor's storage, to borrow its f32 data in a backward pass
/// (where the arguments arrive as tensors, not storages).
pub struct Read<'a> {
    guard: StorageRef<'a>,
    layout: &'a Layout,
    op: &'static str,
}

impl<'a> Read<'a> {
    pub fn new(t: &'a Tensor, op: &'static str) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        Ok(Self { guard, layout, op })
    }

    pub fn f32(&self) -> Result<&[f32]> {
        match &*self.guard {
            Storage::Cpu(s) => slice(s, self.layout, self.op),
            _ => bail!("{}: fused kernels run on the CPU only", self.op),
        }
    }
}

/// A CPU f32 tensor of `shape` owning `data` (no copy).
pub fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// Rows per rayon task: a few tasks per thread so uneven rows (causal attention) balance,
/// but at least 16 rows so tiny tensors are not split into hundreds of tasks.
pub fn rows_per_task(rows: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    rows.div_ceil(tasks).max(16)
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// dst (m×n, dense rows) = [dst +] lhs (m×k) · rhs (k×n), strides (row, column) in elements;
/// `gemm` (the kernel candle's CPU matmul runs) over the whole rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n, "gemm_into: operand sizes");
    // SAFETY: the buffers hold m×n, m×k and k×n elements (asserted) and the strides describe
    // dense matrices inside them.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads(),
        )
    }
}

/// Σ of per-task partial vectors, in task order. A rayon `reduce` would combine them in a tree
/// whose shape depends on work stealing, so the f32 sums (and a resumed run) could differ in
/// the last bits from one run to the next; collecting first keeps the order fixed.
pub fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for part in &parts {
        total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    }
    total
}
