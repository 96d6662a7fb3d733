//! The pre-norm decoder sublayers as one graph node each on any device (a GPU's, f32 or bf16
//! activations), from tensor ops and the ops' own kernels:
//!
//!   attention   y = x + attn(q, k, v)·W_o + b_o,   q, k, v = n·W_qkv + b (RoPE on q, k),  n = norm(x)
//!   MLP         y = x + gelu(n·W_fc + b_fc)·W_proj + b_proj   (GPT-2)
//!               y = x + (silu(n·W_gate) ⊙ n·W_up)·W_down       (Llama)
//!
//! [`crate::sublayer`] does this on the CPU at the level of slices; this is its counterpart for
//! tensors that live elsewhere. The forward runs each op outside the graph (`apply_op*_no_bwd`,
//! products by cuBLAS on a GPU) and keeps the op values (their saved state: attention's row
//! log-sum-exps, RoPE's tables) with the tensors the backward needs; the node's backward then
//! calls each op's own backward in turn. Why: composed, candle gives every intermediate's
//! gradient a fresh zeros tensor it adds into (`GradStore::or_insert`) — four memory passes per
//! intermediate, each residual add two gradients more — and a graph node per op. Here the
//! intermediates' gradients are plain tensors of the backward, the residual's gradient is added
//! once, and the parameters' gradients (f32) go to [`param_grads`], as the CPU's sublayers do.
//! On a GPU the residual costs no pass of its own either way: the output `x + (p + b)` is one
//! kernel after the output projection's product, and the residual's gradient is added into dx
//! by the norm's backward kernel.
//!
//! Mixed precision as the composed ops: the f32 weights are cast to the activations' dtype for
//! the products, the weights' gradients are computed in that dtype and returned in f32, the
//! biases' gradients summed in f32. Unlike the composed ops, whose cast is a graph node that
//! keeps its copy until the step's backward ends, a node here casts a weight for each product
//! and drops the copy (the backward casts it again): see `Linear`.

use super::activation::{BiasGelu, Gelu, Rope, SwiGlu};
use super::linear::bias_grad_of;
use super::norm::{f32_param, LayerNorm, RmsNorm};
use super::param_grads;
use super::profile::{span, timed, weight_cast, Pass, Pass::Backward, Pass::Forward};
use super::reference::matmul;
use super::sdpa::Sdpa;
use super::sublayer::{AttentionSublayer, MlpProj, MlpSublayer, Proj, QkvProj, SublayerNorm};
use candle_core::{bail, CustomOp1, CustomOp2, CustomOp3, DType, Result, Tensor};

