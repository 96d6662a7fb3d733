//! Fused scaled-dot-product attention (no KV cache), forward and backward, with grouped-query
//! heads: causal (decoders), or bidirectional over right-padded rows (encoders: row b sees its
//! first `key_lens[b]` keys). The mask only sets where each score row ends, so both share
//! one kernel. One rayon task per (batch, KV head) runs the H/K query heads that share
//! it, with the (T, T) scores of one head at a time in a task-local scratch buffer: no
//! (B, H, T, T) tensor exists, and the backward recomputes the probabilities from Q, K and the
//! saved log-sum-exp of each row (FlashAttention's trade: one more QKᵀ, no T² memory).
//!
//! Query rows go in blocks of [`BLOCK`]; a block's products cover only the keys its last row
//! sees, so a causal head computes ~(1 + 1/n)/2 of the T×T scores (n blocks) instead of all.
//!
//! Layouts: q (B, T, H·D), k and v (B, T, K·D), where each may be a strided view whose last
//! dim is contiguous; or, packed, one (B, T, (H + 2K)·D) tensor holding q | k | v (GPT-2's
//! c_attn output) whose gradient comes back as one tensor — three `narrow`s would each cost a
//! zero-padded copy and an add in the backward. y (B, T, H·D) comes out in the layout the
//! output projection takes, so no head transposes are copied either. Matrix products go
//! through `gemm` (the kernel candle's CPU matmul uses), single-threaded inside a task.
//!
//! Per head, with s = 1/√D and P = softmax(s·QKᵀ + mask):
//!   forward   S = s·QKᵀ, P = exp(S − lse), Y = P·V
//!   backward  dP = dY·Vᵀ, dV += Pᵀ·dY, dS = P ⊙ (dP − rowsum(P ⊙ dP)),
//!             dQ = s·dS·K, dK += s·dSᵀ·Q

use super::cpu::tensor;
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::OnceLock;

/// The largest head dim lmforge's CUDA attention kernels take (their register accumulators are
/// sized for it); wider heads run the reference on a GPU.
pub const CUDA_MAX_HEAD_DIM: usize = 256;

/// The environment variable that picks the CUDA attention kernels: unset or `auto` for the
/// tensor-core ones wherever they apply (bf16, head dim 64 or 128, 16-byte aligned rows),
/// `scalar` for the scalar ones everywhere, as PyTorch's `enable_flash_sdp(False)` turns its
/// flash kernels off: for a GPU or driver where the tensor-core kernels misbehave.
pub const CUDA_ATTENTION_VAR: &str = "LMFORGE_CUDA_ATTENTION";

/// Whether [`CUDA_ATTENTION_VAR`]'s value lets the tensor-core kernels run.
pub fn tensor_core_attention_allowed(value: Option<&str>) -> Result<bool> {
    crate::switch(CUDA_ATTENTION_VAR, value, "scalar")
}

/// Query rows per block (see the module docs): small enough to skip most of the causal
/// triangle, large enough for efficient products.
const BLOCK: usize = 64;

/// Fused causal attention; see the module docs for shapes.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
) -> Result<Tensor> {
    causal_attention_shapes(q, k, v, n_head, n_kv_head)?;
    let (q, k, v) = (rows_view(q)?, rows_view(k)?, rows_view(v)?);
    q.apply_op3(&k, &v, Sdpa::new(n_head, n_kv_head, scale, None))
}

/// Fused causal attention over a packed qkv (B, T, (H + 2K)·D); see the module docs.
pub fn causal_attention_packed(qkv: &Tensor, n_head: usize, n_kv_head: usize, scale: f64) -> Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    if b == 0 || t == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || w % (n_head + 2 * n_kv_head) != 0 {
        bail!("causal_attention_packed: qkv {:?} does not fit {n_head} / {n_kv_head} heads", qkv.dims());
    }
    rows_view(qkv)?.apply_op1(Sdpa::new(n_head, n_kv_head, scale, None))
}

