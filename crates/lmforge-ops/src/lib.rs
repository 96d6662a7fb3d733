//! Tensor ops that the models train through, one public function per op. Each picks one of two
//! implementations with the same API:
//!
//! - [`reference`]: composed from candle primitives, slow and readable — the test oracle.
//! - fused CPU kernels (`CustomOp`s with a hand-written backward, rows spread over the rayon
//!   pool): [`linear`] (bias folded into the product; GELU or SwiGLU as the up-projection's
//!   epilogue), [`norm`] (LayerNorm, RMSNorm), [`activation`] (GELU, SwiGLU, RoPE),
//!   [`attention`] (scale + causal mask + softmax in one pass), [`sdpa`] (whole attention per
//!   head in query-row blocks, no (B, H, T, T) tensor, recomputed in the backward; GPT-2's
//!   packed qkv read in place), [`loss`] (cross-entropy, and cross-entropy fused with the LM
//!   head in row chunks so the (N, V) logits never exist at once), [`adamw`] (the optimizer
//!   update in place). Their element-wise loops run through [`vmath`] (inlined `exp`, lane
//!   reductions, AVX2 + FMA dispatch).
//!
//! Why: candle's composed element-wise ops run single-threaded, allocate a temporary per
//! primitive, and their backward allocates several more (a composed LayerNorm is ~10 tensors
//! each way); at the bench shapes that costs more than the matmuls.
//!
//! Which one runs is [`Kernels`], per thread (default fused), set with [`KernelsGuard`]. The
//! fused path is taken for f32 tensors on the CPU, and on a GPU (`--features cuda`) for the ops
//! that have a CUDA kernel (module `cuda`: the norms, attention, GELU, SwiGLU and RoPE, f32 or
//! bf16; AdamW's update, f32; the token embedding's gradient, [`embedding`]); anything else
//! runs the reference. A decoder's sublayers run as one node each: [`sublayer`] on the CPU,
//! [`device_sublayer`] on a GPU.
//! Fused kernels need contiguous input and call `.contiguous()` (a no-op when already so);
//! a contiguous view at a storage offset (a `narrow` of the outer dim) is read in place.
//!
//! Mixed precision: activations may be bf16 while parameters stay f32; every op casts its
//! parameters to the activations' dtype and runs its reductions in f32 (see [`reference`]).
//!
//! Shapes: any leading dims `...`, last dim `C` (features) or `V` (vocab).

pub mod activation;
pub mod adafactor;
pub mod adamw;
pub mod attention;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod device_sublayer;
pub mod embedding;
#[cfg(test)]
mod fatbin;
mod gemv;
pub mod grad_norm;
pub mod kernel_signature;
pub mod linear;
pub mod lm_loss;
pub mod loss;
pub mod node;
pub mod norm;
pub mod param_grads;
pub mod pool;
pub mod profile;
pub mod qgemv;
pub mod reference;
pub mod sdpa;
pub mod sublayer;
pub mod vmath;
pub mod weight_grad;
pub mod workers;

use candle_core::{DType, Result, Tensor, D};
use std::cell::Cell;

pub use activation::Gelu;
pub use qgemv::quantized_matmul;
pub use reference::{
    causal_mask, cross_entropy_per_row, dropout, like, log_softmax_last_dim, matmul, softmax_last_dim,
};
pub use sublayer::{AttentionSublayer, MlpProj, MlpSublayer, Proj, QkvProj, SublayerNorm};

/// Which implementation the ops in this module run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Fused kernels (f32 on the CPU, the CUDA kernels on a GPU; the reference elsewhere).
    Fused,
    /// The composed reference ops.
    Reference,
}

impl Kernels {
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fused => "fused",
            Kernels::Reference => "reference",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "fused" => Some(Kernels::Fused),
            "reference" => Some(Kernels::Reference),
            _ => None,
        }
    }
}

thread_local! {
    // Per thread, so tests comparing both paths can run in parallel without racing.
    static KERNELS: Cell<Kernels> = const { Cell::new(Kernels::Fused) };
}

/// The kernels this thread runs.
pub fn kernels() -> Kernels {
    KERNELS.with(|k| k.get())
}

