//! Duplicate removal. Exact: a 128-bit XXH3 hash of the normalised text. Near: MinHash
//! signatures over lower-cased word n-gram shingles (Broder 1997), indexed by LSH banding; a
//! candidate that shares a band is confirmed only when the signatures agree on at least
//! `threshold` of their slots (the MinHash estimate of Jaccard similarity), so distinct
//! documents are not merged by a chance band collision. Documents are indexed in input order
//! and the first of each cluster survives, so the result is deterministic.
//!
//! The permutations follow datasketch: h_i(x) = (a_i·x + b_i) mod (2^61 − 1), truncated to 32
//! bits, over a 32-bit hash x of each shingle. The band/row split minimises the equally
//! weighted false-positive and false-negative areas of the LSH S-curve, as datasketch's
//! `_optimal_param` does.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, xxh3_64_with_seed};

const MERSENNE_61: u64 = (1 << 61) - 1;

pub fn exact_hash(text: &str) -> u128 {
    xxh3_128(text.as_bytes())
}

/// MinHash parameters and permutations.
pub struct MinHasher {
    pub ngram: usize,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    pub fn new(num_perm: usize, ngram: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = (0..num_perm).map(|_| rng.random_range(1..MERSENNE_61)).collect();
        let b = (0..num_perm).map(|_| rng.random_range(0..MERSENNE_61)).collect();
        Self { ngram: ngram.max(1), a, b }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// The signature: for each permutation, the minimum permuted shingle hash.
    pub fn signature(&self, text: &str) -> Vec<u32> {
        let words: Vec<String> = text.split_whitespace().map(|w| w.to_lowercase()).collect();
        let mut shingles: HashSet<u32> = HashSet::new();
        if words.len() <= self.ngram {
            shingles.insert(xxh3_64(words.join(" ").as_bytes()) as u32);
        } else {
            let mut buf = String::new();
            for win in words.windows(self.ngram) {
                buf.clear();
                for (i, w) in win.iter().enumerate() {
                    if i > 0 {
                        buf.push(' ');
                    }
                    buf.push_str(w);
                }
                shingles.insert(xxh3_64(buf.as_bytes()) as u32);
            }
        }
        let mut sig = vec![u32::MAX; self.a.len()];
        for &x in &shingles {
            for (s, (a, b)) in sig.iter_mut().zip(self.a.iter().zip(&self.b)) {
                let h = (mod_mersenne((*a as u128) * (x as u128) + *b as u128) & 0xffff_ffff) as u32;
                if h < *s {
                    *s = h;
                }
            }
        }
        sig
    }
}

/// x mod 2^61 − 1 for x < 2^125, by folding the high bits (2^61 ≡ 1).
#[inline]
fn mod_mersenne(x: u128) -> u64 {
    let m = MERSENNE_61 as u128;
    let folded = (x & m) + (x >> 61);
    let folded = (folded & m) + (folded >> 61);
    (if folded >= m { folded - m } else { folded }) as u64
}

/// Fraction of equal slots: the MinHash estimate of Jaccard similarity.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// (bands, rows) minimising 0.5·FP + 0.5·FN area for `threshold` with `num_perm` slots.
pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
    let integrate = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        let n = 200;
        let h = (hi - lo) / n as f64;
        (0..n).map(|i| f(lo + (i as f64 + 0.5) * h)).sum::<f64>() * h
    };
    let mut best = (1, num_perm);
    let mut best_err = f64::INFINITY;
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let p = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            let fp = integrate(&p, 0.0, threshold);
            let fneg = integrate(&|s| 1.0 - p(s), threshold, 1.0);
            let err = 0.5 * fp + 0.5 * fneg;
            if err < best_err {
                best_err = err;
                best = (b, r);
            }
        }
    }
    best
}

/// The LSH index of kept documents.
pub struct LshIndex {
    bands: usize,
    rows: usize,
    threshold: f64,
    tables: Vec<HashMap<u64, u32>>,
    /// Signatures of kept documents, flat: doc k at [k·num_perm, (k+1)·num_perm).
    signatures: Vec<u32>,
    num_perm: usize,
}

impl LshIndex {
    pub fn new(num_perm: usize, threshold: f64, bands: usize) -> Self {
        let (bands, rows) = if bands == 0 { optimal_bands(threshold, num_perm) } else { (bands, num_perm / bands) };
        Self {
            bands,
            rows,
            threshold,
            tables: (0..bands).map(|_| HashMap::new()).collect(),
            signatures: Vec::new(),
            num_perm,
        }
    }

    pub fn bands_rows(&self) -> (usize, usize) {
        (self.bands, self.rows)
    }

    fn band_key(&self, sig: &[u32], band: usize) -> u64 {
        let slice = &sig[band * self.rows..(band + 1) * self.rows];
        let bytes: Vec<u8> = slice.iter().flat_map(|v| v.to_le_bytes()).collect();
        xxh3_64_with_seed(&bytes, band as u64)
    }

    /// If a kept document is a near duplicate of `sig`, its id; otherwise `sig` is kept (and
    /// indexed) and None is returned.
    pub fn check_and_insert(&mut self, sig: &[u32]) -> Option<u32> {
        let keys: Vec<u64> = (0..self.bands).map(|b| self.band_key(sig, b)).collect();
        let mut tried = HashSet::new();
        for (b, k) in keys.iter().enumerate() {
            if let Some(&id) = self.tables[b].get(k) {
                if tried.insert(id) {
                    let other = &self.signatures[id as usize * self.num_perm..(id as usize + 1) * self.num_perm];
                    if estimated_jaccard(sig, other) >= self.threshold {
                        return Some(id);
                    }
                }
            }
        }
        let id = (self.signatures.len() / self.num_perm) as u32;
        self.signatures.extend_from_slice(sig);
        for (b, k) in keys.into_iter().enumerate() {
            self.tables[b].entry(k).or_insert(id);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mersenne_reduction_matches_naive() {
        for x in [0u128, 1, MERSENNE_61 as u128, (MERSENNE_61 as u128) * 3 + 7, u64::MAX as u128 * u32::MAX as u128] {
            assert_eq!(mod_mersenne(x) as u128, x % MERSENNE_61 as u128);
        }
    }

    #[test]
    fn minhash_estimates_jaccard() {
        let m = MinHasher::new(256, 3, 1);
        let base: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let a = base.join(" ");
        let mut changed = base.clone();
        changed[100] = "zzz".into();
        let b = changed.join(" ");
        // 198 shingles each; one change touches 3 → J = 195/201 ≈ 0.97.
        let j = estimated_jaccard(&m.signature(&a), &m.signature(&b));
        assert!(j > 0.9, "{j}");
        let c: String = (0..200).map(|i| format!("v{i} ")).collect();
        assert!(estimated_jaccard(&m.signature(&a), &m.signature(&c)) < 0.1);
    }

    #[test]
    fn optimal_bands_fit_the_permutations() {
        let (b, r) = optimal_bands(0.8, 128);
        assert!(b * r <= 128 && b > 1 && r > 1, "{b}x{r}");
        // The S-curve's midpoint (1/b)^(1/r) lies near the threshold.
        let mid = (1.0 / b as f64).powf(1.0 / r as f64);
        assert!((0.65..0.9).contains(&mid), "{mid}");
    }
}
