//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):
//!
//! ```text
//! c ← β1·m + (1−β1)·g
//! p ← p − lr·(sign(c) + wd·p)
//! m ← β2·m + (1−β2)·g
//! ```
//! State: `exp_avg` (4 bytes per parameter). sign(0) = 0, as `torch.sign`.

use super::{Param, State};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct LionHyper {
    pub beta1: f64,
    pub beta2: f64,
}

pub fn init(p: &Param, st: &mut State) -> Result<()> {
    st.set(p.name, "exp_avg", p.var.as_tensor().zeros_like()?);
    Ok(())
}

/// One step of one parameter at learning rate `lr` (before the group's scale).
pub fn update(h: &LionHyper, p: &Param, lr: f64, st: &mut State) -> Result<()> {
    let (lr, wd) = (lr * p.group.lr_scale, p.group.weight_decay);
    let m = st.get(p.name, "exp_avg")?;
    let g = &p.scaled_grad()?;
    let c = ((m * h.beta1)? + (g * (1.0 - h.beta1))?)?;
    let param = p.var.as_tensor();
    let decayed = if wd != 0.0 { (param * (1.0 - lr * wd))? } else { param.clone() };
    p.var.set(&(decayed - (c.sign()? * lr)?)?)?;
    let m = ((m * h.beta2)? + (g * (1.0 - h.beta2))?)?;
    st.set(p.name, "exp_avg", m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::optim::groups::uniform_groups;
    use crate::optim::{OptimSpec, Optimizer};
    use candle_core::{Device, Tensor, Var};
    use std::collections::BTreeMap;

    /// Two steps worked by hand from the update rule (lr 0.1, wd 0.5, β1 0.9, β2 0.99):
    /// step 1: c = 0.1·g₁ → sign [1, −1, 0, 1]; p₁ = p₀ − 0.1·(sign + 0.5·p₀); m₁ = 0.01·g₁
    /// step 2: c = 0.9·m₁ + 0.1·g₂ = [−0.0955, 0.04775, 0, 0.008] → sign [−1, 1, 0, 1].
    #[test]
    fn two_steps_match_the_paper_by_hand() {
        let dev = Device::Cpu;
        let vars = BTreeMap::from([("p".to_string(), Var::new(&[1.0f32, -2.0, 0.5, 0.0], &dev).unwrap())]);
        let spec = OptimSpec::Lion(super::LionHyper { beta1: 0.9, beta2: 0.99 });
        let mut opt = Optimizer::new(spec, &vars, uniform_groups(&vars, 0.5)).unwrap();
        let grads = [[0.5f32, -0.25, 0.0, 2.0], [-1.0, 0.5, 0.0, -0.1]];
        let want_p = [[0.85f32, -1.8, 0.475, -0.1], [0.9075, -1.81, 0.45125, -0.195]];
        let want_m = [[0.005f32, -0.0025, 0.0, 0.02], [-0.00505, 0.002525, 0.0, 0.0188]];
        for step in 0..2 {
            let g = BTreeMap::from([("p".to_string(), Tensor::new(&grads[step], &dev).unwrap())]);
            opt.step(&vars, &g, 0.1).unwrap();
            let p = vars["p"].as_tensor().to_vec1::<f32>().unwrap();
            let m = opt.state_tensors()[0].1.to_vec1::<f32>().unwrap();
            for i in 0..4 {
                assert!((p[i] - want_p[step][i]).abs() < 1e-6, "step {step} p[{i}] {} vs {}", p[i], want_p[step][i]);
                assert!((m[i] - want_m[step][i]).abs() < 1e-7, "step {step} m[{i}] {} vs {}", m[i], want_m[step][i]);
            }
        }
        assert_eq!(opt.state_bytes(), 16, "one fp32 moment per parameter");
    }
}
