//! The token embedding — and any choice of rows that a loss reads (the answer positions of
//! completion-only fine-tuning, MLM's masked positions, token classification's labelled ones)
//! — as one op: rows of a (V, C) f32 table by u32 id, whose backward sums d out's rows into the
//! table's gradient by token. On the CPU lmforge keeps candle's
//! `index_select`, whose backward (`index_add`) walks the ids in order and is fast there. On a
//! GPU candle's `index_add` gives each of the C columns one thread that walks all N ids in turn
//! — C threads in all, N dependent steps each: for GPT-2 at 16 × 1024 tokens 768 threads on one
//! multiprocessor, 16,384 steps — where this op's backward (`cuda/embedding.cu`) sorts the
//! positions by (token, position) and gives each token's run of rows a block, which adds them
//! in position order: `index_add`'s additions in its order, no atomics, deterministic. The
//! op's CPU side runs the same arithmetic in plain loops (the oracle the tests compare with
//! candle's `index_select` gradient, and the GPU kernels with).

use super::cpu::{slice, slice_u32};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Rows `ids` (any shape, u32) of `table` (V, C) → (ids…, C), gradient to the table. A bf16
/// table on a GPU (hidden states whose chosen rows feed a loss) goes through the f32 op and back:
/// each row is copied, not summed, so nothing is rounded twice.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if !(super::cuda_kernels(table) && ids.dtype() == DType::U32) {
        let rows = table.index_select(&ids.flatten_all()?, 0)?;
        return rows.reshape(out_dims(ids, table)?);
    }
    let _span = super::profile::span("lmforge-embedding", super::profile::Pass::Forward);
    match table.dtype() {
        DType::F32 => apply(table, ids),
        dtype => apply(&table.to_dtype(DType::F32)?, ids)?.to_dtype(dtype),
    }
}

/// The op itself on any device (the CPU side for tests).
pub fn apply(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let rows = table.contiguous()?.apply_op2(&ids.flatten_all()?.contiguous()?, Embedding)?;
    rows.reshape(out_dims(ids, table)?)
}

fn out_dims(ids: &Tensor, table: &Tensor) -> Result<Vec<usize>> {
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    Ok(dims)
}

/// (table (V, C) f32, ids (N) u32) → (N, C).
struct Embedding;

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "lmforge-embedding"
    }

    fn cpu_fwd(&self, ts: &CpuStorage, tl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let (v, c) = tl.shape().dims2()?;
        let (table, ids) = (slice(ts, tl, self.name())?, slice_u32(is, il, self.name())?);
        let mut out = Vec::with_capacity(ids.len() * c);
        for &id in ids {
            let id = id as usize;
            if id >= v {
                bail!("{}: token id {id} is past the table's {v} rows", self.name());
            }
            out.extend_from_slice(&table[id * c..(id + 1) * c]);
        }
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ts: &candle_core::CudaStorage,
        tl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::embedding::rows((ts, tl), (is, il))
    }

    fn bwd(&self, table: &Tensor, ids: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = super::profile::span(self.name(), super::profile::Pass::Backward);
        let dy = dy.to_dtype(DType::F32)?.contiguous()?;
        let dtable = dy.apply_op2_no_bwd(ids, &EmbeddingGrad { rows: table.dim(0)? })?;
        Ok((Some(dtable), None))
    }
}

/// (dy (N, C) f32, ids (N) u32) → d table (rows, C): each token's rows of dy summed in order.
struct EmbeddingGrad {
    rows: usize,
}

impl CustomOp2 for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "lmforge-embedding-grad"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = dl.shape().dims2()?;
        let (dy, ids) = (slice(ds, dl, self.name())?, slice_u32(is, il, self.name())?);
        if ids.len() != n {
            bail!("{}: {} ids for {n} rows of d out", self.name(), ids.len());
        }
        let mut dtable = vec![0f32; self.rows * c];
        for (j, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id < self.rows {
                let row = &mut dtable[id * c..(id + 1) * c];
                row.iter_mut().zip(&dy[j * c..(j + 1) * c]).for_each(|(a, b)| *a += b);
            }
        }
        Ok((CpuStorage::F32(dtable), Shape::from((self.rows, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ds: &candle_core::CudaStorage,
        dl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::embedding::grad((ds, dl), (is, il), self.rows)
    }
}
