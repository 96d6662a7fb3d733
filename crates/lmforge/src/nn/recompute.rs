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
//!
//! [`Checkpointing`] says which blocks: none, all, or the first `n` (Megatron-LM's
//! `--recompute-method block`), which trades memory for compute a block at a time.

use super::{DropoutRng, ParamStore};
use crate::error::Result;
use crate::ops::{node, param_grads};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Which decoder blocks recompute their activations in the backward. Configs write `false`,
/// `true` (every block) or a block count `n` (blocks `0..n`).
///
/// Why the first blocks: the backward reaches them last, so on the CPU — where the fused
/// sublayers free what they kept as their backward runs — the blocks after them have let go of
/// their activations before the first recomputation; on a GPU, where candle's graph holds every
/// kept tensor until the step ends, which blocks makes no difference to the peak. Each block
/// recomputed costs one more block forward (about a third of a block's step) and saves its
/// activations less its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    #[default]
    Off,
    All,
    /// The first `n` blocks (`n` ≥ 1; 0 is `Off`).
    First(usize),
}

impl Checkpointing {
    /// `n` blocks: 0 is off.
    pub fn first(n: usize) -> Self {
        if n == 0 {
            Self::Off
        } else {
            Self::First(n)
        }
    }

    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }

    pub fn is_on(&self) -> bool {
        !self.is_off()
    }

    /// How many of a model's `n_layer` blocks are recomputed.
    pub fn blocks(self, n_layer: usize) -> usize {
        match self {
            Self::Off => 0,
            Self::All => n_layer,
            Self::First(n) => n.min(n_layer),
        }
    }

    /// Whether block `i` of `n_layer` is recomputed.
    pub fn covers(self, i: usize, n_layer: usize) -> bool {
        i < self.blocks(n_layer)
    }

    /// Activations the blocks keep for the backward, in any unit (per token, bytes of a
    /// micro-batch): `n_layer` blocks each keeping `layer`, of which the recomputed ones keep
    /// only their `input`, plus one block's `layer` again while it is recomputed. Saturating, so
    /// a hostile size comes out as "too large".
    pub fn kept_activations(self, n_layer: usize, input: u64, layer: u64) -> u64 {
        let recomputed = self.blocks(n_layer) as u64;
        let plain = (n_layer as u64 - recomputed).saturating_mul(layer);
        let rebuilt = if recomputed > 0 { layer } else { 0 };
        recomputed.saturating_mul(input).saturating_add(plain).saturating_add(rebuilt)
    }

    /// A config error when a count names more blocks than the model has (`key` names it: a
    /// config key, or a command-line flag).
    pub fn check(self, n_layer: usize, key: &str) -> Result<()> {
        let every = if key.starts_with("--") { "the flag alone" } else { "`true`" };
        match self {
            Self::First(n) if n > n_layer => Err(crate::Error::config(
                key,
                format!("{n} blocks, but the model has {n_layer} ({every} recomputes every block)"),
            )),
            _ => Ok(()),
        }
    }
}

impl Checkpointing {
    /// How a report's setup line names it: nothing when off, ", activation checkpointing",
    /// or ", activation checkpointing of N blocks".
    pub fn setup_note(self) -> String {
        match self {
            Self::Off => String::new(),
            Self::All => ", activation checkpointing".into(),
            Self::First(1) => ", activation checkpointing of 1 block".into(),
            Self::First(n) => format!(", activation checkpointing of {n} blocks"),
        }
    }
}

impl fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::All => f.write_str("every block"),
            Self::First(1) => f.write_str("the first block"),
            Self::First(n) => write!(f, "the first {n} blocks"),
        }
    }
}

/// The command line's form: `all` / `true`, `off` / `false`, or a block count.
impl FromStr for Checkpointing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" | "true" => Ok(Self::All),
            "off" | "false" => Ok(Self::Off),
            n => n
                .parse::<usize>()
                .map(Self::first)
                .map_err(|_| format!("{s:?} is not `all`, `off` or a number of blocks")),
        }
    }
}

