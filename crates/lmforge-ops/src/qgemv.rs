//! Products with GGML-quantized weights (inference only: candle's quantized matmul records no
//! backward). [`quantized_matmul`] is `QMatMul::forward` except for one case it routes
//! elsewhere: a single row against Q4_K blocks on an x86 CPU without VNNI. There candle's
//! repacked Q4_K tile kernel (made for many rows, or for VNNI's `vpdpbusd`) streams the
//! weights at ~9 GB/s on 2 AVX2 cores, while its dot products over the compact blocks
//! (`k_quants::matmul`, llama.cpp's AVX2 `vec_dot_q4_K_q8_K` four rows at a time) reach
//! ~15 GB/s: decoding a GPT-2 124M q4_k_m ran at 0.66× llama.cpp's speed through the tiles.
//! candle makes the same choice itself for Q6_K single rows; on VNNI machines the tiles win.
//! And a single row against Q8_0 blocks on such a CPU: candle's AVX2 `vec_dot_q8_0_q8_0` runs
//! one weight row at a time with a function call per block to widen the f16 scale, and
//! decoded a q8_0 GPT-2 124M at half llama.cpp's speed; [`q8_0_products`] runs the same
//! arithmetic with the scales widened inline, free of a dependence between blocks.

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use std::borrow::Cow;
use std::sync::OnceLock;

/// x (..., in) · Wᵀ for quantized W (out, in): (..., out).
pub fn quantized_matmul(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if let QMatMul::QTensor(q) = w {
        if single_rows_skip_the_tiles() {
            if let Some(y) = single_row_product(q, x)? {
                return Ok(y);
            }
        }
    }
    w.forward(x)
}

/// Whether this CPU has AVX2 + FMA but no VNNI: candle's repacked tiles are then its plain
/// AVX2 variant (Q4_K; it keeps Q8_0 off them), and single rows run faster on compact blocks.
fn single_rows_skip_the_tiles() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || is_x86_feature_detected!("avxvnni");
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !vnni
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// out (n) = n quantized rows (their blocks' bytes) · row (k); false when the bytes do not fit.
type RowProducts = fn(&[u8], &[f32], &mut [f32]) -> Result<bool>;

/// One f32 row on the CPU against Q4_K or Q8_0 blocks (out, in), over the compact blocks
/// ([`q4k_products`], [`q8_0_products`]); None when x or w is anything else (more rows,
/// another type or device, Q8_0 on a CPU without AVX2 + FMA + F16C).
pub(crate) fn single_row_product(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
    let dims = x.dims();
    if !x.device().is_cpu() || x.dtype() != DType::F32 || dims.last() != Some(&k) || x.elem_count() != k {
        return Ok(None);
    }
    let products: RowProducts = match w.dtype() {
        GgmlDType::Q4K => q4k_products,
        GgmlDType::Q8_0 if q8_0_kernel_available() => q8_0_products,
        _ => return Ok(None),
    };
    let Cow::Borrowed(blocks) = w.data()? else { return Ok(None) };
    let row = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n];
    if !products(blocks, &row, &mut out)? {
        return Ok(None);
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(out, shape, x.device())?))
}

/// out (n) = the n Q4_K rows of `blocks` · row (k), through candle's dot products over the
/// compact blocks; false, nothing written, when the bytes are not n aligned rows of k / 256
/// blocks.
fn q4k_products(blocks: &[u8], row: &[f32], out: &mut [f32]) -> Result<bool> {
    let (n, k, size) = (out.len(), row.len(), std::mem::size_of::<BlockQ4K>());
    let aligned = (blocks.as_ptr() as usize) % std::mem::align_of::<BlockQ4K>() == 0;
    if !aligned || k % 256 != 0 || blocks.len() != n * (k / 256) * size {
        return Ok(false);
    }
    // SAFETY: the bytes are n·k/256 blocks (length checked), suitably aligned.
    let blocks = unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const BlockQ4K, blocks.len() / size) };
    k_quants::matmul::<BlockQ4K>((1, k, n), row, blocks, out)?;
    Ok(true)
}

/// A Q8_0 block's bytes: the f16 scale, then 32 × i8 (candle's `BlockQ8_0` is repr(C)).
const Q8_0_BLOCK: usize = 34;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BLOCK);

/// out (n) = the n Q8_0 rows of `blocks` · row (k): the row quantized to Q8_0 as candle and
/// llama.cpp do, then per weight row Σ_blocks d_w·d_x·Σ q_w·q_x ([`kernel::dot_row`]), the
/// rows spread over candle's worker pool (where the other quantized products of a decode step
/// run). False, nothing written, when the bytes are not n rows of k / 32 blocks. The CPU has
/// AVX2 + FMA + F16C (the caller checked [`q8_0_kernel_available`]).
fn q8_0_products(blocks: &[u8], row: &[f32], out: &mut [f32]) -> Result<bool> {
    let (n, k) = (out.len(), row.len());
    let nb = k / 32;
    if k % 32 != 0 || blocks.len() != n * nb * Q8_0_BLOCK {
        return Ok(false);
    }
    let mut xq = vec![BlockQ8_0::zeros(); nb];
    BlockQ8_0::from_float(row, &mut xq);
    // SAFETY: BlockQ8_0 is repr(C), Q8_0_BLOCK bytes (asserted above).
    let xq_bytes = unsafe { std::slice::from_raw_parts(xq.as_ptr() as *const u8, nb * Q8_0_BLOCK) };
    let out_at = out.as_mut_ptr() as usize;
    let run = |rows: std::ops::Range<usize>| {
        for r in rows {
            // SAFETY: row r (below n) lies in `blocks`; rows write disjoint outputs; the CPU
            // has the features (q8_0_kernel_available).
            unsafe {
                let y = kernel::dot_row(blocks[r * nb * Q8_0_BLOCK..].as_ptr(), nb, xq_bytes.as_ptr());
                *(out_at as *mut f32).add(r) = y;
            }
        }
    };
    if n * k < 1 << 16 {
        run(0..n);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(n, run);
    }
    Ok(true)
}

