//! Fused pre-norm decoder sublayers, each one graph node with x as its only input:
//!
//!   attention   y = x + attn(q, k, v)·W_o + b_o,   q, k, v = n·W_qkv + b (RoPE on q, k),  n = norm(x)
//!   MLP         y = x + gelu(n·W_fc + b_fc)·W_proj + b_proj   (GPT-2)
//!               y = x + (silu(n·W_gate) ⊙ n·W_up)·W_down       (Llama)
//!
//! Built from the slice-level pieces of the other kernels (norm rows, [`Weight`] products,
//! [`Sdpa`], the activations), so each op still has one implementation. Why: as a chain of
//! separate nodes, candle gives every intermediate's gradient a tensor of its own, added into
//! a fresh zeros tensor (`GradStore::or_insert`), and each residual add costs two more such
//! gradients; at the bench-gpt shapes that is ~28 MB zeroed and added per block. Here the
//! intermediates' gradients are buffers of the backward, the residual rides on the output
//! projection (y starts as x) and on the norm's input gradient (dx = dy + ...), and candle
//! sees one node per sublayer. The parameters' gradients go to [`param_grads`] (a node can hand
//! gradients only to its inputs).
//!
//! The forward keeps what the backward needs: n, the projections' outputs (q, k, v or the
//! pre-activations), the attention output and its row log-sum-exps, as the separate ops did.
//! Parameters that are not trained (frozen) get no gradient, and an eval forward (nothing
//! tracked) keeps nothing.

use super::activation::{swiglu_backward_slice, swiglu_forward_slice, Gelu, HostRope};
use super::cpu::{tensor, Read};
use super::linear::{bias_grad, Weight};
use super::norm::{layer_norm_backward_rows, layer_norm_rows, rms_norm_backward_rows, rms_norm_rows};
use super::param_grads;
use super::profile::{span, Pass};
use super::sdpa::{Operand, OutMat, Sdpa};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The sublayer's norm: LayerNorm (GPT-2) or RMSNorm (Llama).
#[derive(Clone)]
pub enum SublayerNorm {
    Layer { w: Tensor, b: Tensor, eps: f64 },
    Rms { w: Tensor, eps: f64 },
}

/// A projection's weight (in the sublayer's layout) and optional bias.
#[derive(Clone)]
pub struct Proj {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

/// GPT-2's packed q | k | v projection, or Llama's three.
#[derive(Clone)]
pub enum QkvProj {
    Packed(Proj),
    Split { q: Proj, k: Proj, v: Proj },
}

/// The parameters of `x + attention(norm(x))`.
#[derive(Clone)]
pub struct AttentionSublayer {
    pub norm: SublayerNorm,
    pub qkv: QkvProj,
    pub o: Proj,
    /// Weights stored (out, in) (nn.Linear) rather than (in, out) (Conv1D).
    pub w_is_out_in: bool,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub scale: f64,
    /// RoPE's (context, D) cos and sin tables, for positions from 0.
    pub rope: Option<(Tensor, Tensor)>,
}

/// The MLP of a sublayer.
#[derive(Clone)]
pub enum MlpProj {
    Gelu { fc: Proj, proj: Proj, form: Gelu },
    SwiGlu { gate: Proj, up: Proj, down: Proj },
}

/// The parameters of `x + mlp(norm(x))`.
#[derive(Clone)]
pub struct MlpSublayer {
    pub norm: SublayerNorm,
    pub mlp: MlpProj,
    pub w_is_out_in: bool,
}

impl SublayerNorm {
    fn tensors(&self) -> Vec<&Tensor> {
        match self {
            SublayerNorm::Layer { w, b, .. } => vec![w, b],
            SublayerNorm::Rms { w, .. } => vec![w],
        }
    }
}

impl Proj {
    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        std::iter::once(&self.w).chain(self.b.as_ref())
    }
}

