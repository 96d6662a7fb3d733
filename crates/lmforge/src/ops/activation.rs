//! Fused element-wise activations, forward and backward in one pass each, spread over the
//! rayon pool. The backward recomputes from the input rather than keeping intermediates.
//!
//! GELU-tanh: y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
//!   dy/dx = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)
//! SwiGLU: y = silu(g)·v, silu(g) = g·σ(g)
//!   dv = dy·silu(g),  dg = dy·v·σ(g)(1 + g(1 − σ(g)))

use super::cpu::{slice, tensor, Read};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// Fused GELU (tanh approximation), any shape.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh)
}

/// Fused silu(gate) · up; gate and up of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct GeluTanh;

struct SwiGlu;

#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_C * x * x)).tanh())
}

#[inline]
fn gelu_grad(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * x * (1.0 + GELU_C * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "lmforge-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu(x);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let (xr, dyr) = (Read::new(x, self.name())?, Read::new(&dy, self.name())?);
        let (xs, dys) = (xr.f32()?, dyr.f32()?);
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).zip(dys.par_chunks(CHUNK)).for_each(|((dx, x), dy)| {
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                *dx = dy * gelu_grad(x);
            }
        });
        Ok(Some(tensor(dx, x.dims())?))
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "lmforge-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(gs, gl, self.name())?, slice(us, ul, self.name())?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((y, g), u)| {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = g * sigmoid(g) * u;
            }
        });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (gr, ur, dyr) = (Read::new(g, self.name())?, Read::new(u, self.name())?, Read::new(&dy, self.name())?);
        let (gs, us, dys) = (gr.f32()?, ur.f32()?, dyr.f32()?);
        let mut dg = vec![0f32; gs.len()];
        let mut du = vec![0f32; gs.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .zip(us.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
            .for_each(|(((dg, du), g), (u, dy))| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    du[i] = dy[i] * g[i] * s;
                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        Ok((Some(tensor(dg, g.dims())?), Some(tensor(du, u.dims())?)))
    }
}
