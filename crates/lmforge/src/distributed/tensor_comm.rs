//! Collectives on tensors where they live: the data-moving half of [`super::Collective`] for
//! one flat `f32` tensor per call, so a GPU's gradients go to NCCL without leaving the device
//! ([`super::nccl`], `--features cuda`). [`Staged`] implements the same calls through the host
//! and a [`super::Collective`]: the CPU tests run the device path's bucketing, padding and
//! unflattening with it, so only NCCL's three calls themselves are GPU-only code.
//!
//! NCCL's reduce-scatter and all-gather move equal chunks; ZeRO's shards are whole
//! parameters and differ in size, so [`reduce_scatter_v`] and [`all_gather_v`] pad every
//! rank's chunk to the largest with zeros and cut the padding off again (what PyTorch's
//! FSDP does with its flat parameters).

use super::{Backend, Collective};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// Collectives over 1-D `f32` tensors, all on the training device; every rank calls them in
/// the same order with the same lengths. Implementations serialize calls from several threads.
pub trait TensorCollective: Send + Sync {
    /// What moves the data (for the log line).
    fn name(&self) -> &'static str;
    /// Element-wise sum over ranks.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// `t` holds `world` equal chunks; rank r gets the sum over ranks of chunk r.
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Every rank's `t` (equal lengths) concatenated in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
}

/// Through host memory and a [`Collective`] (MPI): what a GPU without NCCL does, and the CPU
/// tests' stand-in for NCCL.
pub struct Staged {
    comm: Arc<dyn Collective>,
}

impl Staged {
    pub fn new(comm: Arc<dyn Collective>) -> Self {
        Self { comm }
    }
}

impl TensorCollective for Staged {
    fn name(&self) -> &'static str {
        "host-staged"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let mut v = t.to_vec1::<f32>()?;
        self.comm.all_reduce_sum(&mut v)?;
        Ok(Tensor::from_vec(v, t.elem_count(), t.device())?)
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor> {
        let world = self.comm.world_size();
        let chunk = t.elem_count() / world;
        let sum = self.comm.reduce_scatter_sum(&t.to_vec1::<f32>()?, &vec![chunk; world])?;
        Ok(Tensor::from_vec(sum, chunk, t.device())?)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let world = self.comm.world_size();
        let all = self.comm.all_gather(&t.to_vec1::<f32>()?, &vec![t.elem_count(); world])?;
        Ok(Tensor::from_vec(all, t.elem_count() * world, t.device())?)
    }
}

/// The device-tensor collective for a job's gradient reductions and parameter gathers, or None
/// where they go through the host [`Collective`] (one process; a CPU device; `backend =
/// "mpi"`). The one place the choice is made.
pub fn choose(
    comm: &Arc<dyn Collective>,
    backend: Backend,
    device: &Device,
) -> Result<Option<Arc<dyn TensorCollective>>> {
    if comm.world_size() == 1 {
        return Ok(None);
    }
    match (backend, device) {
        (Backend::Mpi, _) => Ok(None),
        #[cfg(feature = "cuda")]
        (Backend::Auto | Backend::Nccl, Device::Cuda(_)) => {
            Ok(Some(Arc::new(super::nccl::Nccl::init(&**comm, device)?)))
        }
        (Backend::Nccl, _) => Err(Error::config(
            "distributed.backend",
            format!(
                "\"nccl\" moves GPU tensors, and this run trains on {device:?}: set train.device = \"cuda\" \
                 (lmforge built with `--features cuda`), or leave distributed.backend at \"auto\""
            ),
        )),
        _ if crate::testhooks::staged_collectives() => Ok(Some(Arc::new(Staged::new(comm.clone())))),
        _ => Ok(None),
    }
}

/// `t` (1-D) followed by zeros up to `len` values.
fn padded(t: &Tensor, len: usize) -> Result<Tensor> {
    let n = t.elem_count();
    Ok(if n == len { t.clone() } else { t.pad_with_zeros(0, 0, len - n)? })
}

