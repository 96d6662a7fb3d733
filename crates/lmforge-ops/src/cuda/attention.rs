//! Launches `attention.cu`: scaled-dot-product attention forward (y and each row's
//! log-sum-exp) and backward (dq, dk, dv into one packed gradient), for [`crate::sdpa`]'s op on
//! a GPU. Operands are (B, T, W) storages read in place at a column and their strides, so the
//! packed qkv of GPT-2 needs no split; the kernel is picked by dtype and by the head dim's
//! compile-time bound (64, 128 or 256), bf16 at head dim 64 or 128 on tensor cores (mma.sync)
//! forward and backward when the operands' rows are 16-byte aligned.

use super::{cuda_storage, suffix, view, Args, Kernel, NULL};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, DType, Layout, Result, Storage, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) const IMAGE: super::Image = super::image!("attention");

use crate::sdpa::CUDA_MAX_HEAD_DIM as MAX_HEAD_DIM;

// attention.cu's tiling: threads a block, rows a block owns, keys and queries a tile streams.
const THREADS: u32 = 256;
const ROWS: usize = 64;
const KEYS: usize = 32;
const QUERIES: usize = 32;
// The tensor-core kernels' warps a block.
const TC_WARPS: usize = 4;
/// Shared memory a block may use without opting in.
const DEFAULT_SHARED: usize = 48 * 1024;

/// The attention's geometry: B, T, H query heads, K KV heads of width D; causal, or each batch
/// row seeing its first `key_lens[b]` keys.
pub struct Geometry<'a> {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kh: usize,
    pub d: usize,
    pub scale: f32,
    pub key_lens: Option<&'a [usize]>,
}

/// One (B, T, W) operand: storage, layout, and the column its head 0 starts at.
pub type Operand<'a> = (&'a CudaStorage, &'a Layout, usize);

/// Values from an operand's head-0 column on, with its batch and row strides.
struct Rows<'a, T: DeviceRepr> {
    data: CudaView<'a, T>,
    sb: i64,
    st: i64,
    /// Whether its first element and both strides are multiples of 8 elements.
    aligned: bool,
}

fn rows<'a, T: CudaDType + DeviceRepr + super::Elem>((s, l, col): Operand<'a>, op: &str) -> Result<Rows<'a, T>> {
    if l.dims().len() != 3 || l.stride()[2] != 1 {
        bail!("{op}: operand layout {l:?} is not (B, T, W) rows of contiguous features");
    }
    let data = s.as_cuda_slice::<T>()?.slice(l.start_offset() + col..);
    let aligned = [l.start_offset() + col, l.stride()[0], l.stride()[1]].iter().all(|n| n % 8 == 0);
    Ok(Rows { data, sb: l.stride()[0] as i64, st: l.stride()[1] as i64, aligned })
}