impl AttentionSublayer {
    /// Every parameter tensor (and the RoPE tables).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut ts = self.norm.tensors();
        match &self.qkv {
            QkvProj::Packed(p) => ts.extend(p.tensors()),
            QkvProj::Split { q, k, v } => ts.extend(q.tensors().chain(k.tensors()).chain(v.tensors())),
        }
        ts.extend(self.o.tensors());
        if let Some((c, s)) = &self.rope {
            ts.extend([c, s]);
        }
        ts
    }
}

impl MlpSublayer {
    /// Every parameter tensor.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut ts = self.norm.tensors();
        match &self.mlp {
            MlpProj::Gelu { fc, proj, .. } => ts.extend(fc.tensors().chain(proj.tensors())),
            MlpProj::SwiGlu { gate, up, down } => ts.extend(gate.tensors().chain(up.tensors()).chain(down.tensors())),
        }
        ts
    }
}

/// Fused `x + attention(norm(x))` for x (B, T, C), causal, no KV cache.
pub fn attention(x: &Tensor, p: &AttentionSublayer) -> Result<Tensor> {
    x.contiguous()?.apply_op1(AttentionOp { p: p.clone(), saved: Mutex::new(None) })
}

/// Fused `x + mlp(norm(x))` for x (..., C).
pub fn mlp(x: &Tensor, p: &MlpSublayer) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MlpOp { p: p.clone(), saved: Mutex::new(None) })
}

/// Gradient `g` (shaped as `param`) to [`param_grads`], when `param` is trained.
fn give(param: &Tensor, g: Vec<f32>) -> Result<()> {
    if param.track_op() {
        param_grads::add(param.id(), tensor(g, param.dims())?)?;
    }
    Ok(())
}

impl Proj {
    /// f(weight layout, W's data, b's data), the data borrowed for the call.
    fn with_data<R>(
        &self,
        out_in: bool,
        op: &'static str,
        f: impl FnOnce(Weight, &[f32], Option<&[f32]>) -> Result<R>,
    ) -> Result<R> {
        let w = Read::new(&self.w, op)?;
        let b = self.b.as_ref().map(|b| Read::new(b, op)).transpose()?;
        f(Weight::of(&self.w, out_in)?, w.f32()?, b.as_ref().map(Read::f32).transpose()?)
    }

    /// y = x·W + b into a new buffer.
    fn apply(&self, x: &[f32], out_in: bool, op: &'static str) -> Result<Vec<f32>> {
        self.with_data(out_in, op, |weight, w, b| weight.apply(x, w, b))
    }

    /// y += x·W + b: a residual branch added onto y.
    fn add_onto(&self, x: &[f32], y: &mut [f32], out_in: bool, op: &'static str) -> Result<()> {
        self.with_data(out_in, op, |weight, w, b| weight.add_onto(x, w, b, y))
    }

    /// For dy of y = x·W + b: dx = dy·Wᵀ into `dx` (a new buffer when it is empty, else added
    /// onto it), and dW, db given to [`param_grads`].
    fn backward(&self, x: &[f32], dy: &[f32], out_in: bool, dx: &mut Vec<f32>, op: &'static str) -> Result<()> {
        let weight = Weight::of(&self.w, out_in)?;
        let w = Read::new(&self.w, op)?;
        if dx.is_empty() {
            *dx = weight.input_grad_new(dy, w.f32()?);
        } else {
            weight.add_input_grad(dy, w.f32()?, dx);
        }
        if self.w.track_op() {
            give(&self.w, weight.weight_grad(x, dy))?;
        }
        if let Some(b) = self.b.as_ref().filter(|b| b.track_op()) {
            give(b, bias_grad(dy, weight.fan_out))?;
        }
        Ok(())
    }
}

impl SublayerNorm {
    /// norm(x) for rows of C.
    fn forward(&self, x: &[f32], op: &'static str) -> Result<Vec<f32>> {
        let w = Read::new(self.weight(), op)?;
        let w = w.f32()?;
        if x.len() % w.len().max(1) != 0 {
            bail!("{op}: {} values are not rows of the norm's {} features", x.len(), w.len());
        }
        Ok(match self {
            SublayerNorm::Layer { b, eps, .. } => layer_norm_rows(x, w, Read::new(b, op)?.f32()?, *eps as f32),
            SublayerNorm::Rms { eps, .. } => rms_norm_rows(x, w, *eps as f32),
        })
    }

