//! Gradients of parameters computed outside candle's gradient store. Candle's backward hands
//! a node's gradient only to that node's (at most three) inputs, so ops that read more
//! parameters than that, or that re-run a piece of the model (the fused decoder sublayers in
//! [`super::sublayer`], activation checkpointing in `nn::recompute`), leave their parameters'
//! gradients here, keyed by the parameter tensor's id; [`gradient`] (through
//! `optim::named_grads`) adds them to the store's.
//!
//! Per thread: candle runs a backward on the calling thread, and parallel tests must not mix.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static GRADS: RefCell<HashMap<TensorId, Tensor>> = RefCell::new(HashMap::new());
}

/// Forgets gradients not taken (a failed step's); called when a training forward starts.
pub fn clear() {
    GRADS.with(|g| g.borrow_mut().clear());
}

/// Adds `grad` to the gradient held for the tensor with id `id`.
pub fn add(id: TensorId, grad: Tensor) -> Result<()> {
    GRADS.with(|g| -> Result<()> {
        let mut g = g.borrow_mut();
        let sum = match g.remove(&id) {
            Some(prev) => (prev + grad)?,
            None => grad,
        };
        g.insert(id, sum);
        Ok(())
    })
}

/// The gradient held for variable `v`, removed.
pub fn take(v: &Tensor) -> Option<Tensor> {
    GRADS.with(|g| g.borrow_mut().remove(&v.id()))
}

/// The gradient of `v` after a backward: the store's plus the one held here, either alone, or
/// None.
pub fn gradient(v: &Tensor, store: &GradStore) -> Result<Option<Tensor>> {
    Ok(match (store.get(v), take(v)) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, b) => a.cloned().or(b),
    })
}
