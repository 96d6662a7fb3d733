//! Parameter-efficient fine-tuning, generic over any [`Linear`] of any model: LoRA (a
//! trainable low-rank delta beside a frozen weight) and Houlsby bottleneck adapters (a small
//! residual MLP on a Linear's output), how they are added to a [`ParamStore`], merged into the
//! base weights for export, and saved / loaded in Hugging Face PEFT's own format
//! (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! ```text
//!            ┌──── W (frozen, out×in) ────┐
//!   x ──────►┤                            ├──(+)──► y          LoRA: y = W·x + s·B·A·x
//!            └─ dropout ─► A (r×in) ─► B (out×r) ─► ×s         s = alpha / r, B starts at 0
//!
//!   y ──► down (m×C) ─► gelu ─► up (C×m) ─(+)─► y + adapter(y)  adapter on an output projection
//! ```
//! Parameter names follow PEFT without the adapter name: `MODULE.lora_A.weight` (r, in),
//! `MODULE.lora_B.weight` (out, r), whatever the base weight's layout (GPT-2's Conv1D modules,
//! `transformer.h.*`, store W as (in, out): PEFT's `fan_in_fan_out`). Adapters are
//! `MODULE.adapter.{down,up}.{weight,bias}` in nn.Linear layout.
//!
//! The frozen base stays a set of plain tensors in the [`ParamStore`]: no optimizer state, and
//! the fused CPU kernels compute no gradient for an input that leads to no variable. (The
//! composed reference ops, used off the CPU or with `Kernels::Reference`, go through candle's
//! matmul backward, which computes both operands' gradients; the frozen one is then dropped with
//! the step's gradient store, never applied.)

use super::prefix::PrefixShape;
use super::{seed_for, DropoutRng, ParamStore};
use super::{ParamInfo, ParamKind};
use crate::error::{Error, IoContext, Result};
use crate::ops;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// PEFT stores tensors under the wrapped model's path.
const PEFT_PREFIX: &str = "base_model.model.";

/// LoRA's output scale (alpha / r) and input dropout of one adapted Linear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraScaling {
    pub scale: f64,
    pub dropout: f64,
}

/// A LoRA delta on one Linear: s · B·A·dropout(x).
pub struct Lora {
    a: Tensor, // (r, in)
    b: Tensor, // (out, r)
    scaling: LoraScaling,
}

impl Lora {
    pub(super) fn from_store(p: &ParamStore, module: &str, scaling: LoraScaling) -> Result<Self> {
        Ok(Self { a: p.get(&lora_param(module, "A"))?, b: p.get(&lora_param(module, "B"))?, scaling })
    }

    /// x (..., in) -> (..., out)
    pub fn forward(&self, x: &Tensor, dropout: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        let x = match dropout {
            Some(d) if self.scaling.dropout > 0.0 => d.apply_with(x, self.scaling.dropout)?,
            _ => x.clone(),
        };
        let h = ops::linear(&x, &self.a, None, true)?; // (..., r)
        Ok((ops::linear(&h, &self.b, None, true)? * self.scaling.scale)?)
    }
}

/// A Houlsby bottleneck adapter on a Linear's output: y + up(gelu(down(y))).
pub struct Adapter {
    down_w: Tensor, // (m, C)
    down_b: Tensor, // (m)
    up_w: Tensor,   // (C, m)
    up_b: Tensor,   // (C)
}

impl Adapter {
    pub(super) fn from_store(p: &ParamStore, module: &str) -> Result<Self> {
        let get = |which: &str| p.get(&adapter_param(module, which));
        Ok(Self {
            down_w: get("down.weight")?,
            down_b: get("down.bias")?,
            up_w: get("up.weight")?,
            up_b: get("up.bias")?,
        })
    }

    /// y (..., C) -> (..., C)
    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let h = ops::gelu_tanh(&ops::linear(y, &self.down_w, Some(&self.down_b), true)?)?;
        Ok((y + ops::linear(&h, &self.up_w, Some(&self.up_b), true)?)?)
    }
}

pub fn lora_param(module: &str, which: &str) -> String {
    format!("{module}.lora_{which}.weight")
}

pub fn adapter_param(module: &str, which: &str) -> String {
    format!("{module}.adapter.{which}")
}

