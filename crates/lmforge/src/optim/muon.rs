//! Muon for 2-D hidden weights, with AdamW for everything else (embeddings, LM head, norms,
//! biases), as the modded-nanogpt recipe does.
//!
//! Variant implemented: Keller Jordan's reference `muon_update` (github.com/KellerJordan/Muon,
//! `muon.py`), with the quintic Newton–Schulz coefficients (3.4445, −4.7750, 2.0315), run in
//! fp32 rather than the reference's bf16:
//!
//! ```text
//! b ← μ·b + (1−μ)·g                                  (momentum.lerp_(grad, 1 − μ))
//! u ← (1−μ)·g + μ·b with Nesterov, else b           (grad.lerp_(momentum, μ))
//! X ← u / (‖u‖_F + 1e-7), transposed when fan_out > fan_in (so X Xᵀ is the small Gram)
//! 5×: A ← X Xᵀ;  B ← b·A + c·A²;  X ← a·X + B X      (pushes every singular value towards 1)
//! p ← p·(1 − lr·wd) − lr · √max(1, fan_out/fan_in) · X
//! ```
//! The scale uses the weight's (fan_out, fan_in), i.e. rows/cols of the `nn.Linear` layout
//! the reference sees, whatever layout the checkpoint stores (GPT-2's Conv1D is transposed).
//! The AdamW-updated parameters use `lr · adam_lr_ratio`. State: `momentum_buffer` (4 bytes
//! per matrix parameter), `exp_avg` + `exp_avg_sq` for the rest (8 bytes).

use super::adam::{self, AdamHyper};
use super::{Param, ParamRole, State};
use crate::error::Result;
use candle_core::Tensor;

/// Quintic Newton–Schulz coefficients of the reference implementation.
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

#[derive(Debug, Clone, PartialEq)]
pub struct MuonHyper {
    pub momentum: f64,
    pub nesterov: bool,
    pub ns_steps: usize,
    /// The AdamW used for non-matrix parameters (decoupled decay).
    pub adam: AdamHyper,
    /// Learning rate of the AdamW-updated parameters as a fraction of `lr`.
    pub adam_lr_ratio: f64,
}

/// Whether Muon (not AdamW) updates this parameter.
fn orthogonalised(p: &Param) -> bool {
    matches!(p.group.role, ParamRole::Matrix { .. }) && p.var.rank() == 2
}

pub fn init(h: &MuonHyper, p: &Param, st: &mut State) -> Result<()> {
    if orthogonalised(p) {
        st.set(p.name, "momentum_buffer", p.var.as_tensor().zeros_like()?);
        Ok(())
    } else {
        adam::init(&h.adam, p, st)
    }
}

/// Approximately orthogonalises `g` (2-D): U Vᵀ of its SVD, with singular values pushed into
/// about [0.7, 1.2] rather than exactly 1 (the reference's trade of accuracy for speed).
pub fn newton_schulz5(g: &Tensor, steps: usize) -> Result<Tensor> {
    let (rows, cols) = g.dims2()?;
    let (a, b, c) = NS_COEFFS;
    let mut x = if rows > cols { g.t()?.contiguous()? } else { g.clone() };
    let norm = x.norm()?.to_scalar::<f32>()? as f64;
    x = (x / (norm + 1e-7))?;
    for _ in 0..steps {
        let gram = x.matmul(&x.t()?)?;
        let poly = ((&gram * b)? + (gram.matmul(&gram)? * c)?)?;
        x = ((&x * a)? + poly.matmul(&x)?)?;
    }
    Ok(if rows > cols { x.t()?.contiguous()? } else { x })
}

