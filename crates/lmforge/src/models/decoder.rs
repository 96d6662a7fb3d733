//! The decoder-only transformer, for every decoder architecture (GPT-2, Llama: their wiring is
//! in `gpt2.rs` / `llama.rs`). Reads like the papers: embeddings, then L pre-norm blocks
//! `x = x + attn(norm(x)); x = x + mlp(norm(x))`, a final norm and the LM head. Tensors are
//! views of the `ParamStore`'s variables, so optimizer updates are seen without rebuilding the
//! model.
//!
//! How a block runs is decided in one place, [`Block::path`]: as two fused sublayer ops
//! (`ops::sublayer`, training and full recomputation with plain Linears) or composed from the
//! single ops, whose attention is one fused op without a KV cache or attention dropout and the
//! explicit grouped matmuls with them ([`Attention::path`]). Whether an op runs its fused CPU
//! kernel or the reference is `ops`' choice, per device and dtype.
//!
//! Dimension letters: B batch, T new positions, S cached + new positions, C d_model,
//! H query heads, K key/value heads, D head dim, V vocab.

mod cache;
mod pieces;
mod tables;

pub use cache::KvCache;
use cache::LayerCache;
pub use pieces::Piece;
use tables::TokenTable;

use super::{ragged, Family, ModelSpec};
use crate::error::Result;
use crate::nn::prefix::{Prefix, PrefixShape};
use crate::nn::recompute::{self, BlockForward, Checkpointing, LayerForward, LayerSource, LayerUse};
use crate::nn::{DropoutRng, Linear, Norm, ParamStore, Rope};
use crate::ops;
use candle_core::{DType, Tensor};
use std::sync::Arc;

pub struct Decoder {
    pub spec: ModelSpec,
    wte: TokenTable,     // (V, C)
    wpe: Option<Tensor>, // (context, C), GPT-2 only
    // Shared with the checkpointed blocks' graph nodes, which run them again in the backward.
    blocks: Vec<Arc<Block>>,
    /// ZeRO-3: the layers' weights are not held (`blocks` is empty) but fetched from here for
    /// each use, every layer checkpointed.
    layer_source: Option<Arc<dyn LayerSource>>,
    norm_f: Norm,
    /// (V, C); the same tensor as `wte` when tied; None for a backbone loaded without its LM
    /// head (a classifier's).
    head: Option<TokenTable>,
    rope: Option<Arc<Rope>>,
    /// Host copies of the rotary tables for continuous batching on the CPU.
    rope_host: Option<Arc<ragged::HostRope>>,
    /// Prefix tuning's virtual tokens: their keys and values fill the KV cache first, and the
    /// tokens take the positions after them.
    prefix: Option<Prefix>,
    /// Recompute each block in the backward instead of keeping its activations.
    checkpointing: Checkpointing,
    /// The activations' dtype (the store's: bf16 under bf16-mixed); logits are always f32.
    compute: DType,
}

struct Block {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    mlp: Mlp,
    /// The same two sublayers as fused ops (`ops::sublayer`), for a block whose Linears are
    /// plain products (no LoRA, no adapters); used without a KV cache or active dropout.
    fused: Option<(ops::AttentionSublayer, ops::MlpSublayer)>,
}

struct Attention {
    qkv: Qkv,
    o: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// The q, k, v projections of a layer.
pub enum Qkv {
    /// One packed projection (GPT-2's c_attn: (C, 3C)), its output split into q, k, v.
    Packed(Linear),
    /// Separate projections (Llama): q (H·D), k and v (K·D).
    Split { q: Linear, k: Linear, v: Linear },
}

/// A layer's MLP.
pub enum Mlp {
    /// fc, tanh-GELU, proj (GPT-2).
    Gelu { fc: Linear, proj: Linear },
    /// down(SiLU(gate(x)) · up(x)) (Llama).
    SwiGlu { gate: Linear, up: Linear, down: Linear },
}

/// What an architecture wires into one layer ([`super::Architecture::decoder_layer`]).
pub struct LayerParts {
    pub norm1: Norm,
    pub qkv: Qkv,
    /// The attention's output projection.
    pub o: Linear,
    pub norm2: Norm,
    pub mlp: Mlp,
}

/// What an architecture wires around the layers ([`super::Architecture::decoder_ends`]).
pub struct DecoderEnds {
    /// Learned position embeddings (context, C), added to the token embeddings (GPT-2).
    pub positions: Option<Tensor>,
    pub norm_f: Norm,
    /// Rotary position embeddings on q and k (Llama).
    pub rope: bool,
}

/// How a block runs this time ([`Block::path`]).
enum BlockPath<'a> {
    /// Two fused sublayer ops.
    Fused(&'a (ops::AttentionSublayer, ops::MlpSublayer)),
    /// The single ops.
    Composed,
}

/// How attention runs this time ([`Attention::path`]).
enum AttentionPath {
    /// One fused op over the packed projection's output, read in place.
    Packed,
    /// One fused op over the separate projections (after RoPE).
    Split,
    /// Heads, then the grouped matmuls: with a KV cache or attention dropout.
    Explicit,
}

impl Decoder {
    pub fn new(spec: &ModelSpec, p: &ParamStore) -> Result<Self> {
        Self::build(spec, p, None)
    }

