//! A graph node whose value is computed beforehand with ordinary tensor ops, outside the graph,
//! and whose backward is given as a closure: a fused op for any device and dtype without a
//! hand-written kernel per backend. The node hands candle the precomputed tensor's own storage
//! (CPU or CUDA), so the forward costs nothing more; the backward closure returns the inputs'
//! gradients, typically scaled copies of tensors the forward already computed. Activation
//! checkpointing (`nn::recompute`) and the device-generic chunked loss ([`crate::lm_loss`]) are
//! built on it.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// d inputs from (inputs, output, d output).
type Backward1 = dyn Fn(&Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync;
type Backward2 = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync;

/// `value` as the output of a node over `x`; `backward(x, dy)` is d x.
pub fn node1(
    x: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync + 'static,
) -> Result<Tensor> {
    x.apply_op1(Precomputed { out: Mutex::new(Some(compact(value)?)), backward: Backward::One(Box::new(backward)) })
}

/// `value` as the output of a node over `a` and `b`; `backward(a, b, dy)` is (d a, d b).
pub fn node2(
    a: &Tensor,
    b: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync + 'static,
) -> Result<Tensor> {
    a.apply_op2(b, Precomputed { out: Mutex::new(Some(compact(value)?)), backward: Backward::Two(Box::new(backward)) })
}

/// A detached copy of `t` whose storage is exactly its elements (what the forward hands over).
fn compact(t: Tensor) -> Result<Tensor> {
    t.detach().affine(1.0, 0.0)
}

struct Precomputed {
    /// The output, handed to candle once by the forward.
    out: Mutex<Option<Tensor>>,
    backward: Backward,
}

/// The backward of a node over one input or over two.
enum Backward {
    One(Box<Backward1>),
    Two(Box<Backward2>),
}

impl Precomputed {
    fn name(&self) -> &'static str {
        match self.backward {
            Backward::One(_) => "lmforge-node1",
            Backward::Two(_) => "lmforge-node2",
        }
    }

    /// The output's storage of one backend and its shape, once.
    fn output<S>(&self, of: impl Fn(&Storage, &Layout) -> Option<Result<S>>) -> Result<(S, Shape)> {
        let y = self.out.lock().expect("not poisoned").take();
        let Some(y) = y else { candle_core::bail!("{}: forward ran twice", self.name()) };
        let (storage, layout) = y.storage_and_layout();
        match of(&storage, layout) {
            Some(s) => Ok((s?, layout.shape().clone())),
            None => candle_core::bail!("{}: the precomputed output is on another device", self.name()),
        }
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        self.output(|s, _| match s {
            Storage::Cpu(c) => Some(Ok(c.clone())),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        self.output(|s, l| match s {
            Storage::Cuda(c) => Some(c.try_clone(l)),
            _ => None,
        })
    }
}

impl CustomOp1 for Precomputed {
    fn name(&self) -> &'static str {
        Precomputed::name(self)
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        match &self.backward {
            Backward::One(b) => b(x, dy),
            Backward::Two(_) => candle_core::bail!("lmforge-node2 applied to one input"),
        }
    }
}

impl CustomOp2 for Precomputed {
    fn name(&self) -> &'static str {
        Precomputed::name(self)
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match &self.backward {
            Backward::Two(f) => f(a, b, dy),
            Backward::One(_) => candle_core::bail!("lmforge-node1 applied to two inputs"),
        }
    }
}
