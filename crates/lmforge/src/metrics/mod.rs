//! Evaluation metrics over predictions, independent of any model. Text generation (BLEU, chrF,
//! ROUGE, exact match, token F1, as sacrebleu, rouge-score and the SQuAD script compute them) is
//! in [`generation`]; this file is classification:
//! accuracy, precision / recall / F1 per class and averaged (macro, micro, weighted, and binary
//! for two classes), and the confusion matrix. The formulas and edge cases follow
//! scikit-learn's `precision_recall_fscore_support` (zero_division = 0; F1 = 2·tp / (true +
//! predicted); averages over the labels present in either y_true or y_pred), so the figures
//! equal what Python users compute (checked against `../shared/fixtures/metrics.json`).

pub mod generation;
pub mod regression;
pub mod seqeval;
pub mod squad;

use serde::Serialize;

/// Precision, recall and F1 of one class or one average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// One class's scores and its number of true examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    /// Number of examples.
    pub n: usize,
    pub accuracy: f64,
    #[serde(rename = "macro")]
    pub macro_avg: Prf,
    pub micro: Prf,
    pub weighted: Prf,
    /// Class 1 as the positive class (scikit-learn's `average="binary"`); two classes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<Prf>,
    pub per_class: Vec<ClassScore>,
    /// Rows: true class, columns: predicted class, in class-id order.
    pub confusion_matrix: Vec<Vec<u64>>,
}

/// The metric names early stopping and `eval` can select, besides `loss`.
pub const METRIC_NAMES: [&str; 11] = [
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "micro_f1",
    "weighted_f1",
    "weighted_precision",
    "weighted_recall",
    "binary_f1",
    "binary_precision",
    "binary_recall",
];

/// `a / b`, 0 where `b` is 0 (scikit-learn's `zero_division=0`).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Metrics of `y_pred` against `y_true` (class ids below `labels.len()`; `labels` names them).
/// Panics if an id is out of range or the lengths differ (callers produce both from one label
/// map).
pub fn classification(y_true: &[usize], y_pred: &[usize], labels: &[String]) -> ClassificationMetrics {
    assert_eq!(y_true.len(), y_pred.len(), "one prediction per example");
    let k = labels.len();
    let mut cm = vec![vec![0u64; k]; k];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        assert!(t < k && p < k, "class id out of range");
        cm[t][p] += 1;
    }
    let tp: Vec<u64> = (0..k).map(|c| cm[c][c]).collect();
    let true_sum: Vec<u64> = (0..k).map(|c| cm[c].iter().sum()).collect();
    let pred_sum: Vec<u64> = (0..k).map(|c| cm.iter().map(|row| row[c]).sum()).collect();
    let per_class: Vec<ClassScore> = (0..k)
        .map(|c| ClassScore {
            label: labels[c].clone(),
            precision: ratio(tp[c], pred_sum[c]),
            recall: ratio(tp[c], true_sum[c]),
            f1: ratio(2 * tp[c], true_sum[c] + pred_sum[c]),
            support: true_sum[c],
        })
        .collect();
    // Averages run over the classes that occur in y_true or y_pred, as scikit-learn's.
    let present: Vec<&ClassScore> =
        per_class.iter().enumerate().filter(|(c, _)| true_sum[*c] + pred_sum[*c] > 0).map(|(_, s)| s).collect();
    let mean = |f: fn(&ClassScore) -> f64| -> f64 {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|s| f(s)).sum::<f64>() / present.len() as f64
        }
    };
    let macro_avg = Prf { precision: mean(|s| s.precision), recall: mean(|s| s.recall), f1: mean(|s| s.f1) };
    let total_support: u64 = present.iter().map(|s| s.support).sum();
    let weighted_mean = |f: fn(&ClassScore) -> f64| -> f64 {
        if total_support == 0 {
            0.0
        } else {
            present.iter().map(|s| f(s) * s.support as f64).sum::<f64>() / total_support as f64
        }
    };
    let weighted = Prf {
        precision: weighted_mean(|s| s.precision),
        recall: weighted_mean(|s| s.recall),
        f1: weighted_mean(|s| s.f1),
    };
    let (tp_all, true_all, pred_all) = (tp.iter().sum::<u64>(), true_sum.iter().sum::<u64>(), pred_sum.iter().sum());
    let micro = Prf {
        precision: ratio(tp_all, pred_all),
        recall: ratio(tp_all, true_all),
        f1: ratio(2 * tp_all, true_all + pred_all),
    };
    let binary =
        (k == 2).then(|| Prf { precision: per_class[1].precision, recall: per_class[1].recall, f1: per_class[1].f1 });
    ClassificationMetrics {
        n: y_true.len(),
        accuracy: ratio(tp_all, y_true.len() as u64),
        macro_avg,
        micro,
        weighted,
        binary,
        per_class,
        confusion_matrix: cm,
    }
}

