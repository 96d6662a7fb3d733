//! cuBLAS products candle's `matmul` does not make: an f32 result from bf16 operands (candle
//! returns the operands' dtype), written into a given buffer or added to what it holds (β = 1).
//! Used for a linear layer's weight gradient (`weight_grad`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result};

/// C (m × n, row-major f32 in `c`) = Pᵀ·Q + β·C for P (rows, m) and Q (rows, n), contiguous,
/// both f32 or both bf16; the products accumulate in f32 (f32 operands as candle's own f32
/// products do: TF32 only where candle's reduced-precision switch is on).
///
/// Row-major C is column-major Cᵀ (n × m, leading dimension n), and row-major P and Q are
/// column-major Pᵀ (m × rows) and Qᵀ (n × rows); cuBLAS computes Cᵀ = Qᵀ·(Pᵀ)ᵀ = Qᵀ·P, i.e.
/// A = Qᵀ as stored (no transpose, lda n), B = Pᵀ as stored, transposed (ldb m), k = rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transposed_product<C: DevicePtrMut<f32>>(
    dev: &CudaDevice,
    c: &mut C,
    beta: f32,
    ps: &CudaStorage,
    pl: &Layout,
    qs: &CudaStorage,
    ql: &Layout,
    op: &str,
) -> Result<()> {
    let (rows, m, n) = crate::weight_grad::layout_dims(pl, ql, op)?;
    let (Some((p_start, _)), Some((q_start, _))) = (pl.contiguous_offsets(), ql.contiguous_offsets()) else {
        bail!("{op}: the operands must be contiguous")
    };
    if c.len() != m * n {
        bail!("{op}: the output holds {} values, the product {m} × {n}", c.len());
    }
    let stream = dev.cuda_stream();
    if m == 0 || n == 0 {
        return Ok(());
    }
    if rows == 0 {
        // An empty sum: cuBLAS would scale C by β; the same here.
        if beta == 0.0 {
            stream.memset_zeros(c).w()?;
        }
        return Ok(());
    }
    let (data_type, compute) = match (ps.dtype(), qs.dtype()) {
        (DType::F32, DType::F32) if candle_core::cuda_backend::gemm_reduced_precision_f32() => {
            (sys::cudaDataType_t::CUDA_R_32F, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32)
        }
        (DType::F32, DType::F32) => (sys::cudaDataType_t::CUDA_R_32F, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        (DType::BF16, DType::BF16) => (sys::cudaDataType_t::CUDA_R_16BF, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        (a, b) => bail!("{op}: operands {a:?} and {b:?}: both f32 or both bf16"),
    };
    let int =
        |d: usize| i32::try_from(d).map_err(|_| candle_core::Error::Msg(format!("{op}: {d} exceeds cuBLAS's int")));
    let (rows, m, n) = (int(rows)?, int(m)?, int(n)?);
    let (p_address, p_record) = super::address(ps, p_start, &stream)?;
    let (q_address, q_record) = super::address(qs, q_start, &stream)?;
    let (c_address, c_record) = c.device_ptr_mut(&stream);
    let blas = dev.cublas_handle();
    let alpha = 1.0f32;
    // SAFETY: the addresses are live buffers of the sizes checked above (P rows × m, Q rows × n
    // from their offsets; C m × n), borrowed for the call; cuBLAS runs on the device's stream
    // (candle made the handle with it); α and β are host f32, as the f32 compute type takes.
    unsafe {
        gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_N,
            sys::cublasOperation_t::CUBLAS_OP_T,
            n,
            m,
            rows,
            (&alpha as *const f32).cast(),
            q_address as *const _,
            data_type,
            n,
            p_address as *const _,
            data_type,
            m,
            (&beta as *const f32).cast(),
            c_address as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            n,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .w()?;
    drop((p_record, q_record, c_record));
    Ok(())
}
