//! NCCL for GPU tensors (`--features cuda`): [`Nccl`] implements [`TensorCollective`] with
//! cudarc's NCCL bindings on the training device's own CUDA stream, so a collective is ordered
//! after the kernels that produced its input without a host synchronisation. Bootstrapped over
//! the job's [`Collective`] as nccl-tests does: rank 0 draws the 128-byte unique id, it travels
//! to every rank with [`Collective::broadcast_bytes`] (MPI), and each rank joins with
//! `ncclCommInitRank(world, id, rank)` — one process per GPU. Each call is a candle
//! `CustomOp1` whose CUDA forward allocates the output and enqueues the NCCL call.

use super::tensor_comm::TensorCollective;
use super::Collective;
use crate::error::{Error, Result};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::sync::Mutex;

/// cudarc's communicator holds NCCL's raw handle, so it is neither `Send` nor `Sync`; NCCL
/// allows a communicator to be used from any thread as long as calls do not overlap, which
/// the mutex in [`Nccl`] ensures.
struct SharedComm(Comm);
unsafe impl Send for SharedComm {}

pub struct Nccl {
    comm: Mutex<SharedComm>,
    device: CudaDevice,
    world: usize,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Distributed(format!("NCCL {what} failed: {e:?}"))
}

impl Nccl {
    /// Joins every process of `comm` in one NCCL communicator on `device` (collective).
    pub fn init(comm: &dyn Collective, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(Error::config(
                "distributed.backend",
                "\"nccl\" moves GPU tensors: set train.device = \"cuda\"",
            ));
        };
        dev.cuda_stream().context().bind_to_thread().map_err(|e| nccl_error("binding the CUDA context", e))?;
        let mut bytes = Vec::new();
        if comm.rank() == 0 {
            let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
            bytes = id.internal().iter().map(|&c| c as u8).collect();
        }
        comm.broadcast_bytes(&mut bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if bytes.len() != internal.len() {
            return Err(Error::Distributed(format!("NCCL unique id of {} bytes from rank 0 (want 128)", bytes.len())));
        }
        for (dst, &b) in internal.iter_mut().zip(&bytes) {
            *dst = b as std::ffi::c_char;
        }
        let nccl = Comm::from_rank(dev.cuda_stream(), comm.rank(), comm.world_size(), Id::uninit(internal))
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(Self { comm: Mutex::new(SharedComm(nccl)), device: dev.clone(), world: comm.world_size() })
    }

    fn run(&self, t: &Tensor, kind: Kind) -> Result<Tensor> {
        if !t.device().same_device(&Device::Cuda(self.device.clone())) {
            return Err(Error::Invalid(format!("NCCL {kind:?} of a tensor on {:?}", t.device())));
        }
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        let op = NcclOp { comm: &comm.0, kind, world: self.world };
        Ok(t.contiguous()?.apply_op1_no_bwd(&op)?)
    }
}

impl TensorCollective for Nccl {
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Kind::AllReduce)
    }
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Kind::ReduceScatter)
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Kind::AllGather)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    AllReduce,
    ReduceScatter,
    AllGather,
}

struct NcclOp<'a> {
    comm: &'a Comm,
    kind: Kind,
    world: usize,
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "lmforge-nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL moves CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL needs a contiguous tensor")
        };
        let n = end - start;
        let out_len = match self.kind {
            Kind::AllReduce => n,
            Kind::ReduceScatter => {
                if n % self.world != 0 {
                    candle_core::bail!("NCCL reduce-scatter of {n} values over {} ranks", self.world)
                }
                n / self.world
            }
            Kind::AllGather => n * self.world,
        };
        let dev = &storage.device;
        // The calling thread (the communication thread, say) needs the device's context.
        dev.cuda_stream().context().bind_to_thread().map_err(candle_core::Error::wrap)?;
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        // SAFETY: every element is written by the collective before anything reads it.
        let mut dst = unsafe { dev.alloc::<f32>(out_len)? };
        let sum = ReduceOp::Sum;
        let done = match self.kind {
            Kind::AllReduce => self.comm.all_reduce(&src, &mut dst, &sum),
            Kind::ReduceScatter => self.comm.reduce_scatter(&src, &mut dst, &sum),
            Kind::AllGather => self.comm.all_gather(&src, &mut dst),
        };
        done.map_err(|e| candle_core::Error::Msg(format!("NCCL {:?} failed: {e:?}", self.kind)))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev.clone()), Shape::from(out_len)))
    }
}
