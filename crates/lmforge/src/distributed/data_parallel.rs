//! The data-parallel training step over a [`Collective`]: which rows of each global
//! micro-batch this process computes, the gradient reductions ([`super::reduce`]), ZeRO
//! stages 1 and 2 (optimizer state, and with 2 the gradients, sharded by whole parameter, so
//! every update rule — LAMB's trust ratio, Muon's orthogonalisation, Adafactor's factored
//! moments — runs exactly as in one process), and the checkpoint's optimizer state, which does
//! not depend on the process count: gathered to rank 0 when saving, each process loading its
//! share when resuming.
//!
//! ZeRO 0 and 1 sum the micro-batches' gradients and all-reduce the sums (ZeRO-1 then
//! all-gathers the updated parameters: 1.5x plain data parallelism's traffic). ZeRO-2
//! reduce-scatters every micro-batch's gradients, so no process keeps more than one or two
//! micro-batches' full gradients, and accumulates only its share; the global gradient norm
//! for clipping is one more two-value all-reduce. With `distributed.overlap` (the default) the
//! buckets are reduced on a communication thread while the backward that produces them runs
//! ([`super::overlap`]); without it, after each backward (ZeRO-2) or the last one (0 and 1).

use super::overlap::{self, Reduced, Reduction};
use super::reduce::{Layout, Reducer, Traffic};
use super::zero3::ShardedLayers;
use super::{buckets, shard_params, split_rows, Collective, Compression, DistributedConfig};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::{OptimConfig, OptimSpec, Optimizer, ParamGroup};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct DataParallel {
    comm: Arc<dyn Collective>,
    /// The ZeRO stage in effect: the configured one with more than one process, else 0.
    stage: u8,
    overlap: bool,
    device: Device,
    /// Every parameter, and the ones whose optimizer state this process keeps and updates.
    vars: BTreeMap<String, Var>,
    owned: BTreeMap<String, Var>,
    /// Every parameter in the order of every bucketed message, shapes, owners, buckets.
    layout: Layout,
    /// The same for the gradients the backward leaves in the store (ZeRO-3's layers' are
    /// reduce-scattered during the backward instead).
    grad_layout: Layout,
    /// ZeRO-3's decoder layers.
    layers: Option<Arc<ShardedLayers>>,
    reducer: Arc<Reducer>,
}

impl DataParallel {
    /// `batch_size` is the global micro-batch: every process needs at least one row of it.
    pub fn new(
        comm: Arc<dyn Collective>,
        cfg: &DistributedConfig,
        params: &ParamStore,
        batch_size: usize,
    ) -> Result<Self> {
        Self::with_layers(comm, cfg, params, batch_size, None)
    }