    /// A decoder whose layers' weights come from `source` for each use (ZeRO-3's sharded
    /// parameters); `p` holds the rest (embeddings, final norm, head). Training and loss
    /// evaluation only: no KV cache.
    pub fn with_layer_source(spec: &ModelSpec, p: &ParamStore, source: Arc<dyn LayerSource>) -> Result<Self> {
        Self::build(spec, p, Some(source))
    }

    fn build(spec: &ModelSpec, p: &ParamStore, layer_source: Option<Arc<dyn LayerSource>>) -> Result<Self> {
        let arch = spec.arch();
        if arch.family() != Family::Decoder {
            return Err(crate::Error::Invalid(format!("a {:?} spec builds an Encoder, not a Decoder", spec.style)));
        }
        let ends = arch.decoder_ends(p, spec)?;
        let rope = match ends.rope {
            true => Some(Arc::new(Rope::new(spec.head_dim, spec.context, spec.rope_theta, p.device())?)),
            false => None,
        };
        let held = if layer_source.is_some() { 0 } else { spec.n_layer };
        let blocks = (0..held)
            .map(|i| Ok(Arc::new(Block::new(arch.decoder_layer(p, spec, i)?, spec, rope.as_deref()))))
            .collect::<Result<Vec<_>>>()?;
        let wte = TokenTable::of(p, spec.embedding_name())?;
        let head = match spec.tie_embeddings {
            true => Some(wte.clone()),
            false if p.contains("lm_head.weight") => Some(TokenTable::of(p, "lm_head.weight")?),
            false => None,
        };
        Ok(Self {
            spec: spec.clone(),
            wte,
            wpe: ends.positions,
            blocks,
            layer_source,
            norm_f: ends.norm_f,
            head,
            rope_host: match (&rope, p.device().is_cpu()) {
                (Some(r), true) => {
                    let (cos, sin) = r.tables();
                    let to_host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
                    Some(Arc::new(ragged::HostRope { cos: to_host(cos)?, sin: to_host(sin)?, d: spec.head_dim }))
                }
                _ => None,
            },
            rope,
            prefix: Prefix::from_store(p, PrefixShape::of(spec))?,
            checkpointing: Checkpointing::Off,
            compute: p.compute_dtype(),
        })
    }

    /// Activation checkpointing for training (see [`recompute`]): each block it covers keeps
    /// only its input and runs again in the backward.
    pub fn with_activation_checkpointing(mut self, checkpointing: Checkpointing) -> Self {
        self.checkpointing = checkpointing;
        self
    }

