//! Fused element-wise activations, forward and backward in one pass each, spread over the
//! rayon pool. The backward recomputes from the input rather than keeping intermediates.
//!
//! GELU-tanh: y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
//!   dy/dx = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)
//! GELU-erf (BERT): y = ½x(1 + erf(x/√2)),  dy/dx = ½(1 + erf(x/√2)) + x·φ(x), φ the normal pdf
//! SwiGLU: y = silu(g)·v, silu(g) = g·σ(g)
//!   dv = dy·silu(g),  dg = dy·v·σ(g)(1 + g(1 − σ(g)))

use super::cpu::{assume_init, slice, tensor, uninit, Read};
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// Fused GELU (tanh approximation), any shape.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu::Tanh)
}

/// Fused GELU (exact erf form), any shape.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu::Erf)
}

/// gelu(z + b) for z (..., C) and a bias b (C, any float dtype; used in f32): a linear layer's
/// epilogue as one op, where the composed path adds the bias in a pass of its own and keeps the
/// sum for GELU's backward; d b is the column sums (in f32) of d z. A GPU's kernel forms the
/// sum in f32; on the CPU (f32) the sum, then the fused GELU.
pub fn bias_gelu(z: &Tensor, b: &Tensor, form: Gelu) -> Result<Tensor> {
    z.contiguous()?.apply_op2(&b.to_dtype(candle_core::DType::F32)?.contiguous()?, BiasGelu(form))
}

/// Fused silu(gate) · up; gate and up of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// The two GELU forms share one kernel; only the scalar function differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// The tanh approximation (GPT-2's `gelu_new`).
    Tanh,
    /// The exact erf form (BERT's `gelu`).
    Erf,
}

pub(super) struct SwiGlu;

/// tanh through one `exp`: 1 − 2/(e^{2u} + 1). libm's `tanhf` (via `expm1f`) was 13% of a
/// bench-gpt step; this is exact at ±∞ and within ~1e-7 absolute elsewhere (GELU adds it to
/// 1, so the absolute error is what matters), and with the inlined exp the loop vectorises.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (vmath::exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_C * x * x)))
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_C * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the standard normal density's constant.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf from candle (the one its reference `gelu_erf` uses), so both
/// paths agree to rounding.
#[inline]
fn erf(x: f32) -> f32 {
    candle_core::cpu::erf::erf_f32(x)
}

