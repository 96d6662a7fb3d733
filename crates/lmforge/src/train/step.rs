//! One optimizer step's gradients, the same for training, fine-tuning and `lmforge bench`:
//! for each micro-batch, this process's rows → the task's loss → backward; gradients summed
//! over micro-batches (each weighted by its share of the step's rows), then over processes
//! (`DataParallel`: during the backward with `distributed.overlap`, else once after the last
//! micro-batch; with ZeRO-2 each micro-batch's reduce-scattered), and the factor that clips
//! them to the global norm, which the optimizer folds into its update. The caller applies them
//! (or, by the fault policy, does not).
//!
//! Without data parallelism's per-micro-batch reductions a step holds one gradient per
//! parameter as it goes: what fused sublayers and checkpointed blocks produce is added in place
//! as the backward produces it (`param_grads::accumulate`), and only the rest (embeddings, the
//! head, what the composed ops compute) is held a second time, as each micro-batch's store,
//! until it is added.
//!
//! The micro-batches' losses stay on their device until the step's gradients are complete and
//! are read back together, once: a read is a wait for the device (a GPU's stream), and one
//! between a forward and its backward would leave the GPU idle while the backward is queued.

use super::task::Task;
use crate::distributed::DataParallel;
use crate::error::{Error, Result};
use crate::nn::{seed_for, DropoutRng};
use crate::ops;
use crate::optim::{clip_scale, named_grads, store_grads, sum_of_squares, with_held_grads};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Where a step is and how it is cut.
#[derive(Debug, Clone, Copy)]
pub struct StepAt {
    /// 0-based optimizer step.
    pub step: u64,
    pub grad_accum: usize,
    /// The run's seed: dropout masks are drawn from (seed, step, micro-batch).
    pub seed: u64,
    pub dropout: f64,
    /// Global-norm clipping threshold (0: off).
    pub grad_clip: f64,
}

/// The phases of a step, for timing (`lmforge bench train --profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The task's loss computed (queued, on a GPU).
    Forward,
    Backward,
    /// Gradients collected by name, accumulated, all-reduced, their norm and clipping factor found.
    Grads,
}

/// A step's gradients, ready for the optimizer.
pub struct StepGrads {
    /// The step's mean loss over every process and micro-batch.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// As reduced, not clipped: the update multiplies them by `grad_scale`.
    pub grads: BTreeMap<String, Tensor>,
    /// Clipping's factor ([`clip_scale`]; 1 within the norm), which the optimizer folds into
    /// its update ([`crate::optim::Optimizer::step_scaled`]).
    pub grad_scale: f64,
}

impl StepGrads {
    fn new(loss: f64, grad_norm: f64, grads: BTreeMap<String, Tensor>, max_norm: f64) -> Self {
        StepGrads { loss, grad_norm, grads, grad_scale: clip_scale(grad_norm, max_norm) }
    }
}

/// Each micro-batch's weight in the step: its share of the step's rows (or trained tokens,
/// [`Task::micro_weight`]); 1 / grad_accum when they are equal, the usual case, which keeps
/// the arithmetic of equal micro-batches exact.
fn micro_weights(rows: &[usize]) -> Vec<f64> {
    let total: usize = rows.iter().sum();
    rows.iter().map(|&r| r as f64 / total.max(1) as f64).collect()
}