impl Geometry<'_> {
    fn kernel(&self, pass: &str, dtype: DType, op: &str) -> Result<String> {
        if self.d == 0 || self.d > MAX_HEAD_DIM || self.kh == 0 || self.h % self.kh != 0 {
            bail!("{op}: no CUDA kernel for head dim {} with {} / {} heads", self.d, self.h, self.kh);
        }
        let bound = [64, 128, 256].into_iter().find(|&m| self.d <= m).unwrap_or(MAX_HEAD_DIM);
        Ok(format!("attn_{pass}_{}_{bound}", suffix(dtype, op)?))
    }

    /// bf16 at head dim 64 or 128 runs the tensor-core kernels (the same arguments, four warps
    /// a block), when every operand row they copy 16 bytes at a time starts 16-byte aligned:
    /// `aligned` says whether the operands' offsets and strides are multiples of 8 elements
    /// (allocations themselves are aligned far more). `LMFORGE_CUDA_ATTENTION=scalar` turns them
    /// off.
    fn tensor_cores(&self, dtype: DType, aligned: bool) -> Result<bool> {
        Ok(tensor_cores_allowed()? && dtype == DType::BF16 && matches!(self.d, 64 | 128) && aligned)
    }

    /// A tensor-core kernel's launch: a 64-row bf16 tile of shared memory is 64·(D + 8)
    /// elements; `tiles` of them and `floats` f32 more (attention.cu's `tc_*_shared`).
    fn tc_launch(&self, heads: usize, tiles: usize, floats: usize) -> LaunchConfig {
        let mut cfg = self.launch_config(heads, 0);
        cfg.block_dim = (32 * TC_WARPS as u32, 1, 1);
        cfg.shared_mem_bytes = (2 * tiles * ROWS * (self.d + 8) + 4 * floats) as u32;
        cfg
    }

    /// The forward kernel and its launch.
    fn forward_kernel(&self, dtype: DType, aligned: bool, op: &str) -> Result<(String, LaunchConfig)> {
        let d = self.d;
        if self.tensor_cores(dtype, aligned)? {
            // Q, and two stages of K and V.
            return Ok((format!("attn_fwd_tc_bf16_{d}"), self.tc_launch(self.h, 5, 0)));
        }
        let shared = (ROWS + KEYS) * (d + 1) + ROWS * (KEYS + 1);
        Ok((self.kernel("fwd", dtype, op)?, self.launch_config(self.h, shared)))
    }

    /// The backward's dq and dk/dv kernels and their launches.
    fn backward_kernels(&self, dtype: DType, aligned: bool, op: &str) -> Result<[(String, LaunchConfig); 2]> {
        let d = self.d;
        if self.tensor_cores(dtype, aligned)? {
            return Ok([
                // Q, dY, and two stages of K and V.
                (format!("attn_bwd_dq_tc_bf16_{d}"), self.tc_launch(self.h, 6, 0)),
                // K, V, two stages of Q and dY, and two of the query tile's lse and delta.
                (format!("attn_bwd_dkdv_tc_bf16_{d}"), self.tc_launch(self.kh, 6, 2 * 2 * ROWS)),
            ]);
        }
        let ld = d + 1;
        let dq = (2 * ROWS + 2 * KEYS) * ld + ROWS * (KEYS + 1);
        let dkdv = (2 * ROWS + 2 * QUERIES) * ld + 2 * ROWS * (QUERIES + 1) + 2 * QUERIES;
        Ok([
            (self.kernel("bwd_dq", dtype, op)?, self.launch_config(self.h, dq)),
            (self.kernel("bwd_dkdv", dtype, op)?, self.launch_config(self.kh, dkdv)),
        ])
    }

    /// The arguments every kernel ends with: padded rows' key lengths are uploaded per call
    /// (B ints); causal kernels never read them and get a null pointer.
    fn tail(&self, dev: &CudaDevice) -> Result<Tail> {
        let lens = match self.key_lens {
            Some(l) => Some(dev.clone_htod(&l.iter().map(|&n| n as i32).collect::<Vec<_>>())?),
            None => None,
        };
        let causal = i32::from(self.key_lens.is_none());
        let ints = [causal, self.t as i32, self.h as i32, self.kh as i32, self.d as i32];
        Ok(Tail { lens, ints, scale: self.scale })
    }

    /// A block per `ROWS` rows of each of `heads` heads of each batch row, with `shared` bytes.
    fn launch_config(&self, heads: usize, shared_floats: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.t.div_ceil(ROWS) as u32, heads as u32, self.b as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (4 * shared_floats) as u32,
        }
    }
}

/// Whether `LMFORGE_CUDA_ATTENTION` lets the tensor-core kernels run (read once a process).
fn tensor_cores_allowed() -> Result<bool> {
    static ALLOWED: crate::Switch = std::sync::OnceLock::new();
    crate::read_switch(&ALLOWED, crate::sdpa::CUDA_ATTENTION_VAR, crate::sdpa::tensor_core_attention_allowed)
}

/// The kernels' last arguments: the key lengths (None when causal), the causal flag, T, H, K,
/// D, and the scale.
struct Tail {
    lens: Option<CudaSlice<i32>>,
    ints: [i32; 5],
    scale: f32,
}

impl Tail {
    fn push<'a>(&'a self, launch: &mut Args<'a>) {
        match &self.lens {
            Some(lens) => launch.arg(lens),
            None => launch.arg(&NULL),
        };
        for x in &self.ints {
            launch.arg(x);
        }
        launch.arg(&self.scale);
    }
}