impl Gelu {
    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        match self {
            Gelu::Tanh => gelu(x),
            Gelu::Erf => 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)),
        }
    }

    #[inline(always)]
    fn grad(self, x: f32) -> f32 {
        match self {
            Gelu::Tanh => gelu_grad(x),
            Gelu::Erf => 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * vmath::exp(-0.5 * x * x),
        }
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + vmath::exp(-x))
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        match self {
            Gelu::Tanh => "lmforge-gelu-tanh",
            Gelu::Erf => "lmforge-gelu-erf",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        Ok((CpuStorage::F32(self.forward_slice(slice(s, l, self.name())?)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::activation::launch("gelu_fwd", &[(s, l)], 1, Some(self.erf_flag()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dy = dy.contiguous()?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let grad = super::cuda::activation::Grad { kernel: "gelu_bwd", outputs: 1, flag: Some(self.erf_flag()) };
            return Ok(Some(x.apply_op2_no_bwd(&dy, &grad)?));
        }
        let (xr, dyr) = (Read::new(x, self.name())?, Read::new(&dy, self.name())?);
        Ok(Some(tensor(self.backward_slice(xr.f32()?, dyr.f32()?), x.dims())?))
    }
}

/// [`bias_gelu`]'s op over (z, b).
pub(super) struct BiasGelu(pub Gelu);

/// z + b per row, on the CPU.
fn add_bias(z: &[f32], b: &[f32]) -> Vec<f32> {
    let mut s = z.to_vec();
    s.par_chunks_mut(b.len().max(1) * 64).for_each(|rows| {
        rows.chunks_mut(b.len().max(1)).for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b))
    });
    s
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "lmforge-bias-gelu"
    }

    fn cpu_fwd(&self, zs: &CpuStorage, zl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let (z, b) = (slice(zs, zl, self.name())?, slice(bs, bl, self.name())?);
        if zl.dims().last() != Some(&b.len()) {
            bail!("{}: z {:?} does not end in the bias's {} columns", self.name(), zl.dims(), b.len());
        }
        Ok((CpuStorage::F32(self.0.forward_slice(&add_bias(z, b))), zl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        zs: &candle_core::CudaStorage,
        zl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::activation::bias_gelu((zs, zl), (bs, bl), None, self.0 == Gelu::Erf)
    }

    fn bwd(&self, z: &Tensor, b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dy = dy.contiguous()?;
        let dz = self.input_grad(z, b, &dy)?;
        let c = b.elem_count();
        let db = super::linear::bias_grad_of(&dz.reshape((dz.elem_count() / c.max(1), c))?)?;
        Ok((Some(dz), Some(db.reshape(b.dims())?)))
    }
}

impl BiasGelu {
    /// dy·gelu'(z + b).
    fn input_grad(&self, z: &Tensor, b: &Tensor, dy: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if z.device().is_cuda() {
            return z.apply_op3_no_bwd(b, dy, &BiasGeluGrad(self.0));
        }
        let (zr, br, dyr) = (Read::new(z, self.name())?, Read::new(b, self.name())?, Read::new(dy, self.name())?);
        tensor(self.0.backward_slice(&add_bias(zr.f32()?, br.f32()?), dyr.f32()?), z.dims())
    }
}

/// [`bias_gelu`]'s backward kernel over (z, b, dy) on a GPU: d z.
#[cfg(feature = "cuda")]
struct BiasGeluGrad(Gelu);

#[cfg(feature = "cuda")]
impl candle_core::CustomOp3 for BiasGeluGrad {
    fn name(&self) -> &'static str {
        "lmforge-bias-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU backward is BiasGelu's)", self.name())
    }

    fn cuda_fwd(
        &self,
        zs: &candle_core::CudaStorage,
        zl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
        dys: &candle_core::CudaStorage,
        dyl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::activation::bias_gelu((zs, zl), (bs, bl), Some((dys, dyl)), self.0 == Gelu::Erf)
    }
}

impl Gelu {
    /// The CUDA kernels' form argument.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn erf_flag(self) -> i32 {
        i32::from(self == Gelu::Erf)
    }

    /// gelu(x), element-wise over the rayon pool (also the fused linear's epilogue).
    pub(super) fn forward_slice(self, x: &[f32]) -> Vec<f32> {
        let mut y = uninit(x.len());
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            // One loop per form: a `match` inside would keep the loop from vectorising.
            vectorized(
                #[inline(always)]
                || match self {
                    Gelu::Tanh => y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(Gelu::Tanh.value(x));
                    }),
                    Gelu::Erf => y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(Gelu::Erf.value(x));
                    }),
                },
            )
        });
        // SAFETY: the chunks cover y, and each loop writes its whole chunk.
        unsafe { assume_init(y) }
    }

    /// dy ⊙ gelu'(x).
    pub(super) fn backward_slice(self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), dy.len(), "gelu: x and dy lengths");
        let mut dx = uninit(x.len());
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((dx, x), dy)| {
            vectorized(
                #[inline(always)]
                || match self {
                    Gelu::Tanh => dx.iter_mut().zip(x).zip(dy).for_each(|((dx, &x), &dy)| {
                        dx.write(dy * Gelu::Tanh.grad(x));
                    }),
                    Gelu::Erf => dx.iter_mut().zip(x).zip(dy).for_each(|((dx, &x), &dy)| {
                        dx.write(dy * Gelu::Erf.grad(x));
                    }),
                },
            )
        });
        // SAFETY: the chunks cover dx (x and dy have its length), each loop writes its chunk.
        unsafe { assume_init(dx) }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "lmforge-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        let (g, u) = (slice(gs, gl, self.name())?, slice(us, ul, self.name())?);
        Ok((CpuStorage::F32(swiglu_forward_slice(g, u)), gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        us: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::activation::launch("swiglu_fwd", &[(gs, gl), (us, ul)], 1, None)
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dy = dy.contiguous()?;
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            let grad = super::cuda::activation::Grad { kernel: "swiglu_bwd", outputs: 2, flag: None };
            let both = g.apply_op3_no_bwd(u, &dy, &grad)?;
            return Ok((Some(both.get(0)?), Some(both.get(1)?)));
        }
        let (gr, ur, dyr) = (Read::new(g, self.name())?, Read::new(u, self.name())?, Read::new(&dy, self.name())?);
        let (dg, du) = swiglu_backward_slice(gr.f32()?, ur.f32()?, dyr.f32()?);
        Ok((Some(tensor(dg, g.dims())?), Some(tensor(du, u.dims())?)))
    }
}

