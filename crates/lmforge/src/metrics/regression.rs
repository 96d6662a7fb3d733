//! Regression metrics (GLUE STS-B's, Hugging Face's `num_labels = 1` problem type): mean squared
//! and absolute error, their root, and the Pearson and Spearman correlations as SciPy's
//! `pearsonr` / `spearmanr` compute them (Spearman: Pearson of the ranks, ties given their
//! average rank). A correlation of a constant series is NaN, as SciPy's.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RegressionMetrics {
    pub n: usize,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    pub pearson: f64,
    pub spearman: f64,
}

/// The metric names early stopping and `eval` can select for regression, besides `loss` (the
/// MSE): the errors are lower-is-better, the correlations higher-is-better.
pub const REGRESSION_METRIC_NAMES: [&str; 5] = ["mse", "rmse", "mae", "pearson", "spearman"];

/// Whether a regression metric is better when lower.
pub fn lower_is_better(name: &str) -> bool {
    ["loss", "ppl", "mse", "rmse", "mae"].contains(&name)
}

/// Pearson's r of two equally long series (NaN when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// 1-based ranks, ties given the mean of the ranks they span (SciPy's `rankdata`, "average").
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Metrics of predictions against gold values. Panics when the lengths differ.
pub fn regression(gold: &[f64], pred: &[f64]) -> RegressionMetrics {
    assert_eq!(gold.len(), pred.len(), "one prediction per example");
    let n = gold.len();
    let nf = n.max(1) as f64;
    let mse = gold.iter().zip(pred).map(|(g, p)| (g - p) * (g - p)).sum::<f64>() / nf;
    let mae = gold.iter().zip(pred).map(|(g, p)| (g - p).abs()).sum::<f64>() / nf;
    RegressionMetrics {
        n,
        mse,
        rmse: mse.sqrt(),
        mae,
        pearson: pearson(gold, pred),
        spearman: pearson(&ranks(gold), &ranks(pred)),
    }
}

impl RegressionMetrics {
    /// A metric of [`REGRESSION_METRIC_NAMES`] by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "mse" => self.mse,
            "rmse" => self.rmse,
            "mae" => self.mae,
            "pearson" => self.pearson,
            "spearman" => self.spearman,
            _ => return None,
        })
    }

    pub fn table(&self) -> String {
        format!(
            "examples   {}\nmse        {:.6}\nrmse       {:.6}\nmae        {:.6}\npearson    {:.6}\nspearman   {:.6}\n",
            self.n, self.mse, self.rmse, self.mae, self.pearson, self.spearman
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/data/regression.json` (`scripts/make_regression_expected.py`: SciPy's pearsonr /
    /// spearmanr and NumPy's errors) reproduced to 1e-12.
    #[test]
    fn equals_scipy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/regression.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let v =
            |x: &serde_json::Value| -> Vec<f64> { x.as_array().unwrap().iter().map(|a| a.as_f64().unwrap()).collect() };
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let m = regression(&v(&case["gold"]), &v(&case["pred"]));
            for key in ["mse", "mae", "pearson", "spearman"] {
                let want = case[key].as_f64().unwrap();
                let got = m.get(key).unwrap();
                assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{name} {key}: {got} vs {want}");
            }
        }
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert!(regression(&[1.0, 1.0], &[0.0, 2.0]).pearson.is_nan(), "a constant series has no correlation");
    }
}