    /// Hidden states after the final norm, (B, T, C), for `ids` (B, T) at positions
    /// `offset..offset+T`. With a cache, keys/values are appended to it; with a dropout
    /// generator, dropout is applied (training). With a prefix, its N virtual tokens come
    /// first (in the given cache, or one of this call's own) and the tokens sit at N + offset..
    pub fn hidden(
        &self,
        ids: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let mut own_cache;
        let mut cache: Option<&mut KvCache> = cache;
        if let Some(prefix) = &self.prefix {
            let c = match cache {
                Some(c) => c,
                None => {
                    own_cache = KvCache::new(self.spec.n_layer);
                    &mut own_cache
                }
            };
            if c.held() == 0 {
                c.prefill(&prefix.layers(b, self.compute)?, self.spec.n_kv_head, false)?;
            }
            cache = Some(c);
        }
        let offset = offset + self.prefix_len();
        if offset + t > self.spec.context {
            return Err(crate::Error::Invalid(format!(
                "sequence of {} positions exceeds the model's context of {}",
                offset + t,
                self.spec.context
            )));
        }
        let mut x = self.wte.rows(&ids.flatten_all()?)?.reshape((b, t, self.spec.d_model))?;
        if let Some(wpe) = &self.wpe {
            x = x.broadcast_add(&wpe.narrow(0, offset, t)?)?;
        }
        // From here on the residual stream is in the compute dtype (bf16 under bf16-mixed).
        x = drop(&mut dropout, &x.to_dtype(self.compute)?)?;
        let checkpointing = self.checkpointing.is_on() && cache.is_none() && x.track_op();
        if x.track_op() {
            // A training forward: gradients a failed step left beside the store are stale (a
            // step accumulating its micro-batches keeps its own).
            ops::param_grads::forward_starts();
        }
        if let Some(source) = &self.layer_source {
            if cache.is_some() {
                return Err(crate::Error::Invalid("a decoder with sharded layers (ZeRO-3) keeps no KV cache".into()));
            }
            for i in 0..self.spec.n_layer {
                x = self.sourced_layer(i, &x, offset, &mut dropout, source)?;
            }
            return self.norm_f.forward(&x);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            if checkpointing && self.checkpointing.covers(i, self.spec.n_layer) {
                let (block, rope) = (block.clone(), self.rope.clone());
                let forward: Arc<BlockForward> = Arc::new(move |x: &Tensor, d: &mut Option<&mut DropoutRng>| {
                    block.forward(x, 0, None, rope.as_deref(), d)
                });
                x = recompute::checkpointed(&x, &mut dropout, forward)?;
            } else {
                let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
                x = block.forward(&x, offset, layer_cache, self.rope.as_deref(), &mut dropout)?;
            }
        }
        self.norm_f.forward(&x)
    }

    /// Layer `i` with weights fetched from `source`: checkpointed when gradients are tracked (the
    /// weights let go after the forward and fetched again for the backward; a training forward,
    /// given a dropout generator, says the backward follows), plain otherwise.
    fn sourced_layer(
        &self,
        i: usize,
        x: &Tensor,
        offset: usize,
        dropout: &mut Option<&mut DropoutRng>,
        source: &Arc<dyn LayerSource>,
    ) -> Result<Tensor> {
        let (spec, rope) = (self.spec.clone(), self.rope.clone());
        let forward: Arc<LayerForward> =
            Arc::new(move |p: &ParamStore, x: &Tensor, d: &mut Option<&mut DropoutRng>| {
                let block = Block::new(spec.arch().decoder_layer(p, &spec, i)?, &spec, rope.as_deref());
                block.forward(x, offset, None, rope.as_deref(), d)
            });
        if x.track_op() {
            let then = if dropout.is_some() { LayerUse::TrainingForward } else { LayerUse::Forward };
            recompute::checkpointed_layer(x, dropout, i, then, source.clone(), forward)
        } else {
            forward(&source.layer(i, LayerUse::Forward)?, x, dropout)
        }
    }