/// silu(g)·u, element-wise over the rayon pool (also the fused gate/up projection's epilogue).
pub(super) fn swiglu_forward_slice(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "swiglu: gate and up lengths");
    let mut y = uninit(g.len());
    y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((y, g), u)| {
        vectorized(
            #[inline(always)]
            || {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    y.write(g * sigmoid(g) * u);
                }
            },
        )
    });
    // SAFETY: the chunks cover y (g and u have its length), each loop writes its chunk.
    unsafe { assume_init(y) }
}

/// (d gate, d up) for dy of silu(g)·u.
pub(super) fn swiglu_backward_slice(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(g.len() == u.len() && g.len() == dy.len(), "swiglu: gate, up and dy lengths");
    let (mut dg, mut du) = (uninit(g.len()), uninit(g.len()));
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .zip(u.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(((dg, du), g), (u, dy))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
                        let s = sigmoid(g);
                        du.write(dy * g * s);
                        dg.write(dy * u * s * (1.0 + g * (1.0 - s)));
                    }
                },
            )
        });
    // SAFETY: the chunks cover dg and du (all four lengths are equal), each loop writes both.
    unsafe { (assume_init(dg), assume_init(du)) }
}

/// Fused rotary embedding in the rotate-half layout for x (B, T, n·D) at positions
/// offset..offset+T: y_j = x_j·cos_j + r_j·sin_j with r = (−x₂, x₁) per head; `cos` and `sin`
/// are the (context, D) tables. The backward applies the transposed rotation. One pass each
/// way, where the composed rotation keeps four temporaries of x's size.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, n_head: usize, offset: usize) -> Result<Tensor> {
    let (_, t, w) = x.dims3()?;
    let d = w / n_head.max(1);
    if n_head == 0 || w % n_head != 0 || d % 2 != 0 || cos.dims() != sin.dims() || cos.dim(1)? != d {
        bail!("rope: x {:?} with {n_head} heads does not fit tables {:?}", x.dims(), cos.dims());
    }
    x.contiguous()?.apply_op1(Rope::new(cos, sin, offset, t, d)?)
}

/// The T positions' (T, D) tables on the host, row-major, and the rotation the CPU kernels
/// apply with them (this op's and the fused sublayers').
pub(super) struct HostRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    d: usize,
}

impl HostRope {
    /// Rows offset..offset+T of the (context, D) tables.
    pub fn new(cos: &Tensor, sin: &Tensor, offset: usize, t: usize, d: usize) -> Result<Self> {
        let table = |m: &Tensor| -> Result<Vec<f32>> { rows(m, offset, t)?.flatten_all()?.to_vec1::<f32>() };
        Ok(HostRope { cos: table(cos)?, sin: table(sin)?, d })
    }

