//! The reference ops: composed from candle primitives that all have a backward, written to be
//! read, and used as the test oracle for the fused kernels beside them. They are what
//! `Kernels::Reference` runs. `candle_nn::ops::{softmax_last_dim, layer_norm, rms_norm}` are
//! deliberately not used, since on contiguous input they run a fused forward with no backward
//! and silently cut the gradient graph.
//!
//! Mixed precision (`bf16-mixed`): activations arrive in their compute dtype (bf16) and
//! parameters in f32 (the master weights). Products cast the parameters to the activations'
//! dtype (the cast is a graph node, so the gradient reaches the f32 parameter as f32), as
//! PyTorch's autocast does; reductions — softmax, norm statistics, the loss — run in f32 and
//! return the input's dtype (the loss stays f32). On the CPU, whose matmul has no bf16, a bf16
//! product is computed from f32 copies and rounded: what a GPU's bf16 matmul with f32
//! accumulation returns.
//!
//! Shapes: any leading dims `...`, last dim `C` (features) or `V` (vocab).

use candle_core::{DType, Result, Tensor, D};

/// `x` in f32 (no copy when it already is): the dtype reductions run in.
fn f32(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)
}

/// `p` (a parameter, f32) in the dtype of the activations `x` it meets.
pub fn like(p: &Tensor, x: &Tensor) -> Result<Tensor> {
    p.to_dtype(x.dtype())
}

/// a · b (batched over leading dims) in their dtype; see the module note for bf16 on the CPU.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let half = matches!(a.dtype(), DType::BF16 | DType::F16);
    if half && a.device().is_cpu() {
        return f32(a)?.matmul(&f32(b)?)?.to_dtype(a.dtype());
    }
    a.matmul(b)
}

/// Softmax over the last dim. The max is subtracted for stability and detached: it cancels
/// out of the result, so it needs no gradient.
/// Computed in f32, returned in x's dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32(x)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}

/// log(softmax(x)) over the last dim, computed without forming the softmax; in f32 whatever
/// x's dtype (it feeds losses).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = f32(x)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// LayerNorm over the last dim with biased variance, as `torch.nn.LayerNorm`.
/// x: (..., C), weight/bias: (C). Computed in f32, returned in x's dtype.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32(x)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    centred.broadcast_mul(&inv_std)?.broadcast_mul(&f32(weight)?)?.broadcast_add(&f32(bias)?)?.to_dtype(dtype)
}

/// RMSNorm over the last dim, as Hugging Face `LlamaRMSNorm`: x / sqrt(mean(x²) + eps) * w.
/// Computed in f32, returned in x's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = f32(x)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(&f32(weight)?)?.to_dtype(dtype)
}

/// GELU, tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// GELU, exact erf form (BERT's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// SwiGLU gate: silu(gate) * up.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Mean cross-entropy (nats) of `logits` (N, V) against `targets` (N) of u32 class ids.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Per-row cross-entropy (N) in nats, no reduction (for evaluation).
pub fn cross_entropy_per_row(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// Multiplies by a keep-mask scaled by 1/(1-p) (inverted dropout). The mask is drawn by the
/// caller from lmforge's own seeded RNG, since candle's CPU generator cannot be seeded.
pub fn dropout(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    x.mul(&like(mask, x)?)
}

/// A causal mask (T, S) for queries at positions `offset..offset+T` over keys `0..S`: 0 where
/// a query may attend, -inf where the key lies in its future.
pub fn causal_mask(t: usize, s: usize, offset: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..s).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, s), device)?.to_dtype(DType::F32)
}

/// Attention probabilities from raw scores (..., T, S): softmax(scale · scores + causal mask),
/// queries at positions S−T..S (the newest T of S keys). Scaled, masked and normalised in f32;
/// returned in the scores' dtype.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mask = causal_mask(t, s, s - t, scores.device())?;
    softmax_last_dim(&(f32(scores)? * scale)?.broadcast_add(&mask)?)?.to_dtype(scores.dtype())
}

/// Rotary embedding (rotate-half) of x (B, T, n·D) at positions offset..offset+T, with
/// (context, D) cos / sin tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, n_head: usize, offset: usize) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    let d = w / n_head;
    let x = x.reshape((b, t, n_head, d))?;
    // In x's dtype, as Hugging Face's Llama casts its tables.
    let cos = like(&cos.narrow(0, offset, t)?, &x)?.reshape((t, 1, d))?;
    let sin = like(&sin.narrow(0, offset, t)?, &x)?.reshape((t, 1, d))?;
    let x1 = x.narrow(3, 0, d / 2)?;
    let x2 = x.narrow(3, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?.reshape((b, t, w))
}

/// y = x·W (+ b) for x (..., in); W stored (in, out), or (out, in) when `w_is_out_in`. In x's
/// dtype (W and b cast to it).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, w_is_out_in: bool) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let fan_in = *dims.last().unwrap_or(&0);
    let x2 = x.reshape((x.elem_count() / fan_in.max(1), fan_in))?;
    let w = like(w, x)?;
    let w = if w_is_out_in { w.t()? } else { w };
    let mut y = matmul(&x2, &w)?;
    if let Some(b) = b {
        y = y.broadcast_add(&like(b, x)?)?;
    }
    if let Some(last) = dims.last_mut() {
        *last = y.dim(1)?;
    }
    y.reshape(dims)
}