/// Sets this thread's kernels until dropped, then restores the previous choice.
pub struct KernelsGuard {
    previous: Kernels,
}

impl KernelsGuard {
    pub fn set(k: Kernels) -> Self {
        Self { previous: KERNELS.with(|c| c.replace(k)) }
    }
}

impl Drop for KernelsGuard {
    fn drop(&mut self) {
        KERNELS.with(|c| c.set(self.previous));
    }
}

/// The fused path applies: chosen, and every tensor is f32 on the CPU.
fn fused(ts: &[&Tensor]) -> bool {
    kernels() == Kernels::Fused && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// lmforge's CUDA kernels apply (the ops that have them): chosen, a CUDA build, and x f32 or
/// bf16 on a GPU.
fn cuda_kernels(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && kernels() == Kernels::Fused
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// lmforge's CUDA attention kernels apply: [`cuda_kernels`] for q, k and v of one dtype on one
/// GPU, with a head dim `d` the kernels take.
fn cuda_attention(q: &Tensor, others: &[&Tensor], d: usize) -> bool {
    cuda_kernels(q)
        && others.iter().all(|t| t.dtype() == q.dtype() && t.device().same_device(q.device()))
        && (1..=sdpa::CUDA_MAX_HEAD_DIM).contains(&d)
}

/// y = x·W (+ b) for x (..., in); W stored (in, out) (GPT-2's Conv1D), or (out, in)
/// (nn.Linear) when `w_is_out_in`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, w_is_out_in: bool) -> Result<Tensor> {
    if fused(&[x, w]) && b.is_none_or(|b| fused(&[b])) {
        linear::linear(x, w, b, w_is_out_in)
    } else {
        reference::linear(x, w, b, w_is_out_in)
    }
}

/// Rows `ids` (u32, any shape) of an embedding table (V, C) → (ids…, C): candle's
/// `index_select` on the CPU, on a GPU lmforge's op with a sorted, deterministic backward
/// ([`embedding`]).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    embedding::embedding(table, ids)
}

/// RoPE's (context, D) cos and sin tables for head dim D (even) and base `theta`, rotate-half
/// layout (the two halves of a row repeat the same angles), as Hugging Face's Llama builds
/// them: inverse frequencies 1 / theta^(2i/D) in f32.
pub fn rope_tables(
    head_dim: usize,
    context: usize,
    theta: f64,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(context * head_dim);
    let mut sin = Vec::with_capacity(context * head_dim);
    for pos in 0..context {
        let row: Vec<f64> = (0..half)
            .map(|i| {
                // HF computes inv_freq in f32: 1 / theta^(2i/D).
                let inv = 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
                pos as f64 * inv as f64
            })
            .collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| (*a as f32).cos()));
            sin.extend(row.iter().map(|a| (*a as f32).sin()));
        }
    }
    Ok((Tensor::from_vec(cos, (context, head_dim), device)?, Tensor::from_vec(sin, (context, head_dim), device)?))
}

/// Rotary position embedding (rotate-half) of x (B, T, n·D) at positions offset..offset+T,
/// from (context, D) cos / sin tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, n_head: usize, offset: usize) -> Result<Tensor> {
    let tables_on_gpu = [cos, sin].iter().all(|t| t.dtype() == DType::F32 && t.device().same_device(x.device()));
    if fused(&[x, cos, sin]) || (cuda_kernels(x) && tables_on_gpu) {
        activation::rope(x, cos, sin, n_head, offset)
    } else {
        reference::rope(x, cos, sin, n_head, offset)
    }
}

/// LayerNorm over the last dim with biased variance, as `torch.nn.LayerNorm`.
/// x: (..., C), weight/bias: (C)
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, weight, bias]) || cuda_kernels(x) {
        norm::layer_norm(x, weight, bias, eps)
    } else {
        reference::layer_norm(x, weight, bias, eps)
    }
}

/// RMSNorm over the last dim, as Hugging Face `LlamaRMSNorm`: x / sqrt(mean(x²) + eps) * w.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, weight]) || cuda_kernels(x) {
        norm::rms_norm(x, weight, eps)
    } else {
        reference::rms_norm(x, weight, eps)
    }
}

/// GELU, tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) || cuda_kernels(x) {
        activation::gelu_tanh(x)
    } else {
        reference::gelu_tanh(x)
    }
}