/// The gradients of step `at.step`; `lap` is called as each phase ends.
pub fn gradients(task: &dyn Task, dp: &DataParallel, at: StepAt, lap: &mut dyn FnMut(Phase)) -> Result<StepGrads> {
    let s = at.step;
    let rows: Vec<usize> = (0..at.grad_accum).map(|m| task.micro_rows(s, m)).collect::<Result<_>>()?;
    let sizes: Vec<usize> = (0..at.grad_accum).map(|m| task.micro_weight(s, m)).collect::<Result<_>>()?;
    let weights = micro_weights(&sizes);
    let equal = sizes.windows(2).all(|w| w[0] == w[1]);
    dp.set_step(s);
    let micros = Micros { task, dp, at, rows, weights, equal };
    if dp.overlaps() {
        return micros.overlapped(lap);
    }
    if dp.reduces_every_micro_batch() {
        return micros.sharded(lap);
    }
    // The gradients fused sublayers and checkpointed blocks produce (a decoder's layers') are
    // summed in place as each backward produces them; candle's stores' (the rest) are summed
    // here. A process whose share of every micro-batch was empty gets zeros: it still takes
    // part in the all-reduce.
    let vars = task.params().vars();
    let accumulating = ops::param_grads::accumulate();
    let mut from_stores: Option<BTreeMap<String, Tensor>> = None;
    let mut losses = Vec::with_capacity(at.grad_accum);
    for micro in 0..at.grad_accum {
        if let Some((store, loss)) = micros.backward(micro, lap)? {
            losses.push(loss);
            accumulate(&mut from_stores, store_grads(vars, &store))?;
        }
    }
    let mut grads = with_held_grads(vars, from_stores.unwrap_or_default())?;
    drop(accumulating);
    let loss_sum = micros.loss_sum(&losses)?;
    // Communication only now, after the last micro-batch: gradients and loss summed.
    let loss_sum = dp.all_reduce_grads(&mut grads, loss_sum)?;
    let grad_norm = sum_of_squares(&grads)?.sqrt();
    lap(Phase::Grads);
    Ok(StepGrads::new(micros.mean(loss_sum), grad_norm, grads, at.grad_clip))
}

