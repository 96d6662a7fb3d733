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
//! A linear layer's weight gradient comes as its product's operands ([`add_weight_grad`]): the
//! product is formed in f32 and, where a sum of this module's own is held, added into it in
//! place by the product itself ([`crate::weight_grad`]).
//!
//! Per thread: candle runs a backward on the calling thread, and parallel tests must not mix.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

/// A gradient held here, and whether its buffer is this module's own (a sum or a product it
/// made), so that a product may be added to it in place: a tensor handed to [`add`] may share
/// its storage with the caller's.
struct Held {
    grad: Tensor,
    own: bool,
}

thread_local! {
    static GRADS: RefCell<HashMap<TensorId, Held>> = RefCell::new(HashMap::new());
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
    hold(id, grad, false)
}

/// [`add`], `own` when `grad` is a buffer nothing else refers to.
fn hold(id: TensorId, grad: Tensor, own: bool) -> Result<()> {
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
        let held = match g.remove(&id) {
            Some(prev) => Held { grad: (prev.grad + grad)?, own: true },
            None => Held { grad, own },
        };
        g.insert(id, held);
        Ok(())
    })
}

/// Adds the gradient Pᵀ·Q (f32) of the weight `w` (m, n) — a linear layer's from its rows:
/// P = x and Q = dy for an (in, out) weight, P = dy and Q = x for nn.Linear's (out, in) — to
/// what is held for it, or streams it. Where this module holds a sum of its own (a step's
/// earlier micro-batches), the product adds itself into it in place; otherwise it is a new f32
/// tensor, formed in f32 from operands of any dtype the ops take ([`crate::weight_grad`]:
/// f32, and bf16 on a GPU), and composed (the product in the operands' dtype, cast) elsewhere.
pub fn add_weight_grad(w: &Tensor, p: &Tensor, q: &Tensor) -> Result<()> {
    use crate::weight_grad::{add_to, applies};
    let id = w.id();
    let streamed = STREAM.with(|s| s.borrow().as_ref().is_some_and(|(ids, _)| ids.contains(&id)));
    let own_sum = || GRADS.with(|g| g.borrow().get(&id).filter(|h| h.own).map(|h| h.grad.clone()));
    match own_sum() {
        Some(sum) if !streamed && applies(p.dtype(), p.device())? => add_to(Some(sum), p, q).map(drop),
        // A new f32 product (composed where the ops do not apply), added as any gradient.
        _ => hold(id, add_to(None, p, q)?.reshape(w.dims())?, true),
    }
}

/// The gradient held for variable `v`, removed.
pub fn take(v: &Tensor) -> Option<Tensor> {
    GRADS.with(|g| g.borrow_mut().remove(&v.id()).map(|h| h.grad))
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
    use candle_core::{DType, Device, Var};

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

    /// A weight's gradients from its products: the first a new f32 tensor, the next added into
    /// it in place while a step accumulates (the sum keeps its buffer); a gradient handed in by
    /// a caller is never written in place (its storage may be the caller's), it is summed
    /// into a new buffer first.
    #[test]
    fn weight_gradients_add_in_place_only_into_sums_of_their_own() {
        let dev = Device::Cpu;
        let w = Var::zeros((3, 2), DType::F32, &dev).unwrap();
        let (w, id) = (w.as_tensor(), w.as_tensor().id());
        let p = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev).unwrap(); // (rows 2, m 3)
        let q = Tensor::new(&[[1f32, 0.5], [-1.0, 2.0]], &dev).unwrap(); // (rows 2, n 2)
        let product = p.t().unwrap().matmul(&q).unwrap().to_vec2::<f32>().unwrap();
        let times = |k: f32| product.iter().map(|r| r.iter().map(|x| x * k).collect::<Vec<_>>()).collect::<Vec<_>>();
        let _step = accumulate();
        add_weight_grad(w, &p, &q).unwrap();
        let first = GRADS.with(|g| g.borrow()[&id].grad.clone());
        add_weight_grad(w, &p, &q).unwrap();
        assert_eq!(first.to_vec2::<f32>().unwrap(), times(2.0), "added in place: the first buffer holds the sum");
        assert_eq!(take(w).unwrap().to_vec2::<f32>().unwrap(), times(2.0));
        let callers = Tensor::new(&[[1f32, 1.0], [1.0, 1.0], [1.0, 1.0]], &dev).unwrap();
        add(id, callers.clone()).unwrap();
        add_weight_grad(w, &p, &q).unwrap();
        add_weight_grad(w, &p, &q).unwrap();
        assert_eq!(callers.to_vec2::<f32>().unwrap(), vec![vec![1.0; 2]; 3], "the caller's tensor is not written");
        let want: Vec<Vec<f32>> = times(2.0).iter().map(|r| r.iter().map(|x| x + 1.0).collect()).collect();
        assert_eq!(take(w).unwrap().to_vec2::<f32>().unwrap(), want);
    }
}
