//! Fused linear layer y = x·W (+ b), forward and backward through `gemm` directly: the bias is
//! written into y before the product accumulates onto it, and W is read in either checkpoint
//! layout through strides. Against candle's `matmul` + `broadcast_add`, that drops the
//! pre-bias product (an (N, out) tensor kept per layer), the bias node's backward (a zeros
//! tensor, an add and a strided column sum) and, for (out, in) weights, the transpose node.
//!
//! W as the (in, out) matrix the product uses: Conv1D stores it so (row stride out); nn.Linear
//! stores (out, in), read transposed (row stride 1, column stride in).
//!   dx = dy·Wᵀ,  dW = xᵀ·dy (Conv1D) or dyᵀ·x (nn.Linear),  db = Σ_rows dy

use super::activation::{swiglu_backward_slice, swiglu_forward_slice, Gelu};
use super::cpu::{assume_init, gemm_into as mm, gemm_new, rows_per_task, slice, sum_in_order, tensor, uninit, Read};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Fused x (..., in) · W (+ b); `w_is_out_in` for nn.Linear's (out, in) storage.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, w_is_out_in: bool) -> Result<Tensor> {
    apply(x, w, b, Linear { out_in: w_is_out_in, gelu: None, pre: OnceLock::new() })
}

/// Fused gelu(x·W (+ b)): one graph node, so the pre-activation's gradient never becomes a
/// tensor of its own (candle would add it into a fresh zeros tensor); the op keeps the
/// pre-activation for its backward, as the separate GELU node did.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, w_is_out_in: bool, form: Gelu) -> Result<Tensor> {
    apply(x, w, b, Linear { out_in: w_is_out_in, gelu: Some(form), pre: OnceLock::new() })
}

/// Fused silu(x·W_gate) ⊙ (x·W_up), Llama's MLP before `down_proj` (no biases, both weights in
/// one layout): one graph node where the separate form has three, so the two projections'
/// outputs get no gradient tensors of their own and x's gradient arrives once, not twice.
pub fn linear_swiglu(x: &Tensor, w_gate: &Tensor, w_up: &Tensor, w_is_out_in: bool) -> Result<Tensor> {
    if w_gate.dims() != w_up.dims() {
        bail!("linear_swiglu: gate {:?} and up {:?} weights differ in shape", w_gate.dims(), w_up.dims());
    }
    let op =
        GateUp { layout: Linear { out_in: w_is_out_in, gelu: None, pre: OnceLock::new() }, saved: OnceLock::new() };
    x.contiguous()?.apply_op3(&w_gate.contiguous()?, &w_up.contiguous()?, op)
}

fn apply(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: Linear) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

struct Linear {
    out_in: bool,
    /// An activation applied to the product (the epilogue).
    gelu: Option<Gelu>,
    /// With an epilogue: x·W + b, written by the forward for the backward.
    pre: OnceLock<Vec<f32>>,
}

/// A weight matrix as the products see it: (fan_in, fan_out) and its storage layout. The
/// slice-level pieces of a linear layer, shared by the ops here and the fused sublayers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Weight {
    /// nn.Linear's (out, in) storage; else Conv1D's (in, out).
    pub out_in: bool,
    pub fan_in: usize,
    pub fan_out: usize,
}

impl Weight {
    /// The weight `w` stored in the given layout.
    pub fn of(w: &Tensor, out_in: bool) -> Result<Self> {
        Self::from_dims(w.dims(), out_in)
    }

    /// A weight of stored dims `dims` in the given layout.
    fn from_dims(dims: &[usize], out_in: bool) -> Result<Self> {
        match *dims {
            [a, b] if out_in => Ok(Self { out_in, fan_in: b, fan_out: a }),
            [a, b] => Ok(Self { out_in, fan_in: a, fan_out: b }),
            _ => bail!("linear: weight {dims:?} is not a matrix"),
        }
    }

    /// W's (row, column) strides as the (in, out) matrix, and Wᵀ's as (out, in).
    fn strides(&self) -> ((usize, usize), (usize, usize)) {
        if self.out_in {
            ((1, self.fan_in), (self.fan_in, 1))
        } else {
            ((self.fan_out, 1), (1, self.fan_out))
        }
    }

