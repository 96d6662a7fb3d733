//! What an objective supplies to the one training loop: its parameters, the loss of any share
//! of any step's batch, validation metrics, and its model files. Causal LM ([`super::lm`]),
//! masked LM ± NSP ([`super::lm`]) and sequence classification (`finetune::task`) are tasks; the
//! loop supplies everything else (micro-batches, the split over processes, gradients,
//! clipping, the optimizer and schedule, faults, evaluation cadence, patience, checkpoints,
//! logging). A new head is a new `Task`, not a new loop.

use crate::error::Result;
use crate::nn::{DropoutRng, ParamStore};
use crate::patience::PatienceRule;
use candle_core::Tensor;
use std::ops::Range;
use std::path::Path;

/// One validation: the value the loop selects and schedules by, and every metric to log.
#[derive(Debug, Clone, PartialEq)]
pub struct ValMetrics {
    /// The validation loss (the total loss for BERT: MLM + NSP).
    pub loss: f64,
    /// Perplexity, exp of the (masked) LM loss; NaN for tasks without one.
    pub ppl: f64,
    /// Causal LMs only: loss in bits per byte of validation text.
    pub bits_per_byte: Option<f64>,
    /// Task-specific metrics (`mlm_acc`, `nsp_loss`, `accuracy`, `macro_f1`, ...).
    pub extra: Vec<(&'static str, f64)>,
}

impl ValMetrics {
    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let mut s = format!("loss {:.4}", self.loss);
        if self.ppl.is_finite() {
            s += &format!(" ppl {:.2}", self.ppl);
        }
        if let Some(b) = self.bits_per_byte {
            s += &format!(" bits/byte {b:.4}");
        }
        for (k, v) in &self.extra {
            s += &format!(" {k} {v:.4}");
        }
        s
    }

    /// A metric by name: `loss`, `ppl`, `bits_per_byte` or an extra.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "ppl" => self.ppl.is_finite().then_some(self.ppl),
            "bits_per_byte" => self.bits_per_byte,
            _ => self.extra.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
        }
    }
}

/// How the best validation is chosen: a metric and its patience rule (direction, what counts
/// as better; `tolerate` is how long early stopping waits, `u64::MAX` when it never stops).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub metric: String,
    pub rule: PatienceRule,
}

/// Which evaluation this is: after step `step` (1-based count of steps done), the `index`-th
/// evaluation of the run (1-based, the same after a resume), and whether it is the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalAt {
    pub step: u64,
    pub index: u64,
    pub last: bool,
}

/// An objective the loop trains.
pub trait Task {
    /// The parameters: the optimizer updates the trainable ones.
    fn params(&self) -> &ParamStore;

    /// Rows (sequences, examples) of micro-batch `micro` of step `step` (0-based) over all
    /// processes; each process computes its contiguous share.
    fn micro_rows(&self, step: u64, micro: usize) -> Result<usize>;

    /// The loss of rows `rows` of micro-batch `micro` of step `step`, weighted so that the sum
    /// over the processes' shares is the micro-batch's loss. Dropout draws from `dropout`.
    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor>;

    /// Tokens one full micro-batch trains on (for tokens/s and the `tokens` count).
    fn tokens_per_micro_batch(&self) -> u64;

    /// Optimizer steps in one pass over the training data, for tasks trained in epochs.
    fn steps_per_epoch(&self) -> Option<u64> {
        None
    }

    /// How much micro-batch `micro` of step `step` weighs in the step's mean loss (summed over
    /// the micro-batches); its rows unless the task's loss is a mean over something else (the
    /// trained tokens of causal fine-tuning, so that a step's loss is the mean over all its
    /// trained tokens, as Hugging Face's Trainer counts them).
    fn micro_weight(&self, step: u64, micro: usize) -> Result<usize> {
        self.micro_rows(step, micro)
    }

    /// Validation over every process (each may evaluate its share; all return the same).
    fn validate(&self, dp: &crate::distributed::DataParallel, at: EvalAt) -> Result<ValMetrics>;

    /// The split name of validation rows in `metrics.jsonl`.
    fn val_split(&self) -> &'static str {
        "val"
    }

    /// The best-model rule: which metric, which direction.
    fn selection(&self) -> Selection;

    /// Writes the model files of a checkpoint into `dir` (a staged folder).
    fn write_model(&self, dir: &Path) -> Result<()>;

    /// ZeRO-3: the decoder layers sharded over the processes (None: [`Self::params`] holds
    /// every parameter).
    fn sharded_layers(&self) -> Option<std::sync::Arc<crate::distributed::ShardedLayers>> {
        None
    }

    /// ZeRO-3: [`Self::write_model`] with the layer parameters gathered from every process.
    fn write_model_with(&self, _dir: &Path, _layers: Vec<(String, candle_core::Tensor)>) -> Result<()> {
        Err(crate::error::Error::Invalid("this task does not shard its layers (ZeRO-3)".into()))
    }

    /// Sets the weights from the model files of checkpoint `dir`, or back to the initial
    /// weights with None (a rollback before the first checkpoint).
    fn restore_weights(&self, dir: Option<&Path>) -> Result<()>;

    /// Called on rank 0 when a validation improved on the best: a task that exports its best
    /// model writes it here (the loop's checkpoint retention keeps the best checkpoint anyway).
    fn keep_best(&self, _run_dir: &Path) -> Result<()> {
        Ok(())
    }

    /// The header line the loop prints at the start: what is trained, on what.
    fn describe(&self) -> String;
}
