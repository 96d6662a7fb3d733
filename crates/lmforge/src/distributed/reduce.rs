//! The gradient reductions between processes, bucket by bucket: an all-reduce (every process
//! gets the summed gradients: ZeRO 0 and 1) or a reduce-scatter (each process gets the sums of
//! the parameters it owns and nothing else: ZeRO 2), each plain fp32 or compressed
//! ([`super::compress`]); and the count of what they cost — the bytes this process sends, by
//! the ring algorithms' counts, and the seconds spent in collectives.

use super::compress::{
    low_rank_shape, orthonormalize_columns, pack_bf16, packed_len, unpack_bf16, Compression, PowerState,
};
use super::tensor_comm::{self, TensorCollective};
use super::{split_rows, Collective};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Every parameter in message order, its size and owner rank, cut into buckets.
pub struct Layout {
    pub names: Vec<String>,
    pub numel: Vec<usize>,
    pub dims: Vec<Vec<usize>>,
    pub owner: Vec<usize>,
    /// Index ranges into `names`: one message each.
    pub buckets: Vec<Range<usize>>,
}

impl Layout {
    /// The parameters of `range` as a message whose values go rank by rank (each rank's own
    /// in layout order) — the order of a gather or a reduce-scatter — and each rank's count.
    pub fn by_owner(&self, range: Range<usize>, world: usize) -> (Vec<usize>, Vec<usize>) {
        let mut order: Vec<usize> = range.collect();
        order.sort_by_key(|&i| (self.owner[i], i));
        let mut counts = vec![0usize; world];
        for &i in &order {
            counts[self.owner[i]] += self.numel[i];
        }
        (order, counts)
    }
}

/// What collectives cost this process since the counters were last taken.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Bytes sent (ring all-reduce 2(N−1)/N of the buffer, reduce-scatter and all-gather
    /// (N−1)/N, all-to-all what goes to the others).
    pub bytes: u64,
    /// Seconds inside collectives.
    pub busy_s: f64,
    /// Seconds the step waited for communication that ran beside computation (the rest of
    /// `busy_s` was hidden); equal to `busy_s` when nothing overlaps.
    pub exposed_s: f64,
}

#[derive(Default)]
struct Meter {
    bytes: AtomicU64,
    busy_ns: AtomicU64,
    exposed_ns: AtomicU64,
}

pub struct Reducer {
    comm: Arc<dyn Collective>,
    compression: Compression,
    powersgd_rank: usize,
    device: Device,
    power: Mutex<HashMap<String, PowerState>>,
    /// PowerSGD compresses from this optimizer step on (plain fp32 before it).
    powersgd_start: u64,
    step: AtomicU64,
    meter: Meter,
    /// Uncompressed reductions and parameter gathers of device tensors (NCCL); None: host
    /// buffers through `comm`.
    tensors: Option<Arc<dyn TensorCollective>>,
}

