//! The BERT encoder, with Hugging Face `BertForPreTraining` semantics: the sum of word,
//! learned position and token-type embeddings and a LayerNorm, then L post-norm blocks
//! `x = norm(x + attn(x)); x = norm(x + mlp(x))` with bidirectional attention that ignores
//! padding, an erf-GELU MLP, the pooler (tanh dense on [CLS]), the MLM head (dense, GELU,
//! LayerNorm, decoder tied to the word embeddings plus a bias) and the next-sentence head.
//! Tensors are views of the `ParamStore`'s variables (all named `bert.*` / `cls.*`); a store
//! without the pretraining heads (a `BertModel` backbone for fine-tuning) builds too.
//!
//! Dimension letters: B batch, T positions, C d_model, H heads, D head dim, V vocab, N selected
//! (masked) positions.

use super::{Family, ModelSpec};
use crate::error::{Error, Result};
use crate::nn::prefix::{Prefix, PrefixShape};
use crate::nn::{DropoutRng, Linear, Norm, ParamStore};
use crate::ops;
use candle_core::{DType, Device, Tensor, D};

pub struct Encoder {
    pub spec: ModelSpec,
    word: Tensor,  // (V, C), also the MLM decoder
    pos: Tensor,   // (context, C)
    types: Tensor, // (type_vocab, C)
    emb_norm: Norm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    mlm: Option<MlmHead>,
    nsp: Option<Linear>,
    /// Prefix tuning's virtual tokens, read by every layer's attention before the real ones.
    prefix: Option<Prefix>,
    /// The activations' dtype (the store's: bf16 under bf16-mixed); logits are always f32.
    compute: DType,
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: Norm,
    ff_in: Linear,
    ff_out: Linear,
    out_norm: Norm,
}

struct MlmHead {
    dense: Linear,
    norm: Norm,
    bias: Tensor, // (V)
}

/// One batch of encoder input: ids and token types (B, T) u32, and each row's length before
/// its right padding (the attention mask).
pub struct EncoderInput {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub lengths: Vec<usize>,
}

impl EncoderInput {
    /// From row-major ids / token types and row lengths (padding = positions ≥ length).
    pub fn new(ids: &[u32], type_ids: &[u32], lengths: Vec<usize>, seq_len: usize, device: &Device) -> Result<Self> {
        let b = lengths.len();
        Ok(Self {
            ids: Tensor::from_slice(ids, (b, seq_len), device)?,
            type_ids: Tensor::from_slice(type_ids, (b, seq_len), device)?,
            lengths,
        })
    }

    /// From an HF-style 0/1 attention mask (B, T); it must be right padding (ones, then zeros).
    pub fn from_mask(ids: Tensor, type_ids: Tensor, mask: &Tensor) -> Result<Self> {
        let rows = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut lengths = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let len = r.iter().take_while(|&&m| m == 1).count();
            if len == 0 || r[len..].iter().any(|&m| m != 0) {
                return Err(Error::Invalid(format!(
                    "attention mask row {i} is not right padding (ones then zeros, at least one one): {r:?}"
                )));
            }
            lengths.push(len);
        }
        Ok(Self { ids: ids.to_dtype(DType::U32)?, type_ids: type_ids.to_dtype(DType::U32)?, lengths })
    }
}

/// The pretraining losses of one batch: `total` carries the gradient.
pub struct PretrainingLoss {
    pub total: Tensor,
    pub mlm: Tensor,
    pub nsp: Option<Tensor>,
}