fn causal_attention_shapes(q: &Tensor, k: &Tensor, v: &Tensor, n_head: usize, n_kv_head: usize) -> Result<()> {
    let (b, t, qw) = q.dims3()?;
    let (kb, kt, kw) = k.dims3()?;
    if b == 0
        || t == 0
        || n_kv_head == 0
        || n_head % n_kv_head != 0
        || qw % n_head != 0
        || (kb, kt, kw) != (b, t, n_kv_head * (qw / n_head))
        || v.dims() != k.dims()
    {
        bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} do not fit {n_head} / {n_kv_head} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    Ok(())
}

/// Fused bidirectional attention over right-padded rows; see [`super::padded_attention`].
pub fn padded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    n_kv_head: usize,
    scale: f64,
    key_lens: &[usize],
) -> Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    check_key_lens(key_lens, b, t)?;
    // Same shape checks as the causal form.
    causal_attention_shapes(q, k, v, n_head, n_kv_head)?;
    let (q, k, v) = (rows_view(q)?, rows_view(k)?, rows_view(v)?);
    q.apply_op3(&k, &v, Sdpa::new(n_head, n_kv_head, scale, Some(key_lens.to_vec())))
}

/// Every row needs at least one key (an all-padding row has no softmax) and no more than T.
pub fn check_key_lens(key_lens: &[usize], b: usize, t: usize) -> Result<()> {
    if key_lens.len() != b || key_lens.iter().any(|&l| l == 0 || l > t) {
        bail!("padded attention: key lengths {key_lens:?} must be B = {b} values in 1..={t}");
    }
    Ok(())
}

/// The tensor itself when its last dim is contiguous (any strides above), else a copy.
fn rows_view(x: &Tensor) -> Result<Tensor> {
    if x.stride()[2] == 1 {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

pub(super) struct Sdpa {
    n_head: usize,
    n_kv_head: usize,
    scale: f32,
    /// Valid keys per batch row (bidirectional, padded); `None` = causal.
    key_lens: Option<Vec<usize>>,
    /// Log-sum-exp of every score row (B, H, T), written by the forward for the backward.
    lse: OnceLock<Vec<f32>>,
    /// The same, on the GPU, written by the CUDA kernel's forward.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    lse_gpu: OnceLock<Tensor>,
}

/// A (B, T, width) operand: data from its start offset, batch and row strides.
#[derive(Clone, Copy)]
pub(super) struct Operand {
    ptr: *const f32,
    sb: usize,
    st: usize,
}

// SAFETY: operands point into storages that stay borrowed for the whole op; tasks only read.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// The `width` columns from column `col` of a (B, T, W) layout.
    fn new(s: &CpuStorage, l: &Layout, col: usize, width: usize) -> Result<Self> {
        let data = s.as_slice::<f32>()?;
        let stride = l.stride();
        let dims = l.dims();
        // The furthest element read must lie inside the storage.
        let last = l.start_offset() + (dims[0] - 1) * stride[0] + (dims[1] - 1) * stride[1] + col + width - 1;
        if stride[2] != 1 || col + width > dims[2] || last >= data.len() {
            bail!("sdpa: operand layout {l:?} is not rows of contiguous features");
        }
        Ok(Self { ptr: data[l.start_offset() + col..].as_ptr(), sb: stride[0], st: stride[1] })
    }

    /// Columns col..col+width of dense (B, T, W) rows in `data`.
    pub fn rows(data: &[f32], b: usize, t: usize, w: usize, col: usize, width: usize) -> Result<Self> {
        if col + width > w || data.len() < b * t * w {
            bail!("sdpa: {width} columns from {col} of ({b}, {t}, {w}) rows in {} values", data.len());
        }
        Ok(Self { ptr: data[col..].as_ptr(), sb: t * w, st: w })
    }

    /// Pointer to row `i` of head `h` (width `d`) in batch `b`.
    fn head(&self, b: usize, h: usize, d: usize, i: usize) -> *const f32 {
        // SAFETY: in bounds by the check in `new` (b < B, i < T, h·d + d ≤ width).
        unsafe { self.ptr.add(b * self.sb + i * self.st + h * d) }
    }
}

/// The q, k, v operands of a packed (B, T, (H + 2K)·D) layout.
fn packed_operands(s: &CpuStorage, l: &Layout, h: usize, kh: usize) -> Result<(Operand, Operand, Operand)> {
    let d = l.dims()[2] / (h + 2 * kh);
    Ok((Operand::new(s, l, 0, h * d)?, Operand::new(s, l, h * d, kh * d)?, Operand::new(s, l, (h + kh) * d, kh * d)?))
}

fn whole(s: &CpuStorage, l: &Layout) -> Result<Operand> {
    Operand::new(s, l, 0, l.dims()[2])
}

fn cpu_of(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("sdpa: fused kernels run on the CPU only"),
    }
}

