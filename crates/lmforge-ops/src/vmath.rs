//! Vectorised f32 math for the fused kernels' element-wise loops. The crate is built for
//! baseline x86-64 (SSE2), and two things kept those loops scalar: libm's `expf` is an opaque
//! call, and LLVM will not reorder a floating-point sum, so `iter().sum()` runs one element
//! at a time. Here:
//!
//! - [`exp`]: a branch-free `expf` (Cephes' polynomial, within 2 ulp) that inlines, so a loop
//!   calling it vectorises like plain arithmetic;
//! - [`max`], [`sum`], [`dot`], [`sum_exp`], [`exp_sum`]: reductions over 16 fixed lanes (the
//!   order of the additions is spelled out, so LLVM may keep the lanes in SIMD registers: one
//!   AVX-512 register or two AVX2 ones, the same order, so the same sums, on either);
//! - [`vectorized`]: runs a closure compiled for AVX-512 (with FMA), or else AVX2 + FMA, when
//!   the CPU has them (runtime detection, as `gemm` does for its kernels), else as is. The
//!   features reach only code inlined into it, hence two rules: call it inside each rayon task,
//!   and mark the closure `#[inline(always)]` (`vectorized(#[inline(always)] || ...)`): LLVM
//!   otherwise keeps a large closure out of line, compiled for SSE2.
//!
//! Polynomials use `mul_add`: one rounding per step, hence the same result from a hardware FMA
//! and from libm's software `fmaf` (the fallback on CPUs without FMA, which are slow there).
//! On Zen 4 the AVX-512 build of GELU's loop ran 1.9× faster than the AVX2 one.
//!
//! Results differ from libm / sequential sums by rounding only; the reference ops remain the
//! oracle the parity tests compare against.

/// Lanes of the reductions: one AVX-512 register of f32.
const L: usize = 16;

/// Runs `f` compiled with AVX-512 (or else AVX2) and FMA enabled when this CPU has them.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `avx512` is compiled for (checked above).
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `avx2_fma` is compiled for (checked above).
            return unsafe { avx2_fma(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// e^x for f32: 2^n · e^r with n = round(x·log₂e) and |r| ≤ ln2/2, e^r by Cephes' degree-6
/// polynomial. Below ln(2^-126) it returns 0 (libm returns subnormals there), above
/// ln(f32::MAX) +∞; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_84; // ln(f32::MAX)
    const LO: f32 = -87.336_55; // ln(2^-126), the smallest normal
                                // Adding 1.5·2^23 rounds to an integer (ties to even) and leaves that integer in the
                                // low mantissa bits, so n needs no float→int conversion.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // r = x − n·ln2, with ln2 split in two so n·ln2_hi is exact.
    let r = (-n).mul_add(-2.121_944_4e-4, (-n).mul_add(0.693_359_4, xc));
    let mut p: f32 = 1.987_569_1e-4;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5); // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let er = (p * r).mul_add(r, r) + 1.0;
    // n spans −126..=128, and 2^128 is not a float: scale by 2^a·2^b with a + b = n.
    let a = ni >> 1;
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = er * pow2(a) * pow2(ni - a);
    // Selects, not branches: they vectorise as blends.
    let y = if x < LO { 0.0 } else { y };
    if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// Largest element (−∞ for an empty slice; NaNs are skipped, as `f32::max` does).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..L {
            acc[l] = acc[l].max(c[l]);
        }
    }
    tail.iter().fold(acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), |m, &v| m.max(v))
}

/// Σ x.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..L {
            acc[l] += c[l];
        }
    }
    fold_lanes(acc) + tail.iter().sum::<f32>()
}

/// Σ a·b over the shorter length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    fold_lanes(acc) + tail
}

