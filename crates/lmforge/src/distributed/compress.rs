//! Gradient compression for the reductions between processes (`distributed.compress`).
//!
//! **bf16**: gradients travel as bfloat16 and are summed in fp32, as PyTorch DDP's
//! `bf16_compress_hook` does. An all-reduce is an all-to-all of bf16 chunks (rank r receives
//! everyone's chunk r and sums it in fp32, in rank order) followed by an all-gather of the
//! summed chunks in bf16: half the bytes of an fp32 ring all-reduce. Every rank ends with the
//! same (rounded) values. No error feedback: bf16's relative rounding error is 2^-9, unbiased.
//!
//! **PowerSGD** (Vogels, Karimireddy and Jaggi, NeurIPS 2019; PyTorch's `powerSGD_hook`): a
//! gradient matrix M (n × m) is sent as two thin factors. With Q (m × r) kept from the last step
//! (warm start): P = Σ_ranks (M_i + e_i) Q, orthonormalised; Q = Σ_ranks (M_i + e_i)ᵀ P; the
//! gradient used is P Qᵀ, and each rank keeps its error e_i = M_i + e_i − P Qᵀ / world (error
//! feedback: what compression dropped is sent later, so the sum of updates is unbiased).
//! Vectors, and matrices too small to gain (r (n + m) ≥ n m), travel uncompressed.

use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What the gradient reductions send (`distributed.compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// fp32, exact.
    #[default]
    None,
    /// bfloat16 on the wire, fp32 sums.
    Bf16,
    /// Low-rank factors with error feedback (`distributed.powersgd_rank`).
    PowerSgd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Bf16 => "bf16",
            Compression::PowerSgd => "powersgd",
        }
    }
}

/// `xs` as bf16 bit patterns, two to an `f32` word (MPI moves words; the last is padded).
pub fn pack_bf16(xs: &[f32]) -> Vec<f32> {
    xs.chunks(2)
        .map(|pair| {
            let lo = half::bf16::from_f32(pair[0]).to_bits() as u32;
            let hi = pair.get(1).map_or(0, |&x| half::bf16::from_f32(x).to_bits() as u32);
            f32::from_bits(lo | (hi << 16))
        })
        .collect()
}

/// Words needed for `n` packed bf16 values.
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// The first `n` bf16 values of `words`, widened to f32.
pub fn unpack_bf16(words: &[f32], n: usize) -> impl Iterator<Item = f32> + '_ {
    words
        .iter()
        .flat_map(|w| {
            let b = w.to_bits();
            [half::bf16::from_bits(b as u16).to_f32(), half::bf16::from_bits((b >> 16) as u16).to_f32()]
        })
        .take(n)
}

/// `(n, m)`: a parameter of shape `dims` seen as a matrix (first axis × the rest), when a rank-`r`
/// factorisation sends fewer values than the matrix itself.
pub fn low_rank_shape(dims: &[usize], r: usize) -> Option<(usize, usize)> {
    if dims.len() < 2 {
        return None;
    }
    let n = dims[0];
    let m: usize = dims[1..].iter().product();
    (r * (n + m) < n * m).then_some((n, m))
}

/// PowerSGD's state for one matrix on one rank.
pub struct PowerState {
    /// The right factor (m × r), shared by every rank (same seed, same reductions).
    pub q: Tensor,
    /// What compression has not yet sent of this rank's gradients (n × m).
    pub error: Tensor,
}

impl PowerState {
    /// Q drawn from N(0, 1) with a seed every rank derives alike from the parameter's name.
    pub fn new(name: &str, n: usize, m: usize, r: usize, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::nn::seed_for(0x9051_59d0, name));
        let q: Vec<f32> = (0..m * r).map(|_| StandardNormal.sample(&mut rng)).collect();
        Ok(Self {
            q: Tensor::from_vec(q, (m, r), device)?,
            error: Tensor::zeros((n, m), candle_core::DType::F32, device)?,
        })
    }
}

/// Orthonormalises the columns of `p` (n × r, row-major) in place by modified Gram–Schmidt in
/// f64. A column that is (numerically) in the span of the earlier ones becomes zero, so a zero
/// gradient stays zero.
pub fn orthonormalize_columns(p: &mut [f32], n: usize, r: usize) {
    for j in 0..r {
        for k in 0..j {
            let dot: f64 = (0..n).map(|i| p[i * r + j] as f64 * p[i * r + k] as f64).sum();
            for i in 0..n {
                p[i * r + j] -= (dot * p[i * r + k] as f64) as f32;
            }
        }
        let norm: f64 = (0..n).map(|i| (p[i * r + j] as f64).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        for i in 0..n {
            p[i * r + j] = (p[i * r + j] as f64 * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_packing_round_trips_to_bf16_precision() {
        let xs = [1.0f32, -2.5, 3.25159, 1e-3, 65504.0];
        let words = pack_bf16(&xs);
        assert_eq!(words.len(), packed_len(xs.len()));
        let back: Vec<f32> = unpack_bf16(&words, xs.len()).collect();
        assert_eq!(back.len(), xs.len());
        for (a, b) in xs.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
        }
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], -2.5);
    }

    #[test]
    fn only_matrices_that_gain_are_factorised() {
        assert_eq!(low_rank_shape(&[768], 4), None);
        assert_eq!(low_rank_shape(&[768, 2304], 4), Some((768, 2304)));
        assert_eq!(low_rank_shape(&[4, 4], 2), None, "2·8 = 16 is not fewer than 16");
        assert_eq!(low_rank_shape(&[2, 3, 4], 1), Some((2, 12)));
    }

    #[test]
    fn gram_schmidt_gives_orthonormal_columns_and_keeps_zero_columns_zero() {
        let (n, r) = (5, 3);
        let mut p: Vec<f32> = (0..n * r).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        orthonormalize_columns(&mut p, n, r);
        for a in 0..r {
            for b in 0..r {
                let dot: f32 = (0..n).map(|i| p[i * r + a] * p[i * r + b]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "({a},{b}) {dot}");
            }
        }
        let mut z = vec![0f32; 6];
        orthonormalize_columns(&mut z, 3, 2);
        assert!(z.iter().all(|&x| x == 0.0));
    }
}