    /// Number of prefix-tuning virtual tokens (0 without a prefix): positions the tokens lose.
    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, Prefix::len)
    }

    /// LM-head logits (B, T, V), f32, for hidden states (B, T, C).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, c) = hidden.dims3()?;
        Ok(self.head_logits(&hidden.reshape((b * t, c))?)?.reshape((b, t, self.spec.vocab_size))?)
    }

    /// Logits (N, V) in f32 of hidden rows (N, C), through the head in the rows' dtype.
    fn head_logits(&self, rows: &Tensor) -> Result<Tensor> {
        let logits = match self.lm_head()? {
            // The fused linear (its few-row path streams the (V, C) table once per token).
            TokenTable::Dense(head) => ops::linear(rows, &ops::like(head, rows)?, None, true)?,
            TokenTable::Quantized(_, q, v) => ops::quantized_matmul(q, &rows.contiguous()?)?.narrow(1, 0, *v)?,
        };
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Mean cross-entropy of hidden rows (N, C) against `targets` (N): the fused LM-head loss
    /// (logits a chunk at a time), or through the quantized head's logits.
    fn head_loss(&self, rows: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(match self.lm_head()? {
            TokenTable::Dense(head) => ops::lm_head_cross_entropy(rows, head, targets)?,
            TokenTable::Quantized(..) => ops::cross_entropy(&self.head_logits(rows)?, targets)?,
        })
    }

    /// Logits (B, T, V) for `ids` (B, T) at positions offset..offset+T.
    pub fn forward(&self, ids: &Tensor, offset: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden(ids, offset, cache, None)?;
        self.logits(&h)
    }

    /// Mean next-token cross-entropy (nats) of `targets` (B, T) given `ids` (B, T).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        let h = self.hidden(ids, 0, None, dropout)?;
        let (b, t, c) = h.dims3()?;
        self.head_loss(&h.reshape((b * t, c))?, &targets.flatten_all()?)
    }

    /// Mean next-token cross-entropy over chosen positions only: `rows` (N, u32) index the
    /// flattened (B·T) positions of `ids` (B, T) whose next token is trained and `targets` (N)
    /// are those tokens. The LM head runs on those rows alone (completion-only fine-tuning:
    /// the prompt's positions cost nothing past the last block).
    pub fn loss_at(
        &self,
        ids: &Tensor,
        rows: &Tensor,
        targets: &Tensor,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, 0, None, dropout)?;
        let (b, t, c) = h.dims3()?;
        let h = ops::embedding(&h.reshape((b * t, c))?, rows)?;
        self.head_loss(&h, targets)
    }

    fn lm_head(&self) -> Result<&TokenTable> {
        self.head
            .as_ref()
            .ok_or_else(|| crate::Error::Invalid("this decoder has no LM head (a classifier's backbone)".into()))
    }
}

impl Block {
    /// The block, and its fused form when every Linear is a plain product.
    fn new(parts: LayerParts, spec: &ModelSpec, rope: Option<&Rope>) -> Self {
        let LayerParts { norm1, qkv, o, norm2, mlp } = parts;
        let attn = Attention { qkv, o, n_head: spec.n_head, n_kv_head: spec.n_kv_head, head_dim: spec.head_dim };
        let fused = (|| {
            // Every Linear a plain product in the output projection's weight layout.
            let out_in = attn.o.is_out_in();
            let plain = |l: &Linear| if l.is_out_in() == out_in { l.plain() } else { None };
            let qkv = match &attn.qkv {
                Qkv::Packed(l) => ops::QkvProj::Packed(plain(l)?),
                Qkv::Split { q, k, v } => ops::QkvProj::Split { q: plain(q)?, k: plain(k)?, v: plain(v)? },
            };
            let attention = ops::AttentionSublayer {
                norm: norm1.sublayer(),
                qkv,
                o: plain(&attn.o)?,
                w_is_out_in: out_in,
                n_head: attn.n_head,
                n_kv_head: attn.n_kv_head,
                scale: 1.0 / (attn.head_dim as f64).sqrt(),
                rope: rope.map(|r| {
                    let (cos, sin) = r.tables();
                    (cos.clone(), sin.clone())
                }),
            };
            let mlp_proj = match &mlp {
                Mlp::Gelu { fc, proj } => {
                    ops::MlpProj::Gelu { fc: plain(fc)?, proj: plain(proj)?, form: ops::Gelu::Tanh }
                }
                Mlp::SwiGlu { gate, up, down } => {
                    ops::MlpProj::SwiGlu { gate: plain(gate)?, up: plain(up)?, down: plain(down)? }
                }
            };
            let mlp = ops::MlpSublayer { norm: norm2.sublayer(), mlp: mlp_proj, w_is_out_in: out_in };
            Some((attention, mlp))
        })();
        Self { norm1, attn, norm2, mlp, fused }
    }

