//! Attention for continuous batching on the CPU: the new tokens of several sequences, each at
//! its own positions with its own keys and values, in one pass. Each sequence's cache is plain
//! host memory (rows of K·D floats per position, reserved for its whole length up front); a
//! step appends the new keys and values and computes every query row against its own sequence
//! — causal within the new tokens — in parallel over (token, head) pairs, so that one decoding
//! sequence uses every core too (on the pool `ops::workers` names). A handful of candle ops per
//! sequence per layer would cost more than the arithmetic at small batch sizes; this costs one
//! copy of q, k and v to the host and back per layer.
//!
//! Layouts (row-major): q (N, H, D), k and v (N, K, D) for the N new tokens in piece order;
//! the output (N, H, D). RoPE, when the model has it, is the rotate-half form of `nn::Rope`,
//! from host copies of its tables.

use crate::ops::vmath::{dot, dot4, exp_sum, vectorized};
use crate::ops::workers;

/// One layer's cached keys and values on the host: `len` positions of K·D floats each.
#[derive(Debug, Default)]
pub struct HostKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Host copies of the rotary tables: (context, D) cos and sin.
pub struct HostRope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub d: usize,
}

impl HostRope {
    /// Rotates `x` (n heads of D) of a token at position `pos` in place.
    fn apply(&self, x: &mut [f32], pos: usize) {
        let d = self.d;
        let (cos, sin) = (&self.cos[pos * d..(pos + 1) * d], &self.sin[pos * d..(pos + 1) * d]);
        for head in x.chunks_exact_mut(d) {
            let (x1, x2) = head.split_at_mut(d / 2);
            for i in 0..d / 2 {
                let (a, b) = (x1[i], x2[i]);
                // [x1, x2]·cos + [-x2, x1]·sin
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[i + d / 2] + a * sin[i + d / 2];
            }
        }
    }
}

/// The shape of a layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub h: usize,
    pub kh: usize,
    pub d: usize,
}

/// One piece: its tokens' range in the batch, its first position, its cache.
pub struct PieceKv<'a> {
    pub range: std::ops::Range<usize>,
    pub start: usize,
    pub kv: &'a mut HostKv,
}

