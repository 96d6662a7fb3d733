//! Multi-process data parallelism. [`Collective`] is the narrow set of operations training
//! needs between processes (rank, world size, all-reduce, all-gather, gather, broadcast,
//! barrier, a timeout, abort), implemented for one process (no communication) and over the
//! system MPI (cargo feature `mpi`; processes launched by `mpirun` / `srun`). [`DataParallel`]
//! builds the trainer's step on it: every process computes a disjoint slice of the rows of each
//! global micro-batch, gradients are all-reduced in buckets during (or after) the last
//! micro-batch's backward, and
//! with ZeRO stage 1 each process keeps and updates the optimizer state of its share of the
//! parameters, whose new values are then all-gathered. Results do not depend on the process
//! count beyond fp32 summation order.
//!
//! **GPUs.** With `train.device = "cuda"` the gradient reductions and ZeRO's parameter
//! all-gathers move device tensors through NCCL ([`nccl`], `--features cuda`), bootstrapped over
//! MPI; rank, world size, barrier, timeout, abort and the small host messages stay MPI's.
//! [`tensor_comm`] is the device-buffer interface, with a host-staged implementation that the
//! CPU tests run through the same bucketing (`distributed.backend` picks; see [`Backend`]).

mod comm_thread;
pub mod compress;
mod data_parallel;
#[cfg(test)]
pub(crate) mod group;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod overlap;
mod reduce;
pub mod tensor_comm;
pub mod zero3;

pub use compress::Compression;
pub use data_parallel::DataParallel;
pub use reduce::{Reducer, Traffic};
pub use zero3::ShardedLayers;

use crate::config::check;
use crate::error::Result;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Operations between the processes of one training job, all collective (every rank calls
/// them in the same order). Buffers are host `f32`; counts are in elements. Implementations
/// serialize calls from several threads.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks, in place on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise mean over ranks, in place on every rank.
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let n = self.world_size() as f32;
        buf.iter_mut().for_each(|x| *x /= n);
        Ok(())
    }
    /// Every rank's `local` concatenated in rank order, on every rank; `counts[r]` is rank
    /// r's length (known to all).
    fn all_gather(&self, local: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// Element-wise sum over ranks of `buf` (the same length everywhere), split by `counts`:
    /// rank r receives the `counts[r]` sums that start after the counts of the ranks before it.
    fn reduce_scatter_sum(&self, buf: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// Personalised exchange: `send` holds `send_counts[r]` values for each rank r, in rank
    /// order; returns what each rank sent this one, in rank order (`recv_counts[r]` from r).
    /// Moves bits without arithmetic, so packed non-`f32` payloads travel intact.
    fn all_to_all(&self, send: &[f32], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<f32>>;
    /// The same concatenation delivered to `root` only (None elsewhere).
    fn gather(&self, local: &[f32], counts: &[usize], root: usize) -> Result<Option<Vec<f32>>>;
    /// `root`'s `buf` into every rank's `buf` (same length everywhere).
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// `root`'s bytes to every rank (lengths may differ before the call).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// How long each later call may wait for the other ranks before failing with
    /// [`Error::Distributed`] (None: no limit).
    fn set_timeout(&self, timeout: Option<Duration>);
    /// Ends every process of the job with exit status `code` (MPI cannot cancel a collective
    /// that a failed rank left half done, so a failure ends the whole job).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, local: &[f32], _counts: &[usize]) -> Result<Vec<f32>> {
        Ok(local.to_vec())
    }
    fn reduce_scatter_sum(&self, buf: &[f32], _counts: &[usize]) -> Result<Vec<f32>> {
        Ok(buf.to_vec())
    }
    fn all_to_all(&self, send: &[f32], _send_counts: &[usize], _recv_counts: &[usize]) -> Result<Vec<f32>> {
        Ok(send.to_vec())
    }
    fn gather(&self, local: &[f32], _counts: &[usize], _root: usize) -> Result<Option<Vec<f32>>> {
        Ok(Some(local.to_vec()))
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn set_timeout(&self, _timeout: Option<Duration>) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `[distributed]`: how the processes of a multi-process run share the work.
/// Multi-process data-parallel training (`mpirun -np N lmforge train`; see `distributed`).
/// The process count is not part of the config: a run saved with N processes resumes with M.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// ZeRO stage: 0 = every process keeps the whole optimizer state (plain data parallel);
    /// 1 = each process keeps and updates the state of its share of the parameters;
    /// 2 = and keeps only the gradients of that share (reduce-scattered every micro-batch);
    /// 3 = and the decoder layers' parameters: each layer is all-gathered for its use.
    pub zero: u8,
    /// Seconds a collective may wait for the other processes before the run fails (a process
    /// died or hangs). Also bounds how long the others wait while rank 0 writes a checkpoint.
    pub timeout_s: f64,
    /// Gradients are all-reduced in buckets of about this many MB (several parameters per
    /// message; a larger parameter travels alone).
    pub bucket_mb: f64,
    /// What gradient reductions send: fp32, bf16, or PowerSGD's low-rank factors.
    pub compress: Compression,
    /// PowerSGD's rank (columns of each factor).
    pub powersgd_rank: usize,
    /// PowerSGD compresses from this optimizer step on; plain fp32 all-reduces before.
    pub powersgd_start_step: u64,
    /// ZeRO 0–2 reduce each gradient bucket on a communication thread as soon as the
    /// backward has produced it, while the backward goes on ([`overlap`]).
    pub overlap: bool,
    /// What moves the gradients between processes: see [`Backend`].
    pub backend: Backend,
}

/// `distributed.backend`: how device tensors travel. Only uncompressed (fp32) reductions and
/// ZeRO's parameter all-gathers use NCCL; `bf16` and `powersgd` compression pack their messages
/// on the host and go through MPI on any device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL when the training device is a GPU (and lmforge was built with `cuda`), else MPI.
    #[default]
    Auto,
    /// MPI on host buffers (GPU tensors are copied to the host and back): for a cluster
    /// without NCCL, or to compare.
    Mpi,
    /// NCCL, and an error when it cannot be used.
    Nccl,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            zero: 0,
            timeout_s: 600.0,
            bucket_mb: 25.0,
            compress: Compression::None,
            // Rank 4 trains the quickstart recipe 7% worse than fp32, rank 16 1.1% (README).
            powersgd_rank: 16,
            powersgd_start_step: 0,
            overlap: true,
            backend: Backend::Auto,
        }
    }
}

