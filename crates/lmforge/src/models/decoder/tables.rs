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
    /// The blocks, padded with zero rows to a multiple of [`PRODUCT_ROWS`], and V.
    Quantized(Arc<QTensor>, Arc<QMatMul>, usize),
}

/// candle multiplies by GGML blocks through its repacked x86 kernels only when the matrix has a
/// multiple of 16 rows; other row counts (a vocabulary of 50,257) take its generic kernel, which
/// streamed a q8_0 GPT-2 head at a third of the repacked rate. Zero rows are all-zero blocks
/// (scale 0) in every GGML type, and their logits are cut off.
const PRODUCT_ROWS: usize = 16;

/// `q` (V, C) with zero rows appended up to a multiple of [`PRODUCT_ROWS`] (as is when it has one).
fn padded(q: &Arc<QTensor>) -> Result<Arc<QTensor>> {
    let (v, c) = q.shape().dims2()?;
    let rows = v.next_multiple_of(PRODUCT_ROWS);
    if rows == v || !q.device().is_cpu() {
        return Ok(q.clone());
    }
    let mut raw = q.data()?.into_owned();
    let row_bytes = raw.len() / v;
    raw.resize(rows * row_bytes, 0);
    Ok(Arc::new(candle_core::quantized::ggml_file::qtensor_from_ggml(q.dtype(), &raw, vec![rows, c], &q.device())?))
}

impl TokenTable {
    pub(super) fn of(p: &ParamStore, name: &str) -> Result<Self> {
        Ok(match p.quantized(name) {
            Some(q) => {
                let blocks = padded(q)?;
                Self::Quantized(blocks.clone(), Arc::new(QMatMul::from_arc(blocks)?), q.shape().dims2()?.0)
            }
            None => Self::Dense(p.get(name)?),
        })
    }

    /// Rows `ids` (N) → (N, C).
    pub(super) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(t) => crate::ops::embedding(t, ids)?,
            Self::Quantized(q, ..) => q.embedding(ids)?,
        })
    }

    pub(super) fn device(&self) -> candle_core::Device {
        match self {
            Self::Dense(t) => t.device().clone(),
            Self::Quantized(q, ..) => q.device(),
        }
    }
}