/// One Linear of a model, as PEFT sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModule {
    /// Module name: the weight's name without `.weight`.
    pub name: String,
    pub fan_in: usize,
    pub fan_out: usize,
    /// Weight stored (in, out) (GPT-2's Conv1D), not nn.Linear's (out, in).
    pub conv1d: bool,
    /// Writes back into the residual stream (attention output / MLP output): where adapters go.
    pub output_projection: bool,
}

/// The Linears of a backbone: its 2-D weight matrices (not embeddings, not an LM head).
pub fn linear_modules(params: &[ParamInfo]) -> Vec<LinearModule> {
    params
        .iter()
        .filter(|p| matches!(p.kind, ParamKind::Matrix | ParamKind::ResidualProjection) && p.shape.len() == 2)
        .filter(|p| p.name != "lm_head.weight")
        .filter_map(|p| {
            let name = p.name.strip_suffix(".weight")?.to_string();
            Some(LinearModule {
                conv1d: is_conv1d(&name),
                output_projection: p.kind == ParamKind::ResidualProjection || is_output_projection(&name),
                name,
                fan_in: p.fans.0,
                fan_out: p.fans.1,
            })
        })
        .collect()
}

/// GPT-2's transformer blocks are Conv1D modules, weights stored (in, out); every other
/// Linear lmforge knows is an nn.Linear (out, in).
pub fn is_conv1d(module: &str) -> bool {
    module.starts_with("transformer.h.")
}

/// Output projections by name, for specs that do not mark them (BERT's `attention.output.dense`
/// and `output.dense`).
fn is_output_projection(module: &str) -> bool {
    ["attn.c_proj", "mlp.c_proj", "o_proj", "down_proj", "output.dense"].iter().any(|s| module.ends_with(s))
}

/// PEFT's `target_modules` rule: a module matches a target equal to its name or to a suffix
/// after a dot (`c_attn` matches `transformer.h.0.attn.c_attn`); a target with `*` is a glob
/// over the whole name.
pub fn target_matches(target: &str, module: &str) -> bool {
    if target.contains('*') {
        crate::optim::groups::pattern_matches(target, module)
    } else {
        module == target || module.strip_suffix(target).is_some_and(|rest| rest.ends_with('.'))
    }
}

/// LoRA hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// No LoRA (what a prefix or bottleneck adapter folder reports).
    pub fn none() -> Self {
        Self { rank: 0, alpha: 0.0, dropout: 0.0, targets: Vec::new() }
    }

    pub fn scaling(&self) -> LoraScaling {
        LoraScaling { scale: self.alpha / self.rank as f64, dropout: self.dropout }
    }
}

/// The modules `targets` select, in order; a target that selects nothing is an error naming
/// `key` (a typo would otherwise train nothing).
pub fn select_modules<'a>(modules: &'a [LinearModule], targets: &[String], key: &str) -> Result<Vec<&'a LinearModule>> {
    for t in targets {
        if !modules.iter().any(|m| target_matches(t, &m.name)) {
            let some: Vec<&str> = modules.iter().take(6).map(|m| m.name.as_str()).collect();
            return Err(Error::config(
                key,
                format!("target {t:?} matches no Linear of the model (modules are named like {})", some.join(", ")),
            ));
        }
    }
    Ok(modules.iter().filter(|m| targets.iter().any(|t| target_matches(t, &m.name))).collect())
}

/// Adds trainable LoRA factors to every selected module: A from PEFT's default init
/// (Kaiming-uniform with a = √5, i.e. U(±1/√in)), B = 0, so the model starts unchanged.
pub fn add_lora(store: &mut ParamStore, modules: &[&LinearModule], spec: &LoraSpec, seed: u64) -> Result<()> {
    let device = store.device().clone();
    for m in modules {
        let bound = 1.0 / (m.fan_in as f32).sqrt();
        let a_name = lora_param(&m.name, "A");
        let a = uniform(&a_name, seed, bound, (spec.rank, m.fan_in), &device)?;
        store.insert(&a_name, a, true)?;
        store.insert(&lora_param(&m.name, "B"), Tensor::zeros((m.fan_out, spec.rank), DType::F32, &device)?, true)?;
        store.set_lora(&m.name, spec.scaling());
    }
    Ok(())
}

