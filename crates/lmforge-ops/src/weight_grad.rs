//! A linear layer's weight gradient from its product straight into f32: dW = Pᵀ·Q for the
//! rows P (rows, m) and Q (rows, n) — x and dy, or dy and x for nn.Linear's (out, in) layout —
//! as one product with an f32 output and f32 accumulation whatever the operands' dtype
//! (cuBLAS's GemmEx on a GPU: bf16 or f32 operands, f32 out; the fused `gemm` on the CPU), and,
//! where a step already holds the weight's gradient sum (micro-batches accumulated), added to
//! that sum by the product itself (β = 1; Megatron-LM's gradient-accumulation fusion).
//!
//! Composed, a bf16 product gives dW in bf16 — rounded to 8 bits of mantissa before it is ever
//! summed — then one pass casts it to f32 and another adds it to the sum: 2 + 6 + 12 bytes a
//! parameter and two temporaries, where this writes 4 (8 when adding in place) and none.
//! [`crate::param_grads::add_weight_grad`] decides which of the two ops runs.

use super::cpu::{gemm_into, gemm_new, slice, slice_mut};
use candle_core::{bail, CpuStorage, CustomOp2, DType, InplaceOp3, Layout, Result, Shape, Tensor};

/// Pᵀ·Q in f32, a new (m, n) tensor, for P (rows, m) and Q (rows, n) of one dtype.
pub fn transposed_product(p: &Tensor, q: &Tensor) -> Result<Tensor> {
    let (p, q) = (p.contiguous()?, q.contiguous()?);
    dims(&p, &q)?;
    p.apply_op2_no_bwd(&q, &TransposedProduct)
}

/// acc (m, n, f32, contiguous) += Pᵀ·Q, in place.
pub fn add_transposed_product(acc: &Tensor, p: &Tensor, q: &Tensor) -> Result<()> {
    let (p, q) = (p.contiguous()?, q.contiguous()?);
    let (_, m, n) = dims(&p, &q)?;
    if acc.dims() != [m, n] || acc.dtype() != DType::F32 || !acc.is_contiguous() {
        bail!("{ADD}: the sum {:?} {:?} is not the contiguous f32 ({m}, {n}) of the product", acc.dtype(), acc.dims());
    }
    acc.inplace_op3(&p, &q, &AddTransposedProduct)
}

/// `sum` + Pᵀ·Q in f32 (Pᵀ·Q alone without a sum), for a caller that owns `sum`'s buffer:
/// added into it in place by the product where the ops here apply, else composed (the product
/// in the operands' dtype, cast to f32, added).
pub fn add_to(sum: Option<Tensor>, p: &Tensor, q: &Tensor) -> Result<Tensor> {
    if !applies(p.dtype(), p.device())? {
        let part = crate::reference::matmul(&p.t()?, q)?.to_dtype(DType::F32)?;
        return match sum {
            Some(sum) => sum + part,
            None => Ok(part),
        };
    }
    match sum {
        Some(sum) => add_transposed_product(&sum, p, q).map(|()| sum),
        None => transposed_product(p, q),
    }
}

/// Whether the ops here take operands of `dtype` on `device`: f32 anywhere, bf16 on a GPU
/// (the CPU's `gemm` has no bf16); on a GPU unless [`CUDA_WEIGHT_GRAD_VAR`] says `composed`.
pub fn applies(dtype: DType, device: &candle_core::Device) -> Result<bool> {
    static FUSED: crate::Switch = std::sync::OnceLock::new();
    if device.is_cuda() && !crate::read_switch(&FUSED, CUDA_WEIGHT_GRAD_VAR, fused_allowed)? {
        return Ok(false);
    }
    Ok(dtype == DType::F32 || (dtype == DType::BF16 && device.is_cuda()))
}

