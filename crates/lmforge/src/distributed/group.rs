//! A [`Collective`] over threads of one process, for tests: N ranks run on N threads and every
//! collective is one exchange (each rank deposits its values, all read everyone's). It lets the
//! sharding and compression code be tested for 2, 3, 4 ranks without MPI; the `mpirun` tests
//! then check the same code over real processes.

use super::Collective;
use crate::error::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// One collective per rank of a group of `world`.
    pub fn ranks(world: usize) -> Vec<Arc<dyn Collective>> {
        let shared = Arc::new(Shared { slots: Mutex::new(vec![Vec::new(); world]), barrier: Barrier::new(world) });
        (0..world).map(|rank| Arc::new(Self { rank, world, shared: shared.clone() }) as Arc<dyn Collective>).collect()
    }

    /// Runs `f(rank, collective)` on one thread per rank and returns the results in rank order.
    pub fn run<T: Send>(world: usize, f: impl Fn(usize, Arc<dyn Collective>) -> T + Sync) -> Vec<T> {
        let comms = Self::ranks(world);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .enumerate()
                .map(|(r, c)| {
                    s.spawn({
                        let f = &f;
                        move || f(r, c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
        })
    }

    /// Every rank's `mine`, in rank order.
    fn exchange(&self, mine: &[f32]) -> Vec<Vec<f32>> {
        self.shared.slots.lock().unwrap()[self.rank] = mine.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap().clone();
        // No rank may deposit the next call's values before all have read these.
        self.shared.barrier.wait();
        all
    }
}

fn offsets(counts: &[usize]) -> Vec<usize> {
    let mut off = vec![0];
    for c in counts {
        off.push(off.last().unwrap() + c);
    }
    off
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(buf);
        for (i, x) in buf.iter_mut().enumerate() {
            // Rank order, as a deterministic MPI reduction would.
            *x = all.iter().fold(0.0, |acc, v| acc + v[i]);
        }
        Ok(())
    }
    fn reduce_scatter_sum(&self, buf: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let mut sum = buf.to_vec();
        self.all_reduce_sum(&mut sum)?;
        let off = offsets(counts);
        Ok(sum[off[self.rank]..off[self.rank + 1]].to_vec())
    }
    fn all_to_all(&self, send: &[f32], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<f32>> {
        // Counts travel first (exact as f32 for test sizes), then the data.
        let counts = self.exchange(&send_counts.iter().map(|&c| c as f32).collect::<Vec<_>>());
        let all = self.exchange(send);
        let mut out = Vec::new();
        for (r, theirs) in all.iter().enumerate() {
            let theirs_counts: Vec<usize> = counts[r].iter().map(|&c| c as usize).collect();
            let off = offsets(&theirs_counts);
            if theirs_counts[self.rank] != recv_counts[r] {
                return Err(Error::Distributed(format!(
                    "all_to_all: rank {r} sends {} values to rank {}, which expects {}",
                    theirs_counts[self.rank], self.rank, recv_counts[r]
                )));
            }
            out.extend_from_slice(&theirs[off[self.rank]..off[self.rank + 1]]);
        }
        Ok(out)
    }
    fn all_gather(&self, local: &[f32], _counts: &[usize]) -> Result<Vec<f32>> {
        Ok(self.exchange(local).concat())
    }
    fn gather(&self, local: &[f32], counts: &[usize], root: usize) -> Result<Option<Vec<f32>>> {
        let all = self.all_gather(local, counts)?;
        Ok((self.rank == root).then_some(all))
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let all = self.exchange(buf);
        buf.copy_from_slice(&all[root]);
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let words: Vec<f32> = buf.iter().map(|&b| b as f32).collect();
        let all = self.exchange(&words);
        *buf = all[root].iter().map(|&w| w as u8).collect();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange(&[]);
        Ok(())
    }
    fn set_timeout(&self, _timeout: Option<Duration>) {}
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted the group with status {code}", self.rank)
    }
}