/// Parameter list of bottleneck adapters of width `size` on `modules` (for loading a model
/// trained with them).
pub fn adapter_params(modules: &[&LinearModule], size: usize) -> Vec<ParamInfo> {
    let mut out = Vec::new();
    for m in modules {
        let c = m.fan_out;
        let p = |which: &str, shape: Vec<usize>, kind, fans| ParamInfo {
            name: adapter_param(&m.name, which),
            shape,
            kind,
            fans,
        };
        out.push(p("down.weight", vec![size, c], ParamKind::Matrix, (c, size)));
        out.push(p("down.bias", vec![size], ParamKind::Bias, (c, size)));
        out.push(p("up.weight", vec![c, size], ParamKind::Matrix, (size, c)));
        out.push(p("up.bias", vec![c], ParamKind::Bias, (size, c)));
    }
    out
}

/// Adds trainable adapters: down ~ N(0, 0.02), up = 0 and zero biases, so each adapter starts
/// as the identity (Houlsby et al. 2019 initialise near identity for the same reason).
pub fn add_adapters(store: &mut ParamStore, modules: &[&LinearModule], size: usize, seed: u64) -> Result<()> {
    let device = store.device().clone();
    for p in adapter_params(modules, size) {
        let t = if p.name.ends_with("down.weight") {
            let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &p.name));
            let d = Normal::new(0.0f32, 0.02).expect("std > 0");
            Tensor::from_vec((0..p.numel()).map(|_| d.sample(&mut rng)).collect::<Vec<f32>>(), p.shape, &device)?
        } else {
            Tensor::zeros(p.shape, DType::F32, &device)?
        };
        store.insert(&p.name, t, true)?;
    }
    Ok(())
}

fn uniform(name: &str, seed: u64, bound: f32, shape: (usize, usize), device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, name));
    let u = Uniform::new_inclusive(-bound, bound).expect("bound > 0");
    let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| u.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// Every parameter with the LoRA deltas folded into their base weights
/// (W += s·B·A, transposed for Conv1D) and the LoRA factors dropped: a plain model.
pub fn merged_tensors(store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
    let mut out: BTreeMap<String, Tensor> = store.tensors().into_iter().collect();
    for (module, scaling) in store.lora() {
        let a = out.remove(&lora_param(module, "A")).ok_or_else(|| missing(module))?;
        let b = out.remove(&lora_param(module, "B")).ok_or_else(|| missing(module))?;
        let delta = (b.matmul(&a)? * scaling.scale)?; // (out, in)
        let w_name = format!("{module}.weight");
        let w = out.get(&w_name).ok_or_else(|| missing(module))?;
        let delta = if is_conv1d(module) { delta.t()? } else { delta };
        let merged = (w + delta)?.detach();
        out.insert(w_name, merged);
    }
    Ok(out.into_iter().collect())
}

/// Refuses what cannot be folded into a plain model's weights: bottleneck adapters (layers a
/// plain model does not have) and a prefix (attention positions it does not have).
pub fn check_mergeable(store: &ParamStore) -> Result<()> {
    let names = store.tensors();
    if names.iter().any(|(n, _)| n.contains(".adapter.")) {
        return Err(Error::Invalid(
            "bottleneck adapters add layers a plain model does not have; they cannot be merged \
             (use them with --adapter)"
                .into(),
        ));
    }
    if names.iter().any(|(n, _)| super::prefix::is_prefix_param(n)) {
        return Err(Error::Invalid(
            "a prefix adds attention positions a plain model does not have; it cannot be merged \
             (use it with --adapter, or load the adapter folder with PEFT)"
                .into(),
        ));
    }
    Ok(())
}

fn missing(module: &str) -> Error {
    Error::Invalid(format!("LoRA module `{module}` lacks its weight or factors"))
}

