//! Where tensors live and in what precision: the one place a device and a precision are
//! decided. `train.device` (`cpu` | `cuda` | `cuda:N` | `auto`) and `train.precision` (`fp32` |
//! `bf16-mixed`) resolve here into a [`Placement`] that model construction, the training loop,
//! evaluation, generation and the benchmark all take; the commands' `--device` flags resolve
//! through the same function. A choice this binary cannot run is an error naming the key and
//! how to get a build that can, before anything is written. Checkpoints do not depend on the
//! placement: weights are saved as fp32 from whatever device holds them.

use crate::error::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// A device as a config or a flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A CUDA GPU when this binary was built with CUDA and one is present, else the CPU; under
    /// an MPI launcher, GPU `local rank` (one process per GPU).
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceChoice {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("invalid value {s:?}; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
            },
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Auto => "auto".into(),
            Self::Cpu => "cpu".into(),
            Self::Cuda(0) => "cuda".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    /// The device, or an error naming `key` (the config key or flag it came from).
    pub fn resolve(self, key: &str) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(auto_device()),
            Self::Cuda(n) => cuda_device(n, key),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// With several processes of a job on this machine, each takes its own GPU (its local rank),
/// as one process per GPU wants.
#[cfg(feature = "cuda")]
fn auto_device() -> Device {
    open_cuda(crate::distributed::local_rank()).unwrap_or(Device::Cpu)
}

#[cfg(not(feature = "cuda"))]
fn auto_device() -> Device {
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn cuda_device(n: usize, key: &str) -> Result<Device> {
    // candle's error carries a backtrace after its first line: the first line says it.
    open_cuda(n).map_err(|e| {
        let e = e.to_string();
        Error::config(key, format!("\"cuda:{n}\" cannot be opened: {}", e.lines().next().unwrap_or("")))
    })
}

/// GPU `n` with one CUDA stream that every thread launches on, and a caching allocator.
///
/// candle's `Device::new_cuda` gives each *thread* its own stream (the per-thread default
/// stream): kernels the training thread queues and an NCCL collective a communication thread
/// queues on "the device's stream" would run unordered, and a tensor freed on another thread
/// would go back to the pool on that thread's stream. One explicit stream orders everything in
/// submission order. With an explicit stream cudarc would record and wait on CUDA events around
/// every kernel argument to order streams against each other; with one stream there is nothing
/// to order, so its event tracking is off (it also created two events per tensor).
#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> candle_core::Result<Device> {
    let cuda = candle_core::CudaDevice::new_with_stream(n)?;
    // SAFETY: lmforge creates no other stream on this device: every kernel, copy, free and
    // NCCL call goes to this one stream, in the order the threads submit them.
    unsafe { cuda.disable_event_tracking() };
    Ok(caching_allocations(Device::Cuda(cuda)))
}

/// Makes the GPU's allocator a caching one, as PyTorch's: candle allocates every tensor from
/// the device's stream-ordered memory pool (`cuMemAllocAsync`), whose release threshold is 0 by
/// default, so each synchronisation (a loss read back, the clipping norm) hands the pool's free
/// memory back to the driver and the next step maps it again. With the threshold at its maximum
/// the pool keeps what it has reserved: a step's allocations are served from memory freed by the
/// previous one, and the reserved total stays at the run's high-water mark (what `nvidia-smi`
/// shows and `plan --gpu` predicts). A driver that refuses (no memory pools) leaves the
/// allocator as it was, with a warning: slower, not wrong.
#[cfg(feature = "cuda")]
fn caching_allocations(device: Device) -> Device {
    if let Err(e) = lmforge_ops::pool::cache_allocations(&device) {
        tracing::warn!("the GPU's memory pool keeps its default release threshold ({e}): allocations are not cached");
    }
    device
}

/// High-water marks of a GPU's memory pool (`lmforge_ops::pool`): lmforge's tensors come from
/// this pool (candle allocates stream-ordered); cuBLAS's and NCCL's own workspaces and the
/// context do not, which `plan` counts as framework overhead.
pub use lmforge_ops::pool::PoolPeaks;

/// The pool's high-water marks on `device`; None on the CPU, without CUDA, or where the driver
/// has no memory pools.
pub fn pool_peaks(device: &Device) -> Option<PoolPeaks> {
    lmforge_ops::pool::peaks(device)
}

/// Starts [`pool_peaks`]' high-water marks again from what is in use and reserved now (after a
/// bench's warmup steps, as PyTorch's `reset_peak_memory_stats`). Nothing on the CPU.
pub fn reset_pool_peaks(device: &Device) {
    lmforge_ops::pool::reset_peaks(device)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(n: usize, key: &str) -> Result<Device> {
    let name = DeviceChoice::Cuda(n).name();
    Err(Error::config(
        key,
        format!(
            "{name:?}: this lmforge was built without CUDA. Build one with `cargo build --release --features \
             lmforge-cli/cuda` (it needs the CUDA toolkit), or choose \"cpu\" or \"auto\""
        ),
    ))
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// fp32 weights, gradients, optimizer state and activations.
    #[default]
    Fp32,
    /// bf16 matrix products and activations; fp32 weights (the master copy), gradients,
    /// optimizer state and reductions (norm statistics, softmax, the loss).
    Bf16Mixed,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "bf16-mixed" => Ok(Self::Bf16Mixed),
            other => Err(Error::config("--precision", format!("invalid value {other:?}; expected fp32 or bf16-mixed"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16Mixed => "bf16-mixed",
        }
    }

    pub fn is_fp32(&self) -> bool {
        *self == Self::Fp32
    }

    /// The dtype activations compute in.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Self::Fp32 => candle_core::DType::F32,
            Self::Bf16Mixed => candle_core::DType::BF16,
        }
    }

    /// Bytes per weight, gradient and activation element.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Fp32 => 4,
            Self::Bf16Mixed => 2,
        }
    }
}