/// The q, k, v operands, every kernel's first arguments.
fn push_operands<'a, T: DeviceRepr + super::Elem>(launch: &mut Args<'a>, operands: [&'a Rows<'a, T>; 3]) {
    for o in operands {
        launch.arg(&o.data);
        launch.arg(&o.sb);
        launch.arg(&o.st);
    }
}

/// The kernel `name`, allowed the shared memory `cfg` asks for (above 48 KiB a kernel must opt
/// in). The allowance is an attribute of the function, which every thread of the process
/// shares, so it only ever grows: set to one call's exact need, a thread launching with less
/// could lower it between another's setting and launch, and that launch would fail.
fn function(dev: &CudaDevice, name: &str, cfg: &LaunchConfig) -> Result<Kernel> {
    static ALLOWED: Mutex<Option<HashMap<(usize, String), u32>>> = Mutex::new(None);
    let func = super::kernel(dev, &IMAGE, name)?;
    let bytes = cfg.shared_mem_bytes;
    if bytes as usize > DEFAULT_SHARED {
        let mut allowed = ALLOWED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let ordinal = dev.cuda_stream().context().ordinal();
        let so_far = allowed.get_or_insert_with(HashMap::new).entry((ordinal, name.to_string())).or_insert(0);
        if *so_far < bytes {
            let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            func.function().set_attribute(attr, bytes as i32).w()?;
            *so_far = bytes;
        }
    }
    Ok(func)
}

/// y (B, T, H·D) in the operands' dtype and the (B, H, T) f32 log-sum-exp of every score row.
pub fn forward(op: &str, q: Operand, k: Operand, v: Operand, g: &Geometry) -> Result<(CudaStorage, Tensor)> {
    match q.0.dtype() {
        DType::BF16 => forward_as::<half::bf16>(op, q, k, v, g),
        _ => forward_as::<f32>(op, q, k, v, g),
    }
}

fn forward_as<T: CudaDType + DeviceRepr + super::Elem>(
    op: &str,
    q: Operand,
    k: Operand,
    v: Operand,
    g: &Geometry,
) -> Result<(CudaStorage, Tensor)> {
    let dev = q.0.device().clone();
    let dtype = q.0.dtype();
    let (q, k, v) = (rows::<T>(q, op)?, rows::<T>(k, op)?, rows::<T>(v, op)?);
    // SAFETY: the kernel writes every element of both (each row of each head once).
    let y = unsafe { dev.alloc::<T>(g.b * g.t * g.h * g.d)? };
    let lse = unsafe { dev.alloc::<f32>(g.b * g.h * g.t)? };
    let tail = g.tail(&dev)?;
    let (name, cfg) = g.forward_kernel(dtype, [&q, &k, &v].iter().all(|o| o.aligned), op)?;
    let func = function(&dev, &name, &cfg)?;
    let mut launch = func.builder();
    push_operands(&mut launch, [&q, &k, &v]);
    launch.arg(&y);
    launch.arg(&lse);
    tail.push(&mut launch);
    // SAFETY: the arguments match attn_fwd's signature (attention.cu).
    unsafe { launch.launch(cfg) }?;
    let lse = Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, dev.clone()));
    Ok((CudaStorage::wrap_cuda_slice(y, dev), Tensor::from_storage(lse, (g.b, g.h, g.t), BackpropOp::none(), false)))
}

/// The gradients of q, k and v as one (B, T, (H + 2K)·D) tensor in the operands' dtype (q's
/// columns, then k's, then v's), from y and dy (B, T, H·D) and the forward's log-sum-exp:
/// attn_delta's row terms, then attn_bwd_dq and attn_bwd_dkdv.
pub fn backward(
    op: &str,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    cols: [usize; 3],
    y: &Tensor,
    dy: &Tensor,
    lse: &Tensor,
    g: &Geometry,
) -> Result<Tensor> {
    let (y, dy) = (y.contiguous()?, dy.contiguous()?);
    let (qs, kst, vs) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
    let (ys, dys, lses) = (y.storage_and_layout(), dy.storage_and_layout(), lse.storage_and_layout());
    let operands = [
        (cuda_storage(&qs.0, op)?, qs.1, cols[0]),
        (cuda_storage(&kst.0, op)?, kst.1, cols[1]),
        (cuda_storage(&vs.0, op)?, vs.1, cols[2]),
    ];
    let stats =
        [(cuda_storage(&ys.0, op)?, ys.1), (cuda_storage(&dys.0, op)?, dys.1), (cuda_storage(&lses.0, op)?, lses.1)];
    let grad = match q.dtype() {
        DType::BF16 => backward_as::<half::bf16>(op, operands, stats, g)?,
        _ => backward_as::<f32>(op, operands, stats, g)?,
    };
    let width = (g.h + 2 * g.kh) * g.d;
    Ok(Tensor::from_storage(Storage::Cuda(grad), (g.b, g.t, width), BackpropOp::none(), false))
}

