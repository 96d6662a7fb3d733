//! Validation and test rows carved out of the train file (`data.validation_fraction`,
//! `data.test_fraction`) when no file is given for them. `data.split_by = "label"` (the
//! default) deals each class separately — regression scores by decile — so a small class
//! still appears in every split: each split gets `round(fraction × rows)` of a class, at least
//! one when the class has a row for every split plus one for training (scikit-learn's
//! `train_test_split(stratify=…)` rounds a 5-row class at 10% to none). `"random"` draws from
//! all rows alike. Seeded by `train.seed`; rows stay in file order within a split. The counts
//! per split and class go to `results.json` ([`SplitReport`]).

use super::config::FinetuneConfig;
use super::dataset::{Example, LabelMap};
use crate::nn::seed_for;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How held-out rows are drawn (`data.split_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    /// Per class (per score decile for regression).
    #[default]
    Label,
    Random,
}

/// Bins of a regression's scores for stratification.
const SCORE_BINS: usize = 10;

/// The stratum of each row: its class, a decile of its score, or one stratum for all.
pub fn strata(rows: &[Example], by: SplitBy) -> Vec<usize> {
    if by == SplitBy::Random {
        return vec![0; rows.len()];
    }
    if rows.iter().all(|r| r.value.is_none()) {
        return rows.iter().map(|r| r.label.unwrap_or(0)).collect();
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].value.unwrap_or(0.0).total_cmp(&rows[b].value.unwrap_or(0.0)));
    let mut out = vec![0; rows.len()];
    for (rank, &i) in order.iter().enumerate() {
        out[i] = rank * SCORE_BINS / rows.len().max(1);
    }
    out
}

/// The split of each row: 0 train, 1 validation, 2 test. Per stratum the rows are shuffled
/// (seeded) and the first `test`-share go to test, the next `validation`-share to validation.
pub fn assign(strata: &[usize], validation: f64, test: f64, seed: u64) -> Vec<u8> {
    let mut by_stratum: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &s) in strata.iter().enumerate() {
        by_stratum.entry(s).or_default().push(i);
    }
    let held = (validation > 0.0) as usize + (test > 0.0) as usize;
    let mut out = vec![0u8; strata.len()];
    for (stratum, mut rows) in by_stratum {
        // One generator per stratum: a class's split does not depend on the other classes.
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &format!("finetune/split/{stratum}")));
        rows.shuffle(&mut rng);
        let n = rows.len();
        let share = |f: f64| -> usize {
            let k = (f * n as f64).round() as usize;
            if f > 0.0 && n > held {
                k.max(1)
            } else {
                k
            }
        };
        let (mut n_test, mut n_val) = (share(test), share(validation));
        // Training keeps at least one row of the class.
        while n_test + n_val >= n && n_test + n_val > 0 {
            if n_val >= n_test && n_val > 0 {
                n_val -= 1;
            } else {
                n_test -= 1;
            }
        }
        for (j, &i) in rows.iter().enumerate() {
            out[i] = if j < n_test {
                2
            } else if j < n_test + n_val {
                1
            } else {
                0
            };
        }
    }
    out
}

/// Rows by split (train, validation, test), each in file order.
pub fn apply<T>(rows: Vec<T>, split: &[u8]) -> [Vec<T>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for (row, &s) in rows.into_iter().zip(split) {
        out[s as usize].push(row);
    }
    out
}

/// One split's size and where it came from, for `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub rows: usize,
    /// "file", "fraction" (carved from the train file) or "fold".
    pub source: &'static str,
    /// Rows per class (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<BTreeMap<String, usize>>,
}

impl SplitReport {
    pub fn of(rows: &[Example], labels: &LabelMap, source: &'static str) -> Self {
        let classes = rows.iter().all(|r| r.value.is_none()).then(|| {
            let mut c: BTreeMap<String, usize> = labels.labels.iter().map(|l| (l.clone(), 0)).collect();
            for r in rows {
                if let Some(name) = r.label.and_then(|l| labels.labels.get(l)) {
                    *c.entry(name.clone()).or_insert(0) += 1;
                }
            }
            c
        });
        Self { rows: rows.len(), source, classes }
    }

    /// The classes with no row here.
    pub fn missing(&self) -> Vec<&str> {
        self.classes.iter().flatten().filter(|(_, &n)| n == 0).map(|(l, _)| l.as_str()).collect()
    }
}

/// `rows` less the held-out shares of `data.validation_fraction` / `test_fraction`, and those
/// (None where the fraction is 0).
pub fn carve(cfg: &FinetuneConfig, rows: Vec<Example>) -> (Vec<Example>, Option<Vec<Example>>, Option<Vec<Example>>) {
    let d = &cfg.data;
    if d.validation_fraction == 0.0 && d.test_fraction == 0.0 {
        return (rows, None, None);
    }
    let assigned = assign(&strata(&rows, d.split_by), d.validation_fraction, d.test_fraction, cfg.train.seed);
    let [train, val, test] = apply(rows, &assigned);
    (train, (d.validation_fraction > 0.0).then_some(val), (d.test_fraction > 0.0).then_some(test))
}

