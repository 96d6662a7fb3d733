//! lmforge's own CUDA kernels (`--features cuda`): the sources under `src/cuda/`, compiled by
//! build.rs with nvcc to one fat binary a file (machine code for the target GPU and its PTX),
//! loaded once per device ([`kernel`]) and launched on the device's stream from the ops'
//! `cuda_fwd` / `bwd`. Each kernel has f32 and bf16 activation variants with f32 weights and
//! f32 statistics, and the composed reference op is its oracle (`tests.rs`, on the GPU through
//! `LMFORGE_TEST_DEVICE=cuda`).
//!
//! Kernels: LayerNorm and RMSNorm, forward and backward, a residual's gradient optionally
//! added into dx (`norm.cu`); AdamW's update in place, every tensor of a step in one launch
//! ([`adamw`], `adamw.cu`); Adafactor's step of a matrix or a vector ([`adafactor`],
//! `adafactor.cu`); attention, forward and backward ([`attention`], `attention.cu`); GELU,
//! SwiGLU and RoPE, forward and backward, and a decoder sublayer's residual add
//! ([`activation`], `activation.cu`); cross-entropy's row log-sum-exp and logit gradient
//! ([`loss`], `loss.cu`); the token embedding's rows and its gradient by token, sorted, without
//! atomics ([`embedding`], `embedding.cu`); column sums, the bias gradients ([`reduce`],
//! `reduce.cu`); Σ x² over every gradient of a step in two launches ([`sum_squares`],
//! `sum_squares.cu`). Every launch goes through [`launch::Args`], which checks its arguments
//! against the kernel's parameters as build.rs read them from the sources. Beside the kernels,
//! `gemm`:
//! cuBLAS products with an f32 result from bf16 operands, added in place (the weight
//! gradients, `crate::weight_grad`).
//!
//! Without a GPU, `tests/cuda_emulated.rs` runs the same kernel sources on the CPU (a block's
//! threads as fibers, `emu/cuda_emu.h`) against plain loops (`emu/check.cpp`).

pub mod activation;
pub mod adafactor;
pub mod adamw;
pub mod attention;
pub mod embedding;
pub(crate) mod gemm;
pub(crate) mod launch;
pub mod loss;
pub mod reduce;
pub mod sum_squares;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaModule, CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchConfig, SyncOnDrop,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::{bail, CudaDevice, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
pub(crate) use launch::{Args, Elem, F32Address, Kernel, NULL};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One kernel file's compiled image: a fat binary (build.rs) that the driver loads as it is.
pub(crate) struct Image {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

/// The image build.rs compiled from `src/cuda/<file>.cu`.
macro_rules! image {
    ($file:literal) => {
        $crate::cuda::Image { name: $file, bytes: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".fatbin")) }
    };
}
pub(crate) use image;

const NORM: Image = image!("norm");

/// Every image the library embeds, for the test that they hold machine code and PTX.
#[cfg(test)]
pub(crate) const IMAGES: [Image; 9] = [
    NORM,
    adamw::IMAGE,
    adafactor::IMAGE,
    attention::IMAGE,
    activation::IMAGE,
    loss::IMAGE,
    embedding::IMAGE,
    reduce::IMAGE,
    sum_squares::IMAGE,
];

/// The modules loaded so far, by GPU ordinal and image. candle's devices of one ordinal share
/// that GPU's primary context (cudarc's `CudaContext::new`), which is where a module lives, so
/// an image is loaded once a GPU for the process (candle's own cache is per device handle, and
/// its loader takes PTX text only, not a fat binary).
static MODULES: Mutex<Option<Modules>> = Mutex::new(None);

/// Loaded modules by (GPU ordinal, image name).
type Modules = HashMap<(usize, &'static str), Arc<CudaModule>>;

/// The kernel `name` of `image` on `dev`, the image loaded on first use.
pub(crate) fn kernel(dev: &CudaDevice, image: &Image, name: &str) -> Result<Kernel> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let module = {
        let mut modules = MODULES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let modules = modules.get_or_insert_with(HashMap::new);
        match modules.get(&(ctx.ordinal(), image.name)) {
            Some(module) => module.clone(),
            None => {
                // An owned copy: the driver reads the image's 8-byte fields in place, and a
                // heap block is aligned for them where an `include_bytes!` array need not be.
                let module = ctx.load_module(Ptx::from_binary(image.bytes.to_vec())).w()?;
                modules.insert((ctx.ordinal(), image.name), module.clone());
                module
            }
        }
    };
    let function = module.load_function(name).w()?;
    Kernel::new(function, stream, name, image.name)
}

