//! Gradient reductions overlapped with the backward pass (`distributed.overlap`), as PyTorch
//! DDP's bucket hooks do. Candle's `backward()` returns every gradient at once, but the fused
//! decoder sublayers and checkpointed blocks hand their parameters' gradients over as the
//! backward reaches them (`ops::param_grads`); while a step's backward runs, those go to a
//! communication thread, which reduces a bucket as soon as the last of its gradients has
//! arrived, while the backward goes on through the layers before it. What arrives only with
//! the gradient store (embeddings, final norm, head: non-layer parameters) is reduced when the
//! backward ends.
//!
//! Every process must issue the same collectives in the same order, whatever order its
//! gradients arrive in (a process may have no rows of a micro-batch and compute nothing), so
//! buckets go out in the layout's fixed order — the backward's: last layer first, non-layer
//! parameters at the end — each one as soon as it and every bucket before it are complete.
//! Only buckets made entirely of decoder-layer parameters go out before the backward ends
//! (a tied embedding gets gradients from two places: the head's early, the embedding's late).
//!
//! The arithmetic is the one without overlap, operation for operation: each micro-batch's
//! gradient is its streamed parts summed in arrival order plus the store's part, the
//! micro-batches summed in order, the same buckets reduced by the same calls; the result is the
//! same to the bit (tested). ZeRO 0/1 all-reduce the sums during the last micro-batch's
//! backward; ZeRO-2 reduce-scatters every micro-batch's buckets during its own backward, and a
//! micro-batch's backward waits for the previous micro-batch's reductions to finish, so no more
//! than two micro-batches' gradients are held.

use super::reduce::{Layout, Reducer};
use super::zero3::layer_index;
use crate::error::{Error, Result};
use crate::ops::param_grads;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, TensorId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::time::Instant;

/// What a step does with each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Every process gets every sum; once, during the last micro-batch (ZeRO 0 and 1).
    AllReduce,
    /// Each process gets the sums of its own parameters; every micro-batch (ZeRO 2).
    ReduceScatter,
}

/// What the communication thread hands back at the end of a step.
pub struct Reduced {
    /// All-reduce: every parameter's summed gradient; reduce-scatter: this process's ones,
    /// summed over the micro-batches.
    pub grads: BTreeMap<String, Tensor>,
    /// All-reduce: the loss summed over the processes; reduce-scatter: this process's.
    pub loss: f64,
    /// Buckets reduced while a backward was still running.
    pub early: usize,
}

enum Msg {
    /// One gradient of a layout parameter, as the backward produced it.
    Grad(TensorId, Tensor),
    /// A micro-batch's backward ended: the gradients that came with the store, by layout
    /// index, and this process's (weighted) loss of it.
    End { rest: BTreeMap<usize, Tensor>, loss: f64 },
    /// This process had no rows of the micro-batch.
    Skipped,
}