/// gelu(x·W (+ b)) as one op (weights as in [`linear`]); the fused kernel applies the GELU as
/// the product's epilogue (on a GPU the bias and the GELU, one kernel after the product).
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, w_is_out_in: bool, form: Gelu) -> Result<Tensor> {
    if fused(&[x, w]) && b.is_none_or(|b| fused(&[b])) {
        return linear::linear_gelu(x, w, b, w_is_out_in, form);
    }
    #[cfg(feature = "cuda")]
    if let Some(b) = b.filter(|_| cuda_kernels(x)) {
        // The bias and GELU as the product's epilogue kernel.
        return activation::bias_gelu(&reference::linear(x, w, None, w_is_out_in)?, b, form);
    }
    gelu(&reference::linear(x, w, b, w_is_out_in)?, form)
}

/// silu(x·W_gate) ⊙ (x·W_up) as one op (no biases; weights as in [`linear`]).
pub fn linear_swiglu(x: &Tensor, w_gate: &Tensor, w_up: &Tensor, w_is_out_in: bool) -> Result<Tensor> {
    if fused(&[x, w_gate, w_up]) {
        linear::linear_swiglu(x, w_gate, w_up, w_is_out_in)
    } else {
        let lin = |w| reference::linear(x, w, None, w_is_out_in);
        swiglu(&lin(w_gate)?, &lin(w_up)?)
    }
}

/// GELU in either form.
pub fn gelu(x: &Tensor, form: Gelu) -> Result<Tensor> {
    match form {
        Gelu::Tanh => gelu_tanh(x),
        Gelu::Erf => gelu_erf(x),
    }
}

/// GELU, exact erf form (BERT's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) || cuda_kernels(x) {
        activation::gelu_erf(x)
    } else {
        reference::gelu_erf(x)
    }
}

/// SwiGLU gate: silu(gate) * up.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(&[gate, up]) || (cuda_kernels(gate) && up.dtype() == gate.dtype()) {
        activation::swiglu(gate, up)
    } else {
        reference::swiglu(gate, up)
    }
}

/// Attention probabilities from raw scores (..., T, S): softmax(scale · scores) with a causal
/// mask, queries at positions S−T..S (the newest T of S keys; S = T without a cache).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(&[scores]) {
        attention::causal_softmax(scores, scale)
    } else {
        reference::causal_softmax(scores, scale)
    }
}

/// Causal self-attention without a KV cache: y (B, T, H·D) from q (B, T, H·D) and k, v
/// (B, T, K·D) (grouped-query when K < H), softmax(scale · qkᵀ + causal mask) · v per head.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
) -> Result<Tensor> {
    if fused(&[q, k, v]) || cuda_attention(q, &[k, v], q.dim(D::Minus1)? / n_head.max(1)) {
        sdpa::causal_attention(q, k, v, n_head, n_kv_head, scale)
    } else {
        reference::causal_attention(q, k, v, n_head, n_kv_head, scale)
    }
}

/// [`causal_attention`] over one packed projection qkv (B, T, (H + 2K)·D) holding q | k | v
/// (GPT-2's c_attn output); the fused kernel returns its gradient as one tensor.
pub fn causal_attention_packed(qkv: &Tensor, n_head: usize, n_kv_head: usize, scale: f64) -> Result<Tensor> {
    let d = qkv.dim(D::Minus1)? / (n_head + 2 * n_kv_head).max(1);
    if fused(&[qkv]) || cuda_attention(qkv, &[], d) {
        sdpa::causal_attention_packed(qkv, n_head, n_kv_head, scale)
    } else {
        let (q, k, v) = (
            qkv.narrow(2, 0, n_head * d)?,
            qkv.narrow(2, n_head * d, n_kv_head * d)?,
            qkv.narrow(2, (n_head + n_kv_head) * d, n_kv_head * d)?,
        );
        reference::causal_attention(&q, &k, &v, n_head, n_kv_head, scale)
    }
}