/// Adds `g` into `acc` (or starts it; a name `acc` lacks starts there).
fn accumulate(acc: &mut Option<BTreeMap<String, Tensor>>, g: BTreeMap<String, Tensor>) -> Result<()> {
    match acc {
        None => *acc = Some(g),
        Some(acc) => {
            for (k, v) in g {
                match acc.get_mut(&k) {
                    Some(a) => *a = (&*a + v)?,
                    None => {
                        acc.insert(k, v);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A micro-batch's loss as its forward left it (a scalar on the model's device), and its weight
/// in the step's mean when micro-batches are unequal.
struct MicroLoss {
    loss: Tensor,
    weight: Option<f64>,
}

impl MicroLoss {
    /// The loss's share of the step's sum, from its value read back.
    fn weighted(&self, value: f32) -> f64 {
        match self.weight {
            None => value as f64,
            Some(w) => value as f64 * w,
        }
    }
}

/// A step's micro-batches as this process computes them.
struct Micros<'a> {
    task: &'a dyn Task,
    dp: &'a DataParallel,
    at: StepAt,
    /// Rows of each global micro-batch, and each one's weight in the step.
    rows: Vec<usize>,
    weights: Vec<f64>,
    equal: bool,
}

impl Micros<'_> {
    /// This process's gradients of micro-batch `micro` (already weighted) and its loss; None
    /// when the process has no rows of it.
    fn local(&self, micro: usize, lap: &mut dyn FnMut(Phase)) -> Result<Option<(BTreeMap<String, Tensor>, MicroLoss)>> {
        match self.backward(micro, lap)? {
            Some((store, loss)) => Ok(Some((named_grads(self.task.params().vars(), &store)?, loss))),
            None => Ok(None),
        }
    }

    /// Micro-batch `micro`'s forward and backward on this process's rows: the gradient store
    /// (weighted) and the loss, not yet read; None when the process has no rows of it.
    fn backward(&self, micro: usize, lap: &mut dyn FnMut(Phase)) -> Result<Option<(GradStore, MicroLoss)>> {
        let (s, global, weight) = (self.at.step, self.rows[micro], self.weights[micro]);
        let mine = self.dp.local_range(global);
        if mine.is_empty() {
            if self.dp.stage() == 3 {
                // Every process must run every layer's gathers and reduce-scatters.
                return Err(Error::Distributed(format!(
                    "ZeRO-3: micro-batch {micro} of step {} has {global} rows, fewer than the {} processes",
                    s + 1,
                    self.dp.world_size()
                )));
            }
            return Ok(None);
        }
        let mut dropout = DropoutRng::new(self.at.dropout, seed_for(self.at.seed, &format!("dropout/{s}/{micro}")))
            .for_rows(mine.start, global);
        let mut loss = self.task.loss(s, micro, mine, &mut dropout)?;
        if crate::testhooks::inject_nan(s + 1) {
            loss = (loss * f64::NAN)?;
        }
        let value = MicroLoss { loss: loss.detach(), weight: if self.equal { None } else { Some(weight) } };
        lap(Phase::Forward);
        // Averaging over micro-batches: scale each loss so the summed gradient is the mean.
        let scaled = if weight == 1.0 { loss } else { (loss * weight)? };
        let store = scaled.backward()?;
        lap(Phase::Backward);
        Ok(Some((store, value)))
    }

    /// The sum of the micro-batches' (weighted) losses, their values read back in one go.
    fn loss_sum(&self, losses: &[MicroLoss]) -> Result<f64> {
        if losses.is_empty() {
            return Ok(0.0);
        }
        let tensors: Vec<Tensor> = losses.iter().map(|l| l.loss.reshape(())).collect::<candle_core::Result<_>>()?;
        let values = Tensor::stack(&tensors, 0)?.to_vec1::<f32>()?;
        Ok(losses.iter().zip(values).map(|(l, v)| l.weighted(v)).sum())
    }

    /// [`Self::local`], or zeros and no loss for a micro-batch this process has no rows of
    /// (it still takes part in the micro-batch's reduction).
    fn local_or_zeros(
        &self,
        micro: usize,
        lap: &mut dyn FnMut(Phase),
    ) -> Result<(BTreeMap<String, Tensor>, Option<MicroLoss>)> {
        match self.local(micro, lap)? {
            Some((grads, loss)) => Ok((grads, Some(loss))),
            None => Ok((self.zeros()?, None)),
        }
    }

    /// Zero gradients: a process's share of a micro-batch it has no rows of.
    fn zeros(&self) -> Result<BTreeMap<String, Tensor>> {
        self.task.params().vars().iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().zeros_like()?))).collect()
    }

    /// The step's mean loss from the sum over processes and micro-batches.
    fn mean(&self, loss_sum: f64) -> f64 {
        if self.equal {
            loss_sum / self.at.grad_accum as f64
        } else {
            loss_sum
        }
    }

    /// The step's gradients reduced by `DataParallel`'s communication thread while the
    /// backward runs: all-reduced (ZeRO 0/1; the loss summed with them) or reduce-scattered
    /// (ZeRO-2; this process's share).
    fn overlapped(&self, lap: &mut dyn FnMut(Phase)) -> Result<StepGrads> {
        let dp = self.dp;
        // The communication thread sums each micro-batch's loss with its gradients: read after
        // the backward is queued.
        let reduced = dp.reduce_during_backward(self.at.grad_accum, |m| match self.backward(m, lap)? {
            Some((store, loss)) => Ok(Some((store, self.loss_sum(&[loss])?))),
            None => Ok(None),
        })?;
        let grads = reduced.grads;
        let (loss_sum, grad_norm) = if dp.reduces_every_micro_batch() {
            dp.finish_sharded(&grads, reduced.loss)?
        } else {
            (reduced.loss, sum_of_squares(&grads)?.sqrt())
        };
        lap(Phase::Grads);
        Ok(StepGrads::new(self.mean(loss_sum), grad_norm, grads, self.at.grad_clip))
    }

    /// ZeRO-2 without overlap, and ZeRO-3: each micro-batch's gradients reduce-scattered as
    /// soon as its backward ends, only this process's share accumulated (ZeRO-3's layers'
    /// during the backward).
    fn sharded(&self, lap: &mut dyn FnMut(Phase)) -> Result<StepGrads> {
        let dp = self.dp;
        let mut losses = Vec::with_capacity(self.at.grad_accum);
        let mut share: Option<BTreeMap<String, Tensor>> = None;
        for micro in 0..self.at.grad_accum {
            let (g, loss) = self.local_or_zeros(micro, lap)?;
            losses.extend(loss);
            accumulate(&mut share, dp.reduce_scatter_grads(&g)?)?;
        }
        let loss_sum = self.loss_sum(&losses)?;
        let mut grads = share.unwrap_or_default();
        // ZeRO-3: the layers' gradients were reduce-scattered during the backward passes.
        grads.extend(dp.take_layer_grads()?);
        let (loss_sum, grad_norm) = dp.finish_sharded(&grads, loss_sum)?;
        lap(Phase::Grads);
        Ok(StepGrads::new(self.mean(loss_sum), grad_norm, grads, self.at.grad_clip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_micro_batches_weigh_exactly_one_over_their_count() {
        for k in 1..=7usize {
            let w = micro_weights(&vec![12; k]);
            assert!(w.iter().all(|&x| x == 1.0 / k as f64), "{k}: {w:?}");
        }
        assert_eq!(micro_weights(&[6, 2]), vec![0.75, 0.25]);
        assert_eq!(micro_weights(&[5, 0]), vec![1.0, 0.0]);
    }
}
