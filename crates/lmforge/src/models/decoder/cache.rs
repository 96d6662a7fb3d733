//! The decoder's KV cache: per layer, the keys and values of the positions seen so far.

use crate::error::Result;
use crate::models::ragged;
use candle_core::Tensor;

/// Keys and values of the positions seen so far, per layer: (B, K, S, D) each. Grown by
/// concatenation, or, with a capacity (continuous batching knows each sequence's prompt and
/// `max_tokens`), written in place into buffers allocated once.
#[derive(Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    /// Positions held by a prefix's virtual tokens ([`crate::nn::prefix`]), before the tokens'.
    prefix: usize,
}

/// One layer's keys and values and how many positions they hold.
#[derive(Default)]
pub(super) struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    /// Continuous batching on the CPU keeps keys and values here instead ([`ragged`]).
    pub(super) host: ragged::HostKv,
    pub(super) len: usize,
    /// Positions to allocate up front (0: grow by concatenation).
    pub(super) capacity: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self::with_capacity(n_layer, 0)
    }
    /// A cache whose buffers hold `capacity` positions, allocated at the first write.
    pub fn with_capacity(n_layer: usize, capacity: usize) -> Self {
        let layer = || LayerCache { kv: None, host: ragged::HostKv::default(), len: 0, capacity };
        Self { layers: (0..n_layer).map(|_| layer()).collect(), prefix: 0 }
    }
    /// Number of cached token positions (a prefix's virtual tokens not counted).
    pub fn len(&self) -> usize {
        self.held() - self.prefix
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions held, virtual tokens included.
    pub(super) fn held(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Puts a prefix's keys and values in front of an empty cache: per layer (B, N, K·D) each,
    /// into the tensors (heads layout) or, for continuous batching on the CPU (`host`, B = 1),
    /// the host rows.
    pub(super) fn prefill(&mut self, prefix: &[(Tensor, Tensor)], kh: usize, host: bool) -> Result<()> {
        for (layer, (k, v)) in self.layers.iter_mut().zip(prefix) {
            let (b, n, c) = k.dims3()?;
            if layer.capacity > 0 {
                layer.capacity += n;
            }
            if host {
                layer.host.k.reserve_exact(layer.capacity.max(n) * c);
                layer.host.v.reserve_exact(layer.capacity.max(n) * c);
                let rows = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
                layer.host.k.extend(rows(k)?);
                layer.host.v.extend(rows(v)?);
                layer.len += n;
            } else {
                let heads = |t: &Tensor| t.reshape((b, n, kh, c / kh))?.transpose(1, 2)?.contiguous();
                layer.append(heads(k)?, heads(v)?)?;
            }
            self.prefix = n;
        }
        Ok(())
    }
}

impl LayerCache {
    /// Appends k, v (B, K, T, D) and returns every position's (B, K, S, D).
    pub(super) fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let end = self.len + t;
        if self.kv.is_none() && self.capacity >= end {
            let (b, kh, _, d) = k.dims4()?;
            let zeros = || Tensor::zeros((b, kh, self.capacity, d), k.dtype(), k.device());
            self.kv = Some((zeros()?, zeros()?));
        }
        let (k, v) = match self.kv.take() {
            Some((bk, bv)) if bk.dim(2)? >= end && self.capacity > 0 => {
                bk.slice_set(&k, 2, self.len)?;
                bv.slice_set(&v, 2, self.len)?;
                let all = (bk.narrow(2, 0, end)?, bv.narrow(2, 0, end)?);
                self.kv = Some((bk, bv));
                all
            }
            Some((pk, pv)) => {
                let all = (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?);
                self.kv = Some(all.clone());
                all
            }
            None => {
                self.kv = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        self.len = end;
        Ok((k, v))
    }
}
