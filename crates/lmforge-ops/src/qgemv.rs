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
//! decoded a q8_0 GPT-2 124M at half llama.cpp's speed; [`q8_0_row_product`] runs the same
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
            if let Some(y) = q4k_row_product(q, x)? {
                return Ok(y);
            }
            if let Some(y) = q8_0_row_product(q, x)? {
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

/// One f32 row on the CPU against Q4_K blocks (out, in), through candle's dot products over the
/// compact blocks; None when x or w is anything else (more rows, another type or device).
pub(crate) fn q4k_row_product(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
    if w.dtype() != GgmlDType::Q4K || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let dims = x.dims();
    if dims.last() != Some(&k) || x.elem_count() != k {
        return Ok(None);
    }
    let Cow::Borrowed(bytes) = w.data()? else { return Ok(None) };
    let size = std::mem::size_of::<BlockQ4K>();
    let aligned = (bytes.as_ptr() as usize) % std::mem::align_of::<BlockQ4K>() == 0;
    if !aligned || bytes.len() != n * (k / 256) * size || k % 256 != 0 {
        return Ok(None);
    }
    // SAFETY: the bytes are the tensor's n·k/256 blocks (length checked), suitably aligned.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const BlockQ4K, bytes.len() / size) };
    let row = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n];
    k_quants::matmul::<BlockQ4K>((1, k, n), &row, blocks, &mut out)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(out, shape, x.device())?))
}

/// One f32 row on the CPU against Q8_0 blocks (out, in): the row quantized to Q8_0 as candle
/// and llama.cpp do, then per weight row Σ_blocks d_w·d_x·Σ q_w·q_x ([`kernel::dot_row`]),
/// the rows spread over candle's worker pool (where the other quantized products of a
/// decode step run). None when x or w is anything else, or the CPU
/// lacks AVX2 + FMA + F16C.
pub(crate) fn q8_0_row_product(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    const BLOCK: usize = 34; // f16 scale + 32 × i8
    let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
    if w.dtype() != GgmlDType::Q8_0 || !x.device().is_cpu() || x.dtype() != DType::F32 || !q8_0_kernel_available() {
        return Ok(None);
    }
    let dims = x.dims();
    if dims.last() != Some(&k) || x.elem_count() != k || k % 32 != 0 {
        return Ok(None);
    }
    let Cow::Borrowed(weights) = w.data()? else { return Ok(None) };
    let nb = k / 32;
    if weights.len() != n * nb * BLOCK || std::mem::size_of::<BlockQ8_0>() != BLOCK {
        return Ok(None);
    }
    let row = x.flatten_all()?.to_vec1::<f32>()?;
    let mut xq = vec![BlockQ8_0::zeros(); nb];
    BlockQ8_0::from_float(&row, &mut xq);
    // SAFETY: BlockQ8_0 is repr(C), 34 bytes (checked above): the f16 scale, then 32 × i8.
    let xq_bytes = unsafe { std::slice::from_raw_parts(xq.as_ptr() as *const u8, nb * BLOCK) };
    let mut out = vec![0f32; n];
    let out_at = out.as_mut_ptr() as usize;
    let run = |rows: std::ops::Range<usize>| {
        for r in rows {
            // SAFETY: row r (below n) lies in `weights`; rows write disjoint outputs; the CPU
            // has the features (q8_0_kernel_available).
            unsafe {
                let y = kernel::dot_row(weights[r * nb * BLOCK..].as_ptr(), nb, xq_bytes.as_ptr());
                *(out_at as *mut f32).add(r) = y;
            }
        }
    };
    if n * k < 1 << 16 {
        run(0..n);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(n, run);
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(out, shape, x.device())?))
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
        const BLOCK: usize = 34;
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
        let ours = q4k_row_product(&q, &x).unwrap().expect("one Q4_K row is ours");
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
            let ours = q8_0_row_product(&q, &x).unwrap().expect("one Q8_0 row is ours");
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
        assert!(q4k_row_product(&q4, &random((2, k), 4)).unwrap().is_none());
        let q8 = QTensor::quantize(&random((n, k), 5), GgmlDType::Q8_0).unwrap();
        assert!(q4k_row_product(&q8, &random((1, k), 6)).unwrap().is_none());
        assert!(q8_0_row_product(&q8, &random((2, k), 6)).unwrap().is_none());
        assert!(q8_0_row_product(&q4, &random((1, k), 6)).unwrap().is_none());
    }
}