impl DistributedConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// This config with `distributed.KEY=VALUE` overrides applied (and checked): how the
    /// processes share the work may change when a run is resumed (stage, buckets, compression),
    /// nothing else may.
    pub fn with_overrides(&self, set: &[String]) -> Result<Self> {
        if set.is_empty() {
            return Ok(self.clone());
        }
        let mut local = Vec::with_capacity(set.len());
        for o in set {
            match o.strip_prefix("distributed.") {
                Some(rest) => local.push(rest.to_string()),
                None => {
                    return Err(crate::error::Error::config(
                        o.split('=').next().unwrap_or(o),
                        "a resumed run continues exactly: only `distributed.*` keys (how the processes \
                         share the work) may be set with --resume",
                    ))
                }
            }
        }
        let text = toml::to_string(self).map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
        let cfg: Self = crate::config::parse(&text, &local)
            .map_err(|e| crate::error::Error::Invalid(format!("[distributed] {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        check(
            self.zero <= 3,
            "distributed.zero",
            self.zero,
            "0 (replicated optimizer state), 1 (sharded optimizer state, ZeRO stage 1), 2 (sharded \
             optimizer state and gradients) or 3 (sharded parameters too)",
        )?;
        check(
            !(self.zero == 3 && self.compress == Compression::PowerSgd),
            "distributed.compress",
            "\"powersgd\"",
            "\"none\" or \"bf16\" with ZeRO-3 (PowerSGD is an all-reduce; ZeRO-3 reduce-scatters each \
             layer's gradients to their owners)",
        )?;
        check(
            (1..=256).contains(&self.powersgd_rank),
            "distributed.powersgd_rank",
            self.powersgd_rank,
            "a rank from 1 to 256",
        )?;
        check(
            self.timeout_s.is_finite() && self.timeout_s > 0.0,
            "distributed.timeout_s",
            self.timeout_s,
            "a positive number of seconds",
        )?;
        check(
            self.bucket_mb.is_finite() && self.bucket_mb > 0.0,
            "distributed.bucket_mb",
            self.bucket_mb,
            "a positive number of MB",
        )
    }
}

/// Set by MPI launchers: Open MPI's `mpirun`, Hydra (MPICH, Intel MPI), PMIx (Open MPI 5,
/// `srun --mpi=pmix`).
const SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

fn env_number(names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

/// Whether an MPI launcher started this process as part of a job of more than one process.
pub fn launched_as_mpi_job() -> bool {
    env_number(&SIZE_VARS).is_some_and(|n| n > 1) || env_number(&RANK_VARS).is_some_and(|r| r > 0)
}

/// Processes of this job on this machine (the launcher's count; 1 when not launched by one).
/// Each should use its share of the cores.
pub fn processes_on_this_node() -> usize {
    env_number(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]).unwrap_or(1).max(1)
}

/// This process's index among the job's processes on this machine (0 when not launched by an
/// MPI launcher): with one GPU per process, the GPU it takes.
pub fn local_rank() -> usize {
    env_number(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]).unwrap_or(0)
}