/// `auto` (or unset): a GPU forms the weight gradients with these ops; `composed`: with the
/// product in the operands' dtype, cast and added (what the reference ops do), for a GPU or
/// library where cuBLAS's mixed-dtype product misbehaves.
pub const CUDA_WEIGHT_GRAD_VAR: &str = "LMFORGE_CUDA_WEIGHT_GRAD";

/// Whether [`CUDA_WEIGHT_GRAD_VAR`]'s value lets a GPU use the ops here.
pub fn fused_allowed(value: Option<&str>) -> Result<bool> {
    crate::switch(CUDA_WEIGHT_GRAD_VAR, value, "composed")
}

const NEW: &str = "lmforge-transposed-product";
const ADD: &str = "lmforge-add-transposed-product";

/// (rows, m, n) of P (rows, m) and Q (rows, n).
fn dims(p: &Tensor, q: &Tensor) -> Result<(usize, usize, usize)> {
    let ((rows, m), (rows_q, n)) = (p.dims2()?, q.dims2()?);
    if rows != rows_q || p.dtype() != q.dtype() {
        bail!("{NEW}: P {:?} {:?} and Q {:?} {:?} differ in rows or dtype", p.dtype(), p.dims(), q.dtype(), q.dims());
    }
    Ok((rows, m, n))
}

/// (rows, m, n) from the operands' layouts (also the cuBLAS product's check).
pub(crate) fn layout_dims(pl: &Layout, ql: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match (pl.dims(), ql.dims()) {
        (&[rows, m], &[rows_q, n]) if rows == rows_q => Ok((rows, m, n)),
        (a, b) => bail!("{op}: operands {a:?} and {b:?} are not (rows, m) and (rows, n)"),
    }
}

struct TransposedProduct;

impl CustomOp2 for TransposedProduct {
    fn name(&self) -> &'static str {
        NEW
    }

    fn cpu_fwd(&self, ps: &CpuStorage, pl: &Layout, qs: &CpuStorage, ql: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, m, n) = layout_dims(pl, ql, NEW)?;
        let (p, q) = (slice(ps, pl, NEW)?, slice(qs, ql, NEW)?);
        // Pᵀ (m × rows) is P read with row stride 1 and column stride m.
        Ok((CpuStorage::F32(gemm_new(m, n, rows, p, (1, m), q, (n, 1))), Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ps: &candle_core::CudaStorage,
        pl: &Layout,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, m, n) = layout_dims(pl, ql, NEW)?;
        use candle_core::backend::BackendStorage;
        let dev = ps.device().clone();
        // SAFETY: β = 0: the product writes every element before anything reads them.
        let mut out = unsafe { dev.alloc::<f32>(m * n) }?;
        super::cuda::gemm::transposed_product(&dev, &mut out, 0.0, ps, pl, qs, ql, NEW)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, dev), Shape::from((m, n))))
    }
}

struct AddTransposedProduct;

impl InplaceOp3 for AddTransposedProduct {
    fn name(&self) -> &'static str {
        ADD
    }

    fn cpu_fwd(
        &self,
        accs: &mut CpuStorage,
        accl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        qs: &CpuStorage,
        ql: &Layout,
    ) -> Result<()> {
        let (rows, m, n) = layout_dims(pl, ql, ADD)?;
        let (p, q) = (slice(ps, pl, ADD)?, slice(qs, ql, ADD)?);
        gemm_into(m, n, rows, slice_mut(accs, accl, ADD)?, true, p, (1, m), q, (n, 1));
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        accs: &mut candle_core::CudaStorage,
        accl: &Layout,
        ps: &candle_core::CudaStorage,
        pl: &Layout,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
    ) -> Result<()> {
        let Some((start, end)) = accl.contiguous_offsets() else { bail!("{ADD}: the sum is not contiguous") };
        use candle_core::backend::BackendStorage;
        let dev = accs.device().clone();
        let mut acc = accs.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        super::cuda::gemm::transposed_product(&dev, &mut acc, 1.0, ps, pl, qs, ql, ADD)
    }
}