/// A dense (B, T, W) output written by many tasks, each to its own heads, at column `col`.
#[derive(Clone, Copy)]
pub(super) struct OutMat {
    ptr: *mut f32,
    t: usize,
    w: usize,
    col: usize,
}
// SAFETY: tasks write disjoint (batch, head) column blocks.
unsafe impl Send for OutMat {}
unsafe impl Sync for OutMat {}

impl OutMat {
    pub fn new(buf: &mut [f32], t: usize, w: usize, col: usize) -> Self {
        Self { ptr: buf.as_mut_ptr(), t, w, col }
    }

    /// Pointer to row `i` of head `h` (width `d`) in batch `b`.
    ///
    /// # Safety
    /// b, i, h must address an element of the buffer.
    unsafe fn head(&self, b: usize, h: usize, d: usize, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps the index in bounds.
        unsafe { self.ptr.add((b * self.t + i) * self.w + self.col + h * d) }
    }
}

/// dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n), strides in elements (row, column).
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    // SAFETY: the caller passes in-bounds pointers and strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Query-row blocks [i0, i1) of a T-row head.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |i0| (i0, (i0 + BLOCK).min(t)))
}

impl Sdpa {
    pub fn new(n_head: usize, n_kv_head: usize, scale: f64, key_lens: Option<Vec<usize>>) -> Self {
        Self { n_head, n_kv_head, scale: scale as f32, key_lens, lse: OnceLock::new(), lse_gpu: OnceLock::new() }
    }

    /// (B, T, D, H/K) from the shape of y (B, T, H·D).
    fn dims(&self, b: usize, t: usize, y_width: usize) -> (usize, usize, usize, usize) {
        (b, t, y_width / self.n_head, self.n_head / self.n_kv_head)
    }

    /// One past the last key query `i` of batch row `bi` sees.
    #[inline]
    fn row_end(&self, bi: usize, i: usize) -> usize {
        match &self.key_lens {
            None => i + 1,
            Some(lens) => lens[bi],
        }
    }