    /// dx = dy + norm'(x)ᵀ·dn (the residual's gradient plus the norm's); the norm's parameter
    /// gradients go to [`param_grads`].
    fn backward(&self, x: &[f32], dn: &[f32], dy: &[f32], op: &'static str) -> Result<Vec<f32>> {
        let w = Read::new(self.weight(), op)?;
        let mut dx = match self {
            SublayerNorm::Layer { w: wt, b: bt, eps } => {
                let (dx, dw, db) = layer_norm_backward_rows(x, w.f32()?, dn, *eps as f32);
                give(wt, dw)?;
                give(bt, db)?;
                dx
            }
            SublayerNorm::Rms { w: wt, eps } => {
                let (dx, dw) = rms_norm_backward_rows(x, w.f32()?, dn, *eps as f32);
                give(wt, dw)?;
                dx
            }
        };
        dx.par_chunks_mut(1 << 14).zip(dy.par_chunks(1 << 14)).for_each(|(dx, dy)| {
            dx.iter_mut().zip(dy).for_each(|(a, b)| *a += b);
        });
        Ok(dx)
    }

    fn weight(&self) -> &Tensor {
        match self {
            SublayerNorm::Layer { w, .. } | SublayerNorm::Rms { w, .. } => w,
        }
    }
}

/// What the attention sublayer's forward keeps for its backward.
struct AttentionSaved {
    n: Vec<f32>,
    /// q | k | v rows (after RoPE): one packed buffer, or three.
    qkv: Vec<Vec<f32>>,
    a: Vec<f32>,
    lse: Vec<f32>,
}

struct AttentionOp {
    p: AttentionSublayer,
    saved: Mutex<Option<AttentionSaved>>,
}

impl AttentionOp {
    const NAME: &'static str = "lmforge-attention-sublayer";