/// Causal self-attention without a cache: y (B, T, H·D) from q (B, T, H·D) and k, v
/// (B, T, K·D), K dividing H (grouped-query: query head h reads KV head h / (H/K)).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    let d = qw / n_head;
    let heads = |z: &Tensor, n: usize| z.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (heads(q, n_head)?, heads(k, n_kv_head)?, heads(v, n_kv_head)?);
    let rep = n_head / n_kv_head;
    let scores = matmul(&q.reshape((b, n_kv_head, rep * t, d))?, &k.t()?)?.reshape((b, n_head, t, t))?;
    let p = causal_softmax(&scores, scale)?;
    let y = matmul(&p.reshape((b, n_kv_head, rep * t, t))?, &v)?;
    y.reshape((b, n_head, t, d))?.transpose(1, 2)?.contiguous()?.reshape((b, t, n_head * d))
}

/// Bidirectional self-attention over right-padded rows: row b attends to its first
/// `key_lens[b]` keys, through an additive −∞ mask on the scores as BERT does.
pub fn padded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
    key_lens: &[usize],
) -> Result<Tensor> {
    let p = padded_attention_probs(q, k, n_head, n_kv_head, scale, key_lens)?;
    attend(&p, v, n_head, n_kv_head)
}

/// The attention probabilities (B, H, T, S) of [`padded_attention`], from q (B, T, H·D) and
/// k (B, S, K·D): S = T, or more keys than queries (a prefix-tuned encoder's virtual tokens
/// come first); row b sees its first `key_lens[b]` keys.
pub fn padded_attention_probs(
    q: &Tensor,
    k: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
    key_lens: &[usize],
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    let s = k.dim(1)?;
    super::sdpa::check_key_lens(key_lens, b, s)?;
    let d = qw / n_head;
    let q = q.reshape((b, t, n_head, d))?.transpose(1, 2)?.contiguous()?;
    let k = k.reshape((b, s, n_kv_head, d))?.transpose(1, 2)?.contiguous()?;
    let rep = n_head / n_kv_head;
    let scores = matmul(&q.reshape((b, n_kv_head, rep * t, d))?, &k.t()?)?.reshape((b, n_head, t, s))?;
    let mask: Vec<f32> =
        key_lens.iter().flat_map(|&l| (0..s).map(move |j| if j < l { 0.0 } else { f32::NEG_INFINITY })).collect();
    let mask = Tensor::from_vec(mask, (b, 1, 1, s), q.device())?;
    softmax_last_dim(&(f32(&scores)? * scale)?.broadcast_add(&mask)?)?.to_dtype(scores.dtype())
}

/// y (B, T, H·D) = P·V per head, for probabilities p (B, H, T, S) and v (B, S, K·D).
pub fn attend(p: &Tensor, v: &Tensor, n_head: usize, n_kv_head: usize) -> Result<Tensor> {
    let (b, _, t, s) = p.dims4()?;
    let d = v.dim(2)? / n_kv_head;
    let v = v.reshape((b, s, n_kv_head, d))?.transpose(1, 2)?.contiguous()?;
    let rep = n_head / n_kv_head;
    let y = matmul(&p.reshape((b, n_kv_head, rep * t, s))?, &v)?;
    y.reshape((b, n_head, t, d))?.transpose(1, 2)?.contiguous()?.reshape((b, t, n_head * d))
}

/// Mean cross-entropy of the LM head's logits `hidden · headᵀ` (hidden (N, C), head (V, C))
/// against `targets` (N). The logits in hidden's dtype, the loss in f32.
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    cross_entropy(&matmul(hidden, &like(head, hidden)?.t()?)?, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_direct_formula() {
        let x = t(&[1.0, 2.0, 3.0, -1.0, 0.0, 1000.0], (2, 3));
        let s = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
        let e: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let z: f32 = e.iter().sum();
        for j in 0..3 {
            assert!((s[0][j] - e[j] / z).abs() < 1e-6);
        }
        assert!((s[1][2] - 1.0).abs() < 1e-6, "stable for large logits");
    }

    #[test]
    fn norms_have_gradients() {
        // The trap these ops exist for: every parameter must receive a gradient.
        let x = Var::from_tensor(&t(&[1.0, 2.0, 4.0, 0.5, -1.0, 3.0], (2, 3))).unwrap();
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, 0.5, 2.0], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap()).unwrap();
        let y = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let z = rms_norm(&y, &w, 1e-6).unwrap();
        let loss = softmax_last_dim(&z).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        for v in [&x, &w, &b] {
            let gv = g.get(v.as_tensor()).expect("gradient reaches every input");
            let n = gv.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0 && n.is_finite());
        }
    }

    #[test]
    fn cross_entropy_matches_hand_value() {
        let logits = t(&[0.0, 0.0, 0.0, 0.0, 2.0f32.ln(), 0.0], (2, 3));
        let targets = Tensor::new(&[1u32, 1], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        let expect = (3.0f32.ln() + (4.0f32 / 2.0).ln()) / 2.0;
        assert!((ce - expect).abs() < 1e-6, "{ce} vs {expect}");
    }

    #[test]
    fn causal_mask_respects_offset() {
        let m = causal_mask(2, 4, 2, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0][2], 0.0);
        assert_eq!(m[0][3], f32::NEG_INFINITY);
        assert_eq!(m[1][3], 0.0);
    }
}