    /// y (B, T, H·D) and the log-sum-exp of every score row.
    pub fn forward(&self, q: Operand, k: Operand, v: Operand, b: usize, t: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        let (h, kh, rep) = (self.n_head, self.n_kv_head, self.n_head / self.n_kv_head);
        let mut y = vec![0f32; b * t * h * d];
        let mut lse = vec![0f32; b * h * t];
        let yo = OutMat::new(&mut y, t, h * d, 0);
        // (B, H, T) as (B, H rows, T columns)
        let lo = OutMat::new(&mut lse, h, t, 0);
        // One (T, T) scratch per rayon job, not per task: every block's products write the
        // part of it the block reads.
        (0..b * kh).into_par_iter().for_each_init(
            || vec![0f32; t * t],
            |s, task| {
                let (bi, g) = (task / kh, task % kh);
                for hi in g * rep..(g + 1) * rep {
                    for (i0, i1) in blocks(t) {
                        let (m, e) = (i1 - i0, self.row_end(bi, i1 - 1));
                        let sb = &mut s[i0 * t..i1 * t];
                        // SAFETY: operands checked in `new`; y and lse blocks are this task's.
                        unsafe {
                            // S block (m × e) = s · Q rows · K[..e]ᵀ
                            let (qb, kb) = (q.head(bi, hi, d, i0), k.head(bi, g, d, 0));
                            mm(m, e, d, sb.as_mut_ptr(), t, false, qb, q.st, 1, kb, 1, k.st, self.scale);
                            let lse_row = lo.head(bi, hi, t, 0);
                            vectorized(
                                #[inline(always)]
                                || {
                                    for (r, row) in sb.chunks_exact_mut(t).enumerate() {
                                        let i = i0 + r;
                                        let n = self.row_end(bi, i);
                                        let max = vmath::max(&row[..n]);
                                        let sum = vmath::exp_sum(&mut row[..n], max);
                                        vmath::scale(&mut row[..n], 1.0 / sum);
                                        row[n..e].fill(0.0);
                                        *lse_row.add(i) = max + sum.ln();
                                    }
                                },
                            );
                            // Y rows = P block (m × e) · V[..e]
                            let vb = v.head(bi, g, d, 0);
                            mm(m, d, e, yo.head(bi, hi, d, i0), h * d, false, sb.as_ptr(), t, 1, vb, v.st, 1, 1.0);
                        }
                    }
                }
            },
        );
        (y, lse)
    }

    /// Writes dq, dk, dv through `dq`, `dk`, `dv` (dk and dv zeroed: they accumulate).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        (q, k, v, dy): (Operand, Operand, Operand, Operand),
        (dq, dk, dv): (OutMat, OutMat, OutMat),
        lse: &[f32],
        b: usize,
        t: usize,
        d: usize,
    ) {
        let (h, kh, rep) = (self.n_head, self.n_kv_head, self.n_head / self.n_kv_head);
        (0..b * kh).into_par_iter().for_each_init(
            || (vec![0f32; t * t], vec![0f32; t * t]),
            |(p, dp), task| {
                let (bi, g) = (task / kh, task % kh);
                for hi in g * rep..(g + 1) * rep {
                    let lse_row = &lse[(bi * h + hi) * t..(bi * h + hi + 1) * t];
                    for (i0, i1) in blocks(t) {
                        let (m, e) = (i1 - i0, self.row_end(bi, i1 - 1));
                        let (pb, dpb) = (&mut p[i0 * t..i1 * t], &mut dp[i0 * t..i1 * t]);
                        // SAFETY: operands checked in `new`; dq, dk, dv blocks are this task's.
                        unsafe {
                            let (qb, kb, vb, dyb) = (
                                q.head(bi, hi, d, i0),
                                k.head(bi, g, d, 0),
                                v.head(bi, g, d, 0),
                                dy.head(bi, hi, d, i0),
                            );
                            // P block, recomputed: exp(s·Q·Kᵀ − lse)
                            mm(m, e, d, pb.as_mut_ptr(), t, false, qb, q.st, 1, kb, 1, k.st, self.scale);
                            // dP block = dY rows · V[..e]ᵀ
                            mm(m, e, d, dpb.as_mut_ptr(), t, false, dyb, dy.st, 1, vb, 1, v.st, 1.0);
                            vectorized(
                                #[inline(always)]
                                || {
                                    for (r, (pr, dr)) in pb.chunks_exact_mut(t).zip(dpb.chunks_exact_mut(t)).enumerate()
                                    {
                                        let n = self.row_end(bi, i0 + r);
                                        vmath::exp_sum(&mut pr[..n], lse_row[i0 + r]);
                                        pr[n..e].fill(0.0);
                                        // dS = P ⊙ (dP − rowsum(P ⊙ dP)), into dp
                                        let dot = vmath::dot(&pr[..n], &dr[..n]);
                                        for (x, &pv) in dr[..n].iter_mut().zip(&pr[..n]) {
                                            *x = pv * (*x - dot);
                                        }
                                        dr[n..e].fill(0.0);
                                    }
                                },
                            );
                            // dV[..e] += P blockᵀ · dY rows
                            let dvh = dv.head(bi, g, d, 0);
                            mm(e, d, m, dvh, dv.w, true, pb.as_ptr(), 1, t, dyb, dy.st, 1, 1.0);
                            // dQ rows = s · dS block · K[..e]
                            let dqh = dq.head(bi, hi, d, i0);
                            mm(m, d, e, dqh, dq.w, false, dpb.as_ptr(), t, 1, kb, k.st, 1, self.scale);
                            // dK[..e] += s · dS blockᵀ · Q rows
                            let dkh = dk.head(bi, g, d, 0);
                            mm(e, d, m, dkh, dk.w, true, dpb.as_ptr(), 1, t, qb, q.st, 1, self.scale);
                        }
                    }
                }
            },
        );
    }

    fn save_lse(&self, lse: Vec<f32>) {
        // The forward runs once per op instance; a second run would recompute the same values.
        let _ = self.lse.set(lse);
    }

    fn lse(&self) -> Result<&[f32]> {
        match self.lse.get() {
            Some(l) => Ok(l),
            None => bail!("sdpa: backward before forward"),
        }
    }
}