/// Each split's rows (per class for classification) and source, noted for the user when a
/// split was carved, with a warning for classes missing from a split. `rows`: train,
/// validation, test.
pub fn reports(
    cfg: &FinetuneConfig,
    labels: &LabelMap,
    rows: [Option<&[Example]>; 3],
) -> BTreeMap<&'static str, SplitReport> {
    let d = &cfg.data;
    let source = |fraction: f64| if fraction > 0.0 { "fraction" } else { "file" };
    let val_source = if d.folds > 0 { "fold" } else { source(d.validation_fraction) };
    let carved = d.validation_fraction > 0.0 || d.test_fraction > 0.0;
    let mut out = BTreeMap::new();
    for ((name, from), rows) in
        [("train", "file"), ("validation", val_source), ("test", source(d.test_fraction))].into_iter().zip(rows)
    {
        let Some(rows) = rows else { continue };
        let report = SplitReport::of(rows, labels, from);
        if let Some(classes) = report.classes.as_ref().filter(|_| carved) {
            let per: Vec<String> = classes.iter().map(|(l, n)| format!("{l} {n}")).collect();
            let line = format!("{name} split ({from}): {} rows — {}", report.rows, per.join(", "));
            crate::progress::note(cfg.log.progress.mode(), &line);
        }
        let missing = report.missing();
        if !missing.is_empty() {
            tracing::warn!("the {name} split has no rows of class(es) {}", missing.join(", "));
        }
        out.insert(name, report);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(split: &[u8], strata: &[usize], stratum: usize) -> [usize; 3] {
        let mut c = [0; 3];
        for (s, &t) in split.iter().zip(strata) {
            if t == stratum {
                c[*s as usize] += 1;
            }
        }
        c
    }

    #[test]
    fn every_class_with_enough_rows_is_in_every_split() {
        // 90 rows of class 0, 7 of class 1, 3 of class 2, 2 of class 3, interleaved.
        let mut strata = vec![0; 90];
        strata.extend([1; 7]);
        strata.extend([2; 3]);
        strata.extend([3; 2]);
        strata.rotate_left(40);
        let split = assign(&strata, 0.1, 0.1, 7);
        assert_eq!(counts(&split, &strata, 0), [72, 9, 9]);
        assert_eq!(counts(&split, &strata, 1), [5, 1, 1]);
        assert_eq!(counts(&split, &strata, 2), [1, 1, 1], "a 3-row class in all three");
        assert_eq!(counts(&split, &strata, 3), [2, 0, 0], "too few rows for three splits: all train");
        assert_eq!(counts(&assign(&strata, 0.1, 0.0, 7), &strata, 3), [1, 1, 0], "enough for two");
        // Deterministic, and another seed draws other rows.
        assert_eq!(assign(&strata, 0.1, 0.1, 7), split);
        assert_ne!(assign(&strata, 0.1, 0.1, 8), split);
        // Random draws ignore the classes: the totals follow the fractions.
        let random = assign(&vec![0; strata.len()], 0.1, 0.1, 7);
        assert_eq!(counts(&random, &vec![0; strata.len()], 0), [82, 10, 10]);
    }

    #[test]
    fn a_class_keeps_its_split_when_another_class_changes() {
        let a = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let mut b = a.to_vec();
        b.extend([2; 5]);
        let (sa, sb) = (assign(&a, 0.2, 0.0, 1), assign(&b, 0.2, 0.0, 1));
        assert_eq!(sa[..], sb[..a.len()]);
        assert!(sa.iter().all(|&s| s != 2), "no test fraction, no test rows");
    }

    #[test]
    fn scores_are_stratified_by_decile_and_rows_keep_file_order() {
        let rows: Vec<Example> = (0..50)
            .map(|i| Example {
                line: i + 1,
                text: format!("t{i}"),
                pair: None,
                label: None,
                value: Some((i * 7 % 50) as f64),
            })
            .collect();
        let s = strata(&rows, SplitBy::Label);
        for bin in 0..SCORE_BINS {
            assert_eq!(s.iter().filter(|&&b| b == bin).count(), 5);
        }
        let split = assign(&s, 0.2, 0.0, 3);
        let [train, val, test] = apply(rows, &split);
        assert_eq!((train.len(), val.len(), test.len()), (40, 10, 0));
        assert!(val.windows(2).all(|w| w[0].line < w[1].line), "file order");
        let bins: std::collections::BTreeSet<usize> =
            val.iter().map(|r| r.value.unwrap() as usize * SCORE_BINS / 50).collect();
        assert_eq!(bins.len(), SCORE_BINS, "one validation row per decile: {bins:?}");
    }
}