/// `x + attention(norm(x))` for x (B, T, C), causal, no KV cache, as one node.
pub fn attention(x: &Tensor, p: &AttentionSublayer) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let (h, kh) = (p.n_head, p.n_kv_head);
    let xd = x.detach().contiguous()?;
    let norm = Norm::forward(&p.norm, &xd)?;
    let n2 = norm.out.reshape((b * t, c))?;
    let sdpa = Sdpa::new(h, kh, p.scale, None);
    let out_in = p.w_is_out_in;
    let (inputs, a) = match &p.qkv {
        QkvProj::Packed(pr) => {
            let lin = Linear::new(pr, &xd, out_in)?;
            let qkv = lin.forward(&n2)?.reshape((b, t, ()))?;
            let a = timed("attention", Forward, || qkv.apply_op1_no_bwd(&sdpa))?;
            (AttentionInputs::Packed { qkv, lin }, a)
        }
        QkvProj::Split { q, k, v } => {
            let lins = [Linear::new(q, &xd, out_in)?, Linear::new(k, &xd, out_in)?, Linear::new(v, &xd, out_in)?];
            let project = |l: &Linear| l.forward(&n2)?.reshape((b, t, ()));
            let (mut q, mut k, v) = (project(&lins[0])?, project(&lins[1])?, project(&lins[2])?);
            let d = q.dim(2)? / h.max(1);
            let rope = match &p.rope {
                Some((cos, sin)) => {
                    let r = Rope::new(cos, sin, 0, t, d)?;
                    (q, k) = timed("rope", Forward, || -> Result<_> {
                        Ok((q.apply_op1_no_bwd(&r)?, k.apply_op1_no_bwd(&r)?))
                    })?;
                    Some(r)
                }
                None => None,
            };
            let a = timed("attention", Forward, || q.apply_op3_no_bwd(&k, &v, &sdpa))?;
            (AttentionInputs::Split { qkv: [q, k, v], lins, rope }, a)
        }
    };
    let a2 = a.reshape((b * t, ()))?;
    let o = Linear::new(&p.o, &xd, out_in)?;
    let y = o.plus_residual(&a2, &xd)?;
    if !x.track_op() {
        return Ok(y);
    }
    let norm_params = p.norm.clone();
    super::node::node1(x, y, move |x, dy| {
        let rows = |g: &Tensor| g.reshape((b * t, ()));
        let da = o.backward(&a2, &dy.reshape((b * t, c))?, true)?.reshape((b, t, ()))?;
        let dn2 = match &inputs {
            AttentionInputs::Packed { qkv, lin } => {
                let Some(dqkv) = timed("attention", Backward, || CustomOp1::bwd(&sdpa, qkv, &a, &da))? else {
                    bail!("attention: no gradient")
                };
                lin.backward(&n2, &rows(&dqkv)?, true)?
            }
            AttentionInputs::Split { qkv: [q, k, v], lins, rope } => {
                let (Some(mut dq), Some(mut dk), Some(dv)) =
                    timed("attention", Backward, || CustomOp3::bwd(&sdpa, q, k, v, &a, &da))?
                else {
                    bail!("attention: no gradient")
                };
                if let Some(r) = rope {
                    let back = |g: &Tensor| -> Result<Tensor> {
                        CustomOp1::bwd(r, g, g, g)?.ok_or_else(|| candle_core::Error::Msg("rope: no gradient".into()))
                    };
                    (dq, dk) = timed("rope", Backward, || -> Result<_> { Ok((back(&dq)?, back(&dk)?)) })?;
                }
                let dn2 = (lins[0].backward(&n2, &rows(&dq)?, true)? + lins[1].backward(&n2, &rows(&dk)?, true)?)?;
                (dn2 + lins[2].backward(&n2, &rows(&dv)?, true)?)?
            }
        };
        norm.backward(x, &norm_params, &dn2.reshape((b, t, c))?, dy).map(Some)
    })
}

/// `x + mlp(norm(x))` for x (..., C), as one node.
pub fn mlp(x: &Tensor, p: &MlpSublayer) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let c = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / c.max(1);
    let xd = x.detach().contiguous()?;
    let norm = Norm::forward(&p.norm, &xd)?;
    let n2 = norm.out.reshape((rows, c))?;
    let out_in = p.w_is_out_in;
    let (hidden, h) = match &p.mlp {
        MlpProj::Gelu { fc, form, .. } => {
            let lin = Linear::new(fc, &xd, out_in)?;
            let z = lin.product(&n2)?;
            let h = timed("activation", Forward, || match &fc.b {
                Some(bias) => z.apply_op2_no_bwd(&f32_param(bias)?, &BiasGelu(*form)),
                None => z.apply_op1_no_bwd(form),
            })?;
            (Hidden::Gelu { z, lin, form: *form }, h)
        }
        MlpProj::SwiGlu { gate, up, .. } => {
            let (lg, lu) = (Linear::new(gate, &xd, out_in)?, Linear::new(up, &xd, out_in)?);
            let (g, u) = (lg.forward(&n2)?, lu.forward(&n2)?);
            let h = timed("activation", Forward, || g.apply_op2_no_bwd(&u, &SwiGlu))?;
            (Hidden::SwiGlu { g, u, lg, lu }, h)
        }
    };
    let down = match &p.mlp {
        MlpProj::Gelu { proj, .. } => Linear::new(proj, &xd, out_in)?,
        MlpProj::SwiGlu { down, .. } => Linear::new(down, &xd, out_in)?,
    };
    let y = down.plus_residual(&h, &xd)?;
    if !x.track_op() {
        return Ok(y);
    }
    let norm_params = p.norm.clone();
    super::node::node1(x, y, move |x, dy| {
        let dh = down.backward(&h, &dy.reshape((rows, c))?, true)?;
        let dn2 = match &hidden {
            Hidden::Gelu { z, lin, form } => {
                let dz = timed("activation", Backward, || match &lin.param.b {
                    Some(bias) => {
                        // GELU's op adds the bias, so it gives the bias's gradient.
                        let (dz, db) = CustomOp2::bwd(&BiasGelu(*form), z, &f32_param(bias)?, &h, &dh)?;
                        give(bias, db)?;
                        Ok(dz)
                    }
                    None => CustomOp1::bwd(form, z, &h, &dh),
                })?;
                let Some(dz) = dz else { bail!("gelu: no gradient") };
                lin.backward(&n2, &dz, false)?
            }
            Hidden::SwiGlu { g, u, lg, lu } => {
                let (Some(dg), Some(du)) = timed("activation", Backward, || CustomOp2::bwd(&SwiGlu, g, u, &h, &dh))?
                else {
                    bail!("swiglu: no gradient")
                };
                (lg.backward(&n2, &dg, true)? + lu.backward(&n2, &du, true)?)?
            }
        };
        norm.backward(x, &norm_params, &dn2.reshape(dims.as_slice())?, dy).map(Some)
    })
}

