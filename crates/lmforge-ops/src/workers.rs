//! Which worker threads run the small parallel loops between a decoding step's products
//! (attention over the KV cache): rayon's pool, where the dense products and the fused kernels
//! run (the default), or candle's barrier pool, where the quantized products run.
//!
//! Why it matters: decoding a quantized model, candle's workers spin between the few dozen
//! sub-millisecond products of a token (parked ones wake late). Work handed to rayon in between
//! then shares the cores with a spinning candle worker while the calling thread waits: on 2
//! cores attention ran on about one core's worth (GPT-2 124M q8_0, `generate`, 4 alternating
//! runs: median 101 → 121 tokens/s on candle's pool). Decoding an f32 model is the other way
//! round: its products run on rayon, candle's workers park at once, and waking them for
//! attention cost more than it saved (43 → 37 tokens/s). The process decides once, before
//! decoding ([`use_candle_pool`]); the loops ask [`for_each_range`].

use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

static ON_CANDLE_POOL: AtomicBool = AtomicBool::new(false);

/// Run [`for_each_range`] on candle's barrier pool (`true`) or on rayon's (`false`, the default).
pub fn use_candle_pool(yes: bool) {
    ON_CANDLE_POOL.store(yes, Ordering::Relaxed);
}

/// Whether [`for_each_range`] runs on candle's barrier pool.
fn on_candle_pool() -> bool {
    ON_CANDLE_POOL.load(Ordering::Relaxed)
}

/// Calls `f` on disjoint ranges covering `0..n`, in parallel on the chosen pool: about eight
/// ranges per thread, taken in turn, so a thread that finishes early takes the next.
pub fn for_each_range<F: Fn(Range<usize>) + Sync>(n: usize, f: F) {
    if n == 0 {
        return;
    }
    if on_candle_pool() {
        candle_core::utils::barrier_pool().execute_chunked(n, f);
    } else {
        let chunk = n.div_ceil(rayon::current_num_threads() * 8).max(1);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| f(c * chunk..(c * chunk + chunk).min(n)));
    }
}

/// Runs `f` on one of rayon's workers (a scope from outside the pool runs its body there), so
/// that the parallel ops it calls start on the spot and the others join, instead of being
/// handed to the pool while the calling thread sleeps until they finish: a wake-up per op,
/// dozens per decoding step. With a single worker `f` runs here: a caller that blocks on
/// something else (a queue) would otherwise hold the pool's only thread.
pub fn on_a_rayon_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() > 1 && rayon::current_thread_index().is_none() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The closure runs on a rayon worker (from a test thread, which is none) when the pool
    /// has more than one, and its result comes back.
    #[test]
    fn a_closure_moves_onto_a_rayon_worker_when_the_pool_has_several() {
        assert!(rayon::current_thread_index().is_none());
        let (index, sum) =
            on_a_rayon_worker(|| (rayon::current_thread_index(), (0..100u64).into_par_iter().sum::<u64>()));
        assert_eq!(sum, 4950);
        assert_eq!(index.is_some(), rayon::current_num_threads() > 1);
    }

    /// Every index is visited exactly once, on either pool, for sizes around the chunking.
    #[test]
    fn ranges_cover_every_index_once_on_both_pools() {
        for candle in [false, true] {
            use_candle_pool(candle);
            for n in [0, 1, 2, 7, 16, 17, 100, 1001] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each_range(n, |r| {
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "n {n}, candle pool {candle}");
            }
        }
        use_candle_pool(false);
    }
}
