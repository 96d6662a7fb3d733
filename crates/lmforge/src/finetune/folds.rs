//! k-fold cross-validation of a fine-tuning config (`lmforge finetune --folds K`). A fold run
//! is an ordinary run whose config says `data.folds = K`, `data.fold = i`: its front end reads
//! the train file, deals the rows into K folds ([`assign`]: seeded, stratified by label for
//! classification, as scikit-learn's shuffled `StratifiedKFold`) and trains on all folds but
//! `i`, validating on fold `i` (best-model selection, early stopping). [`cross_validate`] runs
//! the K fold runs into `RUN_DIR/fold-I/` (each resumable, each recorded in the experiment
//! store like any run) and writes `RUN_DIR/cv.json`: every fold's final metrics (the test
//! file's when the config has one, else the held-out fold's) and their mean and standard
//! deviation.

use super::{FinetuneConfig, FinetuneSummary, TaskKind};
use crate::error::{Error, IoContext, Result};
use crate::nn::seed_for;
use crate::train::TrainOptions;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fold of each row: rows of each stratum (a label id; one stratum for no stratification)
/// are shuffled with `seed` and dealt round-robin, continuing from stratum to stratum, so every
/// fold gets its share of every stratum and the fold sizes differ by at most one.
pub fn assign(strata: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut by_stratum: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &s) in strata.iter().enumerate() {
        by_stratum.entry(s).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, "finetune/folds"));
    let mut out = vec![0; strata.len()];
    let mut next = 0usize;
    for rows in by_stratum.values_mut() {
        rows.shuffle(&mut rng);
        for &i in rows.iter() {
            out[i] = next % k;
            next += 1;
        }
    }
    out
}

/// Splits `rows` into (the rows outside fold `fold`, the rows in it), in file order.
pub fn split<T>(rows: Vec<T>, folds: &[usize], fold: usize) -> (Vec<T>, Vec<T>) {
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for (row, &f) in rows.into_iter().zip(folds) {
        if f == fold {
            held_out.push(row)
        } else {
            train.push(row)
        }
    }
    (train, held_out)
}

/// The fold settings of a config, checked: (K, i) when `data.folds` is set.
pub fn of(cfg: &FinetuneConfig) -> Option<(usize, usize)> {
    (cfg.data.folds > 0).then_some((cfg.data.folds, cfg.data.fold))
}

/// One fold run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    pub fold: usize,
    pub run_dir: PathBuf,
    /// The selection metric's best validation value (on the held-out fold) and its step.
    pub best: Option<(f64, u64)>,
    /// "test" or "validation" (the held-out fold).
    pub final_split: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// The final metrics of a finished fine-tune, by name (the task's headline figures).
pub fn final_metrics(s: &FinetuneSummary) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(e) = &s.final_eval {
        out.insert("loss".into(), e.loss);
        for name in ["accuracy", "macro_f1", "micro_f1", "weighted_f1", "binary_f1"] {
            if let Some(v) = e.get(name) {
                out.insert(name.into(), v);
            }
        }
    }
    if let Some(e) = &s.final_regression {
        out.insert("loss".into(), e.loss);
        for name in crate::metrics::regression::REGRESSION_METRIC_NAMES {
            out.insert(name.into(), e.metrics.get(name).expect("a regression metric"));
        }
    }
    if let Some(e) = &s.final_tokens {
        out.insert("loss".into(), e.loss);
        for name in ["f1", "precision", "recall", "accuracy", "macro_f1"] {
            out.insert(name.into(), e.get(name).expect("an entity metric"));
        }
    }
    out
}

/// Mean and standard deviation (population, NumPy's `np.std` default) of each metric over
/// the folds that report it.
pub fn mean_std(folds: &[FoldResult]) -> BTreeMap<String, (f64, f64)> {
    let mut values: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for f in folds {
        for (k, v) in &f.metrics {
            values.entry(k).or_default().push(*v);
        }
    }
    values
        .into_iter()
        .map(|(k, v)| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            (k.to_string(), (mean, var.sqrt()))
        })
        .collect()
}