/// On a GPU: attention.cu's kernels (`cuda::attention`), the same math with the same saved
/// log-sum-exp, the gradient always one packed (B, T, (H + 2K)·D) tensor.
#[cfg(feature = "cuda")]
impl Sdpa {
    fn geometry(&self, b: usize, t: usize, d: usize) -> super::cuda::attention::Geometry<'_> {
        let (h, kh, scale, key_lens) = (self.n_head, self.n_kv_head, self.scale, self.key_lens.as_deref());
        super::cuda::attention::Geometry { b, t, h, kh, d, scale, key_lens }
    }

    fn cuda_forward(
        &self,
        [q, k, v]: [super::cuda::attention::Operand; 3],
        (b, t, d): (usize, usize, usize),
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (y, lse) = super::cuda::attention::forward("lmforge-sdpa", q, k, v, &self.geometry(b, t, d))?;
        let _ = self.lse_gpu.set(lse);
        Ok((y, Shape::from((b, t, self.n_head * d))))
    }

    /// The packed gradient of operands q, k, v read from columns `cols`.
    fn cuda_backward(
        &self,
        qkv: (&Tensor, &Tensor, &Tensor),
        cols: [usize; 3],
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let Some(lse) = self.lse_gpu.get() else { bail!("sdpa: backward before forward") };
        let (b, t, d, _) = self.dims(y.dim(0)?, y.dim(1)?, y.dim(2)?);
        super::cuda::attention::backward("lmforge-sdpa", qkv, cols, y, dy, lse, &self.geometry(b, t, d))
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "lmforge-sdpa"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Forward);
        let (q, k, v) = (whole(qs, ql)?, whole(ks, kl)?, whole(vs, vl)?);
        let (b, t, d, _) = self.dims(ql.dims()[0], ql.dims()[1], ql.dims()[2]);
        let (y, lse) = self.forward(q, k, v, b, t, d);
        self.save_lse(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, self.n_head * d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, t, d, _) = self.dims(ql.dims()[0], ql.dims()[1], ql.dims()[2]);
        self.cuda_forward([(qs, ql, 0), (ks, kl, 0), (vs, vl, 0)], (b, t, d))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(CustomOp3::name(self), super::profile::Pass::Backward);
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            let (h, kh, d) = (self.n_head, self.n_kv_head, y.dim(2)? / self.n_head);
            let g = self.cuda_backward((q, k, v), [0; 3], y, dy)?;
            let part = |col, width| g.narrow(2, col, width).map(Some);
            return Ok((part(0, h * d)?, part(h * d, kh * d)?, part((h + kh) * d, kh * d)?));
        }
        let _ = y;
        let lse = self.lse()?;
        let dy = dy.contiguous()?;
        let (qg, ql) = q.storage_and_layout();
        let (kg, kl) = k.storage_and_layout();
        let (vg, vl) = v.storage_and_layout();
        let (dg, dl) = dy.storage_and_layout();
        let operands =
            (whole(cpu_of(&qg)?, ql)?, whole(cpu_of(&kg)?, kl)?, whole(cpu_of(&vg)?, vl)?, whole(cpu_of(&dg)?, dl)?);
        let (b, t, d, _) = self.dims(ql.dims()[0], ql.dims()[1], ql.dims()[2]);
        let (h, kh) = (self.n_head, self.n_kv_head);
        let mut dq = vec![0f32; b * t * h * d];
        let mut dk = vec![0f32; b * t * kh * d];
        let mut dv = vec![0f32; b * t * kh * d];
        let outs =
            (OutMat::new(&mut dq, t, h * d, 0), OutMat::new(&mut dk, t, kh * d, 0), OutMat::new(&mut dv, t, kh * d, 0));
        self.backward(operands, outs, lse, b, t, d);
        drop((qg, kg, vg, dg));
        Ok((Some(tensor(dq, &[b, t, h * d])?), Some(tensor(dk, &[b, t, kh * d])?), Some(tensor(dv, &[b, t, kh * d])?)))
    }
}