/// The attention's saved inputs and the projections into them: GPT-2's packed qkv, or Llama's
/// q, k (after RoPE) and v.
enum AttentionInputs {
    Packed { qkv: Tensor, lin: Linear },
    Split { qkv: [Tensor; 3], lins: [Linear; 3], rope: Option<Rope> },
}

/// The MLP's saved activations and the projections into them: GELU's pre-activation (without
/// the bias, which GELU's op adds), or SwiGLU's gate and up.
enum Hidden {
    Gelu { z: Tensor, lin: Linear, form: Gelu },
    SwiGlu { g: Tensor, u: Tensor, lg: Linear, lu: Linear },
}

/// `p`'s gradient `g` (made f32) to [`param_grads`], when `p` is trained.
fn give(p: &Tensor, g: Option<Tensor>) -> Result<()> {
    match g {
        Some(g) if p.track_op() => param_grads::add(p.id(), g.to_dtype(DType::F32)?.reshape(p.dims())?),
        _ => Ok(()),
    }
}

/// The sublayer's norm as run: its op (LayerNorm or RMSNorm) and output.
struct Norm {
    out: Tensor,
    kind: NormOp,
}

enum NormOp {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn forward(norm: &SublayerNorm, x: &Tensor) -> Result<Self> {
        let _span = span("norm", Forward);
        Ok(match norm {
            SublayerNorm::Layer { w, b, eps } => {
                let op = LayerNorm { eps: *eps as f32 };
                Norm { out: x.apply_op3_no_bwd(&f32_param(w)?, &f32_param(b)?, &op)?, kind: NormOp::Layer(op) }
            }
            SublayerNorm::Rms { w, eps } => {
                let op = RmsNorm { eps: *eps as f32 };
                Norm { out: x.apply_op2_no_bwd(&f32_param(w)?, &op)?, kind: NormOp::Rms(op) }
            }
        })
    }

    /// dx = dy + norm'(x)ᵀ·dn (the residual's gradient plus the norm's, on a GPU in the norm's
    /// dx kernel); the norm's parameter gradients to [`param_grads`]. `x` is the node's
    /// (tracked) input.
    fn backward(&self, x: &Tensor, norm: &SublayerNorm, dn: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let _span = span("norm", Backward);
        let x = &x.contiguous()?;
        let dx = match (&self.kind, norm) {
            (NormOp::Layer(op), SublayerNorm::Layer { w, b, .. }) => {
                let (dx, dw, db) = op.grads(x, w, b, dn, Some(dy))?;
                give(w, dw)?;
                give(b, db)?;
                dx
            }
            (NormOp::Rms(op), SublayerNorm::Rms { w, .. }) => {
                let (dx, dw) = op.grads(x, w, dn, Some(dy))?;
                give(w, dw)?;
                dx
            }
            _ => bail!("norm: the saved op does not match the parameters"),
        };
        let Some(dx) = dx else { bail!("norm: no input gradient") };
        Ok(dx)
    }
}

