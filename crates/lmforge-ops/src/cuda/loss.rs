//! Launches `loss.cu` for [`crate::lm_loss`] on a GPU: each chunk's logits (rows, V) give their
//! rows' log-sum-exp ([`RowLse`]) and their gradient (softmax − onehot) · scale
//! ([`SoftmaxMinusOnehot`]) in one pass each, in place of the composed max / subtract / exp /
//! sum / log / scatter chain and its f32 temporaries of the chunk's size.

use super::{elementwise, row_blocks, suffix, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape};

pub(crate) const IMAGE: super::Image = super::image!("loss");

/// (rows, V) from the logits' layout, with targets of `rows` values.
fn rows_and_vocab(op: &str, zl: &Layout, tl: &Layout) -> Result<(usize, usize)> {
    match zl.dims() {
        &[rows, v] if v > 0 && tl.shape().elem_count() == rows => Ok((rows, v)),
        d => bail!("{op}: logits {d:?} are not (rows, V) for {} targets", tl.shape().elem_count()),
    }
}

/// (logits (rows, V), u32 targets (rows)) → each row's log-sum-exp, f32 (NaN where the target
/// is not below V).
pub struct RowLse;

impl CustomOp2 for RowLse {
    fn name(&self) -> &'static str {
        "lmforge-row-lse"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU's is loss.rs)", self.name())
    }

    fn cuda_fwd(&self, zs: &CudaStorage, zl: &Layout, ts: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
        match zs.dtype() {
            DType::BF16 => self.launch::<half::bf16>((zs, zl), (ts, tl)),
            _ => self.launch::<f32>((zs, zl), (ts, tl)),
        }
    }
}

impl RowLse {
    fn launch<T: CudaDType + DeviceRepr + super::Elem>(
        &self,
        (zs, zl): (&CudaStorage, &Layout),
        (ts, tl): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let dev = zs.device().clone();
        let (rows, v) = rows_and_vocab(op, zl, tl)?;
        let (z, targets) = (view::<T>(zs, zl, op)?, view::<u32>(ts, tl, op)?);
        // SAFETY: one block per row writes its value.
        let lse = unsafe { dev.alloc::<f32>(rows)? };
        if rows > 0 {
            let func = super::kernel(&dev, &IMAGE, &format!("row_lse_{}", suffix(zs.dtype(), op)?))?;
            let v_arg = v as i32;
            let mut args = func.builder();
            args.arg(&z);
            args.arg(&targets);
            args.arg(&lse);
            args.arg(&v_arg);
            // SAFETY: the arguments match the kernel's signature (loss.cu).
            unsafe { args.launch(row_blocks(rows, v)) }?;
        }
        Ok((CudaStorage::wrap_cuda_slice(lse, dev), Shape::from(rows)))
    }
}

/// (logits (rows, V), u32 targets (rows), f32 log-sum-exp (rows)) → scale · (softmax − onehot)
/// in the logits' dtype.
pub struct SoftmaxMinusOnehot {
    pub scale: f32,
}

impl CustomOp3 for SoftmaxMinusOnehot {
    fn name(&self) -> &'static str {
        "lmforge-softmax-minus-onehot"
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
        bail!("{}: CUDA only (the CPU's is loss.rs)", self.name())
    }

    fn cuda_fwd(
        &self,
        zs: &CudaStorage,
        zl: &Layout,
        ts: &CudaStorage,
        tl: &Layout,
        ls: &CudaStorage,
        ll: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match zs.dtype() {
            DType::BF16 => self.launch::<half::bf16>((zs, zl), (ts, tl), (ls, ll)),
            _ => self.launch::<f32>((zs, zl), (ts, tl), (ls, ll)),
        }
    }
}

impl SoftmaxMinusOnehot {
    fn launch<T: CudaDType + DeviceRepr + super::Elem>(
        &self,
        (zs, zl): (&CudaStorage, &Layout),
        (ts, tl): (&CudaStorage, &Layout),
        (ls, ll): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let dev = zs.device().clone();
        let (rows, v) = rows_and_vocab(op, zl, tl)?;
        if ll.shape().elem_count() != rows {
            bail!("{op}: {} log-sum-exps for {rows} rows", ll.shape().elem_count());
        }
        let (z, targets, lse) = (view::<T>(zs, zl, op)?, view::<u32>(ts, tl, op)?, view::<f32>(ls, ll, op)?);
        let n = rows * v;
        // SAFETY: the kernel writes every element.
        let dz = unsafe { dev.alloc::<T>(n)? };
        if n > 0 {
            let name = format!("softmax_minus_onehot_{}", suffix(zs.dtype(), op)?);
            let func = super::kernel(&dev, &IMAGE, &name)?;
            let v_arg = v as i32;
            let mut args = func.builder();
            args.arg(&z);
            args.arg(&targets);
            args.arg(&lse);
            args.arg(&dz);
            args.arg(&n);
            args.arg(&v_arg);
            args.arg(&self.scale);
            // SAFETY: the arguments match the kernel's signature (loss.cu).
            unsafe { args.launch(elementwise(n)) }?;
        }
        Ok((CudaStorage::wrap_cuda_slice(dz, dev), zl.shape().clone()))
    }
}
