//! Adafactor's factored update of one matrix, in place, through lmforge's CUDA kernels
//! (`cuda/adafactor.rs`): the parameter, its row and column second-moment state and (with β1)
//! its first moment. The composed update (`lmforge::optim::adafactor`, transformers' order of
//! operations) is the oracle and runs everywhere else: on the CPU, for vectors, and with the
//! reference kernels chosen.

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

/// One matrix's update: the (R, C) parameter and gradient, the (R) row and (C) column state,
/// the (R, C) first moment with β1.
pub struct AdafactorMatrix<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub row: &'a Tensor,
    pub col: &'a Tensor,
    pub exp_avg: Option<&'a Tensor>,
    pub step: AdafactorStep,
}
