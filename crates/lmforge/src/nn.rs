//! Building blocks shared by the models: the parameter store (trainable `Var`s keyed by their
//! checkpoint names), seeded initialisation, Linear / Embedding / norm layers, rotary position
//! embeddings and dropout masks. Randomness comes from lmforge's own ChaCha generator, seeded
//! per parameter name or per step, because candle's CPU generator cannot be seeded.

use crate::device::Precision;
use crate::error::{Error, Result};
use crate::ops;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub mod peft;
pub mod prefix;
pub mod recompute;

/// Weight initialisation schemes (config `model.init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// GPT-2: normal(0, 0.02); residual projections normal(0, 0.02/sqrt(2·n_layer)).
    Gpt2,
    /// Glorot/Xavier uniform: U(±sqrt(6/(fan_in+fan_out))).
    Glorot,
    /// He/Kaiming normal: N(0, sqrt(2/fan_in)).
    He,
}

/// A stable 64-bit mix of a seed and a string (FNV-1a), so each parameter's initial values
/// depend only on the seed and its name, not on the order parameters are created in.
pub fn seed_for(seed: u64, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in label.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Token or position embedding table.
    Embedding,
    /// A matrix feeding the residual stream's branches (normal init).
    Matrix,
    /// A matrix writing back into the residual stream (GPT-2 scales its init by 1/sqrt(2L)).
    ResidualProjection,
    Bias,
    NormWeight,
    NormBias,
}

/// One named parameter: Hugging Face key, shape, and (fan_in, fan_out) for matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub fans: (usize, usize),
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameters of a model, by checkpoint (Hugging Face) name: trainable ones as `Var`s and
/// frozen ones (fine-tuning's base weights) as plain tensors, which the backward pass never
/// computes or stores a gradient for. BTreeMaps, so iteration order — and with it optimizer
/// state and checkpoint layout — is deterministic.
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    /// LoRA scale and dropout of each adapted Linear, by module name (see [`peft`]).
    lora: BTreeMap<String, peft::LoraScaling>,
    device: Device,
    /// The precision the models built on this store compute in: f32, or bf16 activations
    /// under `bf16-mixed` (the parameters themselves stay f32, the master weights).
    precision: Precision,
    /// Matrices kept in GGML blocks (a `.gguf` model), by name, (out, in) whatever the
    /// architecture's layout (`true`: the architecture stores this one (in, out), GPT-2's
    /// Conv1D): Linears run them through candle's quantized matmul and the token embedding
    /// looks rows up in them, without a dense copy. Inference only (no backward).
    quantized: BTreeMap<String, (Arc<QTensor>, bool)>,
}

impl ParamStore {
    /// Fresh parameters for `params`, initialised by `scheme` from `seed`.
    pub fn init(params: &[ParamInfo], scheme: InitScheme, n_layer: usize, seed: u64, device: &Device) -> Result<Self> {
        use rayon::prelude::*;
        let mut vars = BTreeMap::new();
        // Each parameter draws from its own stream (seeded by its name), so they are drawn in
        // parallel with the same values; a batch of them at a time keeps one batch's host
        // copies, not the whole model's (a 7B model's would be 27 GB), before they are uploaded.
        for batch in params.chunks(rayon::current_num_threads().max(1)) {
            let values: Vec<Vec<f32>> = batch.par_iter().map(|p| initial_values(p, scheme, n_layer, seed)).collect();
            for (p, data) in batch.iter().zip(values) {
                let t = Tensor::from_vec(data, p.shape.as_slice(), device)?;
                vars.insert(p.name.clone(), Var::from_tensor(&t)?);
            }
        }
        Ok(Self::from_vars(vars, device))
    }

    /// A store of trainable `vars` (f32 precision).
    pub fn from_vars(vars: BTreeMap<String, Var>, device: &Device) -> Self {
        Self {
            vars,
            frozen: BTreeMap::new(),
            lora: BTreeMap::new(),
            device: device.clone(),
            precision: Precision::Fp32,
            quantized: BTreeMap::new(),
        }
    }