/// The dot products of `x` with four rows (each at least as long as x), each over [`L`]
/// lanes like [`dot`]: four independent chains of fused multiply-adds (one chain waits on each
/// add's latency), x read once for the four. A matrix–vector product's rows, attention's
/// scores against four cached keys.
#[inline(always)]
pub fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let n = x.len();
    let [w0, w1, w2, w3] = w.map(|w| &w[..n]);
    let lanes = |s: &[f32]| -> [f32; L] { s.try_into().expect("a chunk of L") };
    let mut acc = [[0f32; L]; 4];
    let chunks = x.chunks_exact(L).zip(w0.chunks_exact(L)).zip(w1.chunks_exact(L));
    for (((xv, a), b), (c, d)) in chunks.zip(w2.chunks_exact(L).zip(w3.chunks_exact(L))) {
        let (xv, a, b, c, d) = (lanes(xv), lanes(a), lanes(b), lanes(c), lanes(d));
        for l in 0..L {
            acc[0][l] = a[l].mul_add(xv[l], acc[0][l]);
            acc[1][l] = b[l].mul_add(xv[l], acc[1][l]);
            acc[2][l] = c[l].mul_add(xv[l], acc[2][l]);
            acc[3][l] = d[l].mul_add(xv[l], acc[3][l]);
        }
    }
    let full = n / L * L;
    let mut out = [0f32; 4];
    for ((o, acc), w) in out.iter_mut().zip(acc).zip([w0, w1, w2, w3]) {
        let tail: f32 = x[full..].iter().zip(&w[full..]).map(|(a, b)| a * b).sum();
        *o = fold_lanes(acc) + tail;
    }
    out
}

/// In place x ← e^(x − shift); returns the new Σ x (a softmax row's normaliser).
#[inline(always)]
pub fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            c[l] = exp(c[l] - shift);
            acc[l] += c[l];
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        tail += *v;
    }
    fold_lanes(acc) + tail
}

/// Σ e^(x − shift), x unchanged.
#[inline(always)]
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; L];
    let chunks = x.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - shift)).sum();
    for c in chunks {
        for l in 0..L {
            acc[l] += exp(c[l] - shift);
        }
    }
    fold_lanes(acc) + tail
}

/// In place x ← k·x.
#[inline(always)]
pub fn scale(x: &mut [f32], k: f32) {
    x.iter_mut().for_each(|v| *v *= k);
}

/// Σ of the lanes as a tree: halves added pairwise (as a register would be split).
#[inline(always)]
fn fold_lanes(a: [f32; L]) -> f32 {
    let mut h = [0f32; L / 2];
    for l in 0..L / 2 {
        h[l] = a[l] + a[l + L / 2];
    }
    ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_row_dots_are_four_dots() {
        for n in [0, 5, 16, 64, 100, 768] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let rows: Vec<Vec<f32>> =
                (0..4).map(|r| (0..n + r).map(|i| (i as f32 * 0.11 + r as f32).cos()).collect()).collect();
            let got = dot4(&x, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for (g, row) in got.iter().zip(&rows) {
                let want: f64 = x.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((*g as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{n}: {g} vs {want}");
            }
        }
    }

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_normal_range() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.72 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(ulps(ours, libm));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        // And under the vectorised build of the same code.
        let v: Vec<f32> = (0..4096).map(|i| -80.0 + i as f32 * 0.0411).collect();
        let ours = vectorized(
            #[inline(always)]
            || v.iter().map(|&x| exp(x)).collect::<Vec<_>>(),
        );
        for (&x, &y) in v.iter().zip(&ours) {
            assert!(ulps(y, x.exp()) <= 2, "exp({x}) = {y}, libm {}", x.exp());
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!((exp(88.5) / 88.5f32.exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn reductions_match_sequential_ones() {
        for n in [0usize, 1, 7, 8, 9, 31, 256, 1001] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0).collect();
            // f32 sums of n terms: error relative to Σ|term|, not to the (cancelling) total.
            let close = |x: f32, terms: &mut dyn Iterator<Item = f64>| {
                let (total, mag) = terms.fold((0.0, 0.0), |(t, m), v| (t + v, m + v.abs()));
                (x as f64 - total).abs() <= 1e-6 * (1.0 + mag)
            };
            assert!(close(sum(&a), &mut a.iter().map(|&v| v as f64)), "sum n={n}");
            assert!(close(dot(&a, &b), &mut a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64)), "dot n={n}");
            assert_eq!(max(&a), a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), "max n={n}");
            let mut e = a.clone();
            let m = max(&a);
            let s = vectorized(
                #[inline(always)]
                || exp_sum(&mut e, m),
            );
            assert_eq!(
                s,
                vectorized(
                    #[inline(always)]
                    || sum_exp(&a, m)
                ),
                "sum_exp n={n}"
            );
            assert!(close(s, &mut a.iter().map(|&v| ((v - m) as f64).exp())), "exp_sum n={n}");
            for (&x, &y) in a.iter().zip(&e) {
                assert!(ulps(y, (x - m).exp()) <= 2);
            }
        }
    }
}
