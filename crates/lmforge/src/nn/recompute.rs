//! Activation checkpointing: a block's forward becomes one graph node that keeps only its
//! input, and its backward runs the block again, this time with the graph, to get the
//! gradients. Memory for activations drops from every intermediate of every block to one
//! input per block plus one block's intermediates at a time; the price is a second forward
//! per block (about a third more compute).
//!
//! Candle's backward can only hand a node's gradient to that node's (at most three) inputs,
//! and a block has a dozen parameters, so the parameters' gradients from the recomputation
//! go to [`ops::param_grads`] instead; [`crate::optim::named_grads`] adds them to the
//! gradients of the outer backward. The dropout stream is replayed from a copy taken before
//! the block, so the recomputation draws the masks the forward drew. Any dtype, CPU or CUDA
//! (an `ops::node`: candle gets the output tensor's own storage).

use super::{DropoutRng, ParamStore};
use crate::error::Result;
use crate::ops::{node, param_grads};
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A block's forward: input, dropout generator (training) → output of the input's shape.
pub type BlockForward = dyn Fn(&Tensor, &mut Option<&mut DropoutRng>) -> Result<Tensor> + Send + Sync;

/// `block(x)`, checkpointed: the result's graph node keeps `x` only.
pub fn checkpointed(x: &Tensor, dropout: &mut Option<&mut DropoutRng>, block: Arc<BlockForward>) -> Result<Tensor> {
    let replay = dropout.as_deref().cloned();
    // The forward builds its graph as usual (the parameters are variables), then drops it
    // with everything it held: only the output's values are kept.
    let y = block(&x.detach(), dropout)?;
    recomputing_node(
        x,
        y,
        replay,
        "checkpointed block".into(),
        move |x, rng| Ok((block(x, rng)?, ())),
        |(), grads, x| {
            for id in grads.get_ids() {
                if *id != x.id() {
                    if let Some(g) = grads.get_id(*id) {
                        param_grads::add(*id, g.detach())?;
                    }
                }
            }
            Ok(())
        },
    )
}

/// The graph node of `y`, computed from `x` without keeping the graph: its backward runs
/// `run` again on a variable copy of `x` (the dropout stream as it was before the forward,
/// `replay`, drawn again), takes d/dθ Σ y·dy — the vector-Jacobian product the outer
/// backward asks for — hands the parameters' gradients to `keep` with what `run` returned
/// beside its output, and returns `x`'s gradient.
fn recomputing_node<S>(
    x: &Tensor,
    y: Tensor,
    replay: Option<DropoutRng>,
    what: String,
    run: impl Fn(&Tensor, &mut Option<&mut DropoutRng>) -> Result<(Tensor, S)> + Send + Sync + 'static,
    keep: impl Fn(S, &candle_core::backprop::GradStore, &Tensor) -> Result<()> + Send + Sync + 'static,
) -> Result<Tensor> {
    Ok(node::node1(x, y, move |x, dy| {
        let inner = || -> Result<Option<Tensor>> {
            let xv = Var::from_tensor(&x.detach())?;
            let mut rng = replay.clone();
            let (y, state) = run(xv.as_tensor(), &mut rng.as_mut())?;
            let grads = (y * dy.detach())?.sum_all()?.backward()?;
            keep(state, &grads, xv.as_tensor())?;
            Ok(grads.get(xv.as_tensor()).map(Tensor::detach))
        };
        inner().map_err(|e| candle_core::Error::Msg(format!("{what} backward: {e}")))
    })?)
}

/// Where a model's layers' weights come from when no process holds them all (ZeRO-3,
/// `distributed::zero3`): fetched for each use and let go after it.
pub trait LayerSource: Send + Sync {
    /// Layer `i`'s parameters as fresh variables, for one use (the source may fetch the
    /// layer that use says comes next ahead of time).
    fn layer(&self, i: usize, then: LayerUse) -> Result<ParamStore>;
    /// The gradients of one use of layer `i`'s parameters, by name (every parameter of the
    /// layer, zeros where the loss does not reach).
    fn layer_grads(&self, i: usize, grads: BTreeMap<String, Tensor>) -> Result<()>;
}

/// What a layer's weights are fetched for, which says whose come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerUse {
    /// A forward whose backward does not follow (evaluation): layer i + 1 next.
    Forward,
    /// A training forward: layer i + 1 next; after the last layer, the backward's
    /// recomputation of that layer.
    TrainingForward,
    /// The backward's recomputation: layer i − 1 next, none after the first.
    Backward,
}

impl LayerUse {
    /// The layer fetched after layer `i` of `n_layer` in this use, and that use.
    pub fn next(self, i: usize, n_layer: usize) -> Option<(usize, LayerUse)> {
        match self {
            LayerUse::Forward => (i + 1 < n_layer).then_some((i + 1, self)),
            LayerUse::TrainingForward if i + 1 < n_layer => Some((i + 1, self)),
            LayerUse::TrainingForward => Some((i, LayerUse::Backward)),
            LayerUse::Backward => i.checked_sub(1).map(|j| (j, self)),
        }
    }
}