fn q8_0_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    /// The dot product of one Q8_0 weight row (`nb` blocks at `w`) with the quantized row `x`,
    /// per block as candle's `vec_dot_q8_0_q8_0`: |w|·sign(x, w) in u8 × i8 pairs, pair sums
    /// to i32 to f32, times d_w·d_x into 8 lanes; the lanes summed at the end in its order.
    /// The two f16 scales are widened together from a register built from zero: widening
    /// them one by one, the compiler inserted each into the accumulator's register (only
    /// its low lane matters to the conversion), chaining every block to the previous
    /// block's sum; and one row per pass streamed faster than four (17–20 vs 13–15 GB/s on
    /// 2 AVX2 cores).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `nb` blocks readable at `w` and at `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_row(w: *const u8, nb: usize, x: *const u8) -> f32 {
        const BLOCK: usize = super::Q8_0_BLOCK;
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY: block b of each lies within the nb blocks the caller vouches for.
            unsafe {
                let (wb, xb) = (w.add(b * BLOCK), x.add(b * BLOCK));
                let scale = |p: *const u8| (p as *const i16).read_unaligned();
                let f = _mm_cvtph_ps(_mm_setr_epi16(scale(wb), scale(xb), 0, 0, 0, 0, 0, 0));
                let d = _mm_mul_ss(f, _mm_movehdup_ps(f));
                let qw = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                let qx = _mm256_loadu_si256(xb.add(2) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), q, acc);
            }
        }
        // candle's hsum_float_8.
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(hi, _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub unsafe fn dot_row(_: *const u8, _: usize, _: *const u8) -> f32 {
        unreachable!("q8_0_kernel_available is false off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::Arc;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // A small LCG: candle's CPU generator cannot be seeded.
        let mut s = seed;
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn one_q4k_row_matches_candles_quantized_matmul() {
        let (n, k) = (48, 512);
        let q = Arc::new(QTensor::quantize(&random((n, k), 1), GgmlDType::Q4K).unwrap());
        let mm = QMatMul::from_arc(q.clone()).unwrap();
        let x = random((1, k), 2).reshape((1, 1, k)).unwrap();
        let ours = single_row_product(&q, &x).unwrap().expect("one Q4_K row is ours");
        assert_eq!(ours.dims(), &[1, 1, n]);
        let want = mm.forward(&x).unwrap();
        let diff = (ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale.max(1.0), "max diff {diff} (scale {scale})");
        // And the public entry agrees whichever way this CPU routes it.
        let routed = quantized_matmul(&mm, &x).unwrap();
        let diff = (routed - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale.max(1.0), "max diff {diff}");
    }

    #[test]
    fn one_q8_0_row_matches_candles_quantized_matmul() {
        if !q8_0_kernel_available() {
            eprintln!("skipped: this CPU lacks AVX2 + FMA + F16C");
            return;
        }
        // A few rows on this thread, and enough work to go over the pool.
        for (n, k) in [(19, 64), (515, 256)] {
            let q = Arc::new(QTensor::quantize(&random((n, k), 7), GgmlDType::Q8_0).unwrap());
            let mm = QMatMul::from_arc(q.clone()).unwrap();
            let x = random((1, k), 8);
            let ours = single_row_product(&q, &x).unwrap().expect("one Q8_0 row is ours");
            let want = mm.forward(&x).unwrap();
            assert_eq!(ours.dims(), want.dims());
            let (ours, want) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            // The same arithmetic in the same order as candle's dot product: equal to the bit.
            assert_eq!(ours, want, "({n}, {k})");
        }
    }

    #[test]
    fn more_rows_and_other_types_are_left_to_candle() {
        let (n, k) = (32, 256);
        let q4 = QTensor::quantize(&random((n, k), 3), GgmlDType::Q4K).unwrap();
        assert!(single_row_product(&q4, &random((2, k), 4)).unwrap().is_none());
        let q8 = QTensor::quantize(&random((n, k), 5), GgmlDType::Q8_0).unwrap();
        assert!(single_row_product(&q8, &random((2, k), 6)).unwrap().is_none());
        let q6 = QTensor::quantize(&random((n, k), 7), GgmlDType::Q6K).unwrap();
        assert!(single_row_product(&q6, &random((1, k), 8)).unwrap().is_none());
    }
}
