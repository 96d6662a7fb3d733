//! ZeRO stage 3 for decoder layers: no process holds the whole model. Each layer parameter
//! lives on one process (its owner, the same map as the optimizer state's), which keeps its
//! value, gradient and optimizer state. A layer's parameters are all-gathered just before its
//! forward and let go after it; the layer is checkpointed (`nn::recompute::checkpointed_layer`),
//! so its backward gathers them again, recomputes the layer and hands the gradients here, where
//! they are reduce-scattered to their owners (per layer, as the backward produces them).
//! The embeddings, the final norm and the head (outside the layers) stay as under ZeRO-2.
//!
//! The layers' collectives run on a communication thread of their own ([`CommThread`]), in the
//! order the model asks for them, which is the same on every process: the gather of the layer
//! that comes next (layer i + 1 in the forward, i − 1 in the backward, the last layer again
//! between them) is submitted when layer i is fetched, so it runs while layer i computes
//! (prefetch), and a layer's reduce-scatter runs while the backward goes on. The computing
//! thread waits for that thread to be idle before a collective of its own ([`Self::flush`]).
//!
//! Memory per process: its share of the layers' parameters, gradients and optimizer state,
//! plus the gathered layers in use and ahead (two), and the full gradients of the layer the
//! backward is producing and of at most two whose reduce-scatter has not run yet — against
//! every layer's weights and gradients without sharding. A process never holds the whole
//! model, not even at the start: [`holder`] says which parameters it initialises (each drawn
//! from its name, so the values do not depend on the process count) or reads from a
//! checkpoint (memory-mapped, only its share). Writing a checkpoint gathers the layers to
//! rank 0, which serialises the whole model.

use super::comm_thread::{CommThread, Pending};
use super::reduce::{Layout, Reducer};
use super::shard_params;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::nn::recompute::{LayerSource, LayerUse};
use crate::nn::{ParamInfo, ParamStore};
use candle_core::{Device, Tensor, Var};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The decoder layer a parameter belongs to: the first number in its name
/// (`transformer.h.3.attn.c_attn.weight`, `model.layers.3.mlp.up_proj.weight`).
pub fn layer_index(name: &str) -> Option<usize> {
    name.split('.').find_map(|part| part.parse().ok())
}

fn is_layer(name: &str, n_layer: usize) -> bool {
    layer_index(name).is_some_and(|i| i < n_layer)
}

/// Every parameter's owner on `world` processes (the optimizer state's sharding).
fn owners(all: &[ParamInfo], world: usize) -> BTreeMap<String, usize> {
    let sizes: Vec<(String, usize)> = all.iter().map(|p| (p.name.clone(), p.numel())).collect();
    shard_params(&sizes, world)
}

/// Whether rank `rank` of `world` keeps a parameter (by name) of a model with parameters
/// `all` and `n_layer` decoder layers under ZeRO-3: every one outside the layers, and its
/// own share of the layers'. What it does not keep it neither initialises nor reads.
pub fn holder(all: &[ParamInfo], n_layer: usize, rank: usize, world: usize) -> impl Fn(&str) -> bool {
    let owners = owners(all, world);
    move |name| !is_layer(name, n_layer) || owners.get(name) == Some(&rank)
}

/// Jobs the communication thread may still have when a layer's gradients are submitted (the
/// backward waits until it has no more): so at most two layers' gradients wait there while a
/// third is being computed.
const JOBS_BEFORE_GRADS: usize = 1;

struct LayerShard {
    /// The layer's parameters (names in order, shapes, owners) as one reduce-scatter message.
    layout: Layout,
    /// The values of those this process owns.
    owned: BTreeMap<String, Var>,
}

/// A layer's parameters by name, as gathered.
type Gathered = Vec<(String, Tensor)>;

impl LayerShard {
    /// Every value of the layer's parameters in rank order (each rank's owned ones in layer
    /// order), by `collect` (an all-gather, or a gather to rank 0).
    fn collect(
        &self,
        rank: usize,
        world: usize,
        device: &Device,
        collect: impl FnOnce(&[f32], &[usize]) -> Result<Option<Vec<f32>>>,
    ) -> Result<Option<Gathered>> {
        let l = &self.layout;
        let (order, counts) = l.by_owner(0..l.names.len(), world);
        let mut local = Vec::new();
        for &k in order.iter().filter(|&&k| l.owner[k] == rank) {
            local.extend(self.owned[&l.names[k]].flatten_all()?.to_vec1::<f32>()?);
        }
        let Some(all) = collect(&local, &counts)? else { return Ok(None) };
        let mut out = Vec::with_capacity(l.names.len());
        let mut off = 0;
        for k in order {
            let t = Tensor::from_slice(&all[off..off + l.numel[k]], l.dims[k].as_slice(), device)?;
            out.push((l.names[k].clone(), t));
            off += l.numel[k];
        }
        Ok(Some(out))
    }
}

