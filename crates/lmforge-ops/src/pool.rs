//! The GPU's memory pool as candle allocates from it: its caching setting and what it holds.
//! candle allocates every CUDA tensor stream-ordered (`cuMemAllocAsync`) from the device's
//! current memory pool; the pool's attributes are the only exact account of what lmforge's
//! tensors hold on a GPU (cuBLAS's and NCCL's workspaces and the CUDA context are not in it).
//! lmforge's `device` module sets the caching and reads the peaks; the kernel tests read what
//! a node keeps.

use candle_core::Device;
use serde::Serialize;

/// High-water marks of a GPU's memory pool, in bytes, since the device was opened or
/// [`reset_peaks`]: `used`, the most memory live tensors held at once (as PyTorch's
/// `max_memory_allocated`), and `reserved`, the most the pool held (that plus freed memory kept
/// for reuse: what `nvidia-smi` shows, less the CUDA context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolPeaks {
    pub used: u64,
    pub reserved: u64,
}

/// Makes the pool keep what it reserves (the release threshold at its maximum), as PyTorch's
/// caching allocator: by default each synchronisation hands the pool's free memory back to the
/// driver and the next step maps it again. Nothing on the CPU; an error names what the driver
/// refused.
pub fn cache_allocations(device: &Device) -> Result<(), String> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        attribute(cuda, Attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, Some(u64::MAX)).map_err(|e| e.to_string())?;
    }
    let _ = device;
    Ok(())
}

/// The pool's high-water marks on `device`; None on the CPU, without CUDA, or where the driver
/// has no memory pools.
pub fn peaks(device: &Device) -> Option<PoolPeaks> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let read = |attr| attribute(cuda, attr, None).ok();
        return Some(PoolPeaks {
            used: read(Attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            reserved: read(Attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        });
    }
    let _ = device;
    None
}

/// Bytes live tensors hold in the pool now, once the device has run what was queued; None where
/// [`peaks`] is None.
pub fn in_use(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        device.synchronize().ok()?;
        return attribute(cuda, Attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None).ok();
    }
    let _ = device;
    None
}

/// Starts [`peaks`]' high-water marks again from what is in use and reserved now (as PyTorch's
/// `reset_peak_memory_stats`). Nothing on the CPU.
pub fn reset_peaks(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        for attr in [Attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH] {
            // The driver takes only zero: the mark restarts at the current value. Where it
            // refuses, the peaks include what came before (peaks then reads None anyway).
            let _ = attribute(cuda, attr, Some(0));
        }
    }
    let _ = device;
}

#[cfg(feature = "cuda")]
type Attribute = candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute;

/// Sets (`Some`) or reads (`None`) a 64-bit attribute of the memory pool candle allocates
/// `cuda`'s tensors from (the device's current pool); returns the attribute's value.
#[cfg(feature = "cuda")]
fn attribute(
    cuda: &candle_core::CudaDevice,
    attr: Attribute,
    set: Option<u64>,
) -> Result<u64, candle_core::cuda_backend::cudarc::driver::DriverError> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let dev = cuda.cuda_stream().context().cu_device();
    let mut value = set.unwrap_or(0);
    let ptr = (&mut value as *mut u64).cast();
    // SAFETY: `dev` is the device of a live context; the attributes passed here take a
    // cuuint64_t.
    unsafe {
        let pool = result::device::get_mem_pool(dev)?;
        match set {
            Some(_) => result::mem_pool::set_attribute(pool, attr, ptr)?,
            None => result::mem_pool::get_attribute(pool, attr, ptr)?,
        }
    }
    Ok(value)
}
