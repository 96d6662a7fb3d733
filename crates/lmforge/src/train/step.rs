//! One optimizer step's gradients, the same for training, fine-tuning and `lmforge bench`:
//! for each micro-batch, this process's rows → the task's loss → backward; gradients summed
//! over micro-batches (each weighted by its share of the step's rows), then over processes
//! (`DataParallel`, once, after the last micro-batch), then clipped to the global norm. The
//! caller applies them (or, by the fault policy, does not).

use super::task::Task;
use crate::distributed::DataParallel;
use crate::error::Result;
use crate::nn::{seed_for, DropoutRng};
use crate::optim::{clip_grad_norm, named_grads};
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
    /// The task's loss, read back as a number.
    Forward,
    Backward,
    /// Gradients collected by name, accumulated, all-reduced and clipped.
    Grads,
}

/// A step's gradients, ready for the optimizer.
pub struct StepGrads {
    /// The step's mean loss over every process and micro-batch.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub grads: BTreeMap<String, Tensor>,
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
    let inject_nan = crate::testhooks::inject_nan(s + 1);
    let vars = task.params().vars();
    let mut grads: Option<BTreeMap<String, Tensor>> = None;
    let mut loss_sum = 0.0f64;
    for (micro, (&global, &weight)) in rows.iter().zip(&weights).enumerate() {
        // This process's rows of the micro-batch.
        let mine = dp.local_range(global);
        if mine.is_empty() {
            continue;
        }
        let mut dropout = DropoutRng::new(at.dropout, seed_for(at.seed, &format!("dropout/{s}/{micro}")))
            .for_rows(mine.start, global);
        let mut loss = task.loss(s, micro, mine, &mut dropout)?;
        if inject_nan {
            loss = (loss * f64::NAN)?;
        }
        let value = loss.to_scalar::<f32>()? as f64;
        loss_sum += if equal { value } else { value * weight };
        lap(Phase::Forward);
        // Averaging over micro-batches: scale each loss so the summed gradient is the mean.
        let scaled = if weight == 1.0 { loss } else { (loss * weight)? };
        let backward = scaled.backward()?;
        lap(Phase::Backward);
        let g = named_grads(vars, &backward)?;
        grads = Some(match grads {
            None => g,
            Some(mut acc) => {
                for (k, v) in g {
                    let a = acc.get_mut(&k).expect("same names every micro-batch");
                    *a = (&*a + v)?;
                }
                acc
            }
        });
    }
    // A process whose share of every micro-batch was empty still takes part in the all-reduce.
    let mut grads = match grads {
        Some(g) => g,
        None => vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().zeros_like()?))).collect::<Result<_>>()?,
    };
    // Communication only now, after the last micro-batch: gradients and loss summed.
    let loss_sum = dp.all_reduce_grads(&mut grads, loss_sum)?;
    let grad_norm = clip_grad_norm(&mut grads, at.grad_clip)?;
    lap(Phase::Grads);
    let loss = if equal { loss_sum / at.grad_accum as f64 } else { loss_sum };
    Ok(StepGrads { loss, grad_norm, grads })
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
