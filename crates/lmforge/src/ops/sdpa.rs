//! Fused scaled-dot-product attention (no KV cache), forward and backward, with grouped-query
//! heads: causal (decoders), or bidirectional over right-padded rows (encoders: row b sees its
//! first `key_lens[b]` keys). The mask only sets where each score row ends, so both share
//! one kernel. One rayon task per (batch, KV head) runs the H/K query heads that share
//! it, with the (T, T) scores of one head at a time in a task-local scratch buffer: no
//! (B, H, T, T) tensor exists, and the backward recomputes the probabilities from Q, K and the
//! saved log-sum-exp of each row (FlashAttention's trade: one more QKᵀ, no T² memory).
//!
//! Layouts: q (B, T, H·D), k and v (B, T, K·D), where each may be a strided view whose last
//! dim is contiguous (GPT-2's q, k, v are narrows of one fused projection and are read in
//! place); y (B, T, H·D) comes out in the layout the output projection takes, so no head
//! transposes are copied either. Matrix products go through `gemm` (the kernel candle's CPU
//! matmul uses), single-threaded inside a task.
//!
//! Per head, with s = 1/√D and P = softmax(s·QKᵀ + mask):
//!   forward   S = s·QKᵀ, P = exp(S − lse), Y = P·V
//!   backward  dP = dY·Vᵀ, dV += Pᵀ·dY, dS = P ⊙ (dP − rowsum(P ⊙ dP)),
//!             dQ = s·dS·K, dK += s·dSᵀ·Q

use super::cpu::tensor;
use super::vmath::{self, vectorized};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::OnceLock;

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
    q.apply_op3(&k, &v, Sdpa { n_head, n_kv_head, scale: scale as f32, key_lens: None, lse: OnceLock::new() })
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
    let key_lens = Some(key_lens.to_vec());
    q.apply_op3(&k, &v, Sdpa { n_head, n_kv_head, scale: scale as f32, key_lens, lse: OnceLock::new() })
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

struct Sdpa {
    n_head: usize,
    n_kv_head: usize,
    scale: f32,
    /// Valid keys per batch row (bidirectional, padded); `None` = causal.
    key_lens: Option<Vec<usize>>,
    /// Log-sum-exp of every score row (B, H, T), written by the forward for the backward.
    lse: OnceLock<Vec<f32>>,
}

/// A (B, T, width) operand: data from its start offset, batch and row strides.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    sb: usize,
    st: usize,
}

// SAFETY: operands point into storages that stay borrowed for the whole op; tasks only read.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    fn new(s: &CpuStorage, l: &Layout) -> Result<Self> {
        let data = s.as_slice::<f32>()?;
        let stride = l.stride();
        let dims = l.dims();
        // The furthest element read must lie inside the storage.
        let last = l.start_offset() + (dims[0] - 1) * stride[0] + (dims[1] - 1) * stride[1] + dims[2] - 1;
        if stride[2] != 1 || last >= data.len() {
            bail!("sdpa: operand layout {l:?} is not rows of contiguous features");
        }
        Ok(Self { ptr: data[l.start_offset()..].as_ptr(), sb: stride[0], st: stride[1] })
    }

    /// Pointer to row 0 of head `h` (width `d`) in batch `b`.
    fn head(&self, b: usize, h: usize, d: usize) -> *const f32 {
        // SAFETY: in bounds by the check in `new` (b < B, h·d + d ≤ width).
        unsafe { self.ptr.add(b * self.sb + h * d) }
    }
}

fn cpu_of(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("sdpa: fused kernels run on the CPU only"),
    }
}

/// A contiguous (B, T, width) output written by many tasks, each to its own heads.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (batch, head) column blocks.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Pointer to element `i` (a method, so closures capture the whole Sync wrapper).
    ///
    /// # Safety
    /// `i` must lie inside the buffer.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps i in bounds.
        unsafe { self.0.add(i) }
    }
}

/// dst (m×n) = alpha·dst + beta·lhs (m×k) · rhs (k×n), strides in elements (row, column).
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

impl Sdpa {
    fn dims(&self, ql: &Layout) -> (usize, usize, usize, usize) {
        let (b, t, qw) = (ql.dims()[0], ql.dims()[1], ql.dims()[2]);
        (b, t, qw / self.n_head, self.n_head / self.n_kv_head)
    }

