//! Sizes before anything is allocated: each parameter's role to the optimizer, the optimizer
//! state a run will keep, and the refusal of a model whose training state does not fit in
//! memory (the same estimate `lmforge plan --gpu cpu` prints).

use crate::error::{Error, Result};
use crate::models::{ModelSpec, ParamInfo, ParamKind};
use crate::nn::recompute::Checkpointing;
use crate::optim::{OptimSpec, ParamRole};

/// What a parameter is to the optimizer: an embedding, the untied LM head, a hidden matrix
/// with its fans, or a vector.
pub fn param_role(p: &ParamInfo) -> ParamRole {
    match p.kind {
        ParamKind::Embedding => ParamRole::Embedding,
        _ if p.name == "lm_head.weight" => ParamRole::Head,
        ParamKind::Matrix | ParamKind::ResidualProjection => ParamRole::Matrix { fan_in: p.fans.0, fan_out: p.fans.1 },
        ParamKind::Bias | ParamKind::NormWeight | ParamKind::NormBias => ParamRole::Vector,
    }
}

/// Bytes of fp32 optimizer state `optim` keeps for `spec`, without allocating (equal to
/// `Optimizer::state_bytes` of the trainer's optimizer; tested).
pub fn optimizer_state_bytes(spec: &ModelSpec, optim: &OptimSpec) -> u64 {
    spec.params().iter().map(|p| 4 * optim.state_elems(&p.shape, param_role(p)) as u64).sum()
}

/// Refuses, before allocating anything, a model whose training state does not fit in memory.
/// The estimate is the same one `lmforge plan --gpu cpu` prints ([`ModelSpec::cpu_train_memory`]).
pub fn check_fits(
    spec: &ModelSpec,
    batch: usize,
    seq_len: usize,
    name: &str,
    optim: &OptimSpec,
    checkpointing: Checkpointing,
) -> Result<()> {
    let mem = spec.cpu_train_memory(batch, seq_len, optimizer_state_bytes(spec, optim), checkpointing);
    let need = mem.total();
    if let Some(avail) = available_memory_bytes() {
        if need > avail {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(Error::DoesNotFit(format!(
                "model `{name}` ({} parameters) needs about {:.1} GiB to train in fp32 with {} \
                 (weights, gradients and optimizer state = {:.1} GiB, plus activations for batch \
                 {batch} x {seq_len}), but only {:.1} GiB are available. Use a smaller preset or \
                 batch, or a machine with more memory; `lmforge plan` shows the breakdown.",
                spec.num_params(),
                gib(need),
                optim.name(),
                gib(mem.weights + mem.gradients + mem.optimizer_state),
                gib(avail)
            )));
        }
    }
    Ok(())
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `MemAvailable` from /proc/meminfo (None where unknown).
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, ParamStore};
    use crate::optim::{param_groups, Optimizer};
    use candle_core::Device;

    #[test]
    fn optimizer_state_estimate_equals_what_the_optimizer_allocates() {
        use crate::train::RunConfig;
        // Every optimizer, and each option that changes its state.
        let settings: [&[&str]; 9] = [
            &["optim.name=adamw"],
            &["optim.name=adamw", "optim.amsgrad=true"],
            &["optim.name=sgd"],
            &["optim.name=sgd", "optim.momentum=0.9"],
            &["optim.name=adafactor"],
            &["optim.name=adafactor", "optim.beta1=0.9"],
            &["optim.name=lamb"],
            &["optim.name=lion"],
            &["optim.name=muon"],
        ];
        for preset in ["tiny", "llama-tiny"] {
            let spec = ModelSpec::preset(preset).unwrap();
            let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 1, &Device::Cpu).unwrap();
            for set in settings {
                let sets: Vec<String> = set.iter().map(|s| s.to_string()).collect();
                let cfg = RunConfig::from_toml_str("", &sets).unwrap();
                let optim = OptimSpec::from_config(&cfg.optim).unwrap();
                let groups = param_groups(&cfg.optim, spec.params().iter().map(|p| (p.name.clone(), param_role(p))));
                let opt = Optimizer::new(optim.clone(), params.vars(), groups.unwrap()).unwrap();
                assert_eq!(optimizer_state_bytes(&spec, &optim), opt.state_bytes() as u64, "{preset} {set:?}");
            }
        }
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
    }
}