/// The packed form: one (B, T, (H + 2K)·D) input, its gradient one tensor of that shape.
impl CustomOp1 for Sdpa {
    fn name(&self) -> &'static str {
        "lmforge-sdpa-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = super::profile::span(CustomOp1::name(self), super::profile::Pass::Forward);
        let (q, k, v) = packed_operands(s, l, self.n_head, self.n_kv_head)?;
        let (b, t, w) = (l.dims()[0], l.dims()[1], l.dims()[2]);
        let d = w / (self.n_head + 2 * self.n_kv_head);
        let (y, lse) = self.forward(q, k, v, b, t, d);
        self.save_lse(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, self.n_head * d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, t, w) = (l.dims()[0], l.dims()[1], l.dims()[2]);
        let (h, kh) = (self.n_head, self.n_kv_head);
        let d = w / (h + 2 * kh);
        self.cuda_forward([(s, l, 0), (s, l, h * d), (s, l, (h + kh) * d)], (b, t, d))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = super::profile::span(CustomOp1::name(self), super::profile::Pass::Backward);
        #[cfg(feature = "cuda")]
        if qkv.device().is_cuda() {
            let (h, kh, d) = (self.n_head, self.n_kv_head, y.dim(2)? / self.n_head);
            return self.cuda_backward((qkv, qkv, qkv), [0, h * d, (h + kh) * d], y, dy).map(Some);
        }
        let _ = y;
        let lse = self.lse()?;
        let dy = dy.contiguous()?;
        let (sg, sl) = qkv.storage_and_layout();
        let (dg, dl) = dy.storage_and_layout();
        let (q, k, v) = packed_operands(cpu_of(&sg)?, sl, self.n_head, self.n_kv_head)?;
        let dyo = whole(cpu_of(&dg)?, dl)?;
        let (b, t, w) = (sl.dims()[0], sl.dims()[1], sl.dims()[2]);
        let (h, kh) = (self.n_head, self.n_kv_head);
        let d = w / (h + 2 * kh);
        let mut dqkv = vec![0f32; b * t * w];
        let outs = (
            OutMat::new(&mut dqkv, t, w, 0),
            OutMat::new(&mut dqkv, t, w, h * d),
            OutMat::new(&mut dqkv, t, w, (h + kh) * d),
        );
        self.backward((q, k, v, dyo), outs, lse, b, t, d);
        drop((sg, dg));
        Ok(Some(tensor(dqkv, &[b, t, w])?))
    }
}