fn flatten(
    grads: &BTreeMap<String, Tensor>,
    names: impl Iterator<Item = impl AsRef<str>>,
    out: &mut Vec<f32>,
) -> Result<()> {
    for name in names {
        let name = name.as_ref();
        let g = grads.get(name).ok_or_else(|| Error::Invalid(format!("no gradient for `{name}`")))?;
        out.extend(g.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(())
}

impl Reducer {
    pub fn new(comm: Arc<dyn Collective>, compression: Compression, powersgd_rank: usize, device: Device) -> Self {
        Self {
            comm,
            compression,
            powersgd_rank,
            device,
            power: Mutex::new(HashMap::new()),
            powersgd_start: 0,
            step: AtomicU64::new(0),
            meter: Meter::default(),
            tensors: None,
        }
    }

    /// The reducer `cfg` asks for (collective: NCCL's communicator is set up here on a GPU).
    pub fn from_config(comm: Arc<dyn Collective>, cfg: &super::DistributedConfig, device: Device) -> Result<Self> {
        let tensors = tensor_comm::choose(&comm, cfg.backend, &device)?;
        Ok(Self::new(comm, cfg.compress, cfg.powersgd_rank, device)
            .with_powersgd_start(cfg.powersgd_start_step)
            .with_tensor_comm(tensors))
    }

    /// Device tensors move through `tensors` (see [`tensor_comm`]).
    pub fn with_tensor_comm(mut self, tensors: Option<Arc<dyn TensorCollective>>) -> Self {
        self.tensors = tensors;
        self
    }

    /// What moves device tensors, when not the host collective.
    pub fn tensor_comm(&self) -> Option<&dyn TensorCollective> {
        self.tensors.as_deref()
    }

    /// PowerSGD from optimizer step `start` on (PyTorch's `start_powerSGD_iter`: plain
    /// all-reduces while the weights change fastest).
    pub fn with_powersgd_start(mut self, start: u64) -> Self {
        self.powersgd_start = start;
        self
    }

    /// The optimizer step the next reductions belong to (0-based).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// The compression of this step's gradient all-reduces.
    fn active(&self) -> Compression {
        match self.compression {
            Compression::PowerSgd if self.step.load(Ordering::Relaxed) < self.powersgd_start => Compression::None,
            c => c,
        }
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn comm(&self) -> &Arc<dyn Collective> {
        &self.comm
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    /// Runs one collective, counting `bytes` and its time.
    fn metered<T>(&self, bytes: f64, f: impl FnOnce(&dyn Collective) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f(&*self.comm);
        self.meter.bytes.fetch_add(bytes.round() as u64, Ordering::Relaxed);
        self.meter.busy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// The ring's share: (N−1)/N of `elems` values.
    fn ring(&self, elems: usize) -> f64 {
        let w = self.world() as f64;
        (w - 1.0) / w * elems as f64 * 4.0
    }

    pub fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.metered(2.0 * self.ring(buf.len()), |c| c.all_reduce_sum(buf))
    }

    pub fn all_gather(&self, local: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        self.metered(self.ring(counts.iter().sum()), |c| c.all_gather(local, counts))
    }

    fn reduce_scatter_sum(&self, buf: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        self.metered(self.ring(buf.len()), |c| c.reduce_scatter_sum(buf, counts))
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<f32>> {
        let me = self.comm.rank();
        let out: usize = send_counts.iter().enumerate().filter(|(r, _)| *r != me).map(|(_, c)| c).sum();
        self.metered(out as f64 * 4.0, |c| c.all_to_all(send, send_counts, recv_counts))
    }

    /// Counts time the step spent waiting on overlapped communication.
    pub fn add_exposed(&self, seconds: f64) {
        self.meter.exposed_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The counters since the last call, reset. Without overlap, exposed time is all of it.
    pub fn take_traffic(&self, overlapped: bool) -> Traffic {
        let bytes = self.meter.bytes.swap(0, Ordering::Relaxed);
        let busy_s = self.meter.busy_ns.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        let exposed = self.meter.exposed_ns.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        Traffic { bytes, busy_s, exposed_s: if overlapped { exposed.min(busy_s) } else { busy_s } }
    }

    /// PowerSGD's state for a checkpoint (collective; empty without PowerSGD): each matrix's
    /// Q (the same on every process) as `PARAM.powersgd_q` and its error summed over the
    /// processes as `PARAM.powersgd_error`. A step's result depends on the errors only through
    /// their sum (P and Q are linear in it), so the sum resumes the run exactly on any number
    /// of processes.
    pub fn powersgd_state(&self) -> Result<Vec<(String, Tensor)>> {
        if self.compression != Compression::PowerSgd || self.world() == 1 {
            return Ok(Vec::new());
        }
        let power = self.power.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = power.keys().collect();
        names.sort();
        let mut errors = Vec::new();
        for name in &names {
            errors.extend(power[*name].error.flatten_all()?.to_vec1::<f32>()?);
        }
        self.comm.all_reduce_sum(&mut errors)?;
        let mut out = Vec::with_capacity(2 * names.len());
        let mut off = 0;
        for name in names {
            let state = &power[name];
            let n = state.error.elem_count();
            out.push((format!("{name}.powersgd_q"), state.q.clone()));
            out.push((
                format!("{name}.powersgd_error"),
                Tensor::from_slice(&errors[off..off + n], state.error.shape(), &self.device)?,
            ));
            off += n;
        }
        Ok(out)
    }

    /// Restores [`Self::powersgd_state`]: every process takes Q, rank 0 the summed error (the
    /// others none). Ignored without PowerSGD (a run resumed with another compression).
    pub fn load_powersgd_state(&self, mut tensors: HashMap<String, Tensor>) -> Result<()> {
        if self.compression != Compression::PowerSgd || self.world() == 1 {
            return Ok(());
        }
        let mut power = self.power.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> =
            tensors.keys().filter_map(|k| k.strip_suffix(".powersgd_q")).map(str::to_string).collect();
        for name in names {
            let q = tensors.remove(&format!("{name}.powersgd_q")).expect("listed above");
            let error = tensors
                .remove(&format!("{name}.powersgd_error"))
                .ok_or_else(|| Error::Invalid(format!("PowerSGD state of `{name}` has Q but no error")))?;
            let error = if self.comm.rank() == 0 { error } else { error.zeros_like()? };
            if q.dims().get(1) != Some(&self.powersgd_rank) {
                // Another rank: start this matrix afresh (what was pending is dropped).
                continue;
            }
            power.insert(name, PowerState { q, error });
        }
        Ok(())
    }

    /// Sums `grads` over the processes (all of them, every process getting every sum) and
    /// returns the sum of `loss`es.
    pub fn all_reduce(&self, l: &Layout, grads: &mut BTreeMap<String, Tensor>, loss: f64) -> Result<f64> {
        let mut total = loss;
        for b in 0..l.buckets.len() {
            total = self.all_reduce_bucket(l, b, grads, loss)?;
        }
        Ok(total)
    }

    /// [`Self::all_reduce`] of bucket `b` only (`grads` needs that bucket's gradients); the
    /// loss is summed with the last bucket (returned then; `loss` itself before).
    pub fn all_reduce_bucket(
        &self,
        l: &Layout,
        b: usize,
        grads: &mut BTreeMap<String, Tensor>,
        loss: f64,
    ) -> Result<f64> {
        if self.world() == 1 {
            return Ok(loss);
        }
        let range = l.buckets[b].clone();
        let last = b + 1 == l.buckets.len();
        let compression = self.active();
        if let (Some(tc), Compression::None) = (&self.tensors, compression) {
            return self.tensor_all_reduce(&**tc, l, range, last, grads, loss);
        }
        if compression == Compression::PowerSgd {
            self.power_all_reduce(l, range, grads)?;
        } else {
            let mut flat = Vec::with_capacity(range.clone().map(|i| l.numel[i]).sum::<usize>() + 1);
            flatten(grads, l.names[range.clone()].iter(), &mut flat)?;
            if compression == Compression::None {
                // The loss rides in the last message.
                if last {
                    flat.push(loss as f32);
                }
                self.all_reduce_sum(&mut flat)?;
                if last {
                    let total = flat.pop().expect("pushed above") as f64;
                    self.unflatten(l, range, &flat, grads)?;
                    return Ok(total);
                }
            } else {
                flat = self.bf16_all_reduce(&flat)?;
            }
            self.unflatten(l, range, &flat, grads)?;
        }
        if last && compression != Compression::None {
            let mut buf = [loss as f32];
            self.all_reduce_sum(&mut buf)?;
            return Ok(buf[0] as f64);
        }
        Ok(loss)
    }

    /// The summed gradients of the parameters this process owns (`l.owner`), from every
    /// process's full set: one reduce-scatter per bucket, its values ordered by owner.
    pub fn reduce_scatter(&self, l: &Layout, grads: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for b in 0..l.buckets.len() {
            self.reduce_scatter_bucket(l, b, grads, &mut out)?;
        }
        Ok(out)
    }

    /// [`Self::reduce_scatter`] of bucket `b` only, this process's sums into `out`.
    pub fn reduce_scatter_bucket(
        &self,
        l: &Layout,
        b: usize,
        grads: &BTreeMap<String, Tensor>,
        out: &mut BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let (rank, world) = (self.comm.rank(), self.world());
        let (order, counts) = l.by_owner(l.buckets[b].clone(), world);
        if let (Some(tc), Compression::None) = (&self.tensors, self.compression) {
            let flat = tensor_comm::flatten(|n| grads.get(n), order.iter().map(|&i| &l.names[i]), &self.device)?;
            let bytes = self.ring(tensor_comm::padded_len(&counts));
            let mine = self.metered(bytes, |_| tensor_comm::reduce_scatter_v(&**tc, &flat, &counts, rank))?;
            self.unflatten_tensor(l, order.into_iter().filter(|&i| l.owner[i] == rank), &mine, out)?;
            return Ok(());
        }
        let mut flat = Vec::with_capacity(counts.iter().sum());
        flatten(grads, order.iter().map(|&i| &l.names[i]), &mut flat)?;
        let mine = match self.compression {
            Compression::Bf16 => self.bf16_reduce_scatter(&flat, &counts)?,
            _ => self.reduce_scatter_sum(&flat, &counts)?,
        };
        self.unflatten(l, order.into_iter().filter(|&i| l.owner[i] == rank), &mine, out)?;
        Ok(())
    }

    /// The parameters `params` (indices into `l`) from consecutive values of `flat`, into
    /// `into`; returns how many values they took.
    fn unflatten(
        &self,
        l: &Layout,
        params: impl IntoIterator<Item = usize>,
        flat: &[f32],
        into: &mut BTreeMap<String, Tensor>,
    ) -> Result<usize> {
        let mut off = 0;
        for i in params {
            into.insert(
                l.names[i].clone(),
                Tensor::from_slice(&flat[off..off + l.numel[i]], l.dims[i].as_slice(), &self.device)?,
            );
            off += l.numel[i];
        }
        Ok(off)
    }

    /// [`Self::all_reduce_bucket`] of device tensors, uncompressed: one flat tensor (with the
    /// loss after the last bucket's values) summed by the tensor collective.
    fn tensor_all_reduce(
        &self,
        tc: &dyn TensorCollective,
        l: &Layout,
        range: Range<usize>,
        last: bool,
        grads: &mut BTreeMap<String, Tensor>,
        loss: f64,
    ) -> Result<f64> {
        let mut flat = tensor_comm::flatten(|n| grads.get(n), l.names[range.clone()].iter(), &self.device)?;
        if last {
            flat = Tensor::cat(&[flat, Tensor::new(&[loss as f32], &self.device)?], 0)?;
        }
        let summed = self.metered(2.0 * self.ring(flat.elem_count()), |_| tc.all_reduce_sum(&flat))?;
        let used = self.unflatten_tensor(l, range, &summed, grads)?;
        if last {
            return Ok(summed.narrow(0, used, 1)?.to_vec1::<f32>()?[0] as f64);
        }
        Ok(loss)
    }

    /// [`Self::unflatten`] from a device tensor: views into `flat`, no copies.
    fn unflatten_tensor(
        &self,
        l: &Layout,
        params: impl IntoIterator<Item = usize>,
        flat: &Tensor,
        into: &mut BTreeMap<String, Tensor>,
    ) -> Result<usize> {
        let mut off = 0;
        for i in params {
            into.insert(l.names[i].clone(), flat.narrow(0, off, l.numel[i])?.reshape(l.dims[i].as_slice())?);
            off += l.numel[i];
        }
        Ok(off)
    }

    /// ZeRO's parameter all-gather of `range` with device tensors: every parameter of it
    /// (index into `l`, value), in owner order, this process's taken from `owned` and the
    /// others' from their owners. None (nothing done) without a tensor collective.
    pub fn all_gather_tensors(
        &self,
        l: &Layout,
        range: Range<usize>,
        owned: &BTreeMap<String, Var>,
    ) -> Result<Option<Vec<(usize, Tensor)>>> {
        let Some(tc) = &self.tensors else { return Ok(None) };
        let (rank, world) = (self.comm.rank(), self.world());
        let (order, counts) = l.by_owner(range, world);
        let own = order.iter().filter(|&&i| l.owner[i] == rank).map(|&i| &l.names[i]);
        let local = tensor_comm::flatten(|n| owned.get(n).map(Var::as_tensor), own, &self.device)?;
        let all = self.metered(self.ring(tensor_comm::padded_len(&counts)), |_| {
            tensor_comm::all_gather_v(&**tc, &local, &counts)
        })?;
        let mut out = Vec::with_capacity(order.len());
        let mut off = 0;
        for i in order {
            out.push((i, all.narrow(0, off, l.numel[i])?.reshape(l.dims[i].as_slice())?));
            off += l.numel[i];
        }
        Ok(Some(out))
    }

    /// Rank r gets the fp32 sum (in rank order) of everyone's bf16 chunk r (`counts[r]` values).
    fn bf16_reduce_scatter(&self, flat: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let rank = self.comm.rank();
        let mut send = Vec::with_capacity(packed_len(flat.len()) + counts.len());
        let mut off = 0;
        for &c in counts {
            send.extend(pack_bf16(&flat[off..off + c]));
            off += c;
        }
        let send_counts: Vec<usize> = counts.iter().map(|&c| packed_len(c)).collect();
        let recv_counts = vec![send_counts[rank]; counts.len()];
        let recv = self.all_to_all(&send, &send_counts, &recv_counts)?;
        let mut sum = vec![0f32; counts[rank]];
        for piece in recv.chunks(send_counts[rank].max(1)).take(counts.len()) {
            for (s, x) in sum.iter_mut().zip(unpack_bf16(piece, counts[rank])) {
                *s += x;
            }
        }
        Ok(sum)
    }

    /// The bf16 all-reduce: reduce-scatter of even chunks, then an all-gather of the summed
    /// chunks in bf16 (every rank, the owner of a chunk too, takes the rounded values).
    fn bf16_all_reduce(&self, flat: &[f32]) -> Result<Vec<f32>> {
        let world = self.world();
        let counts: Vec<usize> = (0..world).map(|r| split_rows(flat.len(), world, r).len()).collect();
        let mine = self.bf16_reduce_scatter(flat, &counts)?;
        let packed: Vec<usize> = counts.iter().map(|&c| packed_len(c)).collect();
        let all = self.all_gather(&pack_bf16(&mine), &packed)?;
        let mut out = Vec::with_capacity(flat.len());
        let mut off = 0;
        for (c, p) in counts.iter().zip(&packed) {
            out.extend(unpack_bf16(&all[off..off + p], *c));
            off += p;
        }
        Ok(out)
    }

    /// PowerSGD over one bucket: its vectors and small matrices summed exactly in the first
    /// message with the P factors, the Q factors in the second.
    fn power_all_reduce(&self, l: &Layout, range: Range<usize>, grads: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let r = self.powersgd_rank;
        let world = self.world() as f64;
        let mut power = self.power.lock().unwrap_or_else(|p| p.into_inner());
        let (mut plain, mut factored) = (Vec::new(), Vec::new());
        for i in range {
            match low_rank_shape(&l.dims[i], r) {
                Some((n, m)) => factored.push((i, n, m)),
                None => plain.push(i),
            }
        }
        let mut msg = Vec::new();
        flatten(grads, plain.iter().map(|&i| &l.names[i]), &mut msg)?;
        let plain_len = msg.len();
        let mut deltas = Vec::with_capacity(factored.len());
        for &(i, n, m) in &factored {
            let name = &l.names[i];
            if !power.contains_key(name) {
                power.insert(name.clone(), PowerState::new(name, n, m, r, &self.device)?);
            }
            let state = &power[name];
            let g = grads.get(name).ok_or_else(|| Error::Invalid(format!("no gradient for `{name}`")))?;
            let delta = (g.reshape((n, m))? + &state.error)?;
            msg.extend(delta.matmul(&state.q)?.flatten_all()?.to_vec1::<f32>()?);
            deltas.push(delta);
        }
        self.all_reduce_sum(&mut msg)?;
        let mut off = self.unflatten(l, plain.iter().copied(), &msg, grads)?;
        debug_assert_eq!(off, plain_len);
        let mut ps = Vec::with_capacity(factored.len());
        let mut qmsg = Vec::new();
        for (&(_, n, _), delta) in factored.iter().zip(&deltas) {
            let p = &mut msg[off..off + n * r];
            orthonormalize_columns(p, n, r);
            let p = Tensor::from_slice(p, (n, r), &self.device)?;
            qmsg.extend(delta.t()?.contiguous()?.matmul(&p)?.flatten_all()?.to_vec1::<f32>()?);
            ps.push(p);
            off += n * r;
        }
        self.all_reduce_sum(&mut qmsg)?;
        let mut off = 0;
        for ((&(i, _, m), delta), p) in factored.iter().zip(deltas).zip(ps) {
            let q = Tensor::from_slice(&qmsg[off..off + m * r], (m, r), &self.device)?;
            off += m * r;
            let approx = p.matmul(&q.t()?.contiguous()?)?;
            let name = &l.names[i];
            let state = power.get_mut(name).expect("inserted above");
            state.error = (delta - (&approx / world)?)?;
            state.q = q;
            grads.insert(name.clone(), approx.reshape(l.dims[i].as_slice())?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::group::ThreadGroup;
    use crate::distributed::{buckets, shard_params};

    fn layout(shapes: &[(&str, Vec<usize>)], world: usize, bucket: usize) -> Layout {
        let names: Vec<String> = shapes.iter().map(|(n, _)| n.to_string()).collect();
        let dims: Vec<Vec<usize>> = shapes.iter().map(|(_, d)| d.clone()).collect();
        let numel: Vec<usize> = dims.iter().map(|d| d.iter().product()).collect();
        let sizes: Vec<(String, usize)> = names.iter().cloned().zip(numel.iter().copied()).collect();
        let owners = shard_params(&sizes, world);
        Layout {
            owner: names.iter().map(|n| owners[n]).collect(),
            buckets: buckets(&numel, bucket),
            names,
            numel,
            dims,
        }
    }

    /// Rank r's gradient of parameter k: distinct, reproducible values.
    fn grads(l: &Layout, rank: usize) -> BTreeMap<String, Tensor> {
        l.names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let v: Vec<f32> =
                    (0..l.numel[k]).map(|j| ((j * 31 + k * 7 + rank * 13) % 17) as f32 * 0.125 - 1.0).collect();
                (n.clone(), Tensor::from_vec(v, l.dims[k].as_slice(), &Device::Cpu).unwrap())
            })
            .collect()
    }

    fn sum_over_ranks(l: &Layout, world: usize) -> BTreeMap<String, Vec<f32>> {
        let mut out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for r in 0..world {
            for (k, t) in grads(l, r) {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let acc = out.entry(k).or_insert_with(|| vec![0.0; v.len()]);
                acc.iter_mut().zip(v).for_each(|(a, x)| *a += x);
            }
        }
        out
    }

    fn shapes() -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("a.bias", vec![7]),
            ("a.weight", vec![12, 10]),
            ("b.weight", vec![9, 16]),
            ("c.norm", vec![5]),
            ("d.weight", vec![3, 4, 5]),
        ]
    }

    fn max_err(got: &Tensor, want: &[f32]) -> f32 {
        got.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn reduce_scatter_gives_each_owner_exact_sums_of_its_parameters_only() {
        for world in [2, 3] {
            let l = layout(&shapes(), world, 150);
            let want = sum_over_ranks(&l, world);
            let out = ThreadGroup::run(world, |rank, comm| {
                let red = Reducer::new(comm, Compression::None, 4, Device::Cpu);
                let got = red.reduce_scatter(&l, &grads(&l, rank)).unwrap();
                (got, red.take_traffic(false))
            });
            let mut seen = 0;
            for (rank, (got, traffic)) in out.iter().enumerate() {
                for (name, g) in got {
                    let k = l.names.iter().position(|n| n == name).unwrap();
                    assert_eq!(l.owner[k], rank, "{name} went to a rank that does not own it");
                    assert!(max_err(g, &want[name]) < 1e-5);
                    assert_eq!(g.dims(), l.dims[k].as_slice());
                    seen += 1;
                }
                let ring = |b: &Range<usize>| {
                    let n: usize = b.clone().map(|i| l.numel[i]).sum();
                    ((world - 1) as f64 / world as f64 * n as f64 * 4.0).round() as u64
                };
                assert_eq!(traffic.bytes, l.buckets.iter().map(ring).sum::<u64>());
            }
            assert_eq!(seen, l.names.len(), "every parameter reduced exactly once");
        }
    }

    fn bits(g: &BTreeMap<String, Tensor>) -> Vec<(String, Vec<u32>)> {
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
        g.iter().map(|(k, t)| (k.clone(), v(t))).collect()
    }

    /// The device-tensor path (NCCL's on a GPU, host-staged here) gives bit for bit what the
    /// host path gives: all-reduce with the loss, reduce-scatter to owners of unequal shares,
    /// and the parameter all-gather.
    #[test]
    fn tensor_collectives_match_the_host_path_bit_for_bit() {
        let world = 3;
        let l = layout(&shapes(), world, 150);
        let out = ThreadGroup::run(world, |rank, comm| {
            let host = Reducer::new(comm.clone(), Compression::None, 4, Device::Cpu);
            let staged = Reducer::new(comm.clone(), Compression::None, 4, Device::Cpu)
                .with_tensor_comm(Some(Arc::new(tensor_comm::Staged::new(comm))));
            let (mut a, mut b) = (grads(&l, rank), grads(&l, rank));
            let losses = (
                host.all_reduce(&l, &mut a, rank as f64).unwrap(),
                staged.all_reduce(&l, &mut b, rank as f64).unwrap(),
            );
            let scattered = (
                host.reduce_scatter(&l, &grads(&l, rank)).unwrap(),
                staged.reduce_scatter(&l, &grads(&l, rank)).unwrap(),
            );
            // Each rank's own parameters hold rank-specific values; everyone ends with all.
            let own: BTreeMap<String, Var> = grads(&l, rank)
                .into_iter()
                .filter(|(n, _)| l.owner[l.names.iter().position(|m| m == n).unwrap()] == rank)
                .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
                .collect();
            let gathered = staged.all_gather_tensors(&l, 0..l.names.len(), &own).unwrap().unwrap();
            assert!(host.all_gather_tensors(&l, 0..l.names.len(), &own).unwrap().is_none());
            let gathered: BTreeMap<String, Tensor> =
                gathered.into_iter().map(|(i, t)| (l.names[i].clone(), t)).collect();
            (bits(&a), bits(&b), losses, bits(&scattered.0), bits(&scattered.1), bits(&gathered))
        });
        let owners_values: BTreeMap<String, Tensor> =
            l.names.iter().enumerate().map(|(i, n)| (n.clone(), grads(&l, l.owner[i])[n].clone())).collect();
        for (a, b, (la, lb), sa, sb, gathered) in out {
            assert_eq!(a, b);
            assert_eq!((la, lb), (3.0, 3.0));
            assert_eq!(sa, sb);
            assert_eq!(gathered, bits(&owners_values));
        }
    }

    #[test]
    fn bf16_all_reduce_is_within_bf16_rounding_identical_on_every_rank_and_sends_half() {
        let world = 3;
        let l = layout(&shapes(), world, 150);
        let want = sum_over_ranks(&l, world);
        let runs = |compression| {
            ThreadGroup::run(world, |rank, comm| {
                let red = Reducer::new(comm, compression, 4, Device::Cpu);
                let mut g = grads(&l, rank);
                let loss = red.all_reduce(&l, &mut g, rank as f64 + 0.5).unwrap();
                (g, loss, red.take_traffic(false).bytes)
            })
        };
        let bf16 = runs(Compression::Bf16);
        let fp32 = runs(Compression::None);
        for (g, loss, _) in &bf16 {
            assert!((loss - 4.5).abs() < 1e-6, "{loss}");
            for (name, t) in g {
                // Two roundings to bf16 (each rank's values, the sum): 2^-8 of the magnitudes.
                let tol = want[name].iter().fold(0f32, |m, x| m.max(x.abs())) * 3.0 * 2f32.powi(-8) + 1e-6;
                assert!(max_err(t, &want[name]) <= tol, "{name}");
                assert_eq!(
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    bf16[0].0[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
        }
        let ratio = bf16[0].2 as f64 / fp32[0].2 as f64;
        assert!((0.45..0.56).contains(&ratio), "bf16 sends about half of fp32: {ratio}");
    }

    #[test]
    fn bf16_reduce_scatter_sums_each_owners_share() {
        let world = 2;
        let l = layout(&shapes(), world, 1000);
        let want = sum_over_ranks(&l, world);
        let out = ThreadGroup::run(world, |rank, comm| {
            Reducer::new(comm, Compression::Bf16, 4, Device::Cpu).reduce_scatter(&l, &grads(&l, rank)).unwrap()
        });
        assert_eq!(out.iter().map(|g| g.len()).sum::<usize>(), l.names.len());
        for g in &out {
            for (name, t) in g {
                assert!(max_err(t, &want[name]) <= 2.0 * 2f32.powi(-8) * 2.0 + 1e-6, "{name}");
            }
        }
    }

    /// PowerSGD: identical results on every rank; vectors exact; a rank-r approximation of
    /// the summed matrix; and with error feedback, repeated steps of the same gradients send
    /// (on average) the whole sum.
    #[test]
    fn powersgd_is_consistent_and_its_error_feedback_catches_up() {
        let world = 2;
        let l = layout(&shapes(), world, 1000);
        let want = sum_over_ranks(&l, world);
        let steps = 60;
        let out = ThreadGroup::run(world, |rank, comm| {
            let red = Reducer::new(comm, Compression::PowerSgd, 2, Device::Cpu);
            let mut mean: BTreeMap<String, Vec<f32>> = BTreeMap::new();
            let mut first = None;
            for _ in 0..steps {
                let mut g = grads(&l, rank);
                red.all_reduce(&l, &mut g, 0.0).unwrap();
                for (k, t) in &g {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let acc = mean.entry(k.clone()).or_insert_with(|| vec![0.0; v.len()]);
                    acc.iter_mut().zip(v).for_each(|(a, x)| *a += x / steps as f32);
                }
                first.get_or_insert(g);
            }
            (first.unwrap(), mean)
        });
        let (first, mean) = &out[0];
        for (name, t) in first {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                out[1].0[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(max_err(&first["a.bias"], &want["a.bias"]) < 1e-6, "vectors travel exactly");
        assert!(max_err(&first["a.weight"], &want["a.weight"]) > 1e-2, "a rank-2 approximation is not exact");
        for name in ["a.weight", "b.weight", "d.weight"] {
            let scale = want[name].iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = mean[name].iter().zip(&want[name]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 0.1 * scale, "{name}: the mean of 60 compressed steps is off by {err} (scale {scale})");
        }
    }
}
