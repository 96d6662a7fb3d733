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

/// `t` detached, with a storage that is exactly its elements (what the forward hands over, as
/// a copy of the whole storage): `t` itself when it already is — a fresh op's output, the usual
/// value — else a compact copy (a view at an offset, a strided or broadcast view).
fn compact(t: Tensor) -> Result<Tensor> {
    let t = t.detach();
    if t.is_contiguous() && t.layout().start_offset() == 0 && storage_elems(&t) == Some(t.elem_count()) {
        return Ok(t);
    }
    t.affine(1.0, 0.0)
}

/// Elements in `t`'s whole storage, for the dtypes the models compute in (None otherwise).
fn storage_elems(t: &Tensor) -> Option<usize> {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v.len()),
        Storage::Cpu(CpuStorage::BF16(v)) => Some(v.len()),
        #[cfg(feature = "cuda")]
        Storage::Cuda(c) => {
            use candle_core::cuda_backend::CudaStorageSlice;
            match &c.slice {
                CudaStorageSlice::F32(s) => Some(s.len()),
                CudaStorageSlice::BF16(s) => Some(s.len()),
                _ => None,
            }
        }
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A node's value is handed over whole: a fresh tensor as it is, a view (at an offset,
    /// strided) compacted first; the backward's closure gives the input's gradient.
    #[test]
    fn node_values_are_handed_over_exactly_and_the_closure_is_the_backward() {
        let x = Var::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), (3, 4), &Device::Cpu).unwrap();
        let base = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((6, 4)).unwrap();
        let values = [
            ("fresh", (x.as_tensor() * 2.0).unwrap().detach()),
            ("offset", base.narrow(0, 2, 3).unwrap()),
            ("strided", base.reshape((4, 6)).unwrap().t().unwrap().narrow(0, 1, 3).unwrap().t().unwrap().t().unwrap()),
        ];
        for (name, value) in values {
            let want = value.to_vec2::<f32>().unwrap();
            let y = node1(x.as_tensor(), value, |_, dy| Ok(Some((dy * 3.0)?))).unwrap();
            assert_eq!(y.to_vec2::<f32>().unwrap(), want, "{name}");
            let g = y.sum_all().unwrap().backward().unwrap();
            let dx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            assert!(dx.iter().flatten().all(|&v| v == 3.0), "{name}: {dx:?}");
        }
        assert_eq!(storage_elems(&base.narrow(0, 2, 3).unwrap()), Some(24), "a view's storage is its base's");
    }
}