    /// Loads `params` from a safetensors file, converting f16/bf16 to f32. Every expected
    /// tensor must be present with the expected shape; file keys are first mapped by `key_of`
    /// (`None`: a known buffer or tied copy, skipped), and any other extra tensor is an error.
    /// Parameters for which `optional` holds may be absent: they are left out of the store and
    /// returned, so the caller can initialise them or run without them.
    pub fn load_with(
        path: &Path,
        params: &[ParamInfo],
        device: &Device,
        key_of: &dyn Fn(&str) -> Option<String>,
        optional: &dyn Fn(&str) -> bool,
    ) -> Result<(Self, Vec<ParamInfo>)> {
        Self::load_held(path, params, device, key_of, optional, &|_| true)
    }

    /// [`Self::load_with`] reading only the parameters for which `held` holds (ZeRO-3: this
    /// process's share of the layers, and everything else); the others are neither read nor
    /// in the store. The file is memory-mapped, so what is not read costs no memory.
    pub fn load_held(
        path: &Path,
        params: &[ParamInfo],
        device: &Device,
        key_of: &dyn Fn(&str) -> Option<String>,
        optional: &dyn Fn(&str) -> bool,
        held: &dyn Fn(&str) -> bool,
    ) -> Result<(Self, Vec<ParamInfo>)> {
        let bad = |e: candle_core::Error| Error::format(path, format!("cannot read safetensors: {e}"));
        // SAFETY: the mapping is read while this function runs; model and checkpoint files are
        // written once (staged, then renamed), not modified in place.
        let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(bad)?;
        let known: std::collections::HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let mut raw = std::collections::HashMap::new();
        for (key, _) in file.tensors() {
            // Another process's parameter is skipped; an unknown tensor is read, to be reported.
            let skip = key_of(&key).is_some_and(|name| known.contains(name.as_str()) && !held(&name));
            if !skip {
                raw.insert(key.clone(), file.load(&key, device).map_err(bad)?);
            }
        }
        let kept: Vec<ParamInfo> = params.iter().filter(|p| held(&p.name)).cloned().collect();
        Self::from_tensors(raw, &kept, device, path, key_of, optional)
    }

