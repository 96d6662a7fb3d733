//! Adafactor's update of one parameter, in place, through lmforge's CUDA kernels
//! (`cuda/adafactor.rs`): the parameter, its second-moment state (a matrix's row and column
//! factors, a vector's full moment) and (with β1) its first moment. The composed update
//! (`lmforge::optim::adafactor`, transformers' order of operations) is the oracle and runs
//! everywhere else: on the CPU, for parameters of rank 3 or more, and with the reference
//! kernels chosen.

use candle_core::Tensor;

/// The scalars of one step, computed on the host as the composed update computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdafactorStep {
    /// Added to g² (transformers' `eps[0]`).
    pub eps1: f64,
    /// The floor of RMS(p) in the step size (`eps[1]`).
    pub eps2: f64,
    /// This step's second-moment decay, 1 − t^decay_rate.
    pub beta2t: f64,
    /// The step size before the parameter scale: the relative step, or the learning rate.
    pub rel: f64,
    /// The parameter group's learning-rate multiplier.
    pub lr_scale: f64,
    /// The step size scales with max(eps2, RMS(p)).
    pub scale_parameter: bool,
    /// The update is divided by max(1, RMS(U) / clip_threshold).
    pub clip_threshold: f64,
    pub weight_decay: f64,
    /// First-moment decay, when the optimizer keeps one.
    pub beta1: Option<f64>,
    /// The factor the gradient is taken with (gradient clipping's; 1 for none), applied as the
    /// kernels read it: the same f32 values as the gradient scaled first.
    pub grad_scale: f64,
}

/// A parameter's second-moment state, as Adafactor keeps it for the parameter's rank.
#[derive(Clone, Copy)]
pub enum SecondMoment<'a> {
    /// A (R, C) matrix's (R) row and (C) column factors.
    Factored { row: &'a Tensor, col: &'a Tensor },
    /// A vector's moment, one value an element.
    Full(&'a Tensor),
}

/// One parameter's update: the parameter and its gradient (a (R, C) matrix or a vector), its
/// second-moment state, its first moment with β1.
pub struct AdafactorUpdate<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub moment: SecondMoment<'a>,
    pub exp_avg: Option<&'a Tensor>,
    pub step: AdafactorStep,
}

impl AdafactorUpdate<'_> {
    /// Every tensor the update reads or writes.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut ts = vec![self.param, self.grad];
        match self.moment {
            SecondMoment::Factored { row, col } => ts.extend([row, col]),
            SecondMoment::Full(v) => ts.push(v),
        }
        ts.extend(self.exp_avg);
        ts
    }

    /// The parameter's rank matches its state's kind: 2 for factors, 1 for a full moment.
    pub fn rank_matches(&self) -> bool {
        let want = match self.moment {
            SecondMoment::Factored { .. } => 2,
            SecondMoment::Full(_) => 1,
        };
        self.param.rank() == want
    }
}