impl Encoder {
    pub fn new(spec: &ModelSpec, p: &ParamStore) -> Result<Self> {
        if spec.arch().family() != Family::Encoder {
            return Err(Error::Invalid(format!("{:?} is a decoder style, not an encoder", spec.style)));
        }
        let eps = spec.norm_eps;
        let lin = |name: &str| p.linear(name, true, true);
        let ln = |name: &str| -> Result<Norm> {
            Ok(Norm::Layer { w: p.get(&format!("{name}.weight"))?, b: p.get(&format!("{name}.bias"))?, eps })
        };
        let has = |name: &str| p.contains(name);
        let mut layers = Vec::with_capacity(spec.n_layer);
        for i in 0..spec.n_layer {
            let n = |s: &str| format!("bert.encoder.layer.{i}.{s}");
            layers.push(Layer {
                q: lin(&n("attention.self.query"))?,
                k: lin(&n("attention.self.key"))?,
                v: lin(&n("attention.self.value"))?,
                o: lin(&n("attention.output.dense"))?,
                attn_norm: ln(&n("attention.output.LayerNorm"))?,
                ff_in: lin(&n("intermediate.dense"))?,
                ff_out: lin(&n("output.dense"))?,
                out_norm: ln(&n("output.LayerNorm"))?,
            });
        }
        let e = "bert.embeddings";
        let mlm = if has("cls.predictions.bias") {
            Some(MlmHead {
                dense: lin("cls.predictions.transform.dense")?,
                norm: ln("cls.predictions.transform.LayerNorm")?,
                bias: p.get("cls.predictions.bias")?,
            })
        } else {
            None
        };
        Ok(Self {
            spec: spec.clone(),
            word: p.get(&format!("{e}.word_embeddings.weight"))?,
            pos: p.get(&format!("{e}.position_embeddings.weight"))?,
            types: p.get(&format!("{e}.token_type_embeddings.weight"))?,
            emb_norm: ln(&format!("{e}.LayerNorm"))?,
            layers,
            pooler: if has("bert.pooler.dense.weight") { Some(lin("bert.pooler.dense")?) } else { None },
            mlm,
            nsp: if has("cls.seq_relationship.weight") { Some(lin("cls.seq_relationship")?) } else { None },
            prefix: Prefix::from_store(p, PrefixShape::of(spec))?,
            compute: p.compute_dtype(),
        })
    }

    /// The last layer's hidden states (B, T, C). With a dropout generator, dropout is applied
    /// where BERT applies it (embeddings, attention probabilities, both residual branches).
    /// With a prefix, the tokens take positions N.. after its N virtual tokens (transformers'
    /// `past_key_values_length`).
    pub fn hidden(&self, input: &EncoderInput, mut dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        let (b, t) = input.ids.dims2()?;
        let n = self.prefix.as_ref().map_or(0, Prefix::len);
        if n + t > self.spec.context {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds the model's {} position embeddings",
                n + t,
                self.spec.context
            )));
        }
        let words = ops::embedding(&self.word, &input.ids)?;
        let types = ops::embedding(&self.types, &input.type_ids)?;
        let x = (words + types)?.broadcast_add(&self.pos.narrow(0, n, t)?)?;
        // From here on the hidden states are in the compute dtype (bf16 under bf16-mixed).
        let mut x = drop(&mut dropout, &self.emb_norm.forward(&x)?.to_dtype(self.compute)?)?;
        let prefix = self.prefix.as_ref().map(|p| p.layers(b, self.compute)).transpose()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = prefix.as_ref().map(|layers| &layers[i]);
            let a = layer.attention(&x, &input.lengths, kv, &self.spec, &mut dropout)?;
            x = layer.attn_norm.forward(&(x + drop(&mut dropout, &a)?)?)?;
            let m =
                layer.ff_out.forward_t(&layer.ff_in.forward_gelu_t(&x, ops::Gelu::Erf, &mut dropout)?, &mut dropout)?;
            x = layer.out_norm.forward(&(x + drop(&mut dropout, &m)?)?)?;
        }
        Ok(x)
    }

    /// The pooled [CLS] representation tanh(W·h₀ + b), (B, C).
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let pooler = self.pooler.as_ref().ok_or_else(|| Error::Invalid("this encoder has no pooler".into()))?;
        Ok(pooler.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?)
    }

    fn mlm_head(&self) -> Result<&MlmHead> {
        self.mlm.as_ref().ok_or_else(|| Error::Invalid("this encoder has no MLM head (a BertModel backbone)".into()))
    }

    /// The MLM head's transform (dense, GELU, LayerNorm) of hidden rows (..., C).
    fn mlm_transform(&self, h: &Tensor) -> Result<Tensor> {
        let head = self.mlm_head()?;
        head.norm.forward(&ops::gelu_erf(&head.dense.forward(h)?)?)
    }

    /// MLM logits (..., V) for hidden states (..., C).
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.mlm_transform(hidden)?;
        let dims = h.dims().to_vec();
        let flat = h.reshape(((), self.spec.d_model))?;
        let logits = ops::matmul(&flat, &ops::like(&self.word, &flat)?.t()?)?.to_dtype(DType::F32)?;
        let logits = logits.broadcast_add(&self.mlm_head()?.bias)?;
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = self.spec.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// Next-sentence logits (B, 2) from the pooled output: index 0 = "B follows A".
    pub fn nsp_logits(&self, pooled: &Tensor) -> Result<Tensor> {
        let nsp = self.nsp.as_ref().ok_or_else(|| Error::Invalid("this encoder has no next-sentence head".into()))?;
        Ok(nsp.forward(pooled)?.to_dtype(DType::F32)?)
    }

    /// Hidden states of the selected positions, (N, C): `positions` index the flattened
    /// (B·T) rows.
    pub fn select_rows(hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, t, c) = hidden.dims3()?;
        Ok(ops::embedding(&hidden.reshape((b * t, c))?, positions)?)
    }

    /// MLM cross-entropy over the selected positions (mean over them, as HF's ignore-index
    /// -100 mean), plus next-sentence cross-entropy when `nsp_labels` (B) are given.
    pub fn pretraining_loss(
        &self,
        input: &EncoderInput,
        positions: &Tensor,
        targets: &Tensor,
        nsp_labels: Option<&Tensor>,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<PretrainingLoss> {
        let hidden = self.hidden(input, dropout)?;
        let h = self.mlm_transform(&Self::select_rows(&hidden, positions)?)?;
        // Only the selected ~15% of rows reach the vocabulary projection. The decoder bias rides
        // along as one more column: [h, 1]·[E, b]ᵀ = h·Eᵀ + b, so the fused LM-head loss (which
        // has no bias) computes logits a chunk at a time and never holds (N, V).
        let n = h.dim(0)?;
        let ones = Tensor::ones((n, 1), h.dtype(), h.device())?;
        let h1 = Tensor::cat(&[&h, &ones], 1)?;
        let head = Tensor::cat(&[&self.word, &self.mlm_head()?.bias.unsqueeze(1)?], 1)?;
        let mlm = ops::lm_head_cross_entropy(&h1, &head, targets)?;
        let (total, nsp) = match nsp_labels {
            Some(labels) => {
                let nsp = ops::cross_entropy(&self.nsp_logits(&self.pooled(&hidden)?)?, labels)?;
                ((&mlm + &nsp)?, Some(nsp))
            }
            None => (mlm.clone(), None),
        };
        Ok(PretrainingLoss { total, mlm, nsp })
    }
}