/// Runs `micro(m)` — one micro-batch's forward and backward, returning the gradient store and
/// its weighted loss, or None when this process has no rows of it — for each of `micros`
/// micro-batches, while a communication thread reduces `layout`'s buckets (`params`: each
/// layout entry's parameter tensor) as their gradients arrive. Counts the time this thread
/// waited for the communication as exposed.
pub fn reduce_during_backward(
    reducer: &Reducer,
    layout: &Layout,
    params: &[Tensor],
    reduction: Reduction,
    micros: usize,
    mut micro: impl FnMut(usize) -> Result<Option<(GradStore, f64)>>,
) -> Result<Reduced> {
    let ids: HashSet<TensorId> = params.iter().map(|p| p.id()).collect();
    let (tx, rx) = mpsc::channel::<Msg>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let pipe = Pipe::new(reducer, layout, params, reduction, micros);
        let comm = scope.spawn(move || pipe.run(rx, done_tx));
        let mut exposed = 0.0;
        let fed = (|| -> Result<()> {
            for m in 0..micros {
                let out = {
                    let to = tx.clone();
                    let _streaming = param_grads::stream(
                        ids.clone(),
                        Box::new(move |id, g| to.send(Msg::Grad(id, g.detach())).is_ok()),
                    );
                    micro(m)?
                };
                let msg = match out {
                    Some((store, loss)) => {
                        let mut rest = BTreeMap::new();
                        for (i, p) in params.iter().enumerate() {
                            if let Some(g) = param_grads::gradient(p, &store)? {
                                rest.insert(i, g.detach());
                            }
                        }
                        Msg::End { rest, loss }
                    }
                    None => Msg::Skipped,
                };
                // A failed send means the thread stopped: its error comes with the join.
                if tx.send(msg).is_err() {
                    return Ok(());
                }
                if m > 0 {
                    let t = Instant::now();
                    // The previous micro-batch's reductions are done (bounds what is held).
                    let stopped = done_rx.recv().is_err();
                    exposed += t.elapsed().as_secs_f64();
                    if stopped {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let t = Instant::now();
        let reduced = comm.join().map_err(|_| Error::Distributed("the communication thread panicked".into()));
        reducer.add_exposed(exposed + t.elapsed().as_secs_f64());
        match (fed, reduced) {
            // The communication's failure explains the backward's ("receiver has stopped").
            (_, Ok(Err(e)) | Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), Ok(Ok(r))) => Ok(r),
        }
    })
}

/// The communication thread's state.
struct Pipe<'a> {
    reducer: &'a Reducer,
    l: &'a Layout,
    index: HashMap<TensorId, usize>,
    device: Device,
    reduction: Reduction,
    micros: usize,
    /// Each parameter's bucket; which buckets may go before the backward ends.
    bucket_of: Vec<usize>,
    early_ok: Vec<bool>,
    /// The micro-batch whose gradients are arriving, and (this micro-batch) each parameter's
    /// gradient so far, how many parameters of each bucket have not arrived, the next bucket
    /// to reduce.
    micro: usize,
    /// Whether this process computed the micro-batch (had rows of it).
    computed: bool,
    current: Vec<Option<Tensor>>,
    missing: Vec<usize>,
    next: usize,
    /// All-reduce: the sum of the earlier micro-batches' gradients.
    earlier: Vec<Option<Tensor>>,
    loss: f64,
    out: BTreeMap<String, Tensor>,
    early: usize,
}

impl<'a> Pipe<'a> {
    /// `params`: each layout entry's parameter tensor.
    fn new(reducer: &'a Reducer, l: &'a Layout, params: &[Tensor], reduction: Reduction, micros: usize) -> Self {
        let n = l.names.len();
        let mut bucket_of = vec![0; n];
        for (b, range) in l.buckets.iter().enumerate() {
            range.clone().for_each(|i| bucket_of[i] = b);
        }
        let last = l.buckets.len().saturating_sub(1);
        let early_ok = (0..l.buckets.len())
            .map(|b| b != last && l.buckets[b].clone().all(|i| layer_index(&l.names[i]).is_some()))
            .collect();
        let mut pipe = Self {
            index: params.iter().enumerate().map(|(i, p)| (p.id(), i)).collect(),
            device: params.first().map_or(Device::Cpu, |p| p.device().clone()),
            reducer,
            l,
            reduction,
            micros,
            bucket_of,
            early_ok,
            micro: 0,
            computed: true,
            current: vec![None; n],
            missing: Vec::new(),
            next: 0,
            earlier: vec![None; n],
            loss: 0.0,
            out: BTreeMap::new(),
            early: 0,
        };
        pipe.start_micro();
        pipe
    }

    fn start_micro(&mut self) {
        self.missing = self.l.buckets.iter().map(|r| r.len()).collect();
        self.next = 0;
    }

    /// Whether this micro-batch's buckets are reduced (every one's with reduce-scatter, the
    /// last one's with all-reduce).
    fn reduces(&self) -> bool {
        self.reduction == Reduction::ReduceScatter || self.micro + 1 == self.micros
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>, done: mpsc::Sender<()>) -> Result<Reduced> {
        for msg in rx {
            match msg {
                Msg::Grad(id, g) => self.arrived(id, g)?,
                Msg::End { rest, loss } => {
                    self.end_micro(Some((rest, loss)))?;
                    // The main thread may have stopped waiting (its own error).
                    let _ = done.send(());
                }
                Msg::Skipped => {
                    self.end_micro(None)?;
                    // The main thread may have stopped waiting (its own error).
                    let _ = done.send(());
                }
            }
        }
        Ok(Reduced { grads: self.out, loss: self.loss, early: self.early })
    }

    fn arrived(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        let Some(&i) = self.index.get(&id) else {
            return Err(Error::Invalid("a streamed gradient belongs to no parameter of the layout".into()));
        };
        let b = self.bucket_of[i];
        if b < self.next {
            return Err(late(&self.l.names[i]));
        }
        self.current[i] = Some(match self.current[i].take() {
            Some(prev) => (prev + g)?,
            None => {
                self.missing[b] -= 1;
                g
            }
        });
        if self.reduces() {
            while self.next < self.l.buckets.len() && self.early_ok[self.next] && self.missing[self.next] == 0 {
                self.reduce_bucket(self.next)?;
                self.next += 1;
                self.early += 1;
            }
        }
        Ok(())
    }

    /// The end of a micro-batch's backward (None: this process had no rows of it, computed
    /// nothing, and adds nothing to a sum over micro-batches but zeros to a reduce-scatter).
    fn end_micro(&mut self, computed: Option<(BTreeMap<usize, Tensor>, f64)>) -> Result<()> {
        let Some((rest, loss)) = computed else {
            if self.reduces() {
                self.computed = false;
                for b in self.next..self.l.buckets.len() {
                    self.reduce_bucket(b)?;
                }
            }
            return self.next_micro();
        };
        self.loss += loss;
        for (i, g) in rest {
            if self.bucket_of[i] < self.next {
                return Err(late(&self.l.names[i]));
            }
            // The store's part plus the streamed part, as `param_grads::gradient` sums them.
            self.current[i] = Some(match self.current[i].take() {
                Some(streamed) => (g + streamed)?,
                None => g,
            });
        }
        if self.reduces() {
            for b in self.next..self.l.buckets.len() {
                self.reduce_bucket(b)?;
            }
        } else {
            for i in 0..self.l.names.len() {
                self.earlier[i] = Some(self.sum_so_far(i)?);
            }
        }
        self.next_micro()
    }

    fn next_micro(&mut self) -> Result<()> {
        self.micro += 1;
        self.computed = true;
        self.start_micro();
        Ok(())
    }

    /// Parameter `i`'s gradient summed over the micro-batches so far, this one's taken: zeros
    /// where this micro-batch's loss did not reach it; a micro-batch with no rows here adds
    /// nothing (the sums of the step without overlap, to the bit).
    fn sum_so_far(&mut self, i: usize) -> Result<Tensor> {
        let earlier = self.earlier[i].take();
        let current = match self.current[i].take() {
            Some(g) => g,
            None if !self.computed && self.reduction == Reduction::AllReduce => {
                return earlier.map_or_else(|| self.zeros(i), Ok);
            }
            // The loss did not reach it, or an empty share to reduce-scatter.
            None => self.zeros(i)?,
        };
        Ok(match earlier {
            Some(acc) => (acc + current)?,
            None => current,
        })
    }

    fn zeros(&self, i: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(self.l.dims[i].as_slice(), DType::F32, &self.device)?)
    }

    fn reduce_bucket(&mut self, b: usize) -> Result<()> {
        let mut grads = BTreeMap::new();
        for i in self.l.buckets[b].clone() {
            grads.insert(self.l.names[i].clone(), self.sum_so_far(i)?);
        }
        match self.reduction {
            Reduction::AllReduce => {
                self.loss = self.reducer.all_reduce_bucket(self.l, b, &mut grads, self.loss)?;
                self.out.extend(grads);
            }
            Reduction::ReduceScatter => {
                let mut mine = BTreeMap::new();
                self.reducer.reduce_scatter_bucket(self.l, b, &grads, &mut mine)?;
                for (name, g) in mine {
                    let sum = match self.out.remove(&name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    self.out.insert(name, sum);
                }
            }
        }
        Ok(())
    }
}

fn late(name: &str) -> Error {
    Error::Invalid(format!(
        "`{name}` received a gradient after its bucket was reduced (a decoder-layer parameter used \
         outside its layer); set distributed.overlap = false"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::group::ThreadGroup;
    use crate::distributed::{Compression, DataParallel, DistributedConfig, SingleProcess};
    use crate::models::{Decoder, ModelSpec};
    use crate::nn::{InitScheme, ParamStore};
    use crate::optim::named_grads;
    use std::sync::Arc;

    fn bits(grads: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<u32>> {
        grads
            .iter()
            .map(|(k, t)| {
                (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
            })
            .collect()
    }

    /// Two micro-batches on two ranks, buckets of a few thousand values: the sums reduced by
    /// the communication thread during the backward are the sums reduced after it, to the bit,
    /// for ZeRO 0 (all-reduce) and ZeRO 2 (reduce-scatter), GPT-2 and Llama, with rank 1
    /// having no rows of the first micro-batch; and buckets did go out during the backward.
    #[test]
    fn buckets_reduced_during_the_backward_equal_those_reduced_after_it() {
        for (zero, preset) in [(0, "tiny"), (2, "tiny"), (0, "llama-tiny"), (2, "llama-tiny")] {
            let spec = ModelSpec::preset(preset).unwrap();
            let ids: Vec<u32> = (0..2 * 4 * 17).map(|i| (i * 37 % spec.vocab_size) as u32).collect();
            let ids = Tensor::from_vec(ids, (8, 17), &Device::Cpu).unwrap();
            let out = ThreadGroup::run(2, |rank, comm| {
                let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 5, &Device::Cpu).unwrap();
                let model = Decoder::new(&spec, &params).unwrap();
                let cfg = DistributedConfig { zero, bucket_mb: 0.02, ..Default::default() };
                let dp = DataParallel::new(comm, &cfg, &params, 4).unwrap();
                // Micro-batch m: rows 2r, 2r+1 of its four, except rank 1's of micro-batch 0.
                let backward = |m: usize| -> Result<Option<(GradStore, f64)>> {
                    if m == 0 && rank == 1 {
                        return Ok(None);
                    }
                    let rows = ids.narrow(0, 4 * m + 2 * rank, 2)?;
                    let (x, y) = (rows.narrow(1, 0, 16)?, rows.narrow(1, 1, 16)?);
                    let loss = (model.loss(&x, &y, None)? * 0.25)?;
                    let value = loss.to_scalar::<f32>()? as f64;
                    Ok(Some((loss.backward()?, value)))
                };
                let streamed = dp.reduce_during_backward(2, backward).unwrap();
                // The same sums after each backward, without the thread.
                let (mut sum, mut loss) = (None::<BTreeMap<String, Tensor>>, 0.0);
                let mut share: BTreeMap<String, Tensor> = BTreeMap::new();
                for m in 0..2 {
                    let g = match backward(m).unwrap() {
                        Some((store, l)) => {
                            loss += l;
                            named_grads(params.vars(), &store).unwrap()
                        }
                        None if zero == 2 => params
                            .vars()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_tensor().zeros_like().unwrap()))
                            .collect(),
                        None => continue,
                    };
                    if zero == 2 {
                        for (k, t) in dp.reduce_scatter_grads(&g).unwrap() {
                            let t = match share.remove(&k) {
                                Some(prev) => (prev + t).unwrap(),
                                None => t,
                            };
                            share.insert(k, t);
                        }
                        continue;
                    }
                    sum = Some(match sum {
                        None => g,
                        Some(acc) => acc.into_iter().map(|(k, a)| (k.clone(), (a + &g[&k]).unwrap())).collect(),
                    });
                }
                let reference = if zero == 2 {
                    (share, loss)
                } else {
                    let mut grads = sum.unwrap();
                    let loss = dp.all_reduce_grads(&mut grads, loss).unwrap();
                    (grads, loss)
                };
                (streamed, reference)
            });
            for (rank, (streamed, (grads, loss))) in out.iter().enumerate() {
                assert!(streamed.early > 0, "ZeRO-{zero} {preset}: no bucket went out during the backward");
                assert_eq!(streamed.loss.to_bits(), loss.to_bits(), "ZeRO-{zero} {preset} rank {rank}");
                assert!(!grads.is_empty());
                assert_eq!(bits(&streamed.grads), bits(grads), "ZeRO-{zero} {preset} rank {rank}");
            }
        }
    }

    /// A gradient that arrives for a bucket already reduced is an error naming the parameter,
    /// not a silently wrong sum.
    #[test]
    fn a_gradient_after_its_bucket_went_out_is_an_error() {
        let dims = vec![vec![4], vec![4], vec![3]];
        let names = vec!["h.1.w".to_string(), "h.0.w".to_string(), "wte.weight".to_string()];
        let l = Layout { numel: vec![4, 4, 3], owner: vec![0; 3], buckets: vec![0..1, 1..2, 2..3], names, dims };
        let reducer = Reducer::new(Arc::new(SingleProcess), Compression::None, 4, Device::Cpu);
        let params: Vec<Tensor> =
            l.dims.iter().map(|d| Tensor::zeros(d.as_slice(), DType::F32, &Device::Cpu).unwrap()).collect();
        let mut pipe = Pipe::new(&reducer, &l, &params, Reduction::AllReduce, 1);
        pipe.arrived(params[0].id(), Tensor::ones(4, DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(pipe.early, 1, "h.1's bucket is complete and goes at once");
        pipe.arrived(params[1].id(), Tensor::ones(4, DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(pipe.early, 2);
        let e = pipe.arrived(params[0].id(), Tensor::ones(4, DType::F32, &Device::Cpu).unwrap()).err().unwrap();
        assert!(e.to_string().contains("h.1.w") && e.to_string().contains("overlap"), "{e}");
        let rest = BTreeMap::from([(1, Tensor::ones(4, DType::F32, &Device::Cpu).unwrap())]);
        assert!(pipe.end_micro(Some((rest, 0.0))).err().unwrap().to_string().contains("h.0.w"));
    }
}
