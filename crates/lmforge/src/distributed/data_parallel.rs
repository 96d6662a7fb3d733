//! The data-parallel training step over a [`Collective`]: which rows of each global
//! micro-batch this process computes, the bucketed gradient all-reduce, ZeRO stage 1
//! (optimizer state sharded by whole parameter, so every update rule — LAMB's trust ratio,
//! Muon's orthogonalisation, Adafactor's factored moments — runs exactly as in one process),
//! and the checkpoint's optimizer state, which does not depend on the process count: gathered
//! to rank 0 when saving, each process loading its share when resuming.
//!
//! Candle's `backward()` returns every gradient at once, so the all-reduce cannot overlap the
//! backward pass as PyTorch DDP's per-parameter hooks do: it runs after the last micro-batch's
//! backward (earlier micro-batches only accumulate locally), one message per bucket of about
//! `bucket_mb`. ZeRO-1 here all-reduces whole gradients (every rank needs the global norm for
//! clipping) and then all-gathers the updated parameters: 1.5x the traffic of plain data
//! parallelism; a reduce-scatter of the gradients would bring it down to DDP's.

use super::DistributedConfig;
use super::{buckets, shard_params, split_rows, Collective};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::{OptimConfig, OptimSpec, Optimizer, ParamGroup};
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct DataParallel {
    comm: Arc<dyn Collective>,
    /// ZeRO-1 with more than one process.
    sharded: bool,
    device: Device,
    /// Every parameter, and the ones whose optimizer state this process keeps and updates.
    vars: BTreeMap<String, Var>,
    owned: BTreeMap<String, Var>,
    /// Parameter names in the order of every bucketed message, element counts, and owner rank.
    names: Vec<String>,
    numel: Vec<usize>,
    owner: Vec<usize>,
    /// Index ranges into `names`: one message each.
    buckets: Vec<Range<usize>>,
}

