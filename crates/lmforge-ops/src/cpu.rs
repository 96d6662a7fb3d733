//! Shared plumbing for the fused CPU kernels: borrowing a tensor's f32 data in place,
//! building output tensors, and matrix products into caller-owned buffers.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, StorageRef, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The f32 data of a contiguous CPU storage under `layout`, from its start offset.
pub fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: input must be contiguous") };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// The f32 data of a contiguous CPU storage under `layout`, mutably (an in-place op's
/// destination).
pub fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: destination must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("{op}: f32 only"),
    }
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

/// `len` f32 left uninitialised, for a kernel that writes every element before any is read
/// (then [`assume_init`]). A fresh `vec![0.0; len]` zeroes memory the allocator hands back
/// from the heap: a memset per output, on the calling thread while the pool waits (about 2%
/// of a bench-gpt step, all outputs together).
pub fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation, and the capacity is `len`.
    unsafe { v.set_len(len) };
    v
}

/// The buffer as plain f32.
///
/// # Safety
/// Every element of `v` has been written.
pub unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> has f32's layout; every element is initialised (the caller's
    // promise); the allocation is handed over whole.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// Rows per rayon task: a few tasks per thread so uneven rows (causal attention) balance,
/// but at least 16 rows so tiny tensors are not split into hundreds of tasks.
pub fn rows_per_task(rows: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    rows.div_ceil(tasks).max(16)
}

/// dst (m×n, dense rows) = [dst +] lhs (m×k) · rhs (k×n), strides (row, column) in elements,
/// through `gemm` (the kernel candle's CPU matmul runs) over the whole rayon pool; products of
/// a few rows (decoding) through [`super::gemv`], which streams the weights once.
///
/// The output is cut into a grid of blocks, one single-threaded `gemm` per block, rather than
/// handing `gemm` the pool: at the training shapes (k or n of a few hundred) blocks of whole
/// output columns measured up to 25% faster than `gemm`'s own split on the backward products
/// (weight gradients with n = 256 gained most). Each output element is still one dot product
/// over k in `gemm`'s order.
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
    assert!(dst.len() >= m * n, "gemm_into: operand sizes");
    // SAFETY: dst holds m×n elements (asserted) and is borrowed mutably for the call.
    unsafe { gemm_raw(m, n, k, dst.as_mut_ptr(), accumulate, lhs, lhs_s, rhs, rhs_s) }
}

/// A new m×n buffer = lhs (m×k) · rhs (k×n) ([`gemm_into`] without zeroing the output first:
/// the product writes every element).
pub fn gemm_new(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut dst = uninit(m * n);
    // SAFETY: dst holds m×n elements; with k > 0 and no accumulation, gemm writes each of
    // them without reading it, so all are initialised afterwards.
    unsafe {
        gemm_raw(m, n, k, dst.as_mut_ptr().cast::<f32>(), false, lhs, lhs_s, rhs, rhs_s);
        assume_init(dst)
    }
}

/// [`gemm_into`] on a raw m×n destination.
///
/// # Safety
/// `dst` is valid for writes of m×n elements (and reads, when `accumulate`), and nothing
/// else accesses them during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n, "gemm_into: operand sizes");
    // SAFETY: the caller's promise on dst; the operands' lengths are asserted above.
    if unsafe { super::gemv::try_gemv(m, n, k, dst, accumulate, lhs, lhs_s, rhs, rhs_s) } {
        return;
    }
    let (tm, tn) = gemm_grid(m, n, k, rayon::current_num_threads());
    let (rows, cols) = (m.div_ceil(tm).next_multiple_of(8), n.div_ceil(tn).next_multiple_of(16));
    // Raw addresses, so blocks on other threads can write their disjoint parts of dst.
    let (d, l, r) = (dst as usize, lhs.as_ptr() as usize, rhs.as_ptr() as usize);
    let block = |i: usize| {
        let (r0, c0) = ((i / tn) * rows, (i % tn) * cols);
        if r0 >= m || c0 >= n {
            return;
        }
        let (bm, bn) = (rows.min(m - r0), cols.min(n - c0));
        let f = std::mem::size_of::<f32>();
        // SAFETY: the block [r0, r0+bm) × [c0, c0+bn) lies inside the m×n dst (dense rows,
        // exclusively ours: the caller's promise), blocks do not overlap, and the operand
        // offsets stay inside the asserted lengths.
        unsafe {
            gemm(
                bm,
                bn,
                k,
                (d + (r0 * n + c0) * f) as *mut f32,
                1,
                n as isize,
                accumulate,
                (l + r0 * lhs_s.0 * f) as *const f32,
                lhs_s.1 as isize,
                lhs_s.0 as isize,
                (r + c0 * rhs_s.1 * f) as *const f32,
                rhs_s.1 as isize,
                rhs_s.0 as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    };
    if tm * tn == 1 {
        block(0);
    } else {
        (0..tm * tn).into_par_iter().for_each(block);
    }
}

/// (row blocks, column blocks) of [`gemm_into`]'s grid for `threads` threads: blocks of at
/// least 128 whole columns first (each keeps `gemm`'s 64-wide micro-tiles full), then rows;
/// one block for products too small to be worth a handoff.
fn gemm_grid(m: usize, n: usize, k: usize, threads: usize) -> (usize, usize) {
    if threads <= 1 || m * n * k < 1 << 18 {
        return (1, 1);
    }
    let tn = (n / 128).clamp(1, threads);
    let tm = (threads / tn).clamp(1, m.div_ceil(32));
    (tm, tn)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// dst = [dst +] lhs · rhs by the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        dst: &[f32],
        acc: bool,
        lhs: &[f32],
        ls: (usize, usize),
        rhs: &[f32],
        rs: (usize, usize),
    ) -> Vec<f64> {
        (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let dot: f64 = (0..k).map(|j| lhs[r * ls.0 + j * ls.1] as f64 * rhs[j * rs.0 + c * rs.1] as f64).sum();
                dot + if acc { dst[i] as f64 } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn gemm_grid_blocks_cover_the_product_for_any_thread_count() {
        let shapes = [(1, 1, 1), (7, 300, 65), (64, 64, 64), (130, 257, 33), (300, 129, 70), (40, 1000, 20)];
        for threads in [1, 2, 3, 4, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for &(m, n, k) in &shapes {
                for (transposed, acc) in [(false, false), (true, false), (false, true), (true, true)] {
                    let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
                    let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
                    // Row-major operands, or both read transposed through their strides.
                    let (ls, rs) = if transposed { ((1, m), (1, k)) } else { ((k, 1), (n, 1)) };
                    let start: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
                    let mut dst = start.clone();
                    pool.install(|| gemm_into(m, n, k, &mut dst, acc, &lhs, ls, &rhs, rs));
                    let want = naive(m, n, k, &start, acc, &lhs, ls, &rhs, rs);
                    for (i, (&got, &want)) in dst.iter().zip(&want).enumerate() {
                        assert!(
                            (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{threads} threads, {m}x{n}x{k} t={transposed} acc={acc}: [{i}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_grid_splits_columns_first_and_skips_small_products() {
        assert_eq!(gemm_grid(2048, 768, 256, 2), (1, 2));
        assert_eq!(gemm_grid(2048, 100, 256, 2), (2, 1));
        assert_eq!(gemm_grid(2048, 256, 256, 16), (8, 2));
        assert_eq!(gemm_grid(8, 8, 8, 16), (1, 1));
        assert_eq!(gemm_grid(2048, 768, 256, 1), (1, 1));
    }
}