    /// y (n × out) += x (n × in) · W (+ b): a residual branch added onto y.
    pub fn add_onto(&self, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        let n = x.len() / self.fan_in.max(1);
        if let Some(b) = b {
            if b.len() != self.fan_out {
                bail!("linear: bias of {} for {} outputs", b.len(), self.fan_out);
            }
            y.par_chunks_mut(self.fan_out).for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        mm(n, self.fan_out, self.fan_in, y, true, x, (self.fan_in, 1), w, self.strides().0);
        Ok(())
    }

    /// y = x·W (+ b) into a new buffer (never zeroed: the bias rows or the product write it).
    pub fn apply(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>> {
        let n = x.len() / self.fan_in.max(1);
        let Some(b) = b else {
            return Ok(gemm_new(n, self.fan_out, self.fan_in, x, (self.fan_in, 1), w, self.strides().0));
        };
        if b.len() != self.fan_out {
            bail!("linear: bias of {} for {} outputs", b.len(), self.fan_out);
        }
        let mut y = uninit(n * self.fan_out);
        y.par_chunks_mut(self.fan_out.max(1)).for_each(|row| {
            row.iter_mut().zip(b).for_each(|(y, &b)| {
                y.write(b);
            })
        });
        // SAFETY: every row was written with the bias.
        let mut y = unsafe { assume_init(y) };
        mm(n, self.fan_out, self.fan_in, &mut y, true, x, (self.fan_in, 1), w, self.strides().0);
        Ok(y)
    }

    /// dy (n × out) · Wᵀ into a new buffer.
    pub fn input_grad_new(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let n = dy.len() / self.fan_out.max(1);
        gemm_new(n, self.fan_in, self.fan_out, dy, (self.fan_out, 1), w, self.strides().1)
    }

    /// dx (n × in) += dy (n × out) · Wᵀ.
    pub fn add_input_grad(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) {
        let n = dy.len() / self.fan_out.max(1);
        mm(n, self.fan_in, self.fan_out, dx, true, dy, (self.fan_out, 1), w, self.strides().1);
    }

    /// dW in the weight's own layout for y = x·W, from x (n × in) and dy (n × out).
    pub fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (fan_in, fan_out) = (self.fan_in, self.fan_out);
        let n = x.len() / fan_in.max(1);
        if self.out_in {
            // dW (out, in) = dyᵀ (out, N) · x (N, in)
            gemm_new(fan_out, fan_in, n, dy, (1, fan_out), x, (fan_in, 1))
        } else {
            // dW (in, out) = xᵀ (in, N) · dy (N, out)
            gemm_new(fan_in, fan_out, n, x, (1, fan_in), dy, (fan_out, 1))
        }
    }
}

/// db = Σ over positions of dy (…, out), in f32, on any device: on a GPU one coalesced pass in
/// dy's dtype (`cuda::reduce`), elsewhere candle's sum over the rows of an f32 copy.
pub(super) fn bias_grad_of(dy: &Tensor) -> Result<Tensor> {
    let c = dy.dims().last().copied().unwrap_or(1);
    let dy = dy.reshape((dy.elem_count() / c.max(1), c))?;
    #[cfg(feature = "cuda")]
    if dy.device().is_cuda() {
        return super::cuda::reduce::column_sums(&dy);
    }
    dy.to_dtype(candle_core::DType::F32)?.sum(0)
}

/// db = Σ_rows dy for dy (n × out): per-task column sums, added in task order.
pub(super) fn bias_grad(dy: &[f32], fan_out: usize) -> Vec<f32> {
    let chunk = rows_per_task(dy.len() / fan_out.max(1)) * fan_out;
    let sums = dy
        .par_chunks(chunk)
        .map(|rows| {
            let mut acc = vec![0f32; fan_out];
            for row in rows.chunks_exact(fan_out) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .collect();
    sum_in_order(sums, fan_out)
}

impl Linear {
    /// The weight of this op, checked against x's last dim.
    fn weight(&self, xl: &Layout, wl: &Layout) -> Result<Weight> {
        let weight = Weight::from_dims(wl.dims(), self.out_in)?;
        match xl.dims().last() {
            Some(&c) if c == weight.fan_in => Ok(weight),
            _ => bail!("linear: input {:?} does not end in the weight's {} inputs", xl.dims(), weight.fan_in),
        }
    }

    fn forward(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let weight = self.weight(xl, wl)?;
        let y = weight.apply(x, w, b)?;
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("checked") = weight.fan_out;
        if let Some(gelu) = self.gelu {
            let out = gelu.forward_slice(&y);
            // The forward runs once per op instance; a second run would store the same values.
            let _ = self.pre.set(y);
            return Ok((CpuStorage::F32(out), Shape::from(dims)));
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// (dx, dW, db) for dy of y = x·W (+ b). Only the gradients of inputs that lead to a
    /// trained variable are computed: a frozen weight (a plain tensor, as in LoRA / adapter
    /// fine-tuning) or an input that no variable feeds gets none, so no time or memory goes to it.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (xr, wr, dyr) = (Read::new(x, "linear")?, Read::new(w, "linear")?, Read::new(&dy, "linear")?);
        let (xs, ws) = (xr.f32()?, wr.f32()?);
        // With an epilogue, everything below runs on d pre-activation = dy ⊙ gelu'(pre).
        let d_pre;
        let dys = match (self.gelu, self.pre.get()) {
            (Some(gelu), Some(pre)) => {
                d_pre = gelu.backward_slice(pre, dyr.f32()?);
                &d_pre[..]
            }
            (Some(_), None) => bail!("linear: backward before forward"),
            (None, _) => dyr.f32()?,
        };
        let weight = Weight::of(w, self.out_in)?;
        let dx = if x.track_op() { Some(tensor(weight.input_grad_new(dys, ws), x.dims())?) } else { None };
        let dw = if w.track_op() { Some(tensor(weight.weight_grad(xs, dys), w.dims())?) } else { None };
        let db = match b {
            Some(b) if b.track_op() => Some(tensor(bias_grad(dys, weight.fan_out), &[weight.fan_out])?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        match self.gelu {
            None => "lmforge-linear",
            Some(_) => "lmforge-linear-gelu",
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(CustomOp2::name(self), super::profile::Pass::Forward);
        self.forward(slice(xs, xl, "linear")?, xl, slice(ws, wl, "linear")?, wl, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(CustomOp2::name(self), super::profile::Pass::Backward);
        let (dx, dw, _) = self.backward(x, w, dy, None)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        match self.gelu {
            None => "lmforge-linear-bias",
            Some(_) => "lmforge-linear-bias-gelu",
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Forward);
        let b = slice(bs, bl, "linear")?;
        self.forward(slice(xs, xl, "linear")?, xl, slice(ws, wl, "linear")?, wl, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Backward);
        self.backward(x, w, dy, Some(b))
    }
}

/// The op of [`linear_swiglu`]; `layout` only describes the weights.
struct GateUp {
    layout: Linear,
    /// (x·W_gate, x·W_up), written by the forward for the backward.
    saved: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp3 for GateUp {
    fn name(&self) -> &'static str {
        "lmforge-linear-swiglu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Forward);
        let (x, wg, wu) = (slice(xs, xl, self.name())?, slice(gs, gl, self.name())?, slice(us, ul, self.name())?);
        let weight = self.layout.weight(xl, gl)?;
        let (g, u) = (weight.apply(x, wg, None)?, weight.apply(x, wu, None)?);
        let y = swiglu_forward_slice(&g, &u);
        // The forward runs once per op instance; a second run would store the same values.
        let _ = self.saved.set((g, u));
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("checked") = weight.fan_out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wg: &Tensor,
        wu: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Backward);
        let Some((g, u)) = self.saved.get() else { bail!("linear_swiglu: backward before forward") };
        let dy = dy.contiguous()?;
        let (xr, gr, ur, dyr) = (
            Read::new(x, self.name())?,
            Read::new(wg, self.name())?,
            Read::new(wu, self.name())?,
            Read::new(&dy, self.name())?,
        );
        let (xs, wgs, wus) = (xr.f32()?, gr.f32()?, ur.f32()?);
        let (dg, du) = swiglu_backward_slice(g, u, dyr.f32()?);
        let weight = Weight::of(wg, self.layout.out_in)?;
        let dx = if x.track_op() {
            // dx = d gate·W_gateᵀ + d up·W_upᵀ, the second product accumulating onto the first.
            let mut dx = weight.input_grad_new(&dg, wgs);
            weight.add_input_grad(&du, wus, &mut dx);
            Some(tensor(dx, x.dims())?)
        } else {
            None
        };
        let dw = |w: &Tensor, dz: &[f32]| -> Result<Option<Tensor>> {
            if w.track_op() {
                Ok(Some(tensor(weight.weight_grad(xs, dz), w.dims())?))
            } else {
                Ok(None)
            }
        };
        Ok((dx, dw(wg, &dg)?, dw(wu, &du)?))
    }
}