    /// One token's heads: `transposed` applies the inverse rotation (the backward).
    fn rotate(&self, x: &[f32], y: &mut [f32], pos: usize, transposed: bool) {
        let (d, h) = (self.d, self.d / 2);
        let (cos, sin) = (&self.cos[pos * d..(pos + 1) * d], &self.sin[pos * d..(pos + 1) * d]);
        for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            for j in 0..h {
                let (a, b) = (x[j], x[j + h]);
                if transposed {
                    // x_j feeds y_j (cos_j) and y_{j+h} (sin_{j+h}); x_{j+h} feeds y_{j+h} and −y_j.
                    y[j] = a * cos[j] + b * sin[j + h];
                    y[j + h] = b * cos[j + h] - a * sin[j];
                } else {
                    y[j] = a * cos[j] - b * sin[j];
                    y[j + h] = b * cos[j + h] + a * sin[j + h];
                }
            }
        }
    }

    /// The rotation of x (B, T, W = heads·D) given by `dims`; `transposed`: its inverse.
    pub fn apply(&self, x: &[f32], dims: &[usize], transposed: bool) -> Vec<f32> {
        let (t, w) = (dims[1], dims[2]);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(w).zip(x.par_chunks(w)).enumerate().for_each(|(row, (y, x))| {
            self.rotate(x, y, row % t, transposed);
        });
        y
    }
}

/// Rows offset..offset+T of a (context, D) table, f32 and contiguous.
fn rows(m: &Tensor, offset: usize, t: usize) -> Result<Tensor> {
    m.narrow(0, offset, t)?.to_dtype(candle_core::DType::F32)?.contiguous()
}

/// The RoPE op, its tables where x lives: on the host for the CPU kernel, or as (T, D) f32
/// tensors on the GPU for the CUDA kernel.
pub(super) enum Rope {
    Host(HostRope),
    #[cfg(feature = "cuda")]
    Device {
        cos: Tensor,
        sin: Tensor,
        d: usize,
    },
}

impl Rope {
    /// For rows offset..offset+T of the (context, D) tables.
    pub(super) fn new(cos: &Tensor, sin: &Tensor, offset: usize, t: usize, d: usize) -> Result<Self> {
        if cos.device().is_cpu() {
            return Ok(Rope::Host(HostRope::new(cos, sin, offset, t, d)?));
        }
        #[cfg(feature = "cuda")]
        return Ok(Rope::Device { cos: rows(cos, offset, t)?, sin: rows(sin, offset, t)?, d });
        #[cfg(not(feature = "cuda"))]
        bail!("lmforge-rope: no kernel for tables on {:?}", cos.device())
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "lmforge-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Forward);
        // (Without CUDA the tables are always on the host.)
        #[cfg_attr(not(feature = "cuda"), allow(irrefutable_let_patterns))]
        let Rope::Host(r) = self
        else {
            bail!("{}: x is on the CPU, the tables are not", self.name())
        };
        let x = slice(s, l, self.name())?;
        Ok((CpuStorage::F32(r.apply(x, l.dims(), false)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.rotate_on_device(s, l, false)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dy = dy.contiguous()?;
        match self {
            Rope::Host(r) => {
                let read = Read::new(&dy, self.name())?;
                Ok(Some(tensor(r.apply(read.f32()?, x.dims(), true), x.dims())?))
            }
            #[cfg(feature = "cuda")]
            Rope::Device { .. } => Ok(Some(dy.apply_op1_no_bwd(&RopeTransposed(self))?)),
        }
    }
}

/// On a GPU: the rotation by activation.cu's kernel, and its inverse as an op for the backward.
#[cfg(feature = "cuda")]
impl Rope {
    fn rotate_on_device(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        transposed: bool,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Rope::Device { cos, sin, d } = self else { bail!("lmforge-rope: the tables are not on the GPU") };
        let (cs, cl) = cos.storage_and_layout();
        let (ss, sl) = sin.storage_and_layout();
        let (candle_core::Storage::Cuda(cs), candle_core::Storage::Cuda(ss)) = (&*cs, &*ss) else {
            bail!("lmforge-rope: the tables are not on the GPU")
        };
        super::cuda::activation::rope((s, l), (cs, cl), (ss, sl), *d, transposed)
    }
}

#[cfg(feature = "cuda")]
struct RopeTransposed<'a>(&'a Rope);

#[cfg(feature = "cuda")]
impl CustomOp1 for RopeTransposed<'_> {
    fn name(&self) -> &'static str {
        "lmforge-rope-transposed"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only", self.name())
    }

    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.0.rotate_on_device(s, l, true)
    }
}