/// What `--folds K` did.
#[derive(Debug, Clone, Serialize)]
pub struct CvSummary {
    pub folds: Vec<FoldResult>,
    pub mean_std: BTreeMap<String, (f64, f64)>,
    /// Every fold finished (none stopped by a signal).
    pub finished: bool,
}

/// Runs the K fold runs of `cfg` into `run_dir/fold-I/` and writes `run_dir/cv.json`.
pub fn cross_validate(cfg: &FinetuneConfig, run_dir: &Path, k: usize, opts: &TrainOptions) -> Result<CvSummary> {
    if cfg.task.kind == TaskKind::CausalLm {
        return Err(Error::config(
            "--folds",
            "cross-validation is for classification, regression and token_classification",
        ));
    }
    if k < 2 {
        return Err(Error::config("--folds", format!("is {k}: at least 2 folds")));
    }
    if !cfg.data.validation.as_os_str().is_empty() {
        return Err(Error::config(
            "data.validation",
            "is set, but with --folds each fold's validation rows are the held-out fold: leave it empty",
        ));
    }
    let writer = opts.collective().rank() == 0;
    if writer {
        std::fs::create_dir_all(run_dir).at(run_dir)?;
    }
    let mut folds = Vec::with_capacity(k);
    for fold in 0..k {
        let mut c = cfg.clone();
        (c.data.folds, c.data.fold) = (k, fold);
        c.validate()?;
        let dir = run_dir.join(format!("fold-{fold}"));
        crate::progress::note(cfg.log.progress.mode(), &format!("fold {} of {k} into {}", fold + 1, dir.display()));
        let s = super::finetune(&c, &dir, opts)?;
        let result = FoldResult {
            fold,
            run_dir: dir,
            best: s.best,
            final_split: s.final_split.clone(),
            metrics: final_metrics(&s),
        };
        folds.push(result);
        if !s.finished {
            return Ok(CvSummary { folds, mean_std: BTreeMap::new(), finished: false });
        }
    }
    let summary = CvSummary { mean_std: mean_std(&folds), folds, finished: true };
    if writer {
        let doc = json!({
            "folds": k,
            "task": cfg.task.kind.name(),
            "stratified": cfg.task.kind == TaskKind::Classification,
            "metric": cfg.metric(),
            "per_fold": summary.folds,
            "mean": summary.mean_std.iter().map(|(k, (m, _))| (k.clone(), json!(m))).collect::<serde_json::Map<_, _>>(),
            "std": summary.mean_std.iter().map(|(k, (_, s))| (k.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
        });
        crate::fsio::write_json_atomic(&run_dir.join("cv.json"), &doc)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_balanced_seeded_and_cover_every_row() {
        // 30 rows of class 0, 9 of class 1, 3 of class 2.
        let strata: Vec<usize> = (0..42)
            .map(|i| {
                if i < 30 {
                    0
                } else if i < 39 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let a = assign(&strata, 3, 7);
        assert_eq!(a, assign(&strata, 3, 7), "seeded");
        assert_ne!(a, assign(&strata, 3, 8));
        for fold in 0..3 {
            let per_class: Vec<usize> =
                (0..3).map(|c| (0..42).filter(|&i| strata[i] == c && a[i] == fold).count()).collect();
            assert_eq!(per_class, [10, 3, 1], "fold {fold}: every class in its share");
        }
        let (train, held) = split((0..42).collect::<Vec<_>>(), &a, 1);
        assert_eq!((train.len(), held.len()), (28, 14));
        assert!(held.iter().all(|&i| a[i] == 1) && train.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn mean_and_population_std() {
        let f = |v: f64| FoldResult {
            fold: 0,
            run_dir: PathBuf::new(),
            best: None,
            final_split: None,
            metrics: [("accuracy".to_string(), v)].into_iter().collect(),
        };
        let m = mean_std(&[f(0.5), f(0.7), f(0.9)]);
        let (mean, std) = m["accuracy"];
        assert!((mean - 0.7).abs() < 1e-12 && (std - (0.08f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
