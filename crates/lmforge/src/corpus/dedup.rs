//! Duplicate removal. Exact: a 128-bit XXH3 hash of the normalised text. Near: MinHash
//! signatures over lower-cased n-gram shingles of script-aware units (Broder 1997; words, and
//! single characters of Chinese / Japanese: [`super::units`]), indexed by LSH banding; a
//! candidate that shares a band is confirmed only when the signatures agree on at least
//! `threshold` of their slots (the MinHash estimate of Jaccard similarity), so distinct
//! documents are not merged by a chance band collision. Documents are indexed in input order
//! and the first of each cluster survives, so the result is deterministic.
//!
//! Each permutation is a multiply-add-shift hash h_i(x) = (a_i·x + b_i) >> 32 of a 32-bit
//! shingle hash x (datasketch uses (a·x + b) mod (2^61 − 1); both are universal families, this
//! one needs no 128-bit arithmetic). The band/row split minimises the equally weighted
//! false-positive and false-negative areas of the LSH S-curve, as datasketch's
//! `_optimal_param` does.

use super::units::{units, Unit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, xxh3_64_with_seed};

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
        let a = (0..num_perm).map(|_| rng.random::<u64>() | 1).collect();
        let b = (0..num_perm).map(|_| rng.random::<u64>()).collect();
        Self { ngram: ngram.max(1), a, b }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// The signature: for each permutation, the minimum permuted shingle hash.
    pub fn signature(&self, text: &str) -> Vec<u32> {
        // Hash each lower-cased unit once (a word, or one Han / kana character: `units`), then
        // combine n consecutive unit hashes into a shingle hash: no string is built per shingle.
        let words: Vec<u64> = units(text)
            .map(|u| match u {
                Unit::Word(w) if w.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) => {
                    xxh3_64(w.to_lowercase().as_bytes())
                }
                Unit::Word(w) => xxh3_64(w.as_bytes()),
                Unit::Char(c) => xxh3_64(c.encode_utf8(&mut [0; 4]).as_bytes()),
            })
            .collect();
        let combine = |win: &[u64]| {
            let mut h = 0u64;
            for &x in win {
                h = (h.rotate_left(27) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            (h >> 32) as u32
        };
        let mut shingles: HashSet<u32> = HashSet::new();
        if words.len() <= self.ngram {
            shingles.insert(combine(&words));
        } else {
            shingles.extend(words.windows(self.ngram).map(combine));
        }
        let mut sig = vec![u32::MAX; self.a.len()];
        for &x in &shingles {
            let x = x as u64;
            // Multiply-add-shift hashing (Dietzfelbinger 1996): strongly universal from 32-bit
            // keys to 32-bit values, and a plain u64 loop the compiler vectorises across
            // permutations (datasketch's mod-(2^61 − 1) family needs 128-bit products).
            for (s, (a, b)) in sig.iter_mut().zip(self.a.iter().zip(&self.b)) {
                let h = (a.wrapping_mul(x).wrapping_add(*b) >> 32) as u32;
                *s = (*s).min(h);
            }
        }
        sig
    }
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