    /// The one decision of how this block runs: fused sublayers for a training forward or a
    /// full recomputation (no KV cache, no active dropout) when every Linear is plain.
    fn path(&self, cached: bool, offset: usize, dropout: &Option<&mut DropoutRng>) -> BlockPath<'_> {
        let dropout_active = dropout.as_ref().is_some_and(|d| d.is_active());
        match &self.fused {
            Some(f) if !cached && offset == 0 && !dropout_active => BlockPath::Fused(f),
            _ => BlockPath::Composed,
        }
    }

    /// x + attn(norm1(x)), then + mlp(norm2(·)); dropout after each sublayer. Without a KV
    /// cache or active dropout, each sublayer runs as one fused op where the kernels apply.
    fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut LayerCache>,
        rope: Option<&Rope>,
        dropout: &mut Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        // A fused sublayer declines (None) input it does not take (an untracked x with trained
        // parameters, another dtype or device); the composed form runs then.
        let fused = match self.path(cache.is_some(), offset, dropout) {
            BlockPath::Fused(f) => Some(f),
            BlockPath::Composed => None,
        };
        let x = match fused.map(|(attn, _)| ops::attention_sublayer(x, attn)).transpose()?.flatten() {
            Some(y) => y,
            None => {
                let a = self.attn.forward(&self.norm1.forward(x)?, offset, cache, rope, dropout)?;
                (x + drop(dropout, &a)?)?
            }
        };
        match fused.map(|(_, mlp)| ops::mlp_sublayer(&x, mlp)).transpose()?.flatten() {
            Some(y) => Ok(y),
            None => {
                let m = self.mlp.forward(&self.norm2.forward(&x)?, dropout)?;
                Ok((x + drop(dropout, &m)?)?)
            }
        }
    }
}

fn drop(d: &mut Option<&mut DropoutRng>, x: &Tensor) -> Result<Tensor> {
    match d {
        Some(d) => d.apply(x),
        None => Ok(x.clone()),
    }
}