impl ClassificationMetrics {
    /// The value of a metric in [`METRIC_NAMES`] (None for an unknown name, or a binary metric
    /// of a multi-class task).
    pub fn get(&self, name: &str) -> Option<f64> {
        let (avg, field) = match name {
            "accuracy" => return Some(self.accuracy),
            _ => name.split_once('_')?,
        };
        let prf = match avg {
            "macro" => self.macro_avg,
            "micro" => self.micro,
            "weighted" => self.weighted,
            "binary" => self.binary?,
            _ => return None,
        };
        match field {
            "precision" => Some(prf.precision),
            "recall" => Some(prf.recall),
            "f1" => Some(prf.f1),
            _ => None,
        }
    }

    /// A plain-text report: the averages, per-class scores and the confusion matrix.
    pub fn table(&self) -> String {
        let mut s = format!("examples   {}\naccuracy   {:.4}\n", self.n, self.accuracy);
        s += &format!("{:<10} {:>9} {:>9} {:>9}\n", "average", "precision", "recall", "f1");
        let mut avg = vec![("macro", self.macro_avg), ("micro", self.micro), ("weighted", self.weighted)];
        if let Some(b) = self.binary {
            avg.push(("binary", b));
        }
        for (name, p) in avg {
            s += &format!("{name:<10} {:>9.4} {:>9.4} {:>9.4}\n", p.precision, p.recall, p.f1);
        }
        let width = self.per_class.iter().map(|c| c.label.len()).max().unwrap_or(5).clamp(5, 24);
        s += &format!("{:<width$} {:>9} {:>9} {:>9} {:>8}\n", "class", "precision", "recall", "f1", "support");
        for c in &self.per_class {
            s +=
                &format!("{:<width$} {:>9.4} {:>9.4} {:>9.4} {:>8}\n", c.label, c.precision, c.recall, c.f1, c.support);
        }
        s += "confusion matrix (rows: true, columns: predicted)\n";
        for (c, row) in self.per_class.iter().zip(&self.confusion_matrix) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>7}")).collect();
            s += &format!("{:<width$} {}\n", c.label, cells.join(""));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(k: usize) -> Vec<String> {
        (0..k).map(|i| i.to_string()).collect()
    }

    #[test]
    fn hand_computed_three_classes() {
        // cm = [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
        let m = classification(&[0, 0, 0, 1, 2], &[0, 0, 1, 1, 0], &labels(3));
        assert_eq!(m.confusion_matrix, vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
        assert_eq!(m.accuracy, 0.6);
        assert_eq!(m.per_class[0].precision, 2.0 / 3.0);
        assert_eq!(m.per_class[1].f1, 2.0 / 3.0);
        assert_eq!((m.per_class[2].precision, m.per_class[2].f1), (0.0, 0.0), "zero_division = 0");
        assert_eq!(m.micro.f1, 0.6);
        assert!(m.binary.is_none());
        assert_eq!(m.get("macro_recall"), Some((2.0 / 3.0 + 1.0 + 0.0) / 3.0));
        assert_eq!(m.get("binary_f1"), None);
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn averages_skip_classes_absent_from_both_sides() {
        let m = classification(&[0, 1, 1], &[0, 1, 0], &labels(3));
        assert_eq!(m.macro_avg.recall, (1.0 + 0.5) / 2.0);
        assert_eq!(m.confusion_matrix[2], vec![0, 0, 0]);
    }
}