    /// (B, T, C, D) for x's layout, checked against the parameters.
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let &[b, t, c] = dims else { bail!("{}: x {dims:?} is not (B, T, C)", Self::NAME) };
        let (h, kh) = (self.p.n_head, self.p.n_kv_head);
        let width = Weight::of(&self.p.o.w, self.p.w_is_out_in)?.fan_in;
        if h == 0 || kh == 0 || h % kh != 0 || width % h != 0 {
            bail!("{}: {h} / {kh} heads do not fit an attention width of {width}", Self::NAME);
        }
        Ok((b, t, c, width / h))
    }

    /// The q, k, v operands over one packed buffer or three.
    fn operands(&self, qkv: &[Vec<f32>], b: usize, t: usize, d: usize) -> Result<(Operand, Operand, Operand)> {
        let (h, kh) = (self.p.n_head, self.p.n_kv_head);
        match qkv {
            [z] => {
                let w = (h + 2 * kh) * d;
                Ok((
                    Operand::rows(z, b, t, w, 0, h * d)?,
                    Operand::rows(z, b, t, w, h * d, kh * d)?,
                    Operand::rows(z, b, t, w, (h + kh) * d, kh * d)?,
                ))
            }
            [q, k, v] => Ok((
                Operand::rows(q, b, t, h * d, 0, h * d)?,
                Operand::rows(k, b, t, kh * d, 0, kh * d)?,
                Operand::rows(v, b, t, kh * d, 0, kh * d)?,
            )),
            _ => bail!("{}: {} saved projections", Self::NAME, qkv.len()),
        }
    }

    fn rope(&self, t: usize, d: usize) -> Result<Option<HostRope>> {
        self.p.rope.as_ref().map(|(cos, sin)| HostRope::new(cos, sin, 0, t, d)).transpose()
    }

    fn forward(&self, x: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        let p = &self.p;
        let (b, t, c, d) = self.dims(dims)?;
        let (h, kh) = (p.n_head, p.n_kv_head);
        let n = p.norm.forward(x, Self::NAME)?;
        let project = |pr: &Proj| pr.apply(&n, p.w_is_out_in, Self::NAME);
        let rope = self.rope(t, d)?;
        let roped = |z: Vec<f32>, heads: usize| match &rope {
            Some(r) => r.apply(&z, &[b, t, heads * d], false),
            None => z,
        };
        let qkv = match &p.qkv {
            QkvProj::Packed(_) if rope.is_some() => {
                bail!("{}: RoPE needs separate q, k, v projections", Self::NAME)
            }
            QkvProj::Packed(pr) => vec![project(pr)?],
            QkvProj::Split { q, k, v } => vec![roped(project(q)?, h), roped(project(k)?, kh), project(v)?],
        };
        let (q, k, v) = self.operands(&qkv, b, t, d)?;
        let (a, lse) = Sdpa::new(h, kh, p.scale, None).forward(q, k, v, b, t, d);
        // y = x + a·W_o + b_o: the product accumulates onto a copy of x.
        let mut y = x.to_vec();
        p.o.add_onto(&a, &mut y, p.w_is_out_in, Self::NAME)?;
        debug_assert_eq!(y.len(), b * t * c);
        if p.tensors().iter().any(|t| t.track_op()) {
            *self.saved.lock().expect("not poisoned") = Some(AttentionSaved { n, qkv, a, lse });
        }
        Ok(y)
    }

    fn backward(&self, x: &[f32], dims: &[usize], dy: &[f32]) -> Result<Vec<f32>> {
        let p = &self.p;
        let Some(s) = self.saved.lock().expect("not poisoned").take() else {
            bail!("{}: backward before forward (or twice)", Self::NAME)
        };
        let (b, t, _, d) = self.dims(dims)?;
        let (h, kh) = (p.n_head, p.n_kv_head);
        let sdpa = Sdpa::new(h, kh, p.scale, None);
        // Output projection: da = dy·W_oᵀ, dW_o, db_o.
        let mut da = Vec::new();
        p.o.backward(&s.a, dy, p.w_is_out_in, &mut da, Self::NAME)?;
        let dy_heads = Operand::rows(&da, b, t, h * d, 0, h * d)?;
        let rope = self.rope(t, d)?;
        let (q, k, v) = self.operands(&s.qkv, b, t, d)?;
        // The attention's input gradients, then each projection's: dn = Σ dz·Wᵀ.
        let mut dn = Vec::new();
        match (&p.qkv, &s.qkv[..]) {
            (QkvProj::Packed(pr), [z]) => {
                let w = (h + 2 * kh) * d;
                let mut dz = vec![0f32; z.len()];
                let outs = (
                    OutMat::new(&mut dz, t, w, 0),
                    OutMat::new(&mut dz, t, w, h * d),
                    OutMat::new(&mut dz, t, w, (h + kh) * d),
                );
                sdpa.backward((q, k, v, dy_heads), outs, &s.lse, b, t, d);
                pr.backward(&s.n, &dz, p.w_is_out_in, &mut dn, Self::NAME)?;
            }
            (QkvProj::Split { q: pq, k: pk, v: pv }, [sq, sk, sv]) => {
                let (mut dq, mut dk, mut dv) = (vec![0f32; sq.len()], vec![0f32; sk.len()], vec![0f32; sv.len()]);
                let outs = (
                    OutMat::new(&mut dq, t, h * d, 0),
                    OutMat::new(&mut dk, t, kh * d, 0),
                    OutMat::new(&mut dv, t, kh * d, 0),
                );
                sdpa.backward((q, k, v, dy_heads), outs, &s.lse, b, t, d);
                if let Some(r) = &rope {
                    dq = r.apply(&dq, &[b, t, h * d], true);
                    dk = r.apply(&dk, &[b, t, kh * d], true);
                }
                for (pr, dz) in [(pq, &dq), (pk, &dk), (pv, &dv)] {
                    pr.backward(&s.n, dz, p.w_is_out_in, &mut dn, Self::NAME)?;
                }
            }
            _ => bail!("{}: saved projections do not match the parameters", Self::NAME),
        }
        p.norm.backward(x, &dn, dy, Self::NAME)
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = span(Self::NAME, Pass::Forward);
        let x = super::cpu::slice(s, l, Self::NAME)?;
        Ok((CpuStorage::F32(self.forward(x, l.dims())?), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = span(Self::NAME, Pass::Backward);
        let dy = dy.contiguous()?;
        let (xr, dyr) = (Read::new(x, Self::NAME)?, Read::new(&dy, Self::NAME)?);
        let dx = self.backward(xr.f32()?, x.dims(), dyr.f32()?)?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// What the MLP sublayer's forward keeps for its backward: n, then the GELU's pre-activation
/// and output, or the gate and up projections and their SwiGLU.
struct MlpSaved {
    n: Vec<f32>,
    z: Vec<Vec<f32>>,
}

struct MlpOp {
    p: MlpSublayer,
    saved: Mutex<Option<MlpSaved>>,
}

impl MlpOp {
    const NAME: &'static str = "lmforge-mlp-sublayer";

    fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let p = &self.p;
        let n = p.norm.forward(x, Self::NAME)?;
        let hidden = |pr: &Proj| pr.apply(&n, p.w_is_out_in, Self::NAME);
        // y = x + act·W_out + b_out: the product accumulates onto a copy of x.
        let mut y = x.to_vec();
        let z = match &p.mlp {
            MlpProj::Gelu { fc, proj, form } => {
                let pre = hidden(fc)?;
                let act = form.forward_slice(&pre);
                proj.add_onto(&act, &mut y, p.w_is_out_in, Self::NAME)?;
                vec![pre, act]
            }
            MlpProj::SwiGlu { gate, up, down } => {
                let (g, u) = (hidden(gate)?, hidden(up)?);
                let act = swiglu_forward_slice(&g, &u);
                down.add_onto(&act, &mut y, p.w_is_out_in, Self::NAME)?;
                vec![g, u, act]
            }
        };
        if p.tensors().iter().any(|t| t.track_op()) {
            *self.saved.lock().expect("not poisoned") = Some(MlpSaved { n, z });
        }
        Ok(y)
    }

    fn backward(&self, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let p = &self.p;
        let Some(s) = self.saved.lock().expect("not poisoned").take() else {
            bail!("{}: backward before forward (or twice)", Self::NAME)
        };
        let out_in = p.w_is_out_in;
        // d act = dy·W_outᵀ, then dn = Σ dz·W_inᵀ; each projection's weight gradients on the way.
        let (mut d_act, mut dn) = (Vec::new(), Vec::new());
        match (&p.mlp, &s.z[..]) {
            (MlpProj::Gelu { fc, proj, form }, [pre, act]) => {
                proj.backward(act, dy, out_in, &mut d_act, Self::NAME)?;
                let d_pre = form.backward_slice(pre, &d_act);
                fc.backward(&s.n, &d_pre, out_in, &mut dn, Self::NAME)?;
            }
            (MlpProj::SwiGlu { gate, up, down }, [g, u, act]) => {
                down.backward(act, dy, out_in, &mut d_act, Self::NAME)?;
                let (dg, du) = swiglu_backward_slice(g, u, &d_act);
                gate.backward(&s.n, &dg, out_in, &mut dn, Self::NAME)?;
                up.backward(&s.n, &du, out_in, &mut dn, Self::NAME)?;
            }
            _ => bail!("{}: saved activations do not match the parameters", Self::NAME),
        }
        p.norm.backward(x, &dn, dy, Self::NAME)
    }
}

impl CustomOp1 for MlpOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = span(Self::NAME, Pass::Forward);
        let x = super::cpu::slice(s, l, Self::NAME)?;
        Ok((CpuStorage::F32(self.forward(x)?), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = span(Self::NAME, Pass::Backward);
        let dy = dy.contiguous()?;
        let (xr, dyr) = (Read::new(x, Self::NAME)?, Read::new(&dy, Self::NAME)?);
        let dx = self.backward(xr.f32()?, dyr.f32()?)?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}