/// Bidirectional (encoder) self-attention over right-padded sequences: y (B, T, H·D) from q
/// (B, T, H·D) and k, v (B, T, K·D); row b attends to its first `key_lens[b]` keys only (the
/// attention mask of its padding), as BERT's additive −∞ mask does.
pub fn padded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
    key_lens: &[usize],
) -> Result<Tensor> {
    if fused(&[q, k, v]) || cuda_attention(q, &[k, v], q.dim(D::Minus1)? / n_head.max(1)) {
        sdpa::padded_attention(q, k, v, n_head, n_kv_head, scale, key_lens)
    } else {
        reference::padded_attention(q, k, v, n_head, n_kv_head, scale, key_lens)
    }
}

/// An environment switch between a GPU path and its fallback (`LMFORGE_CUDA_ATTENTION`,
/// `LMFORGE_CUDA_WEIGHT_GRAD`, `LMFORGE_CUDA_ARG_CHECK`): unset, empty or `auto` is on, `off` (the fallback's name) off,
/// anything else an error naming the variable.
fn switch(var: &str, value: Option<&str>, off: &str) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("" | "auto") => Ok(true),
        Some(v) if v == off => Ok(false),
        Some(other) => candle_core::bail!("{var}={other}: expected \"auto\" or \"{off}\""),
    }
}

/// A [`switch`] read once a process.
type Switch = std::sync::OnceLock<std::result::Result<bool, String>>;

/// `cell`'s value, `var` read from the environment and parsed by `parse` the first time.
fn read_switch(cell: &'static Switch, var: &str, parse: fn(Option<&str>) -> Result<bool>) -> Result<bool> {
    let value = cell.get_or_init(|| parse(std::env::var(var).ok().as_deref()).map_err(|e| e.to_string()));
    value.clone().map_err(candle_core::Error::msg)
}

/// Which sublayer node runs x and these parameters: the CPU's fused kernels' ([`sublayer`]),
/// or on a GPU the device-generic one over lmforge's CUDA kernels ([`device_sublayer`], all
/// parameters f32 on x's device); either only when the node (whose only input is x) joins the
/// gradient graph whenever a parameter trains.
fn sublayer_node(x: &Tensor, params: &[&Tensor]) -> Option<SublayerNode> {
    if x.track_op() || !params.iter().any(|t| t.track_op()) {
        if fused(&[x]) && fused(params) {
            return Some(SublayerNode::Cpu);
        }
        let on_device = |t: &&Tensor| t.dtype() == DType::F32 && t.device().same_device(x.device());
        if cuda_kernels(x) && params.iter().all(on_device) {
            return Some(SublayerNode::Device);
        }
    }
    None
}

enum SublayerNode {
    Cpu,
    Device,
}

/// `x + attention(norm(x))` for x (B, T, C), causal without a KV cache, as one node
/// ([`sublayer`], [`device_sublayer`]); None where it does not apply (the caller composes it
/// from the ops above).
pub fn attention_sublayer(x: &Tensor, p: &AttentionSublayer) -> Result<Option<Tensor>> {
    match sublayer_node(x, &p.tensors()) {
        Some(SublayerNode::Cpu) => sublayer::attention(x, p).map(Some),
        // The GPU's attention kernels take head dims up to sdpa::CUDA_MAX_HEAD_DIM.
        Some(SublayerNode::Device)
            if cuda_attention(x, &[], linear::Weight::of(&p.o.w, p.w_is_out_in)?.fan_in / p.n_head.max(1)) =>
        {
            device_sublayer::attention(x, p).map(Some)
        }
        _ => Ok(None),
    }
}

/// `x + mlp(norm(x))` as one node ([`sublayer`], [`device_sublayer`]); None where it does not
/// apply.
pub fn mlp_sublayer(x: &Tensor, p: &MlpSublayer) -> Result<Option<Tensor>> {
    match sublayer_node(x, &p.tensors()) {
        Some(SublayerNode::Cpu) => sublayer::mlp(x, p).map(Some),
        Some(SublayerNode::Device) => device_sublayer::mlp(x, p).map(Some),
        None => Ok(None),
    }
}

/// Mean cross-entropy (nats) of `logits` (N, V) against `targets` (N) of u32 class ids.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[logits]) {
        loss::cross_entropy(logits, targets)
    } else {
        reference::cross_entropy(logits, targets)
    }
}