fn drop(d: &mut Option<&mut DropoutRng>, x: &Tensor) -> Result<Tensor> {
    match d {
        Some(d) => d.apply(x),
        None => Ok(x.clone()),
    }
}

impl Layer {
    /// Self-attention over the row's real tokens, after a prefix's keys and values (B, N, H·D)
    /// when there is one.
    fn attention(
        &self,
        x: &Tensor,
        lengths: &[usize],
        prefix: Option<&(Tensor, Tensor)>,
        spec: &ModelSpec,
        dropout: &mut Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (h, d) = (spec.n_head, spec.head_dim);
        let (q, mut k, mut v) =
            (self.q.forward_t(x, dropout)?, self.k.forward_t(x, dropout)?, self.v.forward_t(x, dropout)?);
        let scale = 1.0 / (d as f64).sqrt();
        let mut key_lens = std::borrow::Cow::Borrowed(lengths);
        if let Some((pk, pv)) = prefix {
            // Every virtual token is visible: keys 0..N + length of each row.
            (k, v) = (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?);
            key_lens = lengths.iter().map(|l| l + pk.dim(1).unwrap_or(0)).collect::<Vec<_>>().into();
        }
        let y = if prefix.is_some() || dropout.as_ref().is_some_and(|d| d.is_active()) {
            // Dropout on the probabilities needs them as a tensor, and the fused kernel takes
            // as many keys as queries: the composed form.
            let p = ops::reference::padded_attention_probs(&q, &k, h, h, scale, &key_lens)?;
            let p = drop(dropout, &p)?;
            ops::reference::attend(&p, &v, h, h)?
        } else {
            ops::padded_attention(&q, &k, &v, h, h, scale, lengths)?
        };
        self.o.forward_t(&y, dropout)
    }
}

/// Accuracy helper for evaluation: the arg-max along the last dim, as u32.
pub fn argmax_last(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?)
}
