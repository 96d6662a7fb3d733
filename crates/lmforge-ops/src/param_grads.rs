//! Gradients of parameters computed outside candle's gradient store. Candle's backward hands
//! a node's gradient only to that node's (at most three) inputs, so ops that read more
//! parameters than that, or that re-run a piece of the model (the fused decoder sublayers in
//! [`super::sublayer`], activation checkpointing in `nn::recompute`), leave their parameters'
//! gradients here, keyed by the parameter tensor's id; [`gradient`] (through
//! `optim::named_grads`) adds them to the store's.
//!
//! While a [`Streaming`] guard is alive, the gradients of the parameters it names go to its
//! channel the moment the backward produces them instead of waiting here: data parallelism
//! reduces a layer's gradients while the backward goes on through the layers before it.
//!
//! Per thread: candle runs a backward on the calling thread, and parallel tests must not mix.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

thread_local! {
    static GRADS: RefCell<HashMap<TensorId, Tensor>> = RefCell::new(HashMap::new());
    static STREAM: RefCell<Option<(HashSet<TensorId>, Sink)>> = const { RefCell::new(None) };
}

/// Where [`stream`] sends gradients; false when the receiver has stopped.
pub type Sink = Box<dyn Fn(TensorId, Tensor) -> bool>;

/// Streams this thread's gradients of `ids` to `to` until dropped.
#[must_use = "streaming stops when the guard is dropped"]
pub struct Streaming(());

/// From now until the guard drops, every gradient of a tensor in `ids` handed to [`add`] on
/// this thread goes to `to` (the receiver sums repeats) instead of being held here.
pub fn stream(ids: HashSet<TensorId>, to: Sink) -> Streaming {
    STREAM.with(|s| *s.borrow_mut() = Some((ids, to)));
    Streaming(())
}

impl Drop for Streaming {
    fn drop(&mut self) {
        STREAM.with(|s| *s.borrow_mut() = None);
    }
}

/// Forgets gradients not taken (a failed step's); called when a training forward starts.
pub fn clear() {
    GRADS.with(|g| g.borrow_mut().clear());
}

/// Adds `grad` to the gradient held for the tensor with id `id` (or streams it).
pub fn add(id: TensorId, grad: Tensor) -> Result<()> {
    // The gradient back when it is not streamed.
    let kept = STREAM.with(|s| match &*s.borrow() {
        Some((ids, to)) if ids.contains(&id) => match to(id, grad) {
            true => Ok(None),
            false => Err(candle_core::Error::Msg("the gradients' receiver has stopped".into())),
        },
        _ => Ok(Some(grad)),
    })?;
    let Some(grad) = kept else { return Ok(()) };
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