pub struct ShardedLayers {
    reducer: Arc<Reducer>,
    rank: usize,
    world: usize,
    device: Device,
    precision: Precision,
    layers: Vec<Arc<LayerShard>>,
    /// Every parameter's owner (layers and the rest), as the optimizer state is sharded.
    owners: BTreeMap<String, usize>,
    /// Gradients of this process's layer parameters, summed over the uses of a step.
    grads: Arc<Mutex<BTreeMap<String, Tensor>>>,
    comm: CommThread,
    /// The layer gathered ahead of its use (its index, the gather).
    ahead: Mutex<Option<(usize, Pending<Gathered>)>>,
    /// Fetches served by a gather made ahead of time (for tests and figures).
    prefetched: AtomicUsize,
}

impl ShardedLayers {
    /// Takes every layer parameter out of `params`, keeping this process's share; `all` is
    /// the model's whole parameter list (the store may hold only what [`holder`] says this
    /// process keeps: nothing else is read or initialised).
    pub fn split(
        params: &mut ParamStore,
        all: &[ParamInfo],
        n_layer: usize,
        reducer: Arc<Reducer>,
    ) -> Result<Arc<Self>> {
        let comm = reducer.comm();
        let (rank, world) = (comm.rank(), comm.world_size());
        let owners = owners(all, world);
        let mut taken = params.take_vars(|n| is_layer(n, n_layer));
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let infos: Vec<&ParamInfo> = all.iter().filter(|p| layer_index(&p.name) == Some(i)).collect();
            if infos.is_empty() {
                return Err(Error::Invalid(format!("ZeRO-3: layer {i} has no parameters to shard")));
            }
            let names: Vec<String> = infos.iter().map(|p| p.name.clone()).collect();
            let dims: Vec<Vec<usize>> = infos.iter().map(|p| p.shape.clone()).collect();
            let numel: Vec<usize> = dims.iter().map(|d| d.iter().product()).collect();
            let owner: Vec<usize> = names.iter().map(|n| owners[n]).collect();
            let mut owned = BTreeMap::new();
            for (n, &o) in names.iter().zip(&owner) {
                // Another process's parameter, when the store holds one, is dropped here.
                match (taken.remove(n), o == rank) {
                    (Some(var), true) => {
                        owned.insert(n.clone(), var);
                    }
                    (None, true) => {
                        return Err(Error::Invalid(format!("ZeRO-3: this process's parameter `{n}` is missing")))
                    }
                    _ => {}
                }
            }
            // One message per layer.
            let buckets = std::iter::once(0..names.len()).collect();
            layers.push(Arc::new(LayerShard { layout: Layout { names, numel, dims, owner, buckets }, owned }));
        }
        Ok(Arc::new(Self {
            reducer,
            rank,
            world,
            device: params.device().clone(),
            precision: params.precision(),
            layers,
            owners,
            grads: Arc::new(Mutex::new(BTreeMap::new())),
            comm: CommThread::start(),
            ahead: Mutex::new(None),
            prefetched: AtomicUsize::new(0),
        }))
    }

    pub fn reducer(&self) -> &Arc<Reducer> {
        &self.reducer
    }

    /// Every parameter's owner rank.
    pub fn owners(&self) -> &BTreeMap<String, usize> {
        &self.owners
    }

    /// Name and shape of every layer parameter, layer by layer.
    pub fn shapes(&self) -> impl Iterator<Item = (&String, &Vec<usize>)> {
        self.layers.iter().flat_map(|l| l.layout.names.iter().zip(&l.layout.dims))
    }

    /// The layer parameters this process owns (the optimizer updates them in place).
    pub fn owned(&self) -> BTreeMap<String, Var> {
        self.layers.iter().flat_map(|l| l.owned.iter().map(|(n, v)| (n.clone(), v.clone()))).collect()
    }

    /// Whether this process owns layer parameter `name`.
    pub fn owns(&self, name: &str) -> bool {
        self.layers.iter().any(|l| l.owned.contains_key(name))
    }

    /// Sets this process's layer parameters to `from`'s values (a rollback to a checkpoint).
    pub fn assign_owned(&self, from: &ParamStore) -> Result<()> {
        self.flush()?;
        self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        for (name, var) in self.layers.iter().flat_map(|l| &l.owned) {
            var.set(&from.get(name)?)?;
        }
        Ok(())
    }

    /// Waits until the communication thread has run every collective submitted (before the
    /// computing thread issues one of its own), counting the wait as exposed communication.
    pub fn flush(&self) -> Result<()> {
        self.reducer.add_exposed(self.comm.flush()?);
        Ok(())
    }

    /// The summed gradients of this process's layer parameters since the last call (after
    /// every pending reduce-scatter).
    pub fn take_grads(&self) -> Result<BTreeMap<String, Tensor>> {
        self.flush()?;
        // The weights change next: nothing gathered before may serve a later fetch.
        self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(std::mem::take(&mut *self.grads.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Fetches served by a gather made ahead of time, since the start.
    pub fn prefetched(&self) -> usize {
        self.prefetched.load(Ordering::Relaxed)
    }

    /// Every layer parameter on rank 0 (None elsewhere), for a checkpoint; collective.
    pub fn gather_to_root(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        self.flush()?;
        let comm = self.reducer.comm();
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer.collect(self.rank, self.world, &self.device, |local, counts| comm.gather(local, counts, 0))? {
                Some(layer) => out.extend(layer),
                None => debug_assert!(self.rank != 0),
            }
        }
        Ok((self.rank == 0).then_some(out))
    }

    /// Submits the all-gather of layer `i` to the communication thread.
    fn gather(&self, i: usize) -> Result<Pending<Gathered>> {
        let (layer, reducer) = (self.layers[i].clone(), self.reducer.clone());
        let (rank, world, device) = (self.rank, self.world, self.device.clone());
        self.comm.submit(move || {
            let l = &layer.layout;
            if let Some(all) = reducer.all_gather_tensors(l, 0..l.names.len(), &layer.owned)? {
                return Ok(all.into_iter().map(|(k, t)| (l.names[k].clone(), t)).collect());
            }
            let gathered =
                layer.collect(rank, world, &device, |local, counts| reducer.all_gather(local, counts).map(Some))?;
            Ok(gathered.expect("an all-gather delivers to every rank"))
        })
    }
}

impl LayerSource for ShardedLayers {
    /// Layer `i`'s parameters, all-gathered — ahead of time when the previous fetch said this
    /// one comes next — and the gather of the one after it submitted. (This process's own
    /// parameters are its variables, so a gradient reaches them too, but the source hands every
    /// gradient back through [`Self::layer_grads`].)
    fn layer(&self, i: usize, then: LayerUse) -> Result<ParamStore> {
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        let pending = match ahead {
            Some((j, pending)) if j == i => {
                self.prefetched.fetch_add(1, Ordering::Relaxed);
                pending
            }
            // Nothing ahead, or another layer (it runs anyway, on every process alike; its
            // values are dropped).
            _ => self.gather(i)?,
        };
        if let Some((next, _)) = then.next(i, self.layers.len()) {
            *self.ahead.lock().unwrap_or_else(|p| p.into_inner()) = Some((next, self.gather(next)?));
        }
        let (gathered, waited) = pending.wait()?;
        self.reducer.add_exposed(waited);
        let mut vars = BTreeMap::new();
        for (name, t) in gathered {
            let var = match self.layers[i].owned.get(&name) {
                Some(v) => v.clone(),
                None => Var::from_tensor(&t)?,
            };
            vars.insert(name, var);
        }
        Ok(ParamStore::from_vars(vars, &self.device).with_precision(self.precision))
    }

    /// Submits the reduce-scatter of one use's gradients of layer `i` to their owners, this
    /// process's share added to the step's when it is done; waits first while the
    /// communication thread has more than [`JOBS_BEFORE_GRADS`] jobs.
    fn layer_grads(&self, i: usize, grads: BTreeMap<String, Tensor>) -> Result<()> {
        self.reducer.add_exposed(self.comm.wait_until_at_most(JOBS_BEFORE_GRADS)?);
        let (layer, reducer, acc) = (self.layers[i].clone(), self.reducer.clone(), self.grads.clone());
        self.comm.submit_detached(move || {
            let mine = reducer.reduce_scatter(&layer.layout, &grads)?;
            let mut acc = acc.lock().unwrap_or_else(|p| p.into_inner());
            for (name, g) in mine {
                let sum = match acc.remove(&name) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                acc.insert(name, sum);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::group::ThreadGroup;
    use crate::distributed::Compression;
    use crate::models::{Decoder, ModelSpec};
    use crate::nn::{DropoutRng, InitScheme};
    use crate::optim::named_grads;

    #[test]
    fn layer_numbers_come_from_the_name() {
        assert_eq!(layer_index("transformer.h.11.mlp.c_fc.weight"), Some(11));
        assert_eq!(layer_index("model.layers.0.self_attn.q_proj.weight"), Some(0));
        assert_eq!(layer_index("transformer.wte.weight"), None);
        assert_eq!(layer_index("lm_head.weight"), None);
    }

    /// Loss and every parameter's gradient (summed over the ranks' rows) of a decoder whose
    /// layers are sharded over `world` threads, against one unsharded decoder on all rows.
    #[test]
    fn sharded_layers_give_the_loss_and_gradients_of_the_whole_model() {
        for preset in ["tiny", "llama-tiny"] {
            let spec = ModelSpec::preset(preset).unwrap();
            let ids: Vec<u32> = (0..4 * 17).map(|i| (i * 37 % spec.vocab_size) as u32).collect();
            let ids = Tensor::from_vec(ids, (4, 17), &Device::Cpu).unwrap();
            let (x, y) = (ids.narrow(1, 0, 16).unwrap(), ids.narrow(1, 1, 16).unwrap());
            let full = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 5, &Device::Cpu).unwrap();
            let model = Decoder::new(&spec, &full).unwrap();
            let loss = model.loss(&x, &y, None).unwrap();
            let want = named_grads(full.vars(), &loss.backward().unwrap()).unwrap();
            let want_loss = loss.to_scalar::<f32>().unwrap();
            let world = 2;
            let out = ThreadGroup::run(world, |rank, comm| {
                // Each rank initialises only what it keeps: the rest, and its share of the layers.
                let all = spec.params();
                let held = holder(&all, spec.n_layer, rank, world);
                let mine: Vec<ParamInfo> = all.iter().filter(|p| held(&p.name)).cloned().collect();
                assert!(mine.len() < all.len());
                let mut params = ParamStore::init(&mine, InitScheme::Gpt2, spec.n_layer, 5, &Device::Cpu).unwrap();
                let reducer = Arc::new(Reducer::new(comm, Compression::None, 4, Device::Cpu));
                let layers = ShardedLayers::split(&mut params, &spec.params(), spec.n_layer, reducer).unwrap();
                assert!(params.vars().keys().all(|n| layer_index(n).is_none()), "the layers left the store");
                let model = Decoder::with_layer_source(&spec, &params, layers.clone()).unwrap();
                // Rank r's two rows, each rank's loss weighted by its share.
                let (xs, ys) = (x.narrow(0, 2 * rank, 2).unwrap(), y.narrow(0, 2 * rank, 2).unwrap());
                let loss = (model.loss(&xs, &ys, Some(&mut DropoutRng::new(0.0, 1))).unwrap() * 0.5).unwrap();
                let mut grads = named_grads(params.vars(), &loss.backward().unwrap()).unwrap();
                grads.extend(layers.take_grads().unwrap());
                // A rollback sets this process's share back from a whole store.
                for var in layers.owned().values() {
                    var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
                }
                let whole = ParamStore::init(&all, InitScheme::Gpt2, spec.n_layer, 5, &Device::Cpu).unwrap();
                layers.assign_owned(&whole).unwrap();
                for (name, var) in layers.owned() {
                    assert!(layers.owns(&name));
                    let (a, b) = (var.flatten_all().unwrap(), whole.get(&name).unwrap().flatten_all().unwrap());
                    assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{name}");
                }
                (loss.to_scalar::<f32>().unwrap(), grads, layers.owned().len(), layers.prefetched())
            });
            let total: f32 = out.iter().map(|o| o.0).sum();
            assert!((total - want_loss).abs() < 1e-5, "{preset}: loss {total} vs {want_loss}");
            let layer_params = want.keys().filter(|n| layer_index(n).is_some()).count();
            assert_eq!(out.iter().map(|o| o.2).sum::<usize>(), layer_params, "each layer parameter owned once");
            // Every fetch but the forward's first came from a gather made ahead of its use.
            assert!(
                out.iter().all(|o| o.3 == 2 * spec.n_layer - 1),
                "{preset}: prefetched {:?}",
                out.iter().map(|o| o.3).collect::<Vec<_>>()
            );
            for (name, g) in &want {
                let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // A layer parameter's gradient is on its owner, already summed; the others are
                // each rank's share, summed here.
                let mut got = vec![0f32; g.len()];
                let mut seen = 0;
                for (_, grads, _, _) in &out {
                    if let Some(t) = grads.get(name) {
                        seen += 1;
                        got.iter_mut()
                            .zip(t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                            .for_each(|(a, b)| *a += b);
                    }
                }
                assert_eq!(seen, if layer_index(name).is_some() { 1 } else { world }, "{preset}: {name}");
                let err = g.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < 1e-5, "{preset}: {name} off by {err}");
            }
        }
    }
}