impl Attention {
    /// The one decision of how attention runs: a single fused op for training and full
    /// recomputation; the explicit matmuls with a KV cache or attention dropout.
    fn path(&self, cached: bool, dropout: &Option<&mut DropoutRng>, rope: Option<&Rope>) -> AttentionPath {
        let explicit = cached || dropout.as_ref().is_some_and(|d| d.is_active());
        match (&self.qkv, explicit, rope) {
            (_, true, _) => AttentionPath::Explicit,
            (Qkv::Packed(_), false, None) => AttentionPath::Packed,
            _ => AttentionPath::Split,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut LayerCache>,
        rope: Option<&Rope>,
        dropout: &mut Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (h, kh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        let path = self.path(cache.is_some(), dropout, rope);
        if let (AttentionPath::Packed, Qkv::Packed(lin)) = (&path, &self.qkv) {
            let qkv = lin.forward_t(x, dropout)?; // (B, T, (H + 2K)·D)
            return self.o.forward_t(&ops::causal_attention_packed(&qkv, h, kh, scale)?, dropout);
        }
        let (q, k, v) = self.project(x, dropout)?;
        if let AttentionPath::Split = path {
            let (q, k) = match rope {
                Some(rope) => (rope.apply_tokens(&q, h, offset)?, rope.apply_tokens(&k, kh, offset)?),
                None => (q, k),
            };
            return self.o.forward_t(&ops::causal_attention(&q, &k, &v, h, kh, scale)?, dropout);
        }
        let y = self.attend(&q, &k, &v, offset, cache, rope, dropout)?;
        self.o.forward_t(&y, dropout)
    }

    /// q (B, T, H·D), k and v (B, T, K·D) of x (B, T, C).
    fn project(&self, x: &Tensor, dropout: &mut Option<&mut DropoutRng>) -> Result<(Tensor, Tensor, Tensor)> {
        let (h, kh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        Ok(match &self.qkv {
            Qkv::Packed(lin) => {
                let qkv = lin.forward_t(x, dropout)?; // (B, T, (H + 2K)·D)
                (qkv.narrow(2, 0, h * d)?, qkv.narrow(2, h * d, kh * d)?, qkv.narrow(2, (h + kh) * d, kh * d)?)
            }
            Qkv::Split { q, k, v } => (q.forward_t(x, dropout)?, k.forward_t(x, dropout)?, v.forward_t(x, dropout)?),
        })
    }

    /// [`Self::forward_pieces`] on the CPU: the projections in candle, attention over host
    /// caches in one pass ([`ragged::attend`]).
    fn forward_pieces_host(
        &self,
        x: &Tensor,
        pieces: &mut [Piece],
        prefix: usize,
        layer: usize,
        rope: Option<&ragged::HostRope>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x, &mut None)?;
        let host = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let (mut q, mut k, v) = (host(q)?, host(k)?, host(v)?);
        let shape = ragged::Heads { h: self.n_head, kh: self.n_kv_head, d: self.head_dim };
        let row = shape.kh * shape.d;
        let mut at = 0;
        let mut kvs = Vec::with_capacity(pieces.len());
        for p in pieces.iter_mut() {
            let t = p.tokens.len();
            let c = &mut p.cache.layers[layer];
            if c.host.k.capacity() == 0 && c.capacity > 0 {
                c.host.k.reserve_exact(c.capacity * row);
                c.host.v.reserve_exact(c.capacity * row);
            }
            c.len += t;
            kvs.push(ragged::PieceKv { range: at..at + t, start: prefix + p.start, kv: &mut c.host });
            at += t;
        }
        let y = ragged::attend(&mut q, &mut k, &v, &mut kvs, shape, rope);
        let y = Tensor::from_vec(y, (1, at, shape.h * shape.d), x.device())?;
        self.o.forward_t(&y, &mut None)
    }

    /// Continuous batching: x (1, N, C) holds the new tokens of every piece in order; each
    /// piece attends over its own cache (at its own positions, after `prefix` virtual tokens),
    /// the projections run once.
    fn forward_pieces(
        &self,
        x: &Tensor,
        pieces: &mut [Piece],
        prefix: usize,
        layer: usize,
        rope: Option<&Rope>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(x, &mut None)?;
        let mut outputs = Vec::with_capacity(pieces.len());
        let mut at = 0;
        for p in pieces.iter_mut() {
            let t = p.tokens.len();
            let (qp, kp, vp) = (q.narrow(1, at, t)?, k.narrow(1, at, t)?, v.narrow(1, at, t)?);
            let cache = Some(&mut p.cache.layers[layer]);
            outputs.push(self.attend(&qp, &kp, &vp, prefix + p.start, cache, rope, &mut None)?);
            at += t;
        }
        self.o.forward_t(&Tensor::cat(&outputs, 1)?, &mut None)
    }

    /// q (B, T, H·D), k and v (B, T, K·D) of positions offset..offset+T → the attention output
    /// (B, T, H·D) over the cache (which gets k and v appended) and themselves: heads, then the
    /// grouped matmuls. The path with a KV cache or attention dropout, and continuous batching's.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        cache: Option<&mut LayerCache>,
        rope: Option<&Rope>,
        dropout: &mut Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (h, kh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        // (B, T, n·D) -> (B, n, T, D)
        let heads = |z: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            z.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()
        };
        let (mut q, mut k, mut v) = (heads(q, h)?, heads(k, kh)?, heads(v, kh)?);
        if let Some(rope) = rope {
            q = rope.apply(&q, offset)?;
            k = rope.apply(&k, offset)?;
        }
        if let Some(slot) = cache {
            (k, v) = slot.append(k, v)?;
        }
        let s = k.dim(2)?;
        // Grouped-query attention without repeating K/V: the H/K query heads that share a
        // key/value head are adjacent, so (B, H, T, D) regroups as (B, K, H/K·T, D) and one
        // batched matmul per KV head covers them all.
        //   q heads: [h0 h1 | h2 h3]   kv heads: [k0 | k1]   (H=4, K=2)
        let rep = h / kh;
        let qg = q.reshape((b, kh, rep * t, d))?;
        let scores = ops::matmul(&qg, &k.t()?)?.reshape((b, h, t, s))?;
        // Scaled by 1/√D and masked so query i (at position S−T+i) sees keys 0..=S−T+i.
        let p = ops::causal_softmax(&scores, scale)?;
        let p = drop(dropout, &p)?;
        let y = ops::matmul(&p.reshape((b, kh, rep * t, s))?, &v)?; // (B, K, rep·T, D)
        Ok(y.reshape((b, h, t, d))?.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, d: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        match self {
            Mlp::Gelu { fc, proj } => proj.forward_t(&fc.forward_gelu_t(x, ops::Gelu::Tanh, d)?, d),
            Mlp::SwiGlu { gate, up, down } => down.forward_t(&Linear::swiglu_t(gate, up, x, d)?, d),
        }
    }
}
