//! Parameter groups: which learning-rate multiplier and weight decay each parameter gets, and
//! what role it plays (Muon orthogonalises hidden matrices only). The default rule decays
//! matrices and the LM head, not norms, biases or embeddings (unless `optim.decay_embeddings`):
//! decaying a norm's gain pulls the normalisation towards zero. `[[optim.groups]]` tables
//! override it by name pattern; the first matching table wins.

use super::OptimConfig;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// What a parameter is, as far as the optimizer cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamRole {
    /// Token or position embedding table.
    Embedding,
    /// The output projection to the vocabulary (when not tied to the embedding).
    Head,
    /// A hidden 2-D weight mapping `fan_in` features to `fan_out` (whatever its storage layout:
    /// GPT-2's Conv1D keeps (in, out), `nn.Linear` (out, in)).
    Matrix { fan_in: usize, fan_out: usize },
    /// Norm weights, biases, and anything else that is not 2-D.
    Vector,
}

impl ParamRole {
    /// The role a bare tensor of this shape gets (tests, and tensors outside a model spec):
    /// 2-D tensors are matrices in `nn.Linear` layout (out, in), the rest vectors.
    pub fn from_shape(dims: &[usize]) -> Self {
        match dims {
            [rows, cols] => ParamRole::Matrix { fan_in: *cols, fan_out: *rows },
            _ => ParamRole::Vector,
        }
    }
}

/// How one parameter is updated.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Multiplies the scheduled learning rate.
    pub lr_scale: f64,
    pub weight_decay: f64,
    pub role: ParamRole,
}

/// Groups for every parameter `(name, role)`: the default rule, then the first matching
/// `[[optim.groups]]` table. A table whose pattern matches no parameter is an error (a typo
/// would otherwise silently train with the defaults).
pub fn param_groups(
    cfg: &OptimConfig,
    params: impl IntoIterator<Item = (String, ParamRole)>,
) -> Result<BTreeMap<String, ParamGroup>> {
    let mut used = vec![false; cfg.groups.len()];
    let mut out = BTreeMap::new();
    for (name, role) in params {
        let decays = match role {
            ParamRole::Embedding => cfg.decay_embeddings,
            ParamRole::Head | ParamRole::Matrix { .. } => true,
            ParamRole::Vector => false,
        };
        let mut group = ParamGroup { lr_scale: 1.0, weight_decay: if decays { cfg.weight_decay } else { 0.0 }, role };
        if let Some(i) = cfg.groups.iter().position(|g| pattern_matches(&g.pattern, &name)) {
            used[i] = true;
            let g = &cfg.groups[i];
            group.lr_scale = g.lr_scale.unwrap_or(group.lr_scale);
            group.weight_decay = g.weight_decay.unwrap_or(group.weight_decay);
        }
        out.insert(name, group);
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::config(
            format!("optim.groups[{i}].pattern"),
            format!(
                "{:?} matches no parameter name (Hugging Face names, e.g. `transformer.h.0.ln_1.weight`)",
                cfg.groups[i].pattern
            ),
        ));
    }
    Ok(out)
}

/// Every parameter in one group with decay `weight_decay` (as torch does for the tensors it is
/// given in one param group); roles from shapes.
pub fn uniform_groups<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a candle_core::Var)>,
    weight_decay: f64,
) -> BTreeMap<String, ParamGroup> {
    params
        .into_iter()
        .map(|(n, v)| (n.clone(), ParamGroup { lr_scale: 1.0, weight_decay, role: ParamRole::from_shape(v.dims()) }))
        .collect()
}

/// A pattern without `*` matches as a substring; with `*`, as a glob over the whole name
/// where `*` matches any run of characters (including dots).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::ParamGroupConfig;

    #[test]
    fn patterns_are_substrings_or_globs() {
        assert!(pattern_matches("ln_", "transformer.h.0.ln_1.weight"));
        assert!(pattern_matches("*.bias", "transformer.h.0.attn.c_attn.bias"));
        assert!(!pattern_matches("*.bias", "transformer.h.0.attn.c_attn.weight"));
        assert!(pattern_matches("transformer.h.*.mlp.*", "transformer.h.11.mlp.c_fc.weight"));
        assert!(!pattern_matches("transformer.h.*.mlp.*", "transformer.wte.weight"));
        assert!(pattern_matches("*", "anything"));
        assert!(!pattern_matches("a*a", "a"));
    }

    #[test]
    fn default_rule_then_first_matching_group() {
        let params = || {
            vec![
                ("wte".to_string(), ParamRole::Embedding),
                ("h.0.w".to_string(), ParamRole::Matrix { fan_in: 4, fan_out: 4 }),
                ("h.0.b".to_string(), ParamRole::Vector),
                ("lm_head".to_string(), ParamRole::Head),
            ]
        };
        let mut cfg = OptimConfig { weight_decay: 0.1, ..Default::default() };
        let g = param_groups(&cfg, params()).unwrap();
        let wd: Vec<f64> = g.values().map(|g| g.weight_decay).collect();
        // BTreeMap order: h.0.b, h.0.w, lm_head, wte
        assert_eq!(wd, [0.0, 0.1, 0.1, 0.0]);
        cfg.groups = vec![
            ParamGroupConfig { pattern: "h.0.*".into(), lr_scale: Some(0.5), weight_decay: None },
            ParamGroupConfig { pattern: "h.".into(), lr_scale: Some(9.0), weight_decay: Some(1.0) },
            ParamGroupConfig { pattern: "wte".into(), lr_scale: None, weight_decay: Some(0.2) },
        ];
        // The second table matches only what the first already took.
        let e = param_groups(&cfg, params()).unwrap_err().to_string();
        assert!(e.contains("optim.groups[1].pattern"), "{e}");
        cfg.groups.remove(1);
        let g = param_groups(&cfg, params()).unwrap();
        assert_eq!((g["h.0.w"].lr_scale, g["h.0.w"].weight_decay), (0.5, 0.1));
        assert_eq!((g["h.0.b"].lr_scale, g["h.0.b"].weight_decay), (0.5, 0.0));
        assert_eq!((g["wte"].lr_scale, g["wte"].weight_decay), (1.0, 0.2));
    }
}