/// Whether `name` is a LoRA factor (`MODULE.lora_A.weight`, `MODULE.lora_B.weight`): saved as
/// the adapter itself, never among the trained base tensors (`modules_to_save`).
pub fn is_lora_factor(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// The modules of `tensors` (each name less its last part), in order, for PEFT's
/// `modules_to_save` (matched, as target_modules, by their last name parts).
pub fn modules_of(tensors: &[String]) -> Vec<String> {
    let mut modules: Vec<String> =
        tensors.iter().filter_map(|n| n.rsplit_once('.').map(|(m, _)| m.to_string())).collect();
    modules.dedup();
    modules
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT 0.x format) into `dir`:
/// the LoRA factors plus `modules_to_save` tensors (the classification head, trained norms)
/// under `base_model.model.` names. `task_type` is PEFT's (e.g. "SEQ_CLS").
#[allow(clippy::too_many_arguments)]
pub fn save_peft(
    dir: &Path,
    store: &ParamStore,
    spec: &LoraSpec,
    targets: &[String],
    modules_to_save: &[String],
    saved_tensors: &[String],
    base_model: &str,
    task_type: Option<&str>,
) -> Result<()> {
    let fan_in_fan_out = store.lora().keys().any(|m| is_conv1d(m));
    let config = json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "modules_to_save": if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) },
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": null,
        "layers_pattern": null,
    });
    crate::fsio::write_json_atomic(&dir.join("adapter_config.json"), &config)?;
    let mut tensors = Vec::new();
    for module in store.lora().keys() {
        for which in ["A", "B"] {
            let name = lora_param(module, which);
            tensors.push((format!("{PEFT_PREFIX}{name}"), store.get(&name)?));
        }
    }
    for name in saved_tensors {
        tensors.push((format!("{PEFT_PREFIX}{name}"), store.get(name)?));
    }
    let bytes = super::serialize_tensors(tensors.into_iter())?;
    crate::fsio::write_atomic(&dir.join("adapter_model.safetensors"), &bytes)
}

/// What [`load_peft`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    pub spec: LoraSpec,
    /// LoRA-adapted modules.
    pub modules: Vec<String>,
    /// Other tensors the adapter replaced (PEFT's `modules_to_save`).
    pub replaced: Vec<String>,
}

/// Applies a PEFT adapter folder to `store`, for a model of `shape`: a LoRA's factors become
/// parameters (trainable or frozen per `trainable`), a prefix ([`super::prefix`]) its table,
/// lmforge's bottleneck adapters their tensors; `modules_to_save` tensors replace the base
/// ones. Refuses what lmforge does not implement (DoRA, per-module rank or alpha patterns,
/// LoRA biases, other PEFT methods) with the reason.
pub fn load_peft(dir: &Path, store: &mut ParamStore, trainable: bool, shape: PrefixShape) -> Result<PeftAdapter> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, format!("invalid JSON: {e}")))?;
    let bad = |msg: String| Error::format(&cfg_path, msg);
    let peft_type = cfg.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type == BOTTLENECK {
        return load_bottleneck(dir, store, trainable);
    }
    if peft_type == "PREFIX_TUNING" {
        let replaced = super::prefix::load_peft(dir, &cfg, store, trainable, shape)?;
        return Ok(PeftAdapter { spec: LoraSpec::none(), modules: Vec::new(), replaced });
    }
    if peft_type != "LORA" {
        return Err(bad(format!(
            "peft_type {peft_type:?} is not supported (LORA, PREFIX_TUNING, or lmforge's {BOTTLENECK})"
        )));
    }
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("use_dora") {
        return Err(bad("use_dora = true (DoRA) is not supported".into()));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if cfg.get(k).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
            return Err(bad(format!("`{k}` (per-module rank / alpha) is not supported")));
        }
    }
    if cfg.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") || flag("lora_bias") {
        return Err(bad("LoRA biases are not supported (bias must be \"none\")".into()));
    }
    let rank = cfg.get("r").and_then(Value::as_u64).filter(|r| *r > 0).ok_or_else(|| bad("missing `r`".into()))?;
    let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let dropout = cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let targets: Vec<String> = match cfg.get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let scale = if flag("use_rslora") { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };

    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, store.device())
        .map_err(|e| Error::format(&weights_path, format!("cannot read safetensors: {e}")))?;
    let mut factors: BTreeMap<String, [Option<Tensor>; 2]> = BTreeMap::new();
    let mut replaced = Vec::new();
    for (key, t) in tensors {
        let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        let t = t.to_dtype(DType::F32)?;
        let lora = name
            .strip_suffix(".lora_A.weight")
            .map(|m| (m, 0))
            .or_else(|| name.strip_suffix(".lora_B.weight").map(|m| (m, 1)));
        match lora {
            Some((module, i)) => factors.entry(module.to_string()).or_default()[i] = Some(t),
            None if store.contains(name) => {
                store.set(name, &t).map_err(|e| Error::format(&weights_path, e.to_string()))?;
                replaced.push(name.to_string());
            }
            None => {
                return Err(Error::format(
                    &weights_path,
                    format!("tensor `{key}` matches no parameter of the base model"),
                ))
            }
        }
    }
    let mut modules = Vec::new();
    for (module, [a, b]) in factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::format(&weights_path, format!("`{module}` lacks lora_A or lora_B")));
        };
        let w = store
            .get(&format!("{module}.weight"))
            .map_err(|_| Error::format(&weights_path, format!("`{module}` is not a Linear of the base model")))?;
        let (r_a, fan_in) = a.dims2()?;
        let (fan_out, r_b) = b.dims2()?;
        let (w0, w1) = w.dims2()?;
        let fits = |o, i| (w0, w1) == (o, i) || (w0, w1) == (i, o);
        if r_a != rank as usize || r_b != rank as usize || !fits(fan_out, fan_in) {
            return Err(Error::format(
                &weights_path,
                format!(
                    "`{module}`: A {:?}, B {:?} do not fit r = {rank} and the weight {:?}",
                    a.dims(),
                    b.dims(),
                    w.dims()
                ),
            ));
        }
        store.insert(&lora_param(&module, "A"), a, trainable)?;
        store.insert(&lora_param(&module, "B"), b, trainable)?;
        store.set_lora(&module, LoraScaling { scale, dropout });
        modules.push(module);
    }
    if modules.is_empty() {
        return Err(Error::format(&weights_path, "no lora_A / lora_B tensors"));
    }
    Ok(PeftAdapter { spec: LoraSpec { rank: rank as usize, alpha, dropout, targets }, modules, replaced })
}