    /// The same with ZeRO-3's sharded decoder layers (`params` then holds the rest).
    pub fn with_layers(
        comm: Arc<dyn Collective>,
        cfg: &DistributedConfig,
        params: &ParamStore,
        batch_size: usize,
        layers: Option<Arc<ShardedLayers>>,
    ) -> Result<Self> {
        let (rank, world) = (comm.rank(), comm.world_size());
        if batch_size < world {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "{batch_size} sequences per micro-batch cannot be split over {world} processes \
                     (each computes at least one); raise it to {world} or more"
                ),
            ));
        }
        let stage = if world > 1 { cfg.zero } else { 0 };
        match (stage == 3, layers.is_some()) {
            (true, false) => {
                return Err(Error::config(
                    "distributed.zero",
                    "3 shards the decoder layers of causal-LM pretraining (`lmforge train`, GPT-2 / Llama); \
                     use 2 here",
                ))
            }
            (false, true) => {
                return Err(Error::Invalid(format!("ZeRO-3 layers given to a ZeRO-{stage} run")));
            }
            _ => {}
        }
        comm.set_timeout(Some(Duration::from_secs_f64(cfg.timeout_s)));
        let mut vars = params.vars().clone();
        // Every parameter: the store's, then (ZeRO-3) the sharded layers', of which this
        // process holds its own only.
        let mut shapes: BTreeMap<String, Vec<usize>> =
            vars.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
        let mut layer_params = BTreeSet::new();
        if let Some(l) = &layers {
            for (name, dims) in l.shapes() {
                shapes.insert(name.clone(), dims.clone());
                layer_params.insert(name.clone());
            }
            vars.extend(l.owned());
        }
        let names: Vec<String> = shapes.keys().cloned().collect();
        let dims: Vec<Vec<usize>> = shapes.into_values().collect();
        let numel: Vec<usize> = dims.iter().map(|d| d.iter().product()).collect();
        let owner: Vec<usize> = match (&layers, stage) {
            (Some(l), _) => names.iter().map(|n| l.owners()[n]).collect(),
            (None, 0) => vec![rank; names.len()],
            (None, _) => {
                let sizes: Vec<(String, usize)> = names.iter().cloned().zip(numel.iter().copied()).collect();
                let map = shard_params(&sizes, world);
                names.iter().map(|n| map[n]).collect()
            }
        };
        let owned =
            names.iter().zip(&owner).filter(|(_, &r)| r == rank).map(|(n, _)| (n.clone(), vars[n].clone())).collect();
        let bucket_elems = ((cfg.bucket_mb * 1e6 / 4.0) as usize).max(1);
        let device = params.device().clone();
        // The gradients the backward leaves in the store: all but ZeRO-3's layers'.
        // In the backward's order, so the first buckets are complete while it still runs.
        let grad_layout = {
            let keep: Vec<usize> =
                super::backward_order(&names).into_iter().filter(|&i| !layer_params.contains(&names[i])).collect();
            let numel: Vec<usize> = keep.iter().map(|&i| numel[i]).collect();
            Layout {
                buckets: buckets(&numel, bucket_elems),
                names: keep.iter().map(|&i| names[i].clone()).collect(),
                dims: keep.iter().map(|&i| dims[i].clone()).collect(),
                owner: keep.iter().map(|&i| owner[i]).collect(),
                numel,
            }
        };
        let reducer = match &layers {
            Some(l) => l.reducer().clone(),
            None => Arc::new(Reducer::from_config(comm.clone(), cfg, device.clone())?),
        };
        Ok(Self {
            reducer,
            layout: Layout { buckets: buckets(&numel, bucket_elems), names, numel, dims, owner },
            grad_layout,
            layers,
            device,
            comm,
            stage,
            overlap: cfg.overlap,
            vars,
            owned,
        })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Rank 0 alone writes checkpoints, metrics and progress.
    pub fn is_writer(&self) -> bool {
        self.rank() == 0
    }

    /// ZeRO-1 or 2 is in effect (configured, and more than one process).
    pub fn is_sharded(&self) -> bool {
        self.stage >= 1
    }

    /// The ZeRO stage in effect (0 with one process).
    pub fn stage(&self) -> u8 {
        self.stage
    }

    pub fn compression(&self) -> Compression {
        self.reducer.compression()
    }

    /// What moves device tensors between the processes (`nccl`), when not MPI's host buffers.
    pub fn tensor_transport(&self) -> Option<&'static str> {
        self.reducer.tensor_comm().map(|t| t.name())
    }

    /// ZeRO-2: each micro-batch's gradients are reduce-scattered as soon as its backward ends
    /// (PowerSGD, an all-reduce by nature, reduces once per step instead).
    pub fn reduces_every_micro_batch(&self) -> bool {
        self.stage >= 2 && self.compression() != Compression::PowerSgd
    }

    /// Gradient buckets are reduced on a communication thread during the backward
    /// ([`super::overlap`]). Not under ZeRO-3: its layers' collectives run on a thread of their
    /// own ([`super::zero3`]), and a second thread issuing collectives beside it could pair
    /// them differently on different processes.
    pub fn overlaps(&self) -> bool {
        self.overlap && self.world_size() > 1 && self.stage < 3
    }

    /// The step's gradients summed over the processes (ZeRO 0/1: all of them, with the loss;
    /// ZeRO-2: this process's share) while `micro(m)` runs each micro-batch's backward,
    /// returning its gradient store and weighted loss (None: no rows here).
    pub fn reduce_during_backward(
        &self,
        micros: usize,
        micro: impl FnMut(usize) -> Result<Option<(GradStore, f64)>>,
    ) -> Result<Reduced> {
        let reduction = if self.reduces_every_micro_batch() { Reduction::ReduceScatter } else { Reduction::AllReduce };
        let l = &self.grad_layout;
        let params: Vec<Tensor> = l.names.iter().map(|n| self.vars[n].as_tensor().clone()).collect();
        overlap::reduce_during_backward(&self.reducer, l, &params, reduction, micros, micro)
    }

    /// ZeRO-3: the gradients of this process's layer parameters, reduce-scattered during the
    /// step's backward passes (empty otherwise).
    pub fn take_layer_grads(&self) -> Result<BTreeMap<String, Tensor>> {
        self.layers.as_ref().map(|l| l.take_grads()).unwrap_or_else(|| Ok(BTreeMap::new()))
    }

    /// ZeRO-3: waits until the layers' communication thread is idle, so that a collective of
    /// this thread pairs with the same one on every process (a no-op otherwise).
    fn settle(&self) -> Result<()> {
        self.layers.as_ref().map_or(Ok(()), |l| l.flush())
    }

    /// ZeRO-3: elements of the sharded layers' parameters (held across all processes, not in
    /// the task's store); 0 otherwise.
    pub fn sharded_layer_params(&self) -> usize {
        match &self.layers {
            Some(l) => l.shapes().map(|(_, d)| d.iter().product::<usize>()).sum(),
            None => 0,
        }
    }

    /// ZeRO-3: every layer parameter on rank 0 for a checkpoint (None elsewhere, and without
    /// ZeRO-3); collective.
    pub fn gather_layers_for_checkpoint(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        match &self.layers {
            Some(l) => l.gather_to_root(),
            None => Ok(None),
        }
    }

    /// This process's share of `n` items (rows of a global batch, validation batches).
    pub fn local_range(&self, n: usize) -> Range<usize> {
        split_rows(n, self.world_size(), self.rank())
    }

    /// The optimizer over the parameters whose state this process keeps (all of them
    /// without ZeRO).
    pub fn optimizer(&self, cfg: &OptimConfig, groups: BTreeMap<String, ParamGroup>) -> Result<Optimizer> {
        self.optimizer_of(OptimSpec::from_config(cfg)?, groups)
    }

    /// The same, from a resolved spec.
    pub fn optimizer_of(&self, spec: OptimSpec, groups: BTreeMap<String, ParamGroup>) -> Result<Optimizer> {
        Optimizer::new(spec, &self.owned, groups)
    }

    /// Sums `grads` (each rank's already weighted share of the global mean) and returns the
    /// sum of `loss`es over all ranks: one all-reduce per bucket (fp32: the loss riding in the
    /// last), or compressed.
    pub fn all_reduce_grads(&self, grads: &mut BTreeMap<String, Tensor>, loss: f64) -> Result<f64> {
        self.settle()?;
        self.reducer.all_reduce(&self.grad_layout, grads, loss)
    }

    /// ZeRO-2: the summed gradients of this process's parameters (and no others) from its
    /// full local set, one reduce-scatter per bucket.
    pub fn reduce_scatter_grads(&self, grads: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        self.settle()?;
        self.reducer.reduce_scatter(&self.grad_layout, grads)
    }

    /// ZeRO-2's end of a step: the global loss and gradient norm from every rank's share (one
    /// two-value all-reduce).
    pub fn finish_sharded(&self, grads: &BTreeMap<String, Tensor>, loss: f64) -> Result<(f64, f64)> {
        self.settle()?;
        let mut buf = [loss as f32, crate::optim::sum_of_squares(grads)? as f32];
        self.reducer.all_reduce_sum(&mut buf)?;
        Ok((buf[0] as f64, (buf[1] as f64).sqrt()))
    }

    /// The optimizer step the next reductions belong to (PowerSGD starts at a step).
    pub fn set_step(&self, step: u64) {
        self.reducer.set_step(step);
    }

    /// What communication cost since the last call.
    pub fn take_traffic(&self) -> Traffic {
        // ZeRO-3's layers' collectives run beside the computation too.
        self.reducer.take_traffic(self.overlaps() || self.stage == 3)
    }

    /// One optimizer update from the gradients times `grad_scale` (clipping's factor; see
    /// [`Optimizer::step_scaled`]): of every parameter, or with ZeRO of this rank's, followed by
    /// an all-gather of the updated parameters (bucket by bucket).
    pub fn step(
        &self,
        optimizer: &mut Optimizer,
        grads: &BTreeMap<String, Tensor>,
        grad_scale: f64,
        lr: f64,
    ) -> Result<()> {
        if !self.is_sharded() {
            return optimizer.step_scaled(&self.vars, grads, grad_scale, lr);
        }
        self.settle()?;
        optimizer.step_scaled(&self.owned, grads, grad_scale, lr)?;
        let (rank, world) = (self.rank(), self.world_size());
        // ZeRO-3's layer parameters stay with their owners (gathered for each use).
        let l = &self.grad_layout;
        for range in &l.buckets {
            // Device tensors (NCCL) when the reducer has a tensor collective.
            if let Some(all) = self.reducer.all_gather_tensors(l, range.clone(), &self.owned)? {
                for (i, value) in all.into_iter().filter(|(i, _)| l.owner[*i] != rank) {
                    self.vars[&l.names[i]].set(&value)?;
                }
                continue;
            }
            let (order, counts) = l.by_owner(range.clone(), world);
            let mut local = Vec::new();
            for &i in order.iter().filter(|&&i| l.owner[i] == rank) {
                local.extend(self.vars[&l.names[i]].flatten_all()?.to_vec1::<f32>()?);
            }
            let all = self.reducer.all_gather(&local, &counts)?;
            let mut off = 0;
            for i in order {
                if l.owner[i] != rank {
                    let var = &self.vars[&l.names[i]];
                    var.set(&Tensor::from_slice(&all[off..off + l.numel[i]], var.shape(), &self.device)?)?;
                }
                off += l.numel[i];
            }
        }
        Ok(())
    }

    /// Whether any rank raised `flag` (all ranks get the same answer, so they stop together).
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.world_size() == 1 {
            return Ok(flag);
        }
        self.settle()?;
        let mut buf = [f32::from(u8::from(flag))];
        self.comm.all_reduce_sum(&mut buf)?;
        Ok(buf[0] > 0.0)
    }

    /// The values of a list of `total` items split over the ranks with [`Self::local_range`],
    /// given this rank's share: the whole list, in order, on every rank.
    pub fn all_gather_split(&self, local: &[f32], total: usize) -> Result<Vec<f32>> {
        let world = self.world_size();
        let counts: Vec<usize> = (0..world).map(|r| split_rows(total, world, r).len()).collect();
        self.settle()?;
        self.comm.all_gather(local, &counts)
    }

    /// Optimizer state bytes summed over all ranks (for the log line).
    pub fn total_state_bytes(&self, optimizer: &Optimizer) -> Result<f64> {
        self.settle()?;
        let mut buf = [optimizer.state_bytes() as f32];
        self.comm.all_reduce_sum(&mut buf)?;
        Ok(buf[0] as f64)
    }

    /// The whole optimizer state (`PARAM.SLOT` tensors, as one process would hold it) on rank
    /// 0, None elsewhere. With ZeRO-1 every rank sends its shard, bucket by bucket; rank 0
    /// rebuilds the names and shapes of the others' slots from the update rule.
    pub fn optimizer_state_for_checkpoint(&self, optimizer: &Optimizer) -> Result<Option<Vec<(String, Tensor)>>> {
        self.settle()?;
        // PowerSGD's state rides along (`PARAM.powersgd_*`; collective, so first on every rank).
        let compressor = self.reducer.powersgd_state()?;
        let state = self.sharded_optimizer_state(optimizer)?;
        Ok(state.map(|mut s| {
            s.extend(compressor);
            s
        }))
    }

    fn sharded_optimizer_state(&self, optimizer: &Optimizer) -> Result<Option<Vec<(String, Tensor)>>> {
        if !self.is_sharded() {
            return Ok(self.is_writer().then(|| optimizer.state_tensors()));
        }
        let (rank, world) = (self.rank(), self.world_size());
        let mut mine: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
        for (key, t) in optimizer.state_tensors() {
            mine.entry(param_of(&key).to_string()).or_default().push((key, t));
        }
        let mut out = Vec::new();
        for range in &self.layout.buckets {
            let mut counts = vec![0usize; world];
            let mut local = Vec::new();
            for i in range.clone() {
                let name = &self.layout.names[i];
                let group = optimizer.group(name).ok_or_else(|| Error::Invalid(format!("no group for `{name}`")))?;
                counts[self.layout.owner[i]] += optimizer.spec.state_elems(&self.layout.dims[i], group.role);
                if self.layout.owner[i] == rank {
                    for (_, t) in mine.get(name).into_iter().flatten() {
                        local.extend(t.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
            }
            let Some(all) = self.comm.gather(&local, &counts, 0)? else { continue };
            debug_assert!(self.is_writer());
            let mut off = 0;
            for r in 0..world {
                for i in range.clone().filter(|&i| self.layout.owner[i] == r) {
                    let name = &self.layout.names[i];
                    if r == rank {
                        for (key, t) in mine.get(name).into_iter().flatten() {
                            out.push((key.clone(), t.clone()));
                            off += t.elem_count();
                        }
                        continue;
                    }
                    for (key, shape) in self.state_layout(optimizer, name)? {
                        let n: usize = shape.iter().product();
                        let data = all.get(off..off + n).ok_or_else(|| {
                            Error::Distributed(format!("gathered optimizer state is shorter than `{key}` needs"))
                        })?;
                        out.push((key, Tensor::from_slice(data, shape, &self.device)?));
                        off += n;
                    }
                }
            }
            if off != all.len() {
                return Err(Error::Distributed(format!(
                    "gathered {} optimizer-state values where the layout has {off}",
                    all.len()
                )));
            }
        }
        Ok(self.is_writer().then_some(out))
    }

    /// Names and shapes of the state slots `optimizer`'s rule keeps for parameter `name`
    /// (from a throwaway optimizer over that one parameter).
    fn state_layout(&self, optimizer: &Optimizer, name: &str) -> Result<Vec<(String, Vec<usize>)>> {
        let group = optimizer.group(name).ok_or_else(|| Error::Invalid(format!("no group for `{name}`")))?;
        // A stand-in of the parameter's shape (under ZeRO-3 this process may not hold it).
        let i = self
            .layout
            .names
            .binary_search_by(|n| n.as_str().cmp(name))
            .map_err(|_| Error::Invalid(format!("no parameter `{name}`")))?;
        let stand_in = Var::zeros(self.layout.dims[i].as_slice(), candle_core::DType::F32, &self.device)?;
        let one = BTreeMap::from([(name.to_string(), stand_in)]);
        let probe = Optimizer::new(optimizer.spec.clone(), &one, BTreeMap::from([(name.to_string(), group.clone())]))?;
        Ok(probe.state_tensors().into_iter().map(|(k, t)| (k, t.dims().to_vec())).collect())
    }

    /// Restores this rank's share of the optimizer state from a checkpoint's
    /// `optimizer.safetensors` (written by any process count), reading only that share.
    pub fn load_optimizer_state(&self, path: &Path, optimizer: &mut Optimizer, step: u64) -> Result<()> {
        let bad = |e: candle_core::Error| Error::format(path, format!("cannot read optimizer state: {e}"));
        // SAFETY: checkpoint files are written once (staged, then renamed) and never modified.
        let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(bad)?;
        let index: HashMap<&str, usize> = self.layout.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut mine = HashMap::new();
        let mut compressor = HashMap::new();
        for (key, _) in file.tensors() {
            if key.rsplit_once('.').is_some_and(|(_, slot)| slot.starts_with("powersgd_")) {
                compressor.insert(key.clone(), file.load(&key, &self.device).map_err(bad)?);
                continue;
            }
            let Some(&i) = index.get(param_of(&key)) else {
                return Err(Error::format(
                    path,
                    format!("optimizer state `{key}` belongs to no parameter of this model"),
                ));
            };
            if self.layout.owner[i] == self.rank() {
                let t = file.load(&key, &self.device).map_err(bad)?;
                mine.insert(key, t);
            }
        }
        self.reducer.load_powersgd_state(compressor)?;
        optimizer.load_state(mine, step)
    }
}

/// `PARAM` of a state key `PARAM.SLOT` (slot names have no dots; parameter names do).
fn param_of(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::SingleProcess;
    use crate::models::ModelSpec;
    use crate::nn::InitScheme;
    use crate::train::RunConfig;

    #[test]
    fn state_keys_split_at_the_slot() {
        assert_eq!(param_of("transformer.h.0.attn.c_attn.weight.exp_avg"), "transformer.h.0.attn.c_attn.weight");
        assert_eq!(param_of("nodot"), "");
    }

    /// One process: the step, the checkpoint state and its reload are the plain optimizer's.
    #[test]
    fn single_process_is_the_plain_optimizer() {
        let spec = ModelSpec::preset("tiny").unwrap();
        let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 1, &Device::Cpu).unwrap();
        let cfg = RunConfig::from_toml_str("[distributed]\nzero = 1\n", &[]).unwrap();
        let dp = DataParallel::new(Arc::new(SingleProcess), &cfg.distributed, &params, 4).unwrap();
        assert!(!dp.is_sharded() && dp.is_writer());
        assert_eq!(dp.local_range(4), 0..4);
        let groups = crate::optim::param_groups(
            &cfg.optim,
            spec.params().iter().map(|p| (p.name.clone(), crate::train::param_role(p))),
        )
        .unwrap();
        let mut opt = dp.optimizer(&cfg.optim, groups).unwrap();
        let grads: BTreeMap<String, Tensor> =
            params.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().ones_like().unwrap())).collect();
        dp.step(&mut opt, &grads, 1.0, 1e-3).unwrap();
        let saved = dp.optimizer_state_for_checkpoint(&opt).unwrap().unwrap();
        assert_eq!(saved.len(), opt.state_tensors().len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        std::fs::write(&path, crate::nn::serialize_tensors(saved.into_iter()).unwrap()).unwrap();
        dp.load_optimizer_state(&path, &mut opt, 1).unwrap();
        let e = DataParallel::new(Arc::new(SingleProcess), &cfg.distributed, &params, 0).err().unwrap();
        assert!(e.to_string().contains("train.batch_size"), "{e}");
    }
}