    /// [`Self::load`] from the bytes of a safetensors file (`path` names it in errors). The
    /// header is checked against the buffer before any tensor is built, so a header claiming
    /// huge tensors is an error, not an allocation.
    pub fn from_safetensors_bytes(bytes: &[u8], params: &[ParamInfo], device: &Device, path: &Path) -> Result<Self> {
        let raw = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| Error::format(path, format!("cannot read safetensors: {e}")))?;
        Ok(Self::from_tensors(raw, params, device, path, &|k| Some(k.to_string()), &|_| false)?.0)
    }

    /// Parameters `params` from named tensors (`path` names their file in errors), keys
    /// mapped by `key_of`.
    pub fn from_tensors(
        raw: std::collections::HashMap<String, Tensor>,
        params: &[ParamInfo],
        device: &Device,
        path: &Path,
        key_of: &dyn Fn(&str) -> Option<String>,
        optional: &dyn Fn(&str) -> bool,
    ) -> Result<(Self, Vec<ParamInfo>)> {
        let mut tensors = BTreeMap::new();
        for (k, t) in raw {
            if let Some(name) = key_of(&k) {
                tensors.insert(name, t);
            }
        }
        let mut vars = BTreeMap::new();
        let mut missing = Vec::new();
        for p in params {
            let Some(t) = tensors.remove(&p.name) else {
                if optional(&p.name) {
                    missing.push(p.clone());
                    continue;
                }
                return Err(Error::format(path, format!("missing tensor `{}` (shape {:?})", p.name, p.shape)));
            };
            if t.dims() != p.shape.as_slice() {
                return Err(Error::format(
                    path,
                    format!("tensor `{}` has shape {:?}, expected {:?}", p.name, t.dims(), p.shape),
                ));
            }
            let t = match t.dtype() {
                DType::F32 => t,
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                other => {
                    return Err(Error::format(
                        path,
                        format!("tensor `{}` has dtype {other:?}, expected a float", p.name),
                    ))
                }
            };
            vars.insert(p.name.clone(), Var::from_tensor(&t)?);
        }
        if let Some(k) = tensors.keys().next() {
            return Err(Error::format(
                path,
                format!(
                    "unexpected tensor `{k}` ({} unexpected in all): is this the right architecture?",
                    tensors.len()
                ),
            ));
        }
        Ok((Self::from_vars(vars, device), missing))
    }

    /// Overwrites every parameter with `other`'s values (same names and shapes) in place, so a
    /// model built over these `Var`s sees them (a rollback to a checkpoint).
    pub fn assign(&self, other: &ParamStore) -> Result<()> {
        for (name, v) in &self.vars {
            v.set(&other.get(name)?)?;
        }
        Ok(())
    }

    /// [`Self::load_with`] for a file holding exactly `params` in lmforge's own naming.
    pub fn load(path: &Path, params: &[ParamInfo], device: &Device) -> Result<Self> {
        Ok(Self::load_with(path, params, device, &|k| Some(k.to_string()), &|_| false)?.0)
    }

    /// Serialises every parameter, trainable and frozen, as safetensors bytes (HF names, f32,
    /// `format: pt`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        serialize_tensors(self.tensors().into_iter())
    }

    /// A parameter's tensor, trainable or frozen; a quantized one dequantized (a dense copy, for
    /// the few uses that need one: the models read [`Self::quantized`]).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        if let Some((q, transposed)) = self.quantized.get(name) {
            let t = q.dequantize(&self.device)?;
            return Ok(if *transposed { t.t()?.contiguous()? } else { t });
        }
        self.vars
            .get(name)
            .map(|v| v.as_tensor().clone())
            .or_else(|| self.frozen.get(name).cloned())
            .ok_or_else(|| Error::Invalid(format!("model has no parameter `{name}`")))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name) || self.frozen.contains_key(name) || self.quantized.contains_key(name)
    }

    /// A matrix kept in GGML blocks, (out, in).
    pub fn quantized(&self, name: &str) -> Option<&Arc<QTensor>> {
        self.quantized.get(name).map(|(q, _)| q)
    }

    /// Adds a frozen matrix kept in GGML blocks, stored (out, in); `transposed`: the
    /// architecture stores it (in, out).
    pub fn insert_quantized(&mut self, name: &str, q: QTensor, transposed: bool) -> Result<()> {
        if self.contains(name) {
            return Err(Error::Invalid(format!("parameter `{name}` already exists")));
        }
        self.quantized.insert(name.to_string(), (Arc::new(q), transposed));
        Ok(())
    }

    /// Every parameter, trainable, frozen and quantized (dequantized, a dense copy: for export),
    /// in name order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: BTreeMap<&String, Tensor> = self.frozen.iter().map(|(k, t)| (k, t.clone())).collect();
        all.extend(self.vars.iter().map(|(k, v)| (k, v.as_tensor().clone())));
        for k in self.quantized.keys() {
            // The blocks were read and checked at load; dequantizing them cannot fail.
            all.insert(k, self.get(k).expect("a quantized tensor dequantizes"));
        }
        all.into_iter().map(|(k, t)| (k.clone(), t)).collect()
    }

    /// The trainable parameters.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The frozen parameters.
    pub fn frozen(&self) -> &BTreeMap<String, Tensor> {
        &self.frozen
    }

    /// Adds a new parameter (an error if the name is taken), trainable or frozen.
    pub fn insert(&mut self, name: &str, t: Tensor, trainable: bool) -> Result<()> {
        if self.contains(name) {
            return Err(Error::Invalid(format!("parameter `{name}` already exists")));
        }
        if trainable {
            self.vars.insert(name.to_string(), Var::from_tensor(&t)?);
        } else {
            self.frozen.insert(name.to_string(), t.detach());
        }
        Ok(())
    }

    /// Overwrites a parameter's values in place (its shape must match); views of a trainable
    /// one see the change.
    pub fn set(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let old = self.get(name)?;
        if old.dims() != t.dims() {
            return Err(Error::Invalid(format!("parameter `{name}` is {:?}, not {:?}", old.dims(), t.dims())));
        }
        let t = t.to_dtype(DType::F32)?;
        match self.vars.get(name) {
            Some(v) => v.set(&t)?,
            None => {
                self.frozen.insert(name.to_string(), t.detach());
            }
        }
        Ok(())
    }

    /// Moves every trainable parameter whose name satisfies `frozen` to the frozen set (no
    /// copy: the tensor keeps its storage, detached from any gradient tracking).
    pub fn freeze_where(&mut self, frozen: impl Fn(&str) -> bool) {
        let names: Vec<String> = self.vars.keys().filter(|n| frozen(n)).cloned().collect();
        for n in names {
            let v = self.vars.remove(&n).expect("listed");
            self.frozen.insert(n, v.as_tensor().detach());
        }
    }

    /// Records that the Linear `module` carries a LoRA delta (`module.lora_A.weight`, ...).
    pub fn set_lora(&mut self, module: &str, scaling: peft::LoraScaling) {
        self.lora.insert(module.to_string(), scaling);
    }

    pub fn lora(&self) -> &BTreeMap<String, peft::LoraScaling> {
        &self.lora
    }

    /// The Linear `module` (`module.weight`, `module.bias` if `bias`), with its LoRA delta and
    /// bottleneck adapter when the store holds them. `out_in`: nn.Linear's (out, in) weight
    /// layout; otherwise GPT-2's Conv1D (in, out).
    pub fn linear(&self, module: &str, out_in: bool, bias: bool) -> Result<Linear> {
        let name = format!("{module}.weight");
        let (w, out_in) = match self.quantized.get(&name) {
            Some((q, _)) => (Weight::Quantized(Arc::new(QMatMul::from_arc(q.clone())?)), true),
            None => (Weight::Dense(self.get(&name)?), out_in),
        };
        let b = if bias { Some(self.get(&format!("{module}.bias"))?) } else { None };
        let mut lin = Linear { w, b, w_is_out_in: out_in, lora: None, adapter: None };
        if let Some(scaling) = self.lora.get(module) {
            lin.lora = Some(Box::new(peft::Lora::from_store(self, module, *scaling)?));
        }
        if self.contains(&peft::adapter_param(module, "down.weight")) {
            lin.adapter = Some(Box::new(peft::Adapter::from_store(self, module)?));
        }
        Ok(lin)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The precision models built on this store compute in (see [`Self::with_precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The dtype of their activations: f32, or bf16 under bf16-mixed.
    pub fn compute_dtype(&self) -> DType {
        self.precision.compute_dtype()
    }

    /// Removes the trainable parameters whose names `pick` selects and returns them.
    pub fn take_vars(&mut self, pick: impl Fn(&str) -> bool) -> BTreeMap<String, Var> {
        let names: Vec<String> = self.vars.keys().filter(|n| pick(n)).cloned().collect();
        names.into_iter().filter_map(|n| self.vars.remove_entry(&n)).collect()
    }

    /// Models built on this store afterwards compute in `precision` (bf16 activations under
    /// `bf16-mixed`; the parameters, their gradients and the optimizer state stay f32).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Elements of every parameter, trainable, frozen and quantized.
    pub fn num_params(&self) -> usize {
        self.num_trainable()
            + self.frozen.values().map(|t| t.elem_count()).sum::<usize>()
            + self.quantized.values().map(|(q, _)| q.shape().elem_count()).sum::<usize>()
    }

    /// Bytes the weights take: dense ones at their dtype, quantized ones in their blocks.
    pub fn weight_bytes(&self) -> usize {
        let dense = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.vars.values().map(|v| dense(v.as_tensor())).sum::<usize>()
            + self.frozen.values().map(dense).sum::<usize>()
            + self.quantized.values().map(|(q, _)| q.storage_size_in_bytes()).sum::<usize>()
    }

    /// Elements of the trainable parameters.
    pub fn num_trainable(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}

/// safetensors bytes for named tensors, with the `format: pt` metadata transformers expects.
pub fn serialize_tensors(items: impl Iterator<Item = (String, Tensor)>) -> Result<Vec<u8>> {
    let items: Vec<(String, Tensor)> = items.map(|(k, t)| Ok((k, t.contiguous()?))).collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(items.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| Error::Invalid(format!("cannot serialise tensors: {e}")))
}

/// Parameter `p`'s initial values under `scheme`, from its own seeded stream.
fn initial_values(p: &ParamInfo, scheme: InitScheme, n_layer: usize, seed: u64) -> Vec<f32> {
    let n = p.numel();
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &p.name));
    match p.kind {
        ParamKind::Bias | ParamKind::NormBias => vec![0.0; n],
        ParamKind::NormWeight => vec![1.0; n],
        ParamKind::Embedding => normal(&mut rng, 0.02, n),
        ParamKind::Matrix | ParamKind::ResidualProjection => {
            let (fan_in, fan_out) = p.fans;
            match scheme {
                InitScheme::Gpt2 if p.kind == ParamKind::ResidualProjection => {
                    normal(&mut rng, 0.02 / (2.0 * n_layer as f64).sqrt(), n)
                }
                InitScheme::Gpt2 => normal(&mut rng, 0.02, n),
                InitScheme::Glorot => {
                    let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                    let u = Uniform::new_inclusive(-a, a).expect("a > 0");
                    (0..n).map(|_| u.sample(&mut rng)).collect()
                }
                InitScheme::He => normal(&mut rng, (2.0 / fan_in as f64).sqrt(), n),
            }
        }
    }
}

fn normal(rng: &mut ChaCha8Rng, std: f64, n: usize) -> Vec<f32> {
    let d = Normal::new(0.0f32, std as f32).expect("std > 0");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// y = x·W + b. GPT-2's Conv1D stores W as (in, out); `nn.Linear` stores (out, in) and is
/// used transposed. Keeping the checkpoint layout avoids a copy at load and save time.
/// Fine-tuning may attach a LoRA delta (y += s·B·A·x) and a bottleneck adapter on the output
/// (y += up(gelu(down(y)))); see [`peft`].
pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
    w_is_out_in: bool,
    // Boxed: most Linears have neither, and models hold many Linears.
    lora: Option<Box<peft::Lora>>,
    adapter: Option<Box<peft::Adapter>>,
}

/// A Linear's weight: a dense tensor, or GGML blocks (out, in) run by candle's quantized
/// matmul, which quantizes the activations as llama.cpp does (inference only: no backward).
#[derive(Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(Arc<QMatMul>),
}

impl Linear {
    /// Conv1D layout: weight (in, out).
    pub fn in_out(w: Tensor, b: Option<Tensor>) -> Self {
        Self { w: Weight::Dense(w), b, w_is_out_in: false, lora: None, adapter: None }
    }
    /// nn.Linear layout: weight (out, in).
    pub fn out_in(w: Tensor, b: Option<Tensor>) -> Self {
        Self { w: Weight::Dense(w), b, w_is_out_in: true, lora: None, adapter: None }
    }

    /// The dense weight of a product with neither LoRA nor an adapter: what the fused ops take.
    fn plain_dense(&self) -> Option<&Tensor> {
        match &self.w {
            Weight::Dense(w) if self.lora.is_none() && self.adapter.is_none() => Some(w),
            _ => None,
        }
    }

    /// x: (B, T, in) -> (B, T, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, &mut None)
    }

    /// gelu(forward_t(x)); without LoRA or an adapter, one fused op ([`ops::linear_gelu`]).
    pub fn forward_gelu_t(&self, x: &Tensor, form: ops::Gelu, dropout: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        if let Some(w) = self.plain_dense() {
            return Ok(ops::linear_gelu(x, w, self.b.as_ref(), self.w_is_out_in, form)?);
        }
        Ok(ops::gelu(&self.forward_t(x, dropout)?, form)?)
    }

    /// silu(gate(x)) ⊙ up(x) for two Linears of one shape; without biases, LoRA or adapters,
    /// one fused op ([`ops::linear_swiglu`]).
    pub fn swiglu_t(gate: &Linear, up: &Linear, x: &Tensor, dropout: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        fn plain(l: &Linear) -> Option<&Tensor> {
            l.b.is_none().then(|| l.plain_dense()).flatten()
        }
        if let (Some(g), Some(u)) = (plain(gate), plain(up)) {
            if gate.w_is_out_in == up.w_is_out_in {
                return Ok(ops::linear_swiglu(x, g, u, gate.w_is_out_in)?);
            }
        }
        Ok(ops::swiglu(&gate.forward_t(x, dropout)?, &up.forward_t(x, dropout)?)?)
    }

    /// The weight and bias of a plain product (no LoRA delta, no adapter), as the fused
    /// decoder sublayers take them; None otherwise.
    pub fn plain(&self) -> Option<ops::Proj> {
        self.plain_dense().map(|w| ops::Proj { w: w.clone(), b: self.b.clone() })
    }

    /// The weight is stored (out, in) (nn.Linear) rather than (in, out) (Conv1D).
    pub fn is_out_in(&self) -> bool {
        self.w_is_out_in
    }

    /// As [`Self::forward`]; with a dropout generator (training), LoRA's input dropout applies.
    pub fn forward_t(&self, x: &Tensor, dropout: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        let mut y = match &self.w {
            Weight::Dense(w) => ops::linear(x, w, self.b.as_ref(), self.w_is_out_in)?,
            Weight::Quantized(q) => {
                let y = ops::quantized_matmul(q, &x.contiguous()?)?;
                match &self.b {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        if let Some(lora) = &self.lora {
            y = (y + lora.forward(x, dropout)?)?;
        }
        if let Some(adapter) = &self.adapter {
            y = adapter.forward(&y)?;
        }
        Ok(y)
    }
}

/// LayerNorm (GPT-2) or RMSNorm (Llama) over the channel dim.
pub enum Norm {
    Layer { w: Tensor, b: Tensor, eps: f64 },
    Rms { w: Tensor, eps: f64 },
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Norm::Layer { w, b, eps } => ops::layer_norm(x, w, b, *eps)?,
            Norm::Rms { w, eps } => ops::rms_norm(x, w, *eps)?,
        })
    }

    /// The same norm as a fused sublayer's.
    pub fn sublayer(&self) -> ops::SublayerNorm {
        match self {
            Norm::Layer { w, b, eps } => ops::SublayerNorm::Layer { w: w.clone(), b: b.clone(), eps: *eps },
            Norm::Rms { w, eps } => ops::SublayerNorm::Rms { w: w.clone(), eps: *eps },
        }
    }
}

/// Rotary position embeddings in Hugging Face's rotate-half layout: the head dim is split in
/// two halves (x1, x2) and rotated as (x1·cos − x2·sin, x2·cos + x1·sin), with frequency i
/// shared by channels i and i + D/2.
pub struct Rope {
    cos: Tensor, // (context, D)
    sin: Tensor, // (context, D)
}

impl Rope {
    pub fn new(head_dim: usize, context: usize, theta: f64, device: &Device) -> Result<Self> {
        let (cos, sin) = ops::rope_tables(head_dim, context, theta, device)?;
        Ok(Self { cos, sin })
    }

    /// The (context, D) cos and sin tables.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// x: (B, H, T, D) at positions offset..offset+T.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_b, _h, t, d) = x.dims4()?;
        let cos = ops::like(&self.cos.narrow(0, offset, t)?, x)?;
        let sin = ops::like(&self.sin.narrow(0, offset, t)?, x)?;
        let x1 = x.narrow(3, 0, d / 2)?;
        let x2 = x.narrow(3, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }

    /// The same rotation for x (B, T, n·D) in token-major layout (n heads of D), as the
    /// fused attention takes it; returns (B, T, n·D).
    pub fn apply_tokens(&self, x: &Tensor, n: usize, offset: usize) -> Result<Tensor> {
        Ok(ops::rope(x, &self.cos, &self.sin, n, offset)?)
    }
}

/// Draws inverted-dropout keep-masks from a seeded generator (one per micro-batch), so a
/// resumed run reproduces the same masks.
///
/// One generator covers the whole global micro-batch: each mask is drawn for all `B` rows in
/// row order, one 32-bit word per element. A process that computes only rows `first..first+b`
/// of it (data-parallel training, see `distributed`) seeks to its rows' words and past the
/// rest, so every row gets the same mask whatever the process count.
#[derive(Clone)]
pub struct DropoutRng {
    rng: ChaCha8Rng,
    p: f32,
    /// (first row, rows of the global batch); the local tensors hold rows first.. of it.
    rows: Option<(usize, usize)>,
}

impl DropoutRng {
    pub fn new(p: f64, seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), p: p as f32, rows: None }
    }

    /// Masks for rows `first..` of a global batch of `global_rows` (the leading dimension of
    /// every tensor [`Self::apply`] sees is this process's rows).
    pub fn for_rows(mut self, first: usize, global_rows: usize) -> Self {
        self.rows = Some((first, global_rows));
        self
    }

    /// Whether [`Self::apply`] changes anything (p > 0).
    pub fn is_active(&self) -> bool {
        self.p > 0.0
    }

    /// Applies dropout to x (no-op when p = 0).
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        self.apply_with(x, self.p as f64)
    }

    /// Applies dropout with probability `p` instead of the generator's own (LoRA's dropout,
    /// the classifier's), drawing from the same stream.
    pub fn apply_with(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        let p = p as f32;
        if p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - p);
        // A uniform f32 consumes exactly one word of the ChaCha stream.
        let window = match self.rows {
            Some((first, global)) => {
                let local = x.dims().first().copied().unwrap_or(1).max(1);
                let per_row = (x.elem_count() / local) as u128;
                let start = self.rng.get_word_pos();
                self.rng.set_word_pos(start + first as u128 * per_row);
                Some(start + global as u128 * per_row)
            }
            None => None,
        };
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if self.rng.random::<f32>() < p { 0.0 } else { keep }).collect();
        if let Some(end) = window {
            self.rng.set_word_pos(end);
        }
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(ops::dropout(x, &mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotation_preserves_norm_and_is_identity_at_zero() {
        let rope = Rope::new(8, 16, 10_000.0, &Device::Cpu).unwrap();
        let x = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 1, 2, 8)).unwrap();
        let y = rope.apply(&x, 3).unwrap();
        let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((n(&x) - n(&y)).abs() / n(&x) < 1e-5);
        let y0 = rope.apply(&x.narrow(2, 0, 1).unwrap(), 0).unwrap();
        assert_eq!(y0.flatten_all().unwrap().to_vec1::<f32>().unwrap(), (0..8).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn init_is_seeded_and_order_independent() {
        let spec = crate::models::ModelSpec::preset("tiny").unwrap();
        let params = spec.params();
        let a = ParamStore::init(&params, InitScheme::Gpt2, 2, 7, &Device::Cpu).unwrap();
        let mut rev = params.clone();
        rev.reverse();
        let b = ParamStore::init(&rev, InitScheme::Gpt2, 2, 7, &Device::Cpu).unwrap();
        assert_eq!(a.to_safetensors().unwrap(), b.to_safetensors().unwrap());
        let c = ParamStore::init(&params, InitScheme::Gpt2, 2, 8, &Device::Cpu).unwrap();
        assert_ne!(a.to_safetensors().unwrap(), c.to_safetensors().unwrap());
    }

    /// Reading a share of a file: only the held parameters, with the values the whole read
    /// gives; a tensor the model does not have is still an error.
    #[test]
    fn a_held_share_is_read_alone_and_unknown_tensors_still_fail() {
        let spec = crate::models::ModelSpec::preset("tiny").unwrap();
        let params = spec.params();
        let whole = ParamStore::init(&params, InitScheme::Gpt2, 2, 7, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, whole.to_safetensors().unwrap()).unwrap();
        let id = |k: &str| Some(k.to_string());
        let held = |n: &str| n.contains(".h.1.");
        let (share, _) = ParamStore::load_held(&path, &params, &Device::Cpu, &id, &|_| false, &held).unwrap();
        assert!(!share.vars().is_empty() && share.vars().keys().all(|n| held(n)));
        assert_eq!(share.vars().len(), params.iter().filter(|p| held(&p.name)).count());
        for (name, v) in share.vars() {
            let (a, b) = (v.flatten_all().unwrap(), whole.get(name).unwrap().flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{name}");
        }
        let fewer: Vec<ParamInfo> = params.iter().filter(|p| !p.name.contains("wpe")).cloned().collect();
        let e = ParamStore::load_held(&path, &fewer, &Device::Cpu, &id, &|_| false, &held).err().unwrap();
        assert!(e.to_string().contains("unexpected tensor"), "{e}");
    }

    #[test]
    fn dropout_keeps_expectation() {
        let mut d = DropoutRng::new(0.25, 1);
        let x = Tensor::ones(10_000, DType::F32, &Device::Cpu).unwrap();
        let m = d.apply(&x).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((m - 1.0).abs() < 0.05, "{m}");
    }

    /// Two processes computing rows 0..3 and 3..5 of a batch draw the masks one process
    /// draws for all 5 rows, call after call.
    #[test]
    fn dropout_masks_of_a_row_window_match_the_whole_batch() {
        let x = Tensor::ones((5, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let mut whole = DropoutRng::new(0.5, 9);
        let mut a = DropoutRng::new(0.5, 9).for_rows(0, 5);
        let mut b = DropoutRng::new(0.5, 9).for_rows(3, 5);
        for _ in 0..3 {
            let w = whole.apply(&x).unwrap();
            let parts = Tensor::cat(
                &[a.apply(&x.narrow(0, 0, 3).unwrap()).unwrap(), b.apply(&x.narrow(0, 3, 2).unwrap()).unwrap()],
                0,
            )
            .unwrap();
            assert_eq!(
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                parts.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
