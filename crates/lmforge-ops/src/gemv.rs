//! Products with a few rows (decoding: one row per sequence) as matrix–vector products that
//! stream the weights once. `gemm` packs its operands into panels for its micro-kernels,
//! which pays off when each weight is used by many rows; with one row every weight is read,
//! packed and used once, and a single-token decode of an f32 GPT-2 124M spent three quarters
//! of its time in `gemm`'s one-row path. Here each output is a dot product over the weight's
//! contiguous row (nn.Linear's (out, in) storage, the LM head) or a column block accumulates
//! scaled rows (Conv1D's (in, out) storage), the output columns cut into blocks over the
//! rayon pool. Memory-bound: the speed is the rate the weights stream in.

use super::vmath::{dot, dot4, vectorized};
use rayon::prelude::*;

/// Products with at most this many rows run here; more go to `gemm`, whose packing then pays.
pub const MAX_ROWS: usize = 4;

/// Products below this many multiply-adds run on the calling thread.
const SERIAL_WORK: usize = 1 << 16;

/// dst (m×n, dense rows) = [dst +] lhs (m×k) · rhs (k×n), strides (row, column) in elements,
/// when the layout is one this handles: m ≤ [`MAX_ROWS`], lhs rows contiguous, rhs stored
/// (n, k) (strides (1, k)) or (k, n) (strides (n, 1)). False, and nothing written, otherwise.
///
/// # Safety
/// `dst` is valid for writes of m×n elements (and reads, when `accumulate`), nothing else
/// accesses them during the call, and lhs / rhs hold the elements their strides reach.
#[allow(clippy::too_many_arguments)]
pub unsafe fn try_gemv(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
) -> bool {
    if m == 0 || m > MAX_ROWS || n == 0 || k == 0 || lhs_s.1 != 1 || lhs.len() < (m - 1) * lhs_s.0 + k {
        return false;
    }
    let rows: Vec<&[f32]> = (0..m).map(|i| &lhs[i * lhs_s.0..i * lhs_s.0 + k]).collect();
    let threads = if m * n * k < SERIAL_WORK { 1 } else { rayon::current_num_threads().max(1) };
    let d = dst as usize;
    if rhs_s == (1, k) && rhs.len() >= n * k {
        // Output j is Σ_k x_k · W[j, k]: a dot product over W's contiguous row j.
        let block = n.div_ceil(4 * threads).next_multiple_of(16).min(n);
        let run = |c0: usize| {
            let c1 = (c0 + block).min(n);
            vectorized(
                #[inline(always)]
                || {
                    let mut j = c0;
                    // Four weight rows at a time: four independent chains of multiply-adds
                    // over one pass of x.
                    while j + 4 <= c1 {
                        let w = [0, 1, 2, 3].map(|r| &rhs[(j + r) * k..(j + r + 1) * k]);
                        for (i, x) in rows.iter().enumerate() {
                            let v = dot4(x, w);
                            for (r, v) in v.into_iter().enumerate() {
                                // SAFETY: (i, j + r) lies inside the m×n dst, and blocks are disjoint.
                                let y = unsafe { &mut *(d as *mut f32).add(i * n + j + r) };
                                *y = if accumulate { *y + v } else { v };
                            }
                        }
                        j += 4;
                    }
                    for j in j..c1 {
                        let w = &rhs[j * k..(j + 1) * k];
                        for (i, x) in rows.iter().enumerate() {
                            // SAFETY: (i, j) lies inside the m×n dst, and blocks are disjoint.
                            let y = unsafe { &mut *(d as *mut f32).add(i * n + j) };
                            let v = dot(x, w);
                            *y = if accumulate { *y + v } else { v };
                        }
                    }
                },
            )
        };
        for_each_block(n, block, threads, run);
        return true;
    }
    if rhs_s == (n, 1) && rhs.len() >= k * n {
        // Output row i is Σ_k x_ik · W[k, :]: each task takes a contiguous band of W's rows
        // (one stream through memory) into partial outputs, summed in band order.
        let band = k.div_ceil(threads).max(1);
        let partial = |k0: usize| -> Vec<f32> {
            let k1 = (k0 + band).min(k);
            let mut part = vec![0f32; m * n];
            vectorized(
                #[inline(always)]
                || {
                    for (o, x) in part.chunks_exact_mut(n).zip(&rows) {
                        let mut kk = k0;
                        // Two weight rows per pass over the outputs: half their loads and stores.
                        while kk + 2 <= k1 {
                            let (a0, a1) = (x[kk], x[kk + 1]);
                            let (w0, w1) = (&rhs[kk * n..(kk + 1) * n], &rhs[(kk + 1) * n..(kk + 2) * n]);
                            for ((y, p), q) in o.iter_mut().zip(w0).zip(w1) {
                                *y += a0 * p + a1 * q;
                            }
                            kk += 2;
                        }
                        if kk < k1 {
                            let a = x[kk];
                            for (y, w) in o.iter_mut().zip(&rhs[kk * n..(kk + 1) * n]) {
                                *y += a * w;
                            }
                        }
                    }
                },
            );
            part
        };
        let starts: Vec<usize> = (0..k).step_by(band).collect();
        let parts: Vec<Vec<f32>> =
            if starts.len() == 1 { vec![partial(0)] } else { starts.into_par_iter().map(partial).collect() };
        // SAFETY: dst holds m×n elements, exclusively ours (the caller's promise).
        let out = unsafe { std::slice::from_raw_parts_mut(dst, m * n) };
        if !accumulate {
            out.fill(0.0);
        }
        for part in &parts {
            for (y, p) in out.iter_mut().zip(part) {
                *y += p;
            }
        }
        return true;
    }
    false
}