/// The collective for this process: MPI when an MPI launcher started it as part of a job of
/// several processes (and lmforge was built with the `mpi` feature), else [`SingleProcess`].
/// Call once, before any other thread starts; dropping the last reference finalizes MPI.
pub fn from_env() -> Result<Arc<dyn Collective>> {
    if !launched_as_mpi_job() {
        return Ok(Arc::new(SingleProcess));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Arc::new(mpi::MpiCollective::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(crate::error::Error::Invalid(format!(
            "launched by an MPI launcher as one of {} processes, but this lmforge was built without \
             the `mpi` feature: each process would train alone and they would overwrite each other's \
             files. Build with `cargo build --release --features lmforge-cli/mpi` (scripts/install-mpi.sh \
             installs Open MPI), or run a single process",
            env_number(&SIZE_VARS).map_or("several".to_string(), |n| n.to_string())
        )))
    }
}

/// Runs `f` on rank 0, then (after a barrier without timeout: rank 0 may prepare a large
/// corpus) on the others. For work whose first run creates files the later ones read.
pub fn rank0_first<T>(comm: &dyn Collective, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if comm.world_size() == 1 {
        return f();
    }
    comm.set_timeout(None);
    if comm.rank() == 0 {
        let out = f()?;
        comm.barrier()?;
        Ok(out)
    } else {
        comm.barrier()?;
        f()
    }
}

/// Rows of a global batch of `global` rows that rank `rank` of `world` computes: contiguous,
/// in rank order, sizes differing by at most one (the first `global % world` ranks take one
/// more).
pub fn split_rows(global: usize, world: usize, rank: usize) -> Range<usize> {
    let (base, extra) = (global / world, global % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// ZeRO-1 owners: each parameter's optimizer state lives on one rank. Largest first onto the
/// least loaded rank (by element count: the update's work, and its state for every optimizer
/// but Adafactor); ties go to the lower rank, so every process computes the same map.
pub fn shard_params(sizes: &[(String, usize)], world: usize) -> BTreeMap<String, usize> {
    let mut order: Vec<&(String, usize)> = sizes.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut load = vec![0usize; world.max(1)];
    let mut owners = BTreeMap::new();
    for (name, n) in order {
        let r = (0..load.len()).min_by_key(|&r| (load[r], r)).expect("world >= 1");
        load[r] += n;
        owners.insert(name.clone(), r);
    }
    owners
}

/// Parameter indices in the order a backward pass finishes their gradients: the last decoder
/// layer's first, down to the first layer's, then the parameters outside the layers (in
/// `names` order within each): the order of the gradient buckets, so that the first ones are
/// complete while the backward still runs ([`overlap`]).
pub fn backward_order(names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| {
        let layer = zero3::layer_index(&names[i]);
        (layer.is_none(), std::cmp::Reverse(layer.unwrap_or(0)), i)
    });
    order
}

/// Consecutive runs of `sizes` (element counts, in order) of about `bucket_elems` elements:
/// a bucket closes before the parameter that would overflow it; a larger parameter is a
/// bucket of its own.
pub fn buckets(sizes: &[usize], bucket_elems: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut fill) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && fill + n > bucket_elems {
            out.push(start..i);
            (start, fill) = (i, 0);
        }
        fill += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_the_batch_once_in_order() {
        for global in 1..12 {
            for world in 1..=global.min(5) {
                let parts: Vec<Range<usize>> = (0..world).map(|r| split_rows(global, world, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, global);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
        assert_eq!(split_rows(5, 2, 0), 0..3);
        assert_eq!(split_rows(5, 2, 1), 3..5);
    }

    #[test]
    fn shards_balance_largest_first_and_are_deterministic() {
        let sizes: Vec<(String, usize)> =
            [("a", 100), ("b", 60), ("c", 50), ("d", 10), ("e", 10)].iter().map(|(n, s)| (n.to_string(), *s)).collect();
        let owners = shard_params(&sizes, 2);
        // a → 0 (100); b → 1 (60); c → 1 (110); d → 0 (110); e → 0 (120)
        let want: BTreeMap<String, usize> =
            [("a", 0), ("b", 1), ("c", 1), ("d", 0), ("e", 0)].iter().map(|(n, r)| (n.to_string(), *r)).collect();
        assert_eq!(owners, want);
        assert!(shard_params(&sizes, 1).values().all(|&r| r == 0));
        let mut rev = sizes.clone();
        rev.reverse();
        assert_eq!(shard_params(&rev, 2), owners, "independent of the input order");
    }

    #[test]
    fn backward_order_is_last_layer_first_then_the_rest() {
        let names: Vec<String> = ["lm_head.weight", "h.0.a", "h.0.b", "h.10.a", "h.2.a", "wte.weight"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let order: Vec<&str> = backward_order(&names).into_iter().map(|i| names[i].as_str()).collect();
        assert_eq!(order, ["h.10.a", "h.2.a", "h.0.a", "h.0.b", "lm_head.weight", "wte.weight"]);
    }

    #[test]
    fn buckets_close_before_overflow_and_keep_big_params_alone() {
        assert_eq!(buckets(&[3, 3, 3, 10, 1, 1], 6), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(buckets(&[1, 1, 1], 100), vec![0..3]);
        assert_eq!(buckets(&[], 100), Vec::<Range<usize>>::new());
    }
}
