//! The decoder's token tables (embedding, LM head), dense or in GGML blocks.

use crate::error::Result;
use crate::nn::ParamStore;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::Tensor;
use std::sync::Arc;

/// A (V, C) table of token vectors (the embedding, the LM head): dense, or GGML blocks (a
/// `.gguf` model) whose rows are looked up and whose products run quantized.
#[derive(Clone)]
pub(super) enum TokenTable {
    Dense(Tensor),
    Quantized(Arc<QTensor>, Arc<QMatMul>),
}

impl TokenTable {
    pub(super) fn of(p: &ParamStore, name: &str) -> Result<Self> {
        Ok(match p.quantized(name) {
            Some(q) => Self::Quantized(q.clone(), Arc::new(QMatMul::from_arc(q.clone())?)),
            None => Self::Dense(p.get(name)?),
        })
    }

    /// Rows `ids` (N) → (N, C).
    pub(super) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(t) => t.index_select(ids, 0)?,
            Self::Quantized(q, _) => q.embedding(ids)?,
        })
    }

    pub(super) fn device(&self) -> candle_core::Device {
        match self {
            Self::Dense(t) => t.device().clone(),
            Self::Quantized(q, _) => q.device(),
        }
    }
}