/// `run(c0)` for each block start c0 = 0, block, 2·block, … below n: on this thread, or over
/// the rayon pool.
fn for_each_block(n: usize, block: usize, threads: usize, run: impl Fn(usize) + Sync + Send) {
    let starts = (0..n).step_by(block);
    if threads <= 1 || block >= n {
        starts.for_each(run);
    } else {
        starts.collect::<Vec<_>>().into_par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain triple loop, for comparison.
    fn naive(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], rhs_s: (usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| lhs[i * k + kk] as f64 * rhs[kk * rhs_s.0 + j * rhs_s.1] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn few_row_products_match_the_triple_loop_in_both_weight_layouts() {
        let value = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0) - 1.0;
        for &(m, n, k) in &[(1, 1, 1), (1, 2304, 768), (3, 50, 17), (4, 1000, 300), (2, 16, 4096), (1, 5000, 64)] {
            let lhs: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let rhs: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
            for rhs_s in [(1, k), (n, 1)] {
                let want = naive(m, n, k, &lhs, &rhs, rhs_s);
                for accumulate in [false, true] {
                    let mut got = vec![0.5f32; m * n];
                    // SAFETY: got holds m×n elements; lhs and rhs hold what their strides reach.
                    assert!(unsafe { try_gemv(m, n, k, got.as_mut_ptr(), accumulate, &lhs, (k, 1), &rhs, rhs_s) });
                    let extra = if accumulate { 0.5 } else { 0.0 };
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w - extra).abs() <= 1e-4 * (1.0 + w.abs()), "{m}×{n}×{k} {rhs_s:?}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// Weight streaming rate at decode shapes (`cargo test --release -p lmforge-ops gemv_rate
    /// -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn gemv_rate() {
        for &(n, k) in &[(2304, 768), (768, 3072), (3072, 768), (50257, 768)] {
            let lhs = vec![0.5f32; k];
            let rhs = vec![0.25f32; k * n];
            let mut dst = vec![0f32; n];
            for rhs_s in [(1, k), (n, 1)] {
                let t = std::time::Instant::now();
                let reps = 200;
                for _ in 0..reps {
                    // SAFETY: dst holds n elements; lhs and rhs hold what their strides reach.
                    unsafe { try_gemv(1, n, k, dst.as_mut_ptr(), false, &lhs, (k, 1), &rhs, rhs_s) };
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!("{n}x{k} {rhs_s:?}: {:.1} us, {:.1} GB/s", s * 1e6, (n * k * 4) as f64 / s / 1e9);
            }
        }
    }

    #[test]
    fn other_layouts_and_many_rows_are_left_to_gemm() {
        let (lhs, rhs) = (vec![1f32; 64], vec![1f32; 64]);
        let mut dst = vec![7f32; 64];
        // SAFETY: every call is refused before touching dst.
        unsafe {
            assert!(!try_gemv(8, 8, 8, dst.as_mut_ptr(), false, &lhs, (8, 1), &rhs, (8, 1)));
            assert!(!try_gemv(1, 8, 8, dst.as_mut_ptr(), false, &lhs, (1, 8), &rhs, (8, 1)));
            assert!(!try_gemv(1, 8, 8, dst.as_mut_ptr(), false, &lhs, (8, 1), &rhs, (2, 3)));
        }
        assert!(dst.iter().all(|&v| v == 7.0));
    }
}
