//! Opt-in time accounting of the ops, for `lmforge bench train --profile`: each op's forward
//! and backward opens a [`span`] under its name, and the bench divides the step into what the
//! ops took and what they did not (candle's own ops, its gradient bookkeeping, allocation).
//! Off by default, a span costs one relaxed atomic load.
//!
//! On the CPU every op runs synchronously, so a span's wall time is the op's time. A GPU runs
//! the ops later, in the order they were queued on the stream of the thread that queues them,
//! so there ([`set_enabled_on`] a CUDA device) a span records an event on that stream as it
//! opens and another as it closes, and [`take`] reads the time between each pair once the work
//! is done: the GPU time of what the span queued, and any wait for the host to queue it (where
//! the host is the slower, that wait is most of it).
//!
//! Spans do not nest: one opened inside another on the same thread is not recorded, so the
//! names' times add up to no more than the step's (an op with a span of its own, run inside a
//! device sublayer's span around it, counts once, under the outer name). A span belongs to the
//! thread that opened it, and one left open across [`set_enabled`] is not recorded.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<OpTime>> = Mutex::new(Vec::new());
/// Which [`set_enabled`] a span was opened under: one closing under another is not recorded.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Spans open on this thread while recording.
    static OPEN: Cell<usize> = const { Cell::new(0) };
}

/// Which pass of an op a span times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Forward,
    Backward,
    /// Collecting the gradients and their global norm (clipping).
    Gradients,
    /// An optimizer's in-place update.
    Update,
}

/// Calls and summed time of one op's pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub name: &'static str,
    pub pass: Pass,
    pub calls: u64,
    pub seconds: f64,
}

/// Turns recording on or off (process-wide), wall-clock spans, and clears what was recorded.
pub fn set_enabled(on: bool) {
    #[cfg(feature = "cuda")]
    gpu::set_stream(None);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// As [`set_enabled`], for ops that run on `device`: on a GPU, spans are timed by events on its
/// stream (the one every op there is queued on).
pub fn set_enabled_on(device: &candle_core::Device, on: bool) {
    set_enabled(on);
    #[cfg(feature = "cuda")]
    if let (true, candle_core::Device::Cuda(d)) = (on, device) {
        gpu::set_stream(Some(d.cuda_stream()));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// What was recorded since [`set_enabled`] or the last `take`, in first-seen order; clears it.
/// On a GPU this waits for the recorded work to finish.
pub fn take() -> Vec<OpTime> {
    #[cfg(feature = "cuda")]
    for (name, pass, seconds) in gpu::resolve() {
        add(name, pass, seconds);
    }
    std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times from now until dropped as `name`'s `pass`, when recording is on and no other span is
/// open on this thread.
pub fn span(name: &'static str, pass: Pass) -> Span {
    if !ENABLED.load(Ordering::Relaxed) {
        return Span { name, pass, started: None, counted: false, generation: 0, thread_bound: PhantomData };
    }
    let generation = GENERATION.load(Ordering::Relaxed);
    let outermost = OPEN.with(|open| {
        open.set(open.get() + 1);
        open.get() == 1
    });
    let started = match outermost {
        false => None,
        #[cfg(feature = "cuda")]
        true if gpu::recording() => gpu::start().map(Started::Gpu),
        true => Some(Started::Wall(Instant::now())),
    };
    Span { name, pass, started, counted: true, generation, thread_bound: PhantomData }
}

/// `f()`, timed as `name`'s `pass` ([`span`]).
pub fn timed<T>(name: &'static str, pass: Pass, f: impl FnOnce() -> T) -> T {
    let _span = span(name, pass);
    f()
}

/// `w` in `dtype` for an op's product, timed as a `weight cast` of `pass` when it is one (in its
/// own dtype there is nothing to cast, and nothing to time).
pub fn weight_cast(
    w: &candle_core::Tensor,
    dtype: candle_core::DType,
    pass: Pass,
) -> candle_core::Result<candle_core::Tensor> {
    let _span = (w.dtype() != dtype).then(|| span("weight cast", pass));
    w.to_dtype(dtype)
}

pub struct Span {
    name: &'static str,
    pass: Pass,
    started: Option<Started>,
    /// Whether it counts among this thread's open spans.
    counted: bool,
    generation: u64,
    /// Not `Send`: the open-span count it keeps is its thread's.
    thread_bound: PhantomData<*const ()>,
}

enum Started {
    Wall(Instant),
    #[cfg(feature = "cuda")]
    Gpu(gpu::Event),
}

impl Drop for Span {
    fn drop(&mut self) {
        if self.counted {
            OPEN.with(|open| open.set(open.get().saturating_sub(1)));
        }
        // Off, a span started nothing: no more than the one load it cost to open.
        let Some(started) = self.started.take() else { return };
        if GENERATION.load(Ordering::Relaxed) != self.generation {
            return;
        }
        match started {
            Started::Wall(started) => add(self.name, self.pass, started.elapsed().as_secs_f64()),
            #[cfg(feature = "cuda")]
            Started::Gpu(start) => gpu::finish(self.name, self.pass, start),
        }
    }
}

fn add(name: &'static str, pass: Pass, seconds: f64) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    match totals.iter_mut().find(|t| t.name == name && t.pass == pass) {
        Some(t) => {
            t.calls += 1;
            t.seconds += seconds;
        }
        None => totals.push(OpTime { name, pass, calls: 1, seconds }),
    }
}

/// Event-timed spans on a GPU's stream.
#[cfg(feature = "cuda")]
mod gpu {
    use super::Pass;
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};
    use std::sync::{Arc, Mutex};

    pub type Event = CudaEvent;

    /// The stream spans record on, while recording on a GPU.
    static STREAM: Mutex<Option<Arc<CudaStream>>> = Mutex::new(None);
    /// Closed spans whose time is not read yet: name, pass, start and end events.
    static PENDING: Mutex<Vec<(&'static str, Pass, CudaEvent, CudaEvent)>> = Mutex::new(Vec::new());

    fn stream() -> Option<Arc<CudaStream>> {
        STREAM.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_stream(stream: Option<Arc<CudaStream>>) {
        *STREAM.lock().unwrap_or_else(|e| e.into_inner()) = stream;
        PENDING.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn recording() -> bool {
        STREAM.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// An event recorded on the stream now, with timing (cudarc's default event has none); None
    /// where the driver refuses one (the span is then not timed).
    pub fn start() -> Option<CudaEvent> {
        stream()?.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ok()
    }

    pub fn finish(name: &'static str, pass: Pass, start: CudaEvent) {
        let end = stream().and_then(|s| s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ok());
        if let Some(end) = end {
            PENDING.lock().unwrap_or_else(|e| e.into_inner()).push((name, pass, start, end));
        }
    }

    /// The seconds between each closed span's events (waiting for them), in closing order.
    pub fn resolve() -> Vec<(&'static str, Pass, f64)> {
        let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .filter_map(|(name, pass, start, end)| Some((name, pass, f64::from(start.elapsed_ms(&end).ok()?) / 1e3)))
            .collect()
    }
}