impl Serialize for Checkpointing {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::All => s.serialize_bool(true),
            Self::First(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Checkpointing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "true, false or a number of blocks")]
        enum Form {
            Switch(bool),
            Blocks(u64),
        }
        Ok(match Form::deserialize(d)? {
            Form::Switch(on) => {
                if on {
                    Self::All
                } else {
                    Self::Off
                }
            }
            Form::Blocks(n) => Self::first(usize::try_from(n).map_err(serde::de::Error::custom)?),
        })
    }
}

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
    use super::{Checkpointing, LayerUse};
    use crate::models::{Decoder, ModelSpec};
    use crate::nn::{DropoutRng, InitScheme, ParamStore};
    use crate::optim::named_grads;
    use candle_core::{Device, Tensor};

    /// Loss and every gradient of one step, with or without checkpointing.
    fn step(preset: &str, p: f64, checkpointing: Checkpointing) -> (f32, Vec<(String, Vec<f32>)>) {
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
        // p = 0 runs the fused attention kernel, p > 0 the composed path with attention dropout;
        // the first block alone recomputed mixes checkpointed and plain blocks in one step.
        for (preset, p) in [("tiny", 0.0), ("tiny", 0.1), ("llama-tiny", 0.0), ("llama-tiny", 0.1)] {
            let plain = step(preset, p, Checkpointing::Off);
            for checkpointing in [Checkpointing::All, Checkpointing::First(1)] {
                let ckpt = step(preset, p, checkpointing);
                assert_eq!(plain.0.to_bits(), ckpt.0.to_bits(), "{preset} {checkpointing}: loss");
                assert_eq!(plain.1.len(), ckpt.1.len());
                for ((name, a), (_, b)) in plain.1.iter().zip(&ckpt.1) {
                    assert!(a.iter().any(|v| *v != 0.0), "{preset}: {name} gets a gradient");
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{preset} {checkpointing}: gradient of {name}");
                }
            }
        }
    }

    #[test]
    fn a_block_count_recomputes_the_first_blocks() {
        let (off, all, two) = (Checkpointing::Off, Checkpointing::All, Checkpointing::first(2));
        assert_eq!(Checkpointing::first(0), off);
        assert_eq!([off.blocks(4), all.blocks(4), two.blocks(4), two.blocks(1)], [0, 4, 2, 1]);
        assert_eq!((0..4).map(|i| two.covers(i, 4)).collect::<Vec<_>>(), [true, true, false, false]);
        assert!(two.check(2, "k").is_ok() && all.check(1, "k").is_ok());
        // 4 blocks keeping 10 each, an input of 1: 40 off, 4 + 10 all, 2 + 2 × 10 + 10 two.
        assert_eq!([off, all, two].map(|c| c.kept_activations(4, 1, 10)), [40, 14, 32]);
        let e = Checkpointing::First(5).check(4, "train.activation_checkpointing").unwrap_err().to_string();
        assert!(e.contains("train.activation_checkpointing") && e.contains("5 blocks") && e.contains("has 4"), "{e}");
        for (text, want) in [("all", all), ("true", all), ("off", off), ("false", off), ("0", off), ("2", two)] {
            assert_eq!(text.parse::<Checkpointing>().unwrap(), want, "{text}");
        }
        assert!("-1".parse::<Checkpointing>().unwrap_err().contains("number of blocks"));
        assert_eq!(
            [off, all, two, Checkpointing::First(1)].map(Checkpointing::setup_note),
            [
                String::new(),
                ", activation checkpointing".into(),
                ", activation checkpointing of 2 blocks".into(),
                ", activation checkpointing of 1 block".into()
            ]
        );
    }

    #[test]
    fn configs_write_a_switch_or_a_block_count() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            c: Checkpointing,
        }
        for (text, want) in [
            ("c = true", Checkpointing::All),
            ("c = false", Checkpointing::Off),
            ("c = 3", Checkpointing::First(3)),
            ("c = 0", Checkpointing::Off),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.c, want, "{text}");
            assert_eq!(toml::from_str::<T>(&toml::to_string(&t).unwrap()).unwrap(), t, "round trip of {text}");
        }
        let e = toml::from_str::<T>("c = \"some\"").unwrap_err().to_string();
        assert!(e.contains("true, false or a number of blocks"), "{e}");
        assert!(toml::from_str::<T>("c = -2").is_err());
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
