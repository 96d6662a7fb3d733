//! Attention for continuous batching on the CPU: the new tokens of several sequences, each at
//! its own positions with its own keys and values, in one pass. Each sequence's cache is plain
//! host memory (rows of K·D floats per position, reserved for its whole length up front); a
//! step appends the new keys and values and computes every query row against its own sequence
//! — causal within the new tokens — in parallel over sequences. A handful of candle ops per
//! sequence per layer would cost more than the arithmetic at small batch sizes; this costs one
//! copy of q, k and v to the host and back per layer.
//!
//! Layouts (row-major): q (N, H, D), k and v (N, K, D) for the N new tokens in piece order;
//! the output (N, H, D). RoPE, when the model has it, is the rotate-half form of `nn::Rope`,
//! from host copies of its tables.

use rayon::prelude::*;

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
    // Split the output by piece so each task writes only its own rows.
    let mut tasks: Vec<(&PieceKv, &mut [f32])> = Vec::with_capacity(pieces.len());
    let mut rest = out.as_mut_slice();
    for p in pieces.iter() {
        let (mine, tail) = rest.split_at_mut(p.range.len() * qrow);
        tasks.push((p, mine));
        rest = tail;
    }
    let q: &[f32] = q;
    tasks.into_par_iter().for_each(|(p, out)| {
        let mut scores = Vec::new();
        for (i, t) in p.range.clone().enumerate() {
            let visible = p.start + i + 1;
            for head in 0..h {
                let qv = &q[t * qrow + head * d..t * qrow + (head + 1) * d];
                let kvh = head / group;
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for pos in 0..visible {
                    let kv = &p.kv.k[pos * krow + kvh * d..pos * krow + (kvh + 1) * d];
                    let s = dot(qv, kv) * scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let mut z = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    z += *s;
                }
                let o = &mut out[i * qrow + head * d..i * qrow + (head + 1) * d];
                for (pos, s) in scores.iter().enumerate() {
                    let w = s / z;
                    let vv = &p.kv.v[pos * krow + kvh * d..pos * krow + (kvh + 1) * d];
                    for (acc, x) in o.iter_mut().zip(vv) {
                        *acc += w * x;
                    }
                }
            }
        }
    });
    out
}

/// a · b with eight partial sums, so the compiler vectorizes it (a plain `sum` of products must
/// keep the sequential order of float additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
