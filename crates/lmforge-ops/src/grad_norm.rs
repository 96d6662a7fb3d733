//! The element-wise pieces of global-norm gradient clipping over the rayon pool: Σ x² of each
//! gradient and the scaled copy. Candle's `sqr` + `sum_all` and its scalar multiply each run
//! on one thread (and `sqr` allocates a gradient-sized temporary): half the cores idled
//! through this phase of a bench step.

use super::cpu::{assume_init, slice, uninit, Read};
use super::vmath::{self, vectorized};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Σ x² over a contiguous f32 CPU tensor: per-chunk lane sums in f32, added in chunk order in
/// f64 (the same result however the chunks are scheduled).
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    let x = x.contiguous()?;
    let r = Read::new(&x, "sum_squares")?;
    let parts: Vec<f64> = r
        .f32()?
        .par_chunks(CHUNK)
        .map(|c| {
            vectorized(
                #[inline(always)]
                || vmath::dot(c, c) as f64,
            )
        })
        .collect();
    Ok(parts.iter().sum())
}

/// x · s as a new tensor (a gradient leaves the graph, so no backward).
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Scale(s as f32))
}

struct Scale(f32);

impl CustomOp1 for Scale {
    fn name(&self) -> &'static str {
        "lmforge-scale"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut y = uninit(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| {
                y.write(x * self.0);
            })
        });
        // SAFETY: the chunks of y and x pair up one to one and each loop writes its chunk.
        Ok((CpuStorage::F32(unsafe { assume_init(y) }), l.shape().clone()))
    }
}