/// A layer's forward given its parameters (from a [`LayerSource`]).
pub type LayerForward = dyn Fn(&ParamStore, &Tensor, &mut Option<&mut DropoutRng>) -> Result<Tensor> + Send + Sync;

/// Layer `i` of `source`, checkpointed: its parameters are fetched for the forward (`then`:
/// whether a backward follows) and let go with the forward's graph; the backward fetches them
/// again, runs the layer with its graph and hands the parameters' gradients to the source.
/// Only `x` is kept in between.
pub fn checkpointed_layer(
    x: &Tensor,
    dropout: &mut Option<&mut DropoutRng>,
    i: usize,
    then: LayerUse,
    source: Arc<dyn LayerSource>,
    forward: Arc<LayerForward>,
) -> Result<Tensor> {
    let replay = dropout.as_deref().cloned();
    let y = forward(&source.layer(i, then)?, &x.detach(), dropout)?;
    let fetch = source.clone();
    recomputing_node(
        x,
        y,
        replay,
        format!("sharded layer {i}"),
        move |x, rng| {
            let params = fetch.layer(i, LayerUse::Backward)?;
            Ok((forward(&params, x, rng)?, params))
        },
        move |params, grads, _| {
            let mut named = BTreeMap::new();
            for (name, v) in params.vars() {
                let g = match param_grads::gradient(v.as_tensor(), grads)? {
                    Some(g) => g.detach(),
                    None => v.as_tensor().zeros_like()?,
                };
                named.insert(name.clone(), g);
            }
            drop(params);
            source.layer_grads(i, named)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::LayerUse;
    use crate::models::{Decoder, ModelSpec};
    use crate::nn::{DropoutRng, InitScheme, ParamStore};
    use crate::optim::named_grads;
    use candle_core::{Device, Tensor};

    /// Loss and every gradient of one step, with or without checkpointing.
    fn step(preset: &str, p: f64, checkpointing: bool) -> (f32, Vec<(String, Vec<f32>)>) {
        let spec = ModelSpec::preset(preset).unwrap();
        let params = ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 3, &Device::Cpu).unwrap();
        let model = Decoder::new(&spec, &params).unwrap().with_activation_checkpointing(checkpointing);
        let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 37 % spec.vocab_size) as u32).collect();
        let ids = Tensor::from_vec(ids, (2, 17), &Device::Cpu).unwrap();
        let (x, y) = (ids.narrow(1, 0, 16).unwrap(), ids.narrow(1, 1, 16).unwrap());
        let mut dropout = DropoutRng::new(p, 11);
        let loss = model.loss(&x, &y, Some(&mut dropout)).unwrap();
        let grads = named_grads(params.vars(), &loss.backward().unwrap()).unwrap();
        let flat = grads.into_iter().map(|(k, g)| (k, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        (loss.to_scalar::<f32>().unwrap(), flat)
    }

    #[test]
    fn checkpointed_blocks_give_the_same_loss_and_gradients_to_the_bit() {
        // p = 0 runs the fused attention kernel, p > 0 the composed path with attention dropout.
        for (preset, p) in [("tiny", 0.0), ("tiny", 0.1), ("llama-tiny", 0.0), ("llama-tiny", 0.1)] {
            let (plain, ckpt) = (step(preset, p, false), step(preset, p, true));
            assert_eq!(plain.0.to_bits(), ckpt.0.to_bits(), "{preset}: loss");
            assert_eq!(plain.1.len(), ckpt.1.len());
            for ((name, a), (_, b)) in plain.1.iter().zip(&ckpt.1) {
                assert!(a.iter().any(|v| *v != 0.0), "{preset}: {name} gets a gradient");
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{preset}: gradient of {name}");
            }
        }
    }

    /// The order a training micro-batch fetches a 3-layer model's weights in: forward 0, 1, 2,
    /// then the backward's 2, 1, 0; evaluation stops after the forward.
    #[test]
    fn each_use_names_the_fetch_after_it() {
        let mut at = Some((0, LayerUse::TrainingForward));
        let mut seen = Vec::new();
        while let Some((i, u)) = at {
            seen.push((i, u));
            at = u.next(i, 3);
        }
        let (f, b) = (LayerUse::TrainingForward, LayerUse::Backward);
        assert_eq!(seen, [(0, f), (1, f), (2, f), (2, b), (1, b), (0, b)]);
        assert_eq!(LayerUse::Forward.next(1, 3), Some((2, LayerUse::Forward)));
        assert_eq!(LayerUse::Forward.next(2, 3), None);
    }
}