/// The device address of the first f32 `layout` selects in `storage` (contiguous, on a GPU),
/// for kernels that write tensors in place through addresses (the optimizers'), with the
/// record of its use on `stream`, to keep until the launch is queued. The caller holds the
/// storage's lock meanwhile, so its buffer cannot be replaced.
pub(crate) fn f32_address<'a>(
    storage: &'a Storage,
    layout: &Layout,
    stream: &'a CudaStream,
    name: &str,
    op: &str,
) -> Result<(F32Address, SyncOnDrop<'a>)> {
    let Some((start, _)) = layout.contiguous_offsets() else { bail!("{op}: {name} is not contiguous") };
    let Storage::Cuda(cuda) = storage else { bail!("{op}: {name} is not on a GPU") };
    if cuda.dtype() != DType::F32 {
        bail!("{op}: {name} is {:?}, not f32", cuda.dtype());
    }
    let (at, record) = address(cuda, start, stream)?;
    Ok((F32Address(at), record))
}

/// The device address of element `start` of an f32 or bf16 CUDA buffer, with the record of
/// its use on `stream` (see [`f32_address`]).
pub(crate) fn address<'a>(
    cuda: &'a CudaStorage,
    start: usize,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let (base, record) = match cuda.dtype() {
        DType::F32 => cuda.as_cuda_slice::<f32>()?.device_ptr(stream),
        DType::BF16 => cuda.as_cuda_slice::<half::bf16>()?.device_ptr(stream),
        d => bail!("no device address for {d:?} buffers (f32 and bf16)"),
    };
    Ok((base + (start * cuda.dtype().size_in_bytes()) as u64, record))
}

/// One block per row of `c`: a warp per 32 columns up to four columns a thread, at most 1024.
pub(crate) fn row_blocks(rows: usize, c: usize) -> LaunchConfig {
    let threads = c.div_ceil(4).next_multiple_of(32).clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// The contiguous values a layout selects.
pub(crate) fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{op}: the CUDA kernel needs a contiguous input") };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Element-wise kernels: 256 threads a block, a grid-stride loop over at most 65535 blocks.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernel name's suffix for activations of `dtype`.
pub(crate) fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => bail!("{op}: no CUDA kernel for {d:?} activations (f32 and bf16)"),
    }
}

/// LayerNorm (with `bias`) or RMSNorm of x's rows; weight and bias f32 of x's last dim.
pub fn norm_forward(
    op: &str,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    match x.0.dtype() {
        DType::BF16 => norm_forward_as::<half::bf16>(op, x, w, bias, eps),
        _ => norm_forward_as::<f32>(op, x, w, bias, eps),
    }
}

fn norm_forward_as<T: CudaDType + DeviceRepr + Elem>(
    op: &str,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = &xs.device;
    let c = wl.shape().elem_count();
    let n = xl.shape().elem_count();
    if xl.dims().last() != Some(&c) {
        bail!("{op}: input {:?} does not end in the weight's {c} features", xl.dims());
    }
    if let Some((_, bl)) = bias.filter(|(_, bl)| bl.shape().elem_count() != c) {
        bail!("{op}: the bias {:?} is not the weight's {c} features", bl.dims());
    }
    let (x, w) = (view::<T>(xs, xl, op)?, view::<f32>(ws, wl, op)?);
    let b = bias.map(|(bs, bl)| view::<f32>(bs, bl, op)).transpose()?;
    let kind = if b.is_some() { "layer_norm_fwd" } else { "rms_norm_fwd" };
    let func = kernel(dev, &NORM, &format!("{kind}_{}", suffix(xs.dtype(), op)?))?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(n)? };
    let c_arg = c as i32;
    if n == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()));
    }
    let mut launch = func.builder();
    launch.arg(&x);
    launch.arg(&w);
    if let Some(b) = &b {
        launch.arg(b);
    }
    launch.arg(&y);
    launch.arg(&c_arg);
    launch.arg(&eps);
    // SAFETY: the arguments match the kernel's signature (norm.cu).
    unsafe { launch.launch(row_blocks(n / c.max(1), c)) }?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
}