/// The `peft_type` of lmforge's bottleneck-adapter folders (PEFT has no such method): the
/// same two files, `adapter_model.safetensors` holding the adapters' (and any other trained)
/// tensors under the model's own names.
pub const BOTTLENECK: &str = "LMFORGE_BOTTLENECK";

/// Loads a bottleneck-adapter folder: adapter tensors are added (named after the Linear they
/// follow, so the model picks them up), other tensors replace the base's.
fn load_bottleneck(dir: &Path, store: &mut ParamStore, trainable: bool) -> Result<PeftAdapter> {
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, store.device())
        .map_err(|e| Error::format(&weights_path, format!("cannot read safetensors: {e}")))?;
    let (mut modules, mut replaced) = (Vec::new(), Vec::new());
    for (name, t) in tensors.into_iter().collect::<BTreeMap<_, _>>() {
        let t = t.to_dtype(DType::F32)?;
        if store.contains(&name) {
            store.set(&name, &t).map_err(|e| Error::format(&weights_path, e.to_string()))?;
            replaced.push(name);
        } else if let Some(module) = name.strip_suffix(".adapter.down.weight") {
            modules.push(module.to_string());
            store.insert(&name, t, trainable)?;
        } else if name.contains(".adapter.") {
            store.insert(&name, t, trainable)?;
        } else {
            return Err(Error::format(
                &weights_path,
                format!("tensor `{name}` matches no parameter of the base model"),
            ));
        }
    }
    Ok(PeftAdapter { spec: LoraSpec::none(), modules, replaced })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_peft_suffix_rule() {
        assert!(target_matches("c_attn", "transformer.h.0.attn.c_attn"));
        assert!(!target_matches("attn", "transformer.h.0.attn.c_attn"));
        assert!(!target_matches("c_attn", "transformer.h.0.attn.xc_attn"));
        assert!(target_matches("transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_attn"));
        assert!(target_matches("*.h.1.*", "transformer.h.1.mlp.c_fc"));
        assert!(target_matches("query", "bert.encoder.layer.0.attention.self.query"));
    }

    #[test]
    fn modules_and_adapter_sites_of_gpt2() {
        let spec = crate::models::ModelSpec::preset("tiny").unwrap();
        let mods = linear_modules(&spec.params());
        assert_eq!(mods.len(), 4 * spec.n_layer);
        let outs: Vec<&str> = mods.iter().filter(|m| m.output_projection).map(|m| m.name.as_str()).collect();
        assert_eq!(
            outs,
            [
                "transformer.h.0.attn.c_proj",
                "transformer.h.0.mlp.c_proj",
                "transformer.h.1.attn.c_proj",
                "transformer.h.1.mlp.c_proj"
            ]
        );
        let e = select_modules(&mods, &["c_atn".into()], "lora.target_modules").unwrap_err().to_string();
        assert!(e.contains("lora.target_modules") && e.contains("c_atn"), "{e}");
    }
}