/// Values on the wire for chunks of `counts`: the largest, once per rank.
pub fn padded_len(counts: &[usize]) -> usize {
    counts.iter().copied().max().unwrap_or(0) * counts.len()
}

/// Element-wise sum over ranks of `flat` (the same length everywhere) split by `counts`:
/// rank `rank` receives the `counts[rank]` sums after the counts of the ranks before it.
pub fn reduce_scatter_v(tc: &dyn TensorCollective, flat: &Tensor, counts: &[usize], rank: usize) -> Result<Tensor> {
    let chunk = counts.iter().copied().max().unwrap_or(0);
    if chunk == 0 {
        return Ok(Tensor::zeros(0, flat.dtype(), flat.device())?);
    }
    let mut pieces = Vec::with_capacity(counts.len());
    let mut off = 0;
    for &c in counts {
        pieces.push(padded(&flat.narrow(0, off, c)?, chunk)?);
        off += c;
    }
    if off != flat.elem_count() {
        return Err(Error::Invalid(format!("reduce-scatter of {} values split as {counts:?}", flat.elem_count())));
    }
    let mine = tc.reduce_scatter_sum(&Tensor::cat(&pieces, 0)?)?;
    Ok(mine.narrow(0, 0, counts[rank])?)
}

/// Every rank's `local` (`counts[r]` values from rank r) concatenated in rank order.
pub fn all_gather_v(tc: &dyn TensorCollective, local: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let chunk = counts.iter().copied().max().unwrap_or(0);
    if chunk == 0 {
        return Ok(Tensor::zeros(0, local.dtype(), local.device())?);
    }
    let all = tc.all_gather(&padded(local, chunk)?)?;
    let pieces: Vec<Tensor> =
        counts.iter().enumerate().map(|(r, &c)| all.narrow(0, r * chunk, c)).collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&pieces, 0)?)
}

/// The tensors of `names` in `from`, flattened and concatenated (on `device`, also when there
/// are none).
pub fn flatten<'a, 't>(
    lookup: impl Fn(&str) -> Option<&'t Tensor>,
    names: impl IntoIterator<Item = &'a String>,
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    for name in names {
        let t = lookup(name).ok_or_else(|| Error::Invalid(format!("no tensor for `{name}`")))?;
        parts.push(t.flatten_all()?);
    }
    Ok(if parts.is_empty() { Tensor::zeros(0, candle_core::DType::F32, device)? } else { Tensor::cat(&parts, 0)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::group::ThreadGroup;

    fn values(rank: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| (j * 7 + rank * 3) as f32 * 0.5).collect()
    }

    #[test]
    fn uneven_reduce_scatter_and_all_gather_match_the_host_collectives() {
        for world in [2, 3] {
            let counts: Vec<usize> = (0..world).map(|r| [5, 0, 9][r]).collect();
            let total: usize = counts.iter().sum();
            let out = ThreadGroup::run(world, |rank, comm| {
                let tc = Staged::new(comm.clone());
                let flat = Tensor::new(values(rank, total), &Device::Cpu).unwrap();
                let mine = reduce_scatter_v(&tc, &flat, &counts, rank).unwrap().to_vec1::<f32>().unwrap();
                let want = comm.reduce_scatter_sum(&values(rank, total), &counts).unwrap();
                let local = Tensor::new(values(rank, counts[rank]), &Device::Cpu).unwrap();
                let all = all_gather_v(&tc, &local, &counts).unwrap().to_vec1::<f32>().unwrap();
                let want_all = comm.all_gather(&values(rank, counts[rank]), &counts).unwrap();
                (mine, want, all, want_all)
            });
            for (mine, want, all, want_all) in out {
                assert_eq!(mine, want);
                assert_eq!(all, want_all);
            }
        }
    }
}