/// (dx, dw, db) of LayerNorm (`centred`) or RMSNorm for `dy`: dx in x's dtype from one kernel,
/// `residual` (a gradient of x's shape, else None) added into it there, and dw and db f32 from
/// the other's per-block column sums, added over the blocks ([`reduce::column_sums`]; db None
/// for RMSNorm).
pub fn norm_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    residual: Option<&Tensor>,
    eps: f32,
    centred: bool,
    params_trained: bool,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let (x, dy) = (x.contiguous()?, dy.contiguous()?);
    let residual = residual.map(|r| r.to_dtype(x.dtype())?.contiguous()).transpose()?;
    let kind = NormGrads { eps, centred };
    let dx = kind.dx(&x, &w.to_dtype(DType::F32)?.contiguous()?, &dy, residual.as_ref())?;
    // A frozen norm (LoRA fine-tuning) needs no column sums: one pass over x and dy fewer.
    if !params_trained {
        return Ok((dx, None, None));
    }
    let terms = x.apply_op2_no_bwd(&dy, &kind)?; // (2, blocks, c)
    let dw = reduce::column_sums(&terms.get(0)?)?;
    let db = if centred { Some(reduce::column_sums(&terms.get(1)?)?) } else { None };
    Ok((dx, Some(dw), db))
}

/// The backward kernels: dx in x's dtype over x, w, dy and a residual's gradient
/// ([`NormGrads::dx`], `norm_bwd`); as a candle op over (x, dy), the (2, blocks, c) f32 partial
/// column sums of dy·x̂ and dy (`norm_column_terms`).
struct NormGrads {
    eps: f32,
    centred: bool,
}

/// Rows a block of `norm_column_terms` sums (norm.cu's NORM_TERM_ROWS).
const NORM_TERM_ROWS: usize = 32;

/// The CUDA storage of a tensor's (locked) storage.
pub(crate) fn cuda_storage<'a>(s: &'a Storage, op: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("{op}: the CUDA kernel needs every operand on the GPU"),
    }
}

impl CustomOp2 for NormGrads {
    fn name(&self) -> &'static str {
        "lmforge-norm-column-terms"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU backward is norm.rs's)", CustomOp2::name(self))
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, dys: &CudaStorage, dyl: &Layout) -> Result<(CudaStorage, Shape)> {
        match xs.dtype() {
            DType::BF16 => self.column_terms::<half::bf16>((xs, xl), (dys, dyl)),
            _ => self.column_terms::<f32>((xs, xl), (dys, dyl)),
        }
    }
}

impl NormGrads {
    /// dx = norm'(x)ᵀ·dy (+ residual), in x's dtype.
    fn dx(&self, x: &Tensor, w: &Tensor, dy: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let op = "lmforge-norm-dx";
        let (c, dims) = (w.elem_count(), x.dims());
        let same = |t: &Tensor| t.dtype() == x.dtype() && t.dims() == dims;
        if !same(dy) || !residual.is_none_or(same) || dims.last() != Some(&c) {
            let r = residual.map(|r| (r.dims().to_vec(), r.dtype()));
            bail!(
                "{op}: x {dims:?} {:?}, weight ({c}), dy {:?} {:?}, residual {r:?}",
                x.dtype(),
                dy.dims(),
                dy.dtype()
            );
        }
        let (xs, ws, dys) = (x.storage_and_layout(), w.storage_and_layout(), dy.storage_and_layout());
        let rs = residual.map(|r| r.storage_and_layout());
        let (xc, wc, dyc) = (cuda_storage(&xs.0, op)?, cuda_storage(&ws.0, op)?, cuda_storage(&dys.0, op)?);
        let rc = rs.as_ref().map(|(s, l)| Ok::<_, candle_core::Error>((cuda_storage(s, op)?, *l))).transpose()?;
        let dx = match x.dtype() {
            DType::BF16 => self.dx_as::<half::bf16>((xc, xs.1), (wc, ws.1), (dyc, dys.1), rc)?,
            _ => self.dx_as::<f32>((xc, xs.1), (wc, ws.1), (dyc, dys.1), rc)?,
        };
        Ok(Tensor::from_storage(Storage::Cuda(dx), dims, candle_core::op::BackpropOp::none(), false))
    }