fn backward_as<T: CudaDType + DeviceRepr + super::Elem>(
    op: &str,
    [q, k, v]: [Operand; 3],
    [(ys, yl), (dys, dyl), (ls, ll)]: [(&CudaStorage, &Layout); 3],
    g: &Geometry,
) -> Result<CudaStorage> {
    let dev = q.0.device().clone();
    let dtype = q.0.dtype();
    let (q, k, v) = (rows::<T>(q, op)?, rows::<T>(k, op)?, rows::<T>(v, op)?);
    // dy (dense) starts where its layout does.
    let aligned = [&q, &k, &v].iter().all(|o| o.aligned) && dyl.start_offset() % 8 == 0;
    let [(dq_name, dq_cfg), (dkdv_name, dkdv_cfg)] = g.backward_kernels(dtype, aligned, op)?;
    let (y, dy, lse) = (view::<T>(ys, yl, op)?, view::<T>(dys, dyl, op)?, view::<f32>(ls, ll, op)?);

    // delta_i = dY_i · Y_i per row and head, (B, H, T) f32: a warp per row, 8 rows a block.
    let rows = g.b * g.t * g.h;
    // SAFETY: the kernel writes every row's value.
    let delta = unsafe { dev.alloc::<f32>(rows)? };
    let cfg =
        LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let func = function(&dev, &format!("attn_delta_{}", suffix(dtype, op)?), &cfg)?;
    let dims = [g.b, g.t, g.h, g.d].map(|n| n as i32);
    let mut launch = func.builder();
    launch.arg(&y);
    launch.arg(&dy);
    launch.arg(&delta);
    for x in &dims {
        launch.arg(x);
    }
    // SAFETY: the arguments match attn_delta's signature (attention.cu).
    unsafe { launch.launch(cfg) }?;

    let width = (g.h + 2 * g.kh) * g.d;
    // SAFETY: dq covers every row of every query head, dk and dv every row of every KV head.
    let grad = unsafe { dev.alloc::<T>(g.b * g.t * width)? };
    let (sb, st) = ((g.t * width) as i64, width as i64);
    let (dq, dk, dv) = (grad.slice(..), grad.slice(g.h * g.d..), grad.slice((g.h + g.kh) * g.d..));
    let tail = g.tail(&dev)?;

    let func = function(&dev, &dq_name, &dq_cfg)?;
    let mut launch = func.builder();
    push_operands(&mut launch, [&q, &k, &v]);
    launch.arg(&dy);
    launch.arg(&lse);
    launch.arg(&delta);
    launch.arg(&dq);
    launch.arg(&sb);
    launch.arg(&st);
    tail.push(&mut launch);
    // SAFETY: the arguments match attn_bwd_dq's signature (attention.cu).
    unsafe { launch.launch(dq_cfg) }?;

    let func = function(&dev, &dkdv_name, &dkdv_cfg)?;
    let mut launch = func.builder();
    push_operands(&mut launch, [&q, &k, &v]);
    launch.arg(&dy);
    launch.arg(&lse);
    launch.arg(&delta);
    launch.arg(&dk);
    launch.arg(&dv);
    launch.arg(&sb);
    launch.arg(&st);
    tail.push(&mut launch);
    // SAFETY: the arguments match attn_bwd_dkdv's signature (attention.cu).
    unsafe { launch.launch(dkdv_cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(grad, dev))
}
