//! Launches `activation.cu`: GELU (both forms) and SwiGLU forward and backward, RoPE either
//! way, for [`crate::activation`]'s ops on a GPU, and the residual add that ends a device
//! sublayer ([`residual_add`]). Each kernel is element-wise over inputs of one size and dtype
//! (f32 or bf16), computing in f32.

use super::{cuda_storage, elementwise, suffix, view, NULL};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

pub(crate) const IMAGE: super::Image = super::image!("activation");

/// A kernel's input: a storage and the layout of its values.
pub type Input<'a> = (&'a CudaStorage, &'a Layout);

/// An element-wise kernel of activation.cu: `inputs` of one shape, `outputs` results of that
/// size one after another (shape (outputs, ...) when more than one), then the element count
/// and, for GELU, the form (`flag`).
pub fn launch(kernel: &str, inputs: &[Input], outputs: usize, flag: Option<i32>) -> Result<(CudaStorage, Shape)> {
    match inputs[0].0.dtype() {
        DType::BF16 => launch_as::<half::bf16>(kernel, inputs, outputs, flag),
        _ => launch_as::<f32>(kernel, inputs, outputs, flag),
    }
}

fn launch_as<T: CudaDType + DeviceRepr + super::Elem>(
    kernel: &str,
    inputs: &[Input],
    outputs: usize,
    flag: Option<i32>,
) -> Result<(CudaStorage, Shape)> {
    let (first, first_layout) = inputs[0];
    let dev = first.device().clone();
    let shape = first_layout.shape().clone();
    if inputs.iter().any(|(s, l)| s.dtype() != first.dtype() || l.shape() != &shape) {
        bail!("{kernel}: the inputs differ in shape or dtype");
    }
    let name = format!("{kernel}_{}", suffix(first.dtype(), kernel)?);
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, kernel)).collect::<Result<Vec<_>>>()?;
    let n = shape.elem_count();
    // SAFETY: the kernel writes every element of every output.
    let out = unsafe { dev.alloc::<T>(outputs * n)? };
    let func = super::kernel(&dev, &IMAGE, &name)?;
    let mut args = func.builder();
    for v in &views {
        args.arg(v);
    }
    args.arg(&out);
    args.arg(&n);
    if let Some(flag) = &flag {
        args.arg(flag);
    }
    if n > 0 {
        // SAFETY: the arguments match the kernel's signature (activation.cu).
        unsafe { args.launch(elementwise(n)) }?;
    }
    let out_shape = if outputs == 1 {
        shape
    } else {
        let mut dims = vec![outputs];
        dims.extend(shape.dims());
        Shape::from(dims)
    };
    Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape))
}

/// A backward kernel as a candle op without a backward of its own: GELU's (x, dy) → dx, and
/// SwiGLU's (gate, up, dy) → (2, ...) of d gate then d up.
pub struct Grad {
    pub kernel: &'static str,
    pub outputs: usize,
    pub flag: Option<i32>,
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU backward is activation.rs's)", self.kernel)
    }

    fn cuda_fwd(&self, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        launch(self.kernel, &[(a, al), (b, bl)], self.outputs, self.flag)
    }
}

impl CustomOp3 for Grad {
    fn name(&self) -> &'static str {
        self.kernel
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
        bail!("{}: CUDA only (the CPU backward is activation.rs's)", self.kernel)
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        c: &CudaStorage,
        cl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        launch(self.kernel, &[(a, al), (b, bl), (c, cl)], self.outputs, self.flag)
    }
}

/// RoPE of x (B, T, W = heads·D) with the T positions' (T, D) f32 tables; `transposed`: the
/// inverse rotation.
pub fn rope(x: Input, cos: Input, sin: Input, d: usize, transposed: bool) -> Result<(CudaStorage, Shape)> {
    match x.0.dtype() {
        DType::BF16 => rope_as::<half::bf16>(x, cos, sin, d, transposed),
        _ => rope_as::<f32>(x, cos, sin, d, transposed),
    }
}

fn rope_as<T: CudaDType + DeviceRepr + super::Elem>(
    (xs, xl): Input,
    (cs, cl): Input,
    (ss, sl): Input,
    d: usize,
    transposed: bool,
) -> Result<(CudaStorage, Shape)> {
    let op = "lmforge-rope";
    let dev = xs.device().clone();
    let &[_, t, w] = xl.dims() else { bail!("{op}: x {:?} is not (B, T, W)", xl.dims()) };
    if cl.dims() != [t, d] || sl.dims() != [t, d] || d == 0 || w % d != 0 {
        bail!("{op}: x {:?} and tables {:?} do not fit head dim {d}", xl.dims(), cl.dims());
    }
    let (x, cos, sin) = (view::<T>(xs, xl, op)?, view::<f32>(cs, cl, op)?, view::<f32>(ss, sl, op)?);
    let n = xl.shape().elem_count();
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(n)? };
    let func = super::kernel(&dev, &IMAGE, &format!("rope_{}", suffix(xs.dtype(), op)?))?;
    let ints = [t as i32, w as i32, d as i32, i32::from(transposed)];
    let mut args = func.builder();
    args.arg(&x);
    args.arg(&cos);
    args.arg(&sin);
    args.arg(&y);
    args.arg(&n);
    for i in &ints {
        args.arg(i);
    }
    if n > 0 {
        // SAFETY: the arguments match the kernel's signature (activation.cu).
        unsafe { args.launch(elementwise(n)) }?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
}