impl DataParallel {
    /// `batch_size` is the global micro-batch: every process needs at least one row of it.
    pub fn new(
        comm: Arc<dyn Collective>,
        cfg: &DistributedConfig,
        params: &ParamStore,
        batch_size: usize,
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
        comm.set_timeout(Some(Duration::from_secs_f64(cfg.timeout_s)));
        let vars = params.vars().clone();
        let names: Vec<String> = vars.keys().cloned().collect();
        let numel: Vec<usize> = vars.values().map(|v| v.elem_count()).collect();
        let sharded = cfg.zero == 1 && world > 1;
        let owner = if sharded {
            let sizes: Vec<(String, usize)> = names.iter().cloned().zip(numel.iter().copied()).collect();
            let map = shard_params(&sizes, world);
            names.iter().map(|n| map[n]).collect()
        } else {
            vec![rank; names.len()]
        };
        let owned =
            names.iter().zip(&owner).filter(|(_, &r)| r == rank).map(|(n, _)| (n.clone(), vars[n].clone())).collect();
        let bucket_elems = ((cfg.bucket_mb * 1e6 / 4.0) as usize).max(1);
        Ok(Self {
            device: params.device().clone(),
            buckets: buckets(&numel, bucket_elems),
            comm,
            sharded,
            vars,
            owned,
            names,
            numel,
            owner,
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

    /// ZeRO-1 is in effect (configured, and more than one process).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// This process's share of `n` items (rows of a global batch, validation batches).
    pub fn local_range(&self, n: usize) -> Range<usize> {
        split_rows(n, self.world_size(), self.rank())
    }

    /// The optimizer over the parameters whose state this process keeps (all of them
    /// without ZeRO-1).
    pub fn optimizer(&self, cfg: &OptimConfig, groups: BTreeMap<String, ParamGroup>) -> Result<Optimizer> {
        self.optimizer_of(OptimSpec::from_config(cfg)?, groups)
    }

    /// The same, from a resolved spec.
    pub fn optimizer_of(&self, spec: OptimSpec, groups: BTreeMap<String, ParamGroup>) -> Result<Optimizer> {
        Optimizer::new(spec, &self.owned, groups)
    }

    /// Sums `grads` (each rank's already weighted share of the global mean) and returns the
    /// sum of `loss`es over all ranks: one all-reduce per bucket, the loss riding in the last.
    pub fn all_reduce_grads(&self, grads: &mut BTreeMap<String, Tensor>, loss: f64) -> Result<f64> {
        if self.world_size() == 1 {
            return Ok(loss);
        }
        let mut total = loss;
        let last = self.buckets.len().saturating_sub(1);
        for (b, range) in self.buckets.iter().enumerate() {
            let mut flat = Vec::with_capacity(range.clone().map(|i| self.numel[i]).sum::<usize>() + 1);
            for name in &self.names[range.clone()] {
                let g = grads.get(name).ok_or_else(|| Error::Invalid(format!("no gradient for `{name}`")))?;
                flat.extend(g.flatten_all()?.to_vec1::<f32>()?);
            }
            if b == last {
                flat.push(loss as f32);
            }
            self.comm.all_reduce_sum(&mut flat)?;
            let mut off = 0;
            for i in range.clone() {
                let g = grads.get_mut(&self.names[i]).expect("checked above");
                *g = Tensor::from_slice(&flat[off..off + self.numel[i]], g.shape(), &self.device)?;
                off += self.numel[i];
            }
            if b == last {
                total = flat[off] as f64;
            }
        }
        Ok(total)
    }

    /// One optimizer update: of every parameter, or with ZeRO-1 of this rank's, followed by
    /// an all-gather of the updated parameters (bucket by bucket).
    pub fn step(&self, optimizer: &mut Optimizer, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        if !self.sharded {
            return optimizer.step(&self.vars, grads, lr);
        }
        optimizer.step(&self.owned, grads, lr)?;
        let (rank, world) = (self.rank(), self.world_size());
        for range in &self.buckets {
            let mut counts = vec![0usize; world];
            let mut local = Vec::new();
            for i in range.clone() {
                counts[self.owner[i]] += self.numel[i];
                if self.owner[i] == rank {
                    local.extend(self.vars[&self.names[i]].flatten_all()?.to_vec1::<f32>()?);
                }
            }
            let all = self.comm.all_gather(&local, &counts)?;
            let mut off = 0;
            for r in 0..world {
                for i in range.clone().filter(|&i| self.owner[i] == r) {
                    let var = &self.vars[&self.names[i]];
                    if r != rank {
                        var.set(&Tensor::from_slice(&all[off..off + self.numel[i]], var.shape(), &self.device)?)?;
                    }
                    off += self.numel[i];
                }
            }
        }
        Ok(())
    }

    /// Whether any rank raised `flag` (all ranks get the same answer, so they stop together).
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.world_size() == 1 {
            return Ok(flag);
        }
        let mut buf = [f32::from(u8::from(flag))];
        self.comm.all_reduce_sum(&mut buf)?;
        Ok(buf[0] > 0.0)
    }

    /// The values of a list of `total` items split over the ranks with [`Self::local_range`],
    /// given this rank's share: the whole list, in order, on every rank.
    pub fn all_gather_split(&self, local: &[f32], total: usize) -> Result<Vec<f32>> {
        let world = self.world_size();
        let counts: Vec<usize> = (0..world).map(|r| split_rows(total, world, r).len()).collect();
        self.comm.all_gather(local, &counts)
    }

    /// Optimizer state bytes summed over all ranks (for the log line).
    pub fn total_state_bytes(&self, optimizer: &Optimizer) -> Result<f64> {
        let mut buf = [optimizer.state_bytes() as f32];
        self.comm.all_reduce_sum(&mut buf)?;
        Ok(buf[0] as f64)
    }

    /// The whole optimizer state (`PARAM.SLOT` tensors, as one process would hold it) on rank
    /// 0, None elsewhere. With ZeRO-1 every rank sends its shard, bucket by bucket; rank 0
    /// rebuilds the names and shapes of the others' slots from the update rule.
    pub fn optimizer_state_for_checkpoint(&self, optimizer: &Optimizer) -> Result<Option<Vec<(String, Tensor)>>> {
        if !self.sharded {
            return Ok(self.is_writer().then(|| optimizer.state_tensors()));
        }
        let (rank, world) = (self.rank(), self.world_size());
        let mut mine: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
        for (key, t) in optimizer.state_tensors() {
            mine.entry(param_of(&key).to_string()).or_default().push((key, t));
        }
        let mut out = Vec::new();
        for range in &self.buckets {
            let mut counts = vec![0usize; world];
            let mut local = Vec::new();
            for i in range.clone() {
                let name = &self.names[i];
                let group = optimizer.group(name).ok_or_else(|| Error::Invalid(format!("no group for `{name}`")))?;
                counts[self.owner[i]] += optimizer.spec.state_elems(self.vars[name].dims(), group.role);
                if self.owner[i] == rank {
                    for (_, t) in mine.get(name).into_iter().flatten() {
                        local.extend(t.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
            }
            let Some(all) = self.comm.gather(&local, &counts, 0)? else { continue };
            debug_assert!(self.is_writer());
            let mut off = 0;
            for r in 0..world {
                for i in range.clone().filter(|&i| self.owner[i] == r) {
                    let name = &self.names[i];
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
        let one = BTreeMap::from([(name.to_string(), self.vars[name].clone())]);
        let probe = Optimizer::new(optimizer.spec.clone(), &one, BTreeMap::from([(name.to_string(), group.clone())]))?;
        Ok(probe.state_tensors().into_iter().map(|(k, t)| (k, t.dims().to_vec())).collect())
    }

    /// Restores this rank's share of the optimizer state from a checkpoint's
    /// `optimizer.safetensors` (written by any process count), reading only that share.
    pub fn load_optimizer_state(&self, path: &Path, optimizer: &mut Optimizer, step: u64) -> Result<()> {
        let bad = |e: candle_core::Error| Error::format(path, format!("cannot read optimizer state: {e}"));
        // SAFETY: checkpoint files are written once (staged, then renamed) and never modified.
        let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(bad)?;
        let index: HashMap<&str, usize> = self.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut mine = HashMap::new();
        for (key, _) in file.tensors() {
            let Some(&i) = index.get(param_of(&key)) else {
                return Err(Error::format(
                    path,
                    format!("optimizer state `{key}` belongs to no parameter of this model"),
                ));
            };
            if self.owner[i] == self.rank() {
                let t = file.load(&key, &self.device).map_err(bad)?;
                mine.insert(key, t);
            }
        }
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
        dp.step(&mut opt, &grads, 1e-3).unwrap();
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