    fn dx_as<T: CudaDType + DeviceRepr + Elem>(
        &self,
        (xs, xl): (&CudaStorage, &Layout),
        (ws, wl): (&CudaStorage, &Layout),
        (dys, dyl): (&CudaStorage, &Layout),
        residual: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let op = "lmforge-norm-dx";
        let dev = &xs.device;
        let (c, n) = (wl.shape().elem_count(), xl.shape().elem_count());
        let (x, w, dy) = (view::<T>(xs, xl, op)?, view::<f32>(ws, wl, op)?, view::<T>(dys, dyl, op)?);
        let dres = residual.map(|(s, l)| view::<T>(s, l, op)).transpose()?;
        let func = kernel(dev, &NORM, &format!("norm_bwd_{}", suffix(xs.dtype(), op)?))?;
        // SAFETY: the kernel writes every element.
        let dx = unsafe { dev.alloc::<T>(n)? };
        if n > 0 {
            let (c_arg, centred) = (c as i32, i32::from(self.centred));
            let mut launch = func.builder();
            launch.arg(&x);
            launch.arg(&w);
            launch.arg(&dy);
            match &dres {
                Some(d) => launch.arg(d),
                None => launch.arg(&NULL),
            };
            launch.arg(&dx);
            launch.arg(&c_arg);
            launch.arg(&self.eps);
            launch.arg(&centred);
            // SAFETY: the arguments match the kernel's signature (norm.cu).
            unsafe { launch.launch(row_blocks(n / c.max(1), c)) }?;
        }
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    fn column_terms<T: CudaDType + DeviceRepr + Elem>(
        &self,
        (xs, xl): (&CudaStorage, &Layout),
        (dys, dyl): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let op = CustomOp2::name(self);
        let dev = &xs.device;
        let Some(&c) = xl.dims().last() else { bail!("{op}: x is a scalar") };
        if dys.dtype() != xs.dtype() || dyl.shape() != xl.shape() {
            bail!("{op}: x {:?} {:?}, dy {:?} {:?}", xl.dims(), xs.dtype(), dyl.dims(), dys.dtype());
        }
        let rows = xl.shape().elem_count() / c.max(1);
        let blocks = rows.div_ceil(NORM_TERM_ROWS);
        let (x, dy) = (view::<T>(xs, xl, op)?, view::<T>(dys, dyl, op)?);
        let func = kernel(dev, &NORM, &format!("norm_column_terms_{}", suffix(xs.dtype(), op)?))?;
        let shape = Shape::from((2, blocks, c));
        if blocks == 0 || c == 0 {
            let zeros = dev.alloc_zeros::<f32>(shape.elem_count())?;
            return Ok((CudaStorage::wrap_cuda_slice(zeros, dev.clone()), shape));
        }
        // SAFETY: the kernel writes every element of both halves.
        let partials = unsafe { dev.alloc::<f32>(2 * blocks * c)? };
        let (rows_arg, c_arg, centred) = (rows as i32, c as i32, i32::from(self.centred));
        let mut launch = func.builder();
        launch.arg(&x);
        launch.arg(&dy);
        launch.arg(&partials);
        launch.arg(&rows_arg);
        launch.arg(&c_arg);
        launch.arg(&self.eps);
        launch.arg(&centred);
        let config = LaunchConfig { grid_dim: (blocks as u32, 1, 1), ..row_blocks(1, c) };
        // SAFETY: the arguments match the kernel's signature (norm.cu).
        unsafe { launch.launch(config) }?;
        Ok((CudaStorage::wrap_cuda_slice(partials, dev.clone()), shape))
    }
}