/// The device and precision a run trains in.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub precision: Precision,
}

impl Placement {
    /// The CPU in fp32.
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, precision: Precision::Fp32 }
    }

    /// `train.device` and `train.precision` resolved; an error names the key this binary or
    /// machine cannot honour.
    pub fn resolve(device: DeviceChoice, precision: Precision) -> Result<Self> {
        Self::resolve_from(device, precision, "train.device")
    }

    /// [`Self::resolve`] of a device that came from `key` (a flag overriding the config).
    pub fn resolve_from(device: DeviceChoice, precision: Precision, key: &str) -> Result<Self> {
        let device = device.resolve(key)?;
        if precision == Precision::Bf16Mixed && device.is_cpu() {
            tracing::warn!(
                "train.precision = \"bf16-mixed\" on the CPU: bf16 products are computed through f32 and \
                 rounded (the CPU matmul has no bf16), slower than fp32; it is there to check a GPU run's \
                 numbers on a machine without one"
            );
        }
        Ok(Self { device, precision })
    }

    /// "cpu, fp32" / "cuda, bf16-mixed".
    pub fn describe(&self) -> String {
        format!("{}, {}", device_name(&self.device), self.precision.name())
    }
}

/// "cpu" / "cuda" / "metal".
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for s in ["auto", "cpu", "cuda", "cuda:3"] {
            assert_eq!(DeviceChoice::parse(s).unwrap().name(), s);
        }
        assert_eq!(DeviceChoice::parse("cuda:0").unwrap(), DeviceChoice::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(DeviceChoice::parse(bad).unwrap_err().contains("cuda:N"), "{bad}");
        }
    }

    #[test]
    fn the_cpu_and_auto_resolve_here_and_unbuildable_choices_name_the_key() {
        assert!(matches!(Placement::resolve(DeviceChoice::Cpu, Precision::Fp32).unwrap().device, Device::Cpu));
        assert!(Placement::resolve(DeviceChoice::Auto, Precision::Fp32).is_ok());
        let mixed = Placement::resolve(DeviceChoice::Cpu, Precision::Bf16Mixed).unwrap();
        assert_eq!(mixed.precision.compute_dtype(), candle_core::DType::BF16);
        #[cfg(not(feature = "cuda"))]
        {
            let e = Placement::resolve(DeviceChoice::Cuda(0), Precision::Fp32).unwrap_err().to_string();
            assert!(e.contains("train.device") && e.contains("--features lmforge-cli/cuda"), "{e}");
        }
    }
}