    /// One past the last key query `i` of batch row `bi` sees.
    #[inline]
    fn row_end(&self, bi: usize, i: usize) -> usize {
        match &self.key_lens {
            None => i + 1,
            Some(lens) => lens[bi],
        }
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
        let (q, k, v) = (Operand::new(qs, ql)?, Operand::new(ks, kl)?, Operand::new(vs, vl)?);
        let (b, t, d, rep) = self.dims(ql);
        let (h, kh) = (self.n_head, self.n_kv_head);
        let mut y = vec![0f32; b * t * h * d];
        let mut lse = vec![0f32; b * h * t];
        let yp = OutPtr(y.as_mut_ptr());
        let lp = OutPtr(lse.as_mut_ptr());
        (0..b * kh).into_par_iter().for_each(|task| {
            let (bi, g) = (task / kh, task % kh);
            let mut s = vec![0f32; t * t];
            for hi in g * rep..(g + 1) * rep {
                // SAFETY: pointers from checked operands; y and lse blocks are this task's.
                unsafe {
                    mm(
                        t,
                        t,
                        d,
                        s.as_mut_ptr(),
                        t,
                        false,
                        q.head(bi, hi, d),
                        q.st,
                        1,
                        k.head(bi, g, d),
                        1,
                        k.st,
                        self.scale,
                    );
                    let lse_row = lp.at((bi * h + hi) * t);
                    vectorized(|| {
                        for i in 0..t {
                            let e = self.row_end(bi, i);
                            let row = &mut s[i * t..i * t + e];
                            let max = vmath::max(row);
                            let sum = vmath::exp_sum(row, max);
                            vmath::scale(row, 1.0 / sum);
                            s[i * t + e..(i + 1) * t].fill(0.0);
                            *lse_row.add(i) = max + sum.ln();
                        }
                    });
                    let y_head = yp.at(bi * t * h * d + hi * d);
                    mm(t, d, t, y_head, h * d, false, s.as_ptr(), t, 1, v.head(bi, g, d), v.st, 1, 1.0);
                }
            }
        });
        // The forward runs once per op instance; a second run would recompute the same values.
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else { bail!("sdpa: backward before forward") };
        let dy = dy.contiguous()?;
        let (qg, ql) = q.storage_and_layout();
        let (kg, kl) = k.storage_and_layout();
        let (vg, vl) = v.storage_and_layout();
        let (dg, dl) = dy.storage_and_layout();
        let (qo, ko, vo, dyo) = (
            Operand::new(cpu_of(&qg)?, ql)?,
            Operand::new(cpu_of(&kg)?, kl)?,
            Operand::new(cpu_of(&vg)?, vl)?,
            Operand::new(cpu_of(&dg)?, dl)?,
        );
        let (b, t, d, rep) = self.dims(ql);
        let (h, kh) = (self.n_head, self.n_kv_head);
        let mut dq = vec![0f32; b * t * h * d];
        let mut dk = vec![0f32; b * t * kh * d];
        let mut dv = vec![0f32; b * t * kh * d];
        let (dqp, dkp, dvp) = (OutPtr(dq.as_mut_ptr()), OutPtr(dk.as_mut_ptr()), OutPtr(dv.as_mut_ptr()));
        (0..b * kh).into_par_iter().for_each(|task| {
            let (bi, g) = (task / kh, task % kh);
            let mut p = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            // SAFETY: in bounds of dk and dv (bi < B, g < K).
            let (dk_head, dv_head) = unsafe { (dkp.at(bi * t * kh * d + g * d), dvp.at(bi * t * kh * d + g * d)) };
            for (r, hi) in (g * rep..(g + 1) * rep).enumerate() {
                // SAFETY: pointers from checked operands; dq, dk, dv blocks are this task's.
                unsafe {
                    mm(
                        t,
                        t,
                        d,
                        p.as_mut_ptr(),
                        t,
                        false,
                        qo.head(bi, hi, d),
                        qo.st,
                        1,
                        ko.head(bi, g, d),
                        1,
                        ko.st,
                        self.scale,
                    );
                    let lse_row = &lse[(bi * h + hi) * t..(bi * h + hi + 1) * t];
                    vectorized(|| {
                        for i in 0..t {
                            let e = self.row_end(bi, i);
                            let row = &mut p[i * t..(i + 1) * t];
                            vmath::exp_sum(&mut row[..e], lse_row[i]);
                            row[e..].fill(0.0);
                        }
                    });
                    // dP = dY·Vᵀ
                    mm(
                        t,
                        t,
                        d,
                        dp.as_mut_ptr(),
                        t,
                        false,
                        dyo.head(bi, hi, d),
                        dyo.st,
                        1,
                        vo.head(bi, g, d),
                        1,
                        vo.st,
                        1.0,
                    );
                    // dV += Pᵀ·dY
                    mm(t, d, t, dv_head, kh * d, r > 0, p.as_ptr(), 1, t, dyo.head(bi, hi, d), dyo.st, 1, 1.0);
                    // dS = P ⊙ (dP − rowsum(P ⊙ dP)), into dp
                    vectorized(|| {
                        for i in 0..t {
                            let e = self.row_end(bi, i);
                            let (pr, dr) = (&p[i * t..i * t + e], &mut dp[i * t..(i + 1) * t]);
                            let dot = vmath::dot(pr, dr);
                            for (x, &pv) in dr[..e].iter_mut().zip(pr) {
                                *x = pv * (*x - dot);
                            }
                            dr[e..].fill(0.0);
                        }
                    });
                    // dQ = s·dS·K
                    let dq_head = dqp.at(bi * t * h * d + hi * d);
                    mm(t, d, t, dq_head, h * d, false, dp.as_ptr(), t, 1, ko.head(bi, g, d), ko.st, 1, self.scale);
                    // dK += s·dSᵀ·Q
                    mm(t, d, t, dk_head, kh * d, r > 0, dp.as_ptr(), 1, t, qo.head(bi, hi, d), qo.st, 1, self.scale);
                }
            }
        });
        drop((qg, kg, vg, dg));
        Ok((Some(tensor(dq, &[b, t, h * d])?), Some(tensor(dk, &[b, t, kh * d])?), Some(tensor(dv, &[b, t, kh * d])?)))
    }
}