/// A projection as the products use it: the parameters, and the activations' dtype the weight
/// is cast to, `W` laid out (in, out) for x·W (a transposed view of nn.Linear's (out, in)).
///
/// The cast copy is made for each product and dropped after it — in the forward, and again in
/// the backward for dx = dy·Wᵀ — never kept in the node for the backward: under `bf16-mixed`
/// a kept copy is 2 bytes a parameter held from the block's forward to the end of the step's
/// backward (Llama-7B's layers: 12.1 GiB at the peak), the cast again one pass of 6 bytes a
/// parameter (~10 ms a step on an H200, ~2% of a 1 × 4096 step). In f32 the "cast" is the
/// parameter itself (`to_dtype` to its own dtype copies nothing).
struct Linear {
    dtype: DType,
    /// The bias in the activations' dtype, for the composed adds off the GPU; none on a GPU,
    /// whose kernels add the f32 parameter itself.
    b: Option<Tensor>,
    param: Proj,
    out_in: bool,
}

impl Linear {
    fn new(pr: &Proj, like: &Tensor, out_in: bool) -> Result<Self> {
        let b = match like.device().is_cuda() {
            true => None,
            false => pr.b.as_ref().map(|b| b.detach().to_dtype(like.dtype())).transpose()?,
        };
        Ok(Linear { dtype: like.dtype(), b, param: pr.clone(), out_in })
    }

    /// W (in, out) in the activations' dtype: a copy for one product when that dtype is not
    /// the parameter's.
    fn weight(&self, pass: Pass) -> Result<Tensor> {
        let w = weight_cast(&self.param.w.detach(), self.dtype, pass)?;
        if self.out_in {
            w.t()
        } else {
            Ok(w)
        }
    }

    /// x·W for x (rows, in).
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight(Forward)?;
        timed("matmul", Forward, || matmul(x, &w))
    }

    /// x·W + b (on a GPU one kernel after the product: bias f32, the sum rounded once).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        let _span = self.param.b.is_some().then(|| span("bias or residual add", Forward));
        #[cfg(feature = "cuda")]
        if let (true, Some(b)) = (x.device().is_cuda(), &self.param.b) {
            return super::cuda::activation::bias_add(&y, &f32_param(b)?);
        }
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// x + (a·W + b) for the residual stream x (a's rows are x's positions): the sublayer's
    /// output, on a GPU one kernel after the product (bias f32, the sum rounded once).
    fn plus_residual(&self, a: &Tensor, x: &Tensor) -> Result<Tensor> {
        let p = self.product(a)?.reshape(x.dims())?;
        let _span = span("bias or residual add", Forward);
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let b = self.param.b.as_ref().map(f32_param).transpose()?;
            return super::cuda::activation::residual_add(x, &p, b.as_ref());
        }
        match &self.b {
            Some(b) => x + p.broadcast_add(b)?,
            None => x + p,
        }
    }

    /// For dy of y = x·W (+ b): dx = dy·Wᵀ, and dW (in the parameter's layout) and, with
    /// `bias`, db given to [`param_grads`] when trained.
    fn backward(&self, x: &Tensor, dy: &Tensor, bias: bool) -> Result<Tensor> {
        let w = &self.param.w;
        if w.track_op() {
            // Conv1D's (in, out) = xᵀ·dy; nn.Linear's (out, in) = dyᵀ·x: formed in f32 (and
            // added into the step's sum) by the product itself.
            let (p, q) = if self.out_in { (dy, x) } else { (x, dy) };
            timed("weight gradient", Backward, || param_grads::add_weight_grad(w, p, q))?;
        }
        if let Some(b) = self.param.b.as_ref().filter(|b| bias && b.track_op()) {
            timed("bias gradient", Backward, || give(b, Some(bias_grad_of(dy)?)))?;
        }
        let w = self.weight(Backward)?;
        timed("matmul", Backward, || matmul(dy, &w.t()?))
    }
}