/// Step `t` (1-based) of one parameter at learning rate `lr` (before the group's scale).
pub fn update(h: &MuonHyper, p: &Param, lr: f64, t: u64, st: &mut State) -> Result<()> {
    let ParamRole::Matrix { fan_in, fan_out } = p.group.role else {
        return adam::update(&h.adam, p, lr * h.adam_lr_ratio, t, st);
    };
    if p.var.rank() != 2 {
        return adam::update(&h.adam, p, lr * h.adam_lr_ratio, t, st);
    }
    let (lr, wd, mu) = (lr * p.group.lr_scale, p.group.weight_decay, h.momentum);
    let g = &p.scaled_grad()?;
    let buf = ((st.get(p.name, "momentum_buffer")? * mu)? + (g * (1.0 - mu))?)?;
    let u = if h.nesterov { ((g * (1.0 - mu))? + (&buf * mu)?)? } else { buf.clone() };
    st.set(p.name, "momentum_buffer", buf);
    let o = newton_schulz5(&u, h.ns_steps)?;
    let scale = (fan_out as f64 / fan_in as f64).max(1.0).sqrt();
    let param = p.var.as_tensor();
    let decayed = if wd != 0.0 { (param * (1.0 - lr * wd))? } else { param.clone() };
    p.var.set(&(decayed - (o * (lr * scale))?)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::groups::uniform_groups;
    use crate::optim::{OptimSpec, Optimizer};
    use candle_core::{Device, Var};
    use std::collections::BTreeMap;

    type M = Vec<Vec<f64>>;
    fn mul(a: &M, b: &M) -> M {
        (0..a.len()).map(|i| (0..b[0].len()).map(|j| (0..b.len()).map(|k| a[i][k] * b[k][j]).sum()).collect()).collect()
    }
    fn tr(a: &M) -> M {
        (0..a[0].len()).map(|j| (0..a.len()).map(|i| a[i][j]).collect()).collect()
    }
    fn lin(x: f64, a: &M, y: f64, b: &M) -> M {
        a.iter().zip(b).map(|(ra, rb)| ra.iter().zip(rb).map(|(u, v)| x * u + y * v).collect()).collect()
    }

    /// The reference algorithm written out element by element in f64 (the slow oracle).
    fn reference_ns(g: &M, steps: usize) -> M {
        let (a, b, c) = NS_COEFFS;
        let tall = g.len() > g[0].len();
        let mut x = if tall { tr(g) } else { g.clone() };
        let norm = x.iter().flatten().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        x = x.iter().map(|r| r.iter().map(|v| v / norm).collect()).collect();
        for _ in 0..steps {
            let gram = mul(&x, &tr(&x));
            let poly = lin(b, &gram, c, &mul(&gram, &gram));
            x = lin(a, &x, 1.0, &mul(&poly, &x));
        }
        if tall {
            tr(&x)
        } else {
            x
        }
    }

    fn tensor(m: &M) -> Tensor {
        let flat: Vec<f32> = m.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_vec(flat, (m.len(), m[0].len()), &Device::Cpu).unwrap()
    }

    fn close(t: &Tensor, m: &M, tol: f64, what: &str) {
        let got = t.to_vec2::<f32>().unwrap();
        for (i, (gr, wr)) in got.iter().zip(m).enumerate() {
            for (j, (g, w)) in gr.iter().zip(wr).enumerate() {
                assert!((*g as f64 - w).abs() <= tol, "{what}[{i}][{j}]: {g} vs {w}");
            }
        }
    }

    /// On a diagonal matrix Newton–Schulz acts on each singular value alone:
    /// s ← a·s + b·s³ + c·s⁵, five times, starting from s / ‖G‖_F — computable by hand.
    #[test]
    fn newton_schulz_on_a_diagonal_is_the_scalar_quintic() {
        let g = vec![vec![3.0, 0.0], vec![0.0, 1.0]];
        let (a, b, c) = NS_COEFFS;
        let want: Vec<f64> = [3.0f64, 1.0]
            .iter()
            .map(|s| {
                let mut x = s / (10f64.sqrt() + 1e-7);
                for _ in 0..5 {
                    x = a * x + b * x.powi(3) + c * x.powi(5);
                }
                x
            })
            .collect();
        let out = newton_schulz5(&tensor(&g), 5).unwrap();
        close(&out, &vec![vec![want[0], 0.0], vec![0.0, want[1]]], 1e-5, "diag");
        // Both singular values end near 1 (the quintic's fixed band), not at 3 : 1.
        assert!(want.iter().all(|s| (0.6..1.3).contains(s)), "{want:?}");
    }

    /// Two Muon steps on a tall (4×3) and a wide (2×5) matrix against the f64 oracle:
    /// Nesterov momentum, weight decay and the √max(1, rows/cols) scale.
    #[test]
    fn two_steps_match_the_reference_algorithm() {
        let (lr, wd, mu) = (0.02, 0.1, 0.95);
        let h = MuonHyper {
            momentum: mu,
            nesterov: true,
            ns_steps: 5,
            adam: AdamHyper { beta1: 0.9, beta2: 0.95, eps: 1e-8, amsgrad: false, decoupled: true },
            adam_lr_ratio: 0.015,
        };
        let init = |r: usize, c: usize, s: f64| -> M {
            (0..r).map(|i| (0..c).map(|j| ((i * c + j) as f64 * s).sin()).collect()).collect()
        };
        let names = ["tall", "wide"];
        let shapes = [(4, 3), (2, 5)];
        let mut want: Vec<M> = vec![init(4, 3, 0.7), init(2, 5, 1.3)];
        let vars: BTreeMap<String, Var> =
            names.iter().zip(&want).map(|(n, m)| (n.to_string(), Var::from_tensor(&tensor(m)).unwrap())).collect();
        let mut opt = Optimizer::new(OptimSpec::Muon(h), &vars, uniform_groups(&vars, wd)).unwrap();
        let mut bufs: Vec<M> = shapes.iter().map(|&(r, c)| vec![vec![0.0; c]; r]).collect();
        for step in 0..2 {
            let grads: Vec<M> = shapes.iter().map(|&(r, c)| init(r, c, 0.31 + step as f64)).collect();
            let gmap = names.iter().zip(&grads).map(|(n, g)| (n.to_string(), tensor(g))).collect();
            opt.step(&vars, &gmap, lr).unwrap();
            for k in 0..2 {
                bufs[k] = lin(mu, &bufs[k], 1.0 - mu, &grads[k]);
                let u = lin(1.0 - mu, &grads[k], mu, &bufs[k]);
                let o = reference_ns(&u, 5);
                let (r, c) = shapes[k];
                let scale = (r as f64 / c as f64).max(1.0).sqrt();
                want[k] = lin(1.0 - lr * wd, &want[k], -lr * scale, &o);
                close(vars[names[k]].as_tensor(), &want[k], 2e-6, names[k]);
            }
        }
        assert_eq!(opt.state_bytes(), 4 * (12 + 10), "one momentum buffer per matrix");
    }

    /// Vectors (and embeddings, heads) get AdamW at `lr · adam_lr_ratio`.
    #[test]
    fn non_matrices_use_adamw() {
        let h = MuonHyper {
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            adam: AdamHyper { beta1: 0.9, beta2: 0.95, eps: 1e-8, amsgrad: false, decoupled: true },
            adam_lr_ratio: 0.5,
        };
        let dev = Device::Cpu;
        let vars = BTreeMap::from([("b".to_string(), Var::new(&[1.0f32, -1.0, 0.25], &dev).unwrap())]);
        let mut opt = Optimizer::new(OptimSpec::Muon(h), &vars, uniform_groups(&vars, 0.0)).unwrap();
        let g = BTreeMap::from([("b".to_string(), Tensor::new(&[0.5f32, -2.0, 0.0], &dev).unwrap())]);
        opt.step(&vars, &g, 0.2).unwrap();
        // First AdamW step: m̂ = g, v̂ = g², so p ← p − lr·ratio·g/(|g| + ε) = p − 0.1·sign(g).
        let p = vars["b"].as_tensor().to_vec1::<f32>().unwrap();
        for (got, want) in p.iter().zip([0.9f32, -0.9, 0.25]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