/// Mean cross-entropy of the LM head's logits `hidden · headᵀ` (hidden (N, C), head (V, C))
/// against `targets` (N). Fused, the logits are formed a chunk of rows at a time: by the CPU
/// kernel for f32 on the CPU, else (a GPU, bf16) by [`lm_loss`] from candle ops.
pub fn lm_head_cross_entropy(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[hidden, head]) {
        loss::lm_head_cross_entropy(hidden, head, targets)
    } else if kernels() == Kernels::Fused {
        lm_loss::lm_head_cross_entropy(hidden, head, targets)
    } else {
        reference::lm_head_cross_entropy(hidden, head, targets)
    }
}

/// Σ x² (in f64), for global-norm gradient clipping.
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    if fused(&[x]) {
        grad_norm::sum_squares(x)
    } else {
        x.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
    }
}

/// Σ x² over every tensor of `xs` (in f64), the squared global norm for clipping. CPU tensors
/// one at a time ([`sum_squares`]); a GPU's with lmforge's kernels in two launches for all of
/// them (`cuda::sum_squares`), else composed as one reduction on their device read once, since
/// a read per tensor would wait for the device's stream once per parameter.
pub fn sum_squares_all<'a>(xs: impl IntoIterator<Item = &'a Tensor>) -> Result<f64> {
    let _span = profile::span("gradient norm", profile::Pass::Gradients);
    let mut total = 0.0;
    let mut on_device = Vec::new();
    for x in xs {
        if x.device().is_cpu() {
            total += sum_squares(x)?;
        } else {
            on_device.push(x);
        }
    }
    // On a GPU, f32 gradients of one device: two launches for all of them (cuda::sum_squares).
    #[cfg(feature = "cuda")]
    if let Some(first) = on_device.first() {
        let one_gpu = on_device.iter().all(|x| x.dtype() == DType::F32 && x.device().same_device(first.device()));
        if one_gpu && cuda_kernels(first) {
            return Ok(total + cuda::sum_squares::sum_squares_all(&on_device)?);
        }
    }
    let on_device: Vec<Tensor> =
        on_device.into_iter().map(|x| x.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<Result<_>>()?;
    if !on_device.is_empty() {
        total += Tensor::stack(&on_device, 0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(total)
}

/// x · s, outside the gradient graph (a gradient being clipped).
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    if fused(&[x]) {
        grad_norm::scale(x, s)
    } else {
        x.detach() * s
    }
}

/// AdamW's update of every parameter of `updates` and its moments in place, when the fused
/// kernels apply to all of them: on a GPU one kernel launch for the lot (a multi-tensor
/// update), on the CPU the fused kernel a tensor at a time. Returns false (nothing done)
/// otherwise, and the caller runs its composed update.
pub fn adamw_in_place_all(updates: &[adamw::AdamWUpdate<'_>]) -> Result<bool> {
    let applies = |u: &adamw::AdamWUpdate| {
        let ts = [u.param, u.grad, u.m, u.v];
        (fused(&ts) && u.step.grad_scale == 1.0)
            || (cuda_kernels(u.param) && ts.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cuda()))
    };
    let one_device = updates.windows(2).all(|w| w[0].param.device().same_device(w[1].param.device()));
    if !(one_device && updates.iter().all(applies)) {
        return Ok(false);
    }
    adamw::adamw_all(updates)?;
    Ok(true)
}

/// Adafactor's update of one parameter in place through lmforge's CUDA kernels, when they
/// apply (the reference kernels not chosen, a CUDA build, every tensor f32 on one GPU, a matrix
/// with row and column factors or a vector with its full moment). Returns false (nothing done)
/// otherwise, and the caller runs its composed update.
pub fn adafactor_in_place(u: &adafactor::AdafactorUpdate<'_>) -> Result<bool> {
    let on_gpu = u.tensors().iter().all(|t| t.dtype() == DType::F32 && t.device().same_device(u.param.device()));
    if !(cuda_kernels(u.param) && on_gpu && u.rank_matches()) {
        return Ok(false);
    }
    #[cfg(feature = "cuda")]
    {
        let _span = profile::span("adafactor", profile::Pass::Update);
        cuda::adafactor::update(u)?;
        Ok(true)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(false)
}

#[cfg(test)]
mod tests;