/// gelu(z + b) of z (rows, C) with an f32 bias b (C), or with `dy` its gradient dy·gelu'(z + b)
/// (the bias's is the column sums of that); `erf` the GELU form.
pub fn bias_gelu(z: Input, b: Input, dy: Option<Input>, erf: bool) -> Result<(CudaStorage, Shape)> {
    match z.0.dtype() {
        DType::BF16 => bias_gelu_as::<half::bf16>(z, b, dy, erf),
        _ => bias_gelu_as::<f32>(z, b, dy, erf),
    }
}

fn bias_gelu_as<T: CudaDType + DeviceRepr + super::Elem>(
    (zs, zl): Input,
    (bs, bl): Input,
    dy: Option<Input>,
    erf: bool,
) -> Result<(CudaStorage, Shape)> {
    let op = if dy.is_some() { "bias_gelu_bwd" } else { "bias_gelu_fwd" };
    let dev = zs.device().clone();
    let c = bl.shape().elem_count();
    if zl.dims().last() != Some(&c) || bs.dtype() != DType::F32 {
        bail!("{op}: z {:?} and an f32 bias of {c} ({:?})", zl.dims(), bs.dtype());
    }
    if dy.is_some_and(|(s, l)| s.dtype() != zs.dtype() || l.shape() != zl.shape()) {
        bail!("{op}: dy differs from z in shape or dtype");
    }
    let (z, b) = (view::<T>(zs, zl, op)?, view::<f32>(bs, bl, op)?);
    let dy = dy.map(|(s, l)| view::<T>(s, l, op)).transpose()?;
    let n = zl.shape().elem_count();
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(n)? };
    let func = super::kernel(&dev, &IMAGE, &format!("{op}_{}", suffix(zs.dtype(), op)?))?;
    let ints = [c as i32, i32::from(erf)];
    let mut args = func.builder();
    args.arg(&z);
    args.arg(&b);
    if let Some(dy) = &dy {
        args.arg(dy);
    }
    args.arg(&out);
    args.arg(&n);
    for i in &ints {
        args.arg(i);
    }
    if n > 0 {
        // SAFETY: the arguments match the kernel's signature (activation.cu).
        unsafe { args.launch(elementwise(n)) }?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), zl.shape().clone()))
}

/// y = x + (p + b) for the residual stream x and an output projection's product p, of one
/// shape (…, C) and dtype, and its f32 bias b (C) or none: a pre-norm sublayer's output in one
/// pass, the sum rounded once (composed: a bias add, then the residual's).
pub fn residual_add(x: &Tensor, p: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    add_in_one_pass("lmforge-residual-add", Some(x), p, b)
}

/// y = p + b for a projection's product p (…, C) and its f32 bias b (C), the sum rounded once
/// (composed: the bias cast to p's dtype, then a broadcast add).
pub fn bias_add(p: &Tensor, b: &Tensor) -> Result<Tensor> {
    add_in_one_pass("lmforge-bias-add", None, p, Some(b))
}

/// y = x + (p + b), x and b each optional: residual_add's kernel.
fn add_in_one_pass(op: &str, x: Option<&Tensor>, p: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let c = p.dims().last().copied().unwrap_or(0);
    if x.is_some_and(|x| x.dims() != p.dims() || x.dtype() != p.dtype())
        || b.is_some_and(|b| b.dims() != [c] || b.dtype() != DType::F32)
    {
        let (x, b) = (x.map(|x| (x.dims().to_vec(), x.dtype())), b.map(|b| (b.dims().to_vec(), b.dtype())));
        bail!("{op}: x {x:?}, p {:?} {:?}, bias {b:?}", p.dims(), p.dtype());
    }
    let (x, p, b) = (x.map(Tensor::contiguous).transpose()?, p.contiguous()?, b.map(Tensor::contiguous).transpose()?);
    let (xs, ps) = (x.as_ref().map(Tensor::storage_and_layout), p.storage_and_layout());
    let bs = b.as_ref().map(Tensor::storage_and_layout);
    let xc = xs.as_ref().map(|(s, l)| Ok::<_, candle_core::Error>((cuda_storage(s, op)?, *l))).transpose()?;
    let bc = bs.as_ref().map(|(s, l)| Ok::<_, candle_core::Error>((cuda_storage(s, op)?, *l))).transpose()?;
    let pc = (cuda_storage(&ps.0, op)?, ps.1);
    let y = match p.dtype() {
        DType::BF16 => add_as::<half::bf16>(op, xc, pc, bc, c)?,
        _ => add_as::<f32>(op, xc, pc, bc, c)?,
    };
    Ok(Tensor::from_storage(Storage::Cuda(y), p.dims(), BackpropOp::none(), false))
}

fn add_as<T: CudaDType + DeviceRepr + super::Elem>(
    op: &str,
    x: Option<Input>,
    (ps, pl): Input,
    b: Option<Input>,
    c: usize,
) -> Result<CudaStorage> {
    let dev = ps.device().clone();
    let x = x.map(|(s, l)| view::<T>(s, l, op)).transpose()?;
    let p = view::<T>(ps, pl, op)?;
    let b = b.map(|(s, l)| view::<f32>(s, l, op)).transpose()?;
    let n = pl.shape().elem_count();
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(n)? };
    let func = super::kernel(&dev, &IMAGE, &format!("residual_add_{}", suffix(ps.dtype(), op)?))?;
    let c_arg = c as i32;
    let mut args = func.builder();
    match &x {
        Some(x) => args.arg(x),
        None => args.arg(&NULL),
    };
    args.arg(&p);
    match &b {
        Some(b) => args.arg(b),
        None => args.arg(&NULL),
    };
    args.arg(&y);
    args.arg(&n);
    args.arg(&c_arg);
    if n > 0 {
        // SAFETY: the arguments match the kernel's signature (activation.cu).
        unsafe { args.launch(elementwise(n)) }?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}
