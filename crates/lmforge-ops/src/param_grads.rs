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
//! While an [`Accumulating`] guard is alive, the gradients held here are summed over the
//! backward passes of a step's micro-batches, each added as the backward produces it: the step
//! holds one gradient per parameter and the one being added, not a micro-batch's whole set
//! beside the sum.
//!
//! Per thread: candle runs a backward on the calling thread, and parallel tests must not mix.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

thread_local! {
    static GRADS: RefCell<HashMap<TensorId, Tensor>> = RefCell::new(HashMap::new());
    static STREAM: RefCell<Option<(HashSet<TensorId>, Sink)>> = const { RefCell::new(None) };
    static ACCUMULATING: Cell<bool> = const { Cell::new(false) };
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

/// Forgets gradients not taken (a failed step's).
pub fn clear() {
    GRADS.with(|g| g.borrow_mut().clear());
}

/// Sums this thread's gradients over backward passes until dropped (what was held before is
/// forgotten; so is what is not taken by then).
#[must_use = "accumulation stops when the guard is dropped"]
pub struct Accumulating(());

/// From now until the guard drops, a training forward keeps the gradients held here
/// ([`forward_starts`]) and each backward adds to them: a step's micro-batches accumulate in
/// place, and the caller takes the sums after the last.
pub fn accumulate() -> Accumulating {
    clear();
    ACCUMULATING.with(|a| a.set(true));
    Accumulating(())
}

impl Drop for Accumulating {
    fn drop(&mut self) {
        ACCUMULATING.with(|a| a.set(false));
        clear();
    }
}

/// A training forward starts: gradients not taken are stale (a failed step's) and forgotten,
/// unless a step is [`accumulate`]-ing them.
pub fn forward_starts() {
    if !ACCUMULATING.with(Cell::get) {
        clear();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(t: Option<Tensor>) -> Option<Vec<f32>> {
        t.map(|t| t.to_vec1::<f32>().unwrap())
    }

    /// A training forward forgets gradients not taken, unless a step accumulates them: then
    /// each backward's add to the sum, and what is left when the guard drops is forgotten.
    #[test]
    fn an_accumulating_step_sums_backward_passes_a_forward_would_forget() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let id = v.as_tensor().id();
        let grad = |x: f32| Tensor::new(&[x, 2.0 * x], &Device::Cpu).unwrap();
        add(id, grad(1.0)).unwrap();
        forward_starts();
        assert_eq!(values(take(v.as_tensor())), None, "a failed step's gradient is stale");
        add(id, grad(7.0)).unwrap();
        {
            let _step = accumulate();
            assert_eq!(values(take(v.as_tensor())), None, "accumulation starts from nothing");
            add(id, grad(1.0)).unwrap();
            forward_starts(); // the next micro-batch
            add(id, grad(0.5)).unwrap();
            assert_eq!(values(take(v.as_tensor())), Some(vec![1.5, 3.0]));
            add(id, grad(3.0)).unwrap();
        }
        assert_eq!(values(take(v.as_tensor())), None, "what a step left is forgotten");
    }
}
