//! A kernel as the ops launch it: the loaded function, its device's stream and its parameters
//! (the table build.rs reads from `src/cuda/*.cu`, [`crate::kernel_signature`]), and the launch
//! ([`Args`]) that records what each pushed argument is and checks the list against the
//! parameters before the driver sees it.

use crate::kernel_signature::{self, Param, Scalar};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, Result};
use std::sync::Arc;

/// A kernel of a loaded image, the stream of the device it runs on, and its parameters as
/// build.rs read them from its source.
pub(crate) struct Kernel {
    function: CudaFunction,
    stream: Arc<CudaStream>,
    name: String,
    params: &'static [Param],
}

impl Kernel {
    /// The kernel `name` of the image `image` loaded as `function` on `stream`, with its
    /// parameters from the table build.rs wrote.
    pub(super) fn new(function: CudaFunction, stream: Arc<CudaStream>, name: &str, image: &str) -> Result<Kernel> {
        let Some(&(_, params)) = SIGNATURES.iter().find(|(n, _)| *n == name) else {
            bail!("kernel {name}: not among the kernels build.rs read from {image}.cu")
        };
        Ok(Kernel { function, stream, name: name.to_string(), params })
    }

    /// The launch of this kernel on its device's stream, arguments to push.
    pub fn builder(&self) -> Args<'_> {
        Args { inner: self.stream.launch_builder(&self.function), kernel: self, pushed: Vec::new() }
    }

    pub fn function(&self) -> &CudaFunction {
        &self.function
    }
}

// Every kernel's parameters (`SIGNATURES`), written by build.rs from src/cuda/*.cu.
include!(concat!(env!("OUT_DIR"), "/kernel_signatures.rs"));

/// A kernel's launch: cudarc's arguments, and what each pushed argument is, checked against the
/// kernel's parameters before the launch ([`kernel_signature::check`]): the driver takes the
/// arguments as bytes in order, so a wrong one would otherwise shift every later one.
pub(crate) struct Args<'a> {
    inner: LaunchArgs<'a>,
    kernel: &'a Kernel,
    pushed: Vec<Param>,
}

impl<'a> Args<'a> {
    /// Pushes the next argument.
    pub fn arg<A: KernelArg + ?Sized>(&mut self, arg: &'a A) -> &mut Self {
        self.pushed.push(arg.param());
        arg.push(&mut self.inner);
        self
    }

    /// Launches the kernel with `cfg` when the pushed arguments fill its parameters.
    ///
    /// # Safety
    /// The buffers pushed must hold what the kernel reads and writes for `cfg` (their sizes;
    /// the argument check covers their order and types, not their lengths).
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        let k = self.kernel;
        if checking()? {
            kernel_signature::check(&k.name, k.params, &self.pushed).map_err(candle_core::Error::Msg)?;
        }
        // SAFETY: the arguments' order and types match the kernel's parameters (checked above),
        // their sizes are the caller's promise.
        unsafe { self.inner.launch(cfg) }.w()?;
        Ok(())
    }
}

/// `auto` (or unset): each launch's arguments are checked; `off`: not checked, for the case
/// the check itself is wrong about a launch that is right (it has not met a GPU yet), so that
/// a GPU visit's later measurements still run.
pub const ARG_CHECK_VAR: &str = "LMFORGE_CUDA_ARG_CHECK";

/// Whether [`ARG_CHECK_VAR`] lets the launches be checked (read once a process).
fn checking() -> Result<bool> {
    static CHECKING: crate::Switch = std::sync::OnceLock::new();
    crate::read_switch(&CHECKING, ARG_CHECK_VAR, |v| crate::switch(ARG_CHECK_VAR, v, "off"))
}

/// What a kernel argument is ([`Param`]) and how cudarc pushes it.
pub(crate) trait KernelArg {
    fn param(&self) -> Param;
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>);
}

/// The element types of the buffers the kernels take.
pub(crate) trait Elem {
    const SCALAR: Scalar;
}

macro_rules! scalar_args {
    ($($t:ty => $s:ident),*) => {$(
        impl Elem for $t {
            const SCALAR: Scalar = Scalar::$s;
        }
        impl KernelArg for $t {
            fn param(&self) -> Param {
                Param::Value(Scalar::$s)
            }
            fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
                args.arg(self);
            }
        }
    )*};
}
scalar_args!(f32 => F32, f64 => F64, i32 => I32, u32 => U32, i64 => I64, u64 => U64, usize => U64);

impl Elem for half::bf16 {
    const SCALAR: Scalar = Scalar::Bf16;
}

impl<T: Elem> KernelArg for CudaSlice<T> {
    fn param(&self) -> Param {
        Param::Ptr(T::SCALAR)
    }
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

impl<T: Elem> KernelArg for CudaView<'_, T> {
    fn param(&self) -> Param {
        Param::Ptr(T::SCALAR)
    }
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

/// The device address of an f32 buffer (the optimizers write tensors in place through them).
#[derive(Clone, Copy)]
pub(crate) struct F32Address(pub u64);

impl KernelArg for F32Address {
    fn param(&self) -> Param {
        Param::Ptr(Scalar::F32)
    }
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.0);
    }
}

/// A null device address, for an optional buffer not given.
pub(crate) struct Null(u64);

/// The null address.
pub(crate) const NULL: Null = Null(0);

impl KernelArg for Null {
    fn param(&self) -> Param {
        Param::Null
    }
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.0);
    }
}