/// Appends each piece's new keys and values to its cache and returns the attention output
/// (N, H, D) of every new query against its sequence's positions `0..=its own`.
pub fn attend(
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    pieces: &mut [PieceKv],
    shape: Heads,
    rope: Option<&HostRope>,
) -> Vec<f32> {
    let Heads { h, kh, d } = shape;
    let (qrow, krow) = (h * d, kh * d);
    if let Some(r) = rope {
        for p in pieces.iter() {
            for (i, t) in p.range.clone().enumerate() {
                r.apply(&mut q[t * qrow..(t + 1) * qrow], p.start + i);
                r.apply(&mut k[t * krow..(t + 1) * krow], p.start + i);
            }
        }
    }
    for p in pieces.iter_mut() {
        p.kv.k.extend_from_slice(&k[p.range.start * krow..p.range.end * krow]);
        p.kv.v.extend_from_slice(&v[p.range.start * krow..p.range.end * krow]);
    }
    let n = pieces.last().map_or(0, |p| p.range.end);
    let mut out = vec![0f32; n * qrow];
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kh;
    // The piece of each new token.
    let piece_of: Vec<usize> =
        pieces.iter().enumerate().flat_map(|(i, p)| std::iter::repeat_n(i, p.range.len())).collect();
    let (q, pieces): (&[f32], &[PieceKv]) = (q, pieces);
    // One task per (token, head): a single decoding sequence still spreads its heads over
    // every core.
    let attend_row = |scores: &mut Vec<f32>, row: usize, o: &mut [f32]| {
        let (t, head) = (row / h, row % h);
        let p = &pieces[piece_of[t]];
        let visible = p.start + (t - p.range.start) + 1;
        let qv = &q[t * qrow + head * d..t * qrow + (head + 1) * d];
        let kvh = head / group;
        vectorized(
            #[inline(always)]
            || {
                let key = |pos: usize| &p.kv.k[pos * krow + kvh * d..pos * krow + (kvh + 1) * d];
                scores.clear();
                // Four keys at a time: four independent chains, one pass over q.
                let mut pos = 0;
                while pos + 4 <= visible {
                    scores.extend(dot4(qv, [key(pos), key(pos + 1), key(pos + 2), key(pos + 3)]).map(|s| s * scale));
                    pos += 4;
                }
                scores.extend((pos..visible).map(|pos| dot(qv, key(pos)) * scale));
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let z = exp_sum(scores, max);
                for (pos, s) in scores.iter().enumerate() {
                    let w = s / z;
                    let vv = &p.kv.v[pos * krow + kvh * d..pos * krow + (kvh + 1) * d];
                    for (acc, x) in o.iter_mut().zip(vv) {
                        *acc += w * x;
                    }
                }
            },
        )
    };
    if d == 0 {
        return out;
    }
    let out_at = out.as_mut_ptr() as usize;
    workers::for_each_range(n * h, |rows| {
        let mut scores = Vec::new();
        for row in rows {
            // SAFETY: rows are below n·h and write disjoint d-float slices of `out`, which
            // outlives the loop.
            let o = unsafe { std::slice::from_raw_parts_mut((out_at as *mut f32).add(row * d), d) };
            attend_row(&mut scores, row, o);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// softmax(q·Kᵀ/√D)·V for one query row over `keys` / `values` rows (K·D each), in f64.
    fn reference(q: &[f32], keys: &[f32], values: &[f32], kvh: usize, kh: usize, d: usize) -> Vec<f64> {
        let n = keys.len() / (kh * d);
        let row = |t: &[f32], pos: usize| t[pos * kh * d + kvh * d..pos * kh * d + (kvh + 1) * d].to_vec();
        let s: Vec<f64> = (0..n)
            .map(|p| row(keys, p).iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt())
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..d).map(|c| (0..n).map(|p| e[p] / z * row(values, p)[c] as f64).sum()).collect()
    }

    #[test]
    fn each_query_attends_causally_to_its_own_sequence_with_grouped_heads() {
        let (h, kh, d) = (4, 2, 8);
        let value = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0) - 1.0;
        // Sequence A: 2 cached positions, then 1 new token (a decode step); sequence B: a
        // prefill of 3 new tokens.
        let (cached_k, cached_v): (Vec<f32>, Vec<f32>) =
            ((0..2 * kh * d).map(|i| value(i, 1)).collect(), (0..2 * kh * d).map(|i| value(i, 2)).collect());
        let mut a = HostKv { k: cached_k.clone(), v: cached_v.clone() };
        let mut b = HostKv::default();
        let n = 4;
        let q: Vec<f32> = (0..n * h * d).map(|i| value(i, 3)).collect();
        let k: Vec<f32> = (0..n * kh * d).map(|i| value(i, 4)).collect();
        let v: Vec<f32> = (0..n * kh * d).map(|i| value(i, 5)).collect();
        let mut pieces = [PieceKv { range: 0..1, start: 2, kv: &mut a }, PieceKv { range: 1..4, start: 0, kv: &mut b }];
        let out = attend(&mut q.clone(), &mut k.clone(), &v, &mut pieces, Heads { h, kh, d }, None);
        // The same rows on candle's pool (quantized decoding), on fresh caches.
        let (mut a2, mut b2) = (HostKv { k: cached_k.clone(), v: cached_v.clone() }, HostKv::default());
        let mut pieces2 =
            [PieceKv { range: 0..1, start: 2, kv: &mut a2 }, PieceKv { range: 1..4, start: 0, kv: &mut b2 }];
        crate::ops::workers::use_candle_pool(true);
        let on_candle = attend(&mut q.clone(), &mut k.clone(), &v, &mut pieces2, Heads { h, kh, d }, None);
        crate::ops::workers::use_candle_pool(false);
        assert_eq!(out, on_candle, "each row is one thread's, in the same order, on either pool");
        let row_kv = kh * d;
        let a_keys = [cached_k.as_slice(), &k[..row_kv]].concat();
        let a_values = [cached_v.as_slice(), &v[..row_kv]].concat();
        for t in 0..n {
            for head in 0..h {
                let qv = &q[(t * h + head) * d..(t * h + head + 1) * d];
                let want = if t == 0 {
                    reference(qv, &a_keys, &a_values, head / 2, kh, d)
                } else {
                    // Token t of B sees B's positions 0..=t-1.
                    reference(qv, &k[row_kv..(t + 1) * row_kv], &v[row_kv..(t + 1) * row_kv], head / 2, kh, d)
                };
                let got = &out[(t * h + head) * d..(t * h + head + 1) * d];
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-5, "token {t} head {head}: {g} vs {w}");
                }
            }
        }
        // The new keys and values were appended to each sequence's cache.
        assert_eq!(a.k.len(), 3 * row_kv);
        assert_eq!(b.v, v[row_kv..].to_vec());
    }
}
