//! Running a classifier over examples: logits in input order (batches sorted by length for
//! little padding), the loss and metrics against gold labels, and the two commands built on
//! them: `lmforge predict` (one JSON object per input row: label, probabilities, logits) and
//! `lmforge eval classification`.

use super::batching::{collate, encode, eval_batches, Encoded};
use super::config::ClsDataConfig;
use super::dataset::{read_examples, read_scored, BadRows, LabelMap};
use super::model::{pad_id, Classifier, LoadedClassifier};
use crate::error::Result;
use crate::metrics::regression::{regression, RegressionMetrics};
use crate::metrics::{classification, ClassificationMetrics};
use candle_core::Device;
use serde::Serialize;
use serde_json::json;
use std::path::Path;

/// Logits (L per example) of every example, in the order given.
pub fn score(
    model: &Classifier,
    data: &[Encoded],
    batch_size: usize,
    pad: u32,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let mut out = vec![Vec::new(); data.len()];
    for batch in eval_batches(&lengths, batch_size) {
        let items: Vec<&Encoded> = batch.iter().map(|&i| &data[i]).collect();
        let b = collate(&items, pad, device)?;
        let logits = model.logits(&b, None)?.to_vec2::<f32>()?;
        for (i, row) in batch.into_iter().zip(logits) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// Loss and metrics of logits against gold label ids.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy (nats), no label smoothing.
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: ClassificationMetrics,
}

impl Evaluation {
    /// A metric by name (`loss` or one of [`crate::metrics::METRIC_NAMES`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        if name == "loss" {
            Some(self.loss)
        } else {
            self.metrics.get(name)
        }
    }
}

/// Loss and metrics of a regression's predictions against gold values.
#[derive(Debug, Clone, Serialize)]
pub struct RegressionEvaluation {
    /// Mean squared error (the training loss).
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: RegressionMetrics,
}

/// A one-output head's predictions (its logits) scored against `gold`.
pub fn evaluate_regression(logits: &[Vec<f32>], gold: &[f64]) -> RegressionEvaluation {
    let pred: Vec<f64> = logits.iter().map(|r| r[0] as f64).collect();
    let metrics = regression(gold, &pred);
    RegressionEvaluation { loss: metrics.mse, metrics }
}

/// Probabilities of one row of logits (softmax in f64).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Index of the largest logit (the first on ties, as torch's argmax).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

pub fn evaluate(logits: &[Vec<f32>], gold: &[usize], labels: &LabelMap) -> Evaluation {
    let mut nll = 0.0f64;
    for (row, &y) in logits.iter().zip(gold) {
        nll -= softmax(row)[y].max(f64::MIN_POSITIVE).ln();
    }
    let pred: Vec<usize> = logits.iter().map(|r| argmax(r)).collect();
    Evaluation { loss: nll / gold.len().max(1) as f64, metrics: classification(gold, &pred, &labels.labels) }
}

/// How a loaded model reads a file: its training reader settings (the defaults for a folder
/// lmforge did not write), with `overrides` (`data.KEY=VALUE`, e.g. another column name)
/// applied and checked like config keys.
pub fn reader_settings(model: &LoadedClassifier, overrides: &[String]) -> Result<ClsDataConfig> {
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DataOnly {
        data: ClsDataConfig,
    }
    let base = DataOnly { data: model.config.as_ref().map(|c| c.data.clone()).unwrap_or_default() };
    let mut table = toml::Table::try_from(&base).map_err(|e| crate::Error::Invalid(e.to_string()))?;
    for o in overrides {
        if !o.trim_start().starts_with("data.") {
            return Err(crate::Error::config(o.clone(), "only data.* reader keys can be set here"));
        }
        crate::config::apply_override(&mut table, o)?;
    }
    Ok(crate::config::deserialize_table::<DataOnly>(table)?.data)
}

/// `lmforge eval classification`: metrics of the model on a labelled file.
pub fn eval_file(
    model: &LoadedClassifier,
    data: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<(Evaluation, BadRows)> {
    let (examples, bad, _) = read_examples(data, reader, Some(&model.labels), true)?;
    let encoded = encode(&examples, &model.tokenizer, model.max_length())?;
    let logits = score(&model.classifier, &encoded, batch_size, pad_id(&model.tokenizer), model.params.device())?;
    let gold: Vec<usize> = examples.iter().map(|e| e.label.expect("labels required")).collect();
    Ok((evaluate(&logits, &gold, &model.labels), bad))
}

/// `lmforge eval classification` on a regression model: errors and correlations on a file
/// with numeric targets.
pub fn eval_regression_file(
    model: &LoadedClassifier,
    data: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<(RegressionEvaluation, BadRows)> {
    let (examples, bad) = read_scored(data, reader, true)?;
    let encoded = encode(&examples, &model.tokenizer, model.max_length())?;
    let logits = score(&model.classifier, &encoded, batch_size, pad_id(&model.tokenizer), model.params.device())?;
    let gold: Vec<f64> = examples.iter().map(|e| e.value.expect("targets required")).collect();
    Ok((evaluate_regression(&logits, &gold), bad))
}

/// What `predict` did.
#[derive(Debug, Clone, Serialize)]
pub struct PredictSummary {
    pub rows: usize,
    pub bad_rows: BadRows,
    /// Accuracy on the rows that carried a known label, if any did.
    pub accuracy: Option<f64>,
    /// Regression: the mean squared error on the rows that carried a target, if any did.
    pub mse: Option<f64>,
}

/// `lmforge predict`: one JSON line per usable input row, in input order:
/// `{"line", "label", "label_id", "probs", "logits"}` (plus `"gold"` when the row had a label);
/// for a regression model `{"line", "score"}` (plus `"gold"`).
pub fn predict_file(
    model: &LoadedClassifier,
    input: &Path,
    output: &Path,
    reader: &ClsDataConfig,
    batch_size: usize,
) -> Result<PredictSummary> {
    let (examples, bad) = if model.regression {
        read_scored(input, reader, false)?
    } else {
        let (examples, bad, _) = read_examples(input, reader, Some(&model.labels), false)?;
        (examples, bad)
    };
    let encoded = encode(&examples, &model.tokenizer, model.max_length())?;
    let logits = score(&model.classifier, &encoded, batch_size, pad_id(&model.tokenizer), model.params.device())?;
    let (mut labelled, mut correct, mut squared) = (0usize, 0usize, 0.0f64);
    let mut rows = Vec::with_capacity(examples.len());
    for (e, row) in examples.iter().zip(&logits) {
        if model.regression {
            let mut obj = json!({"line": e.line, "score": row[0]});
            if let Some(g) = e.value {
                obj["gold"] = json!(g);
                labelled += 1;
                squared += (g - row[0] as f64).powi(2);
            }
            rows.push(obj);
            continue;
        }
        let id = argmax(row);
        let mut obj = json!({
            "line": e.line,
            "label": model.labels.labels[id],
            "label_id": id,
            "probs": softmax(row),
            "logits": row,
        });
        if let Some(g) = e.label {
            obj["gold"] = json!(model.labels.labels[g]);
            labelled += 1;
            correct += usize::from(g == id);
        }
        rows.push(obj);
    }
    crate::fsio::write_jsonl_atomic(output, rows)?;
    let mean = |x: f64| (labelled > 0).then(|| x / labelled as f64);
    let (accuracy, mse) = if model.regression { (None, mean(squared)) } else { (mean(correct as f64), None) };
    Ok(PredictSummary { rows: examples.len(), bad_rows: bad, accuracy, mse })
}
