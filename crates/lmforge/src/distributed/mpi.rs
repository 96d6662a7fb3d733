//! [`Collective`] over the system MPI (the `mpi` crate). Every operation is MPI's nonblocking
//! form (`MPI_Iallreduce`, `MPI_Iallgatherv`, ...) polled with `MPI_Test` until it completes
//! or the timeout passes, so a process that died or hangs turns into an error on the others
//! instead of a hang. MPI cannot cancel a collective, and may still write into its buffers
//! after we stop waiting: the buffers handed to MPI are therefore heap copies that are taken
//! back when the request completes and leaked when it times out (the job is then aborted).

use super::Collective;
use crate::error::{Error, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::environment::{Threading, Universe};
use mpi::raw::AsRaw;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Count;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct MpiCollective {
    world: SimpleCommunicator,
    timeout: Mutex<Option<Duration>>,
    /// Held for the whole of each operation: MPI runs at `MPI_THREAD_SERIALIZED`.
    serial: Mutex<()>,
    // Dropped last: finalizes MPI.
    _universe: Universe,
}

// SAFETY: MPI is initialised at MPI_THREAD_SERIALIZED (checked in `init`), which allows calls
// from any thread as long as no two run at once; every method that calls MPI holds `serial`.
unsafe impl Send for MpiCollective {}
// SAFETY: as above.
unsafe impl Sync for MpiCollective {}

/// A heap value handed to MPI for the length of one nonblocking call (`StaticScope` needs
/// `'static`). Not freed on drop: only [`Leased::reclaim`] after the request completed frees it.
/// The one reference MPI gets is made when the lease is, so safe code cannot make a second
/// one that would alias it.
struct Leased<T: ?Sized>(*mut T);

impl<T: ?Sized> Leased<T> {
    /// The lease, and the only (mutable) reference to the value.
    fn new(value: Box<T>) -> (Self, &'static mut T) {
        let ptr = Box::into_raw(value);
        // SAFETY: the pointer came from Box::into_raw, so it is valid and unique; it is freed
        // only by `reclaim`, whose contract is that this reference is no longer in use.
        (Self(ptr), unsafe { &mut *ptr })
    }

    /// The lease, and the only (shared) reference to the value: a buffer MPI reads.
    fn shared(value: Box<T>) -> (Self, &'static T) {
        let (lease, value) = Self::new(value);
        (lease, value)
    }

    /// SAFETY: the request the reference was lent to has completed and the reference is not
    /// used again.
    unsafe fn reclaim(self) -> Box<T> {
        // SAFETY: see the function's contract; the pointer is from Box::into_raw.
        unsafe { Box::from_raw(self.0) }
    }
}

fn counts_displs(counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>)> {
    let too_big =
        || Error::Distributed(format!("a message of {} values exceeds MPI's 2^31 count", counts.iter().sum::<usize>()));
    let c: Vec<Count> = counts.iter().map(|&n| Count::try_from(n).map_err(|_| too_big())).collect::<Result<_>>()?;
    let mut d = Vec::with_capacity(c.len());
    let mut off: usize = 0;
    for &n in counts {
        d.push(Count::try_from(off).map_err(|_| too_big())?);
        off += n;
    }
    Ok((c, d))
}

impl MpiCollective {
    pub fn init() -> Result<Self> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Distributed("MPI was already initialised in this process".into()))?;
        if matches!(level, Threading::Single | Threading::Funneled) {
            return Err(Error::Distributed(format!(
                "this MPI library provides thread level {level:?}; lmforge needs Serialized"
            )));
        }
        let world = universe.world();
        Ok(Self {
            world,
            timeout: Mutex::new(Some(Duration::from_secs(600))),
            serial: Mutex::new(()),
            _universe: universe,
        })
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Polls `req` until it completes or the timeout passes. Sleeps between polls (backing
    /// off to 1 ms) so a waiting rank leaves the cores to the ranks still computing; each
    /// poll also drives MPI's progress engine.
    fn wait<D: ?Sized>(&self, op: &str, elems: usize, mut req: Request<'static, D, StaticScope>) -> Result<()> {
        let start = Instant::now();
        let limit = *self.timeout.lock().unwrap_or_else(|p| p.into_inner());
        let mut pause = Duration::from_micros(2);
        loop {
            match req.test() {
                Ok(_) => return Ok(()),
                Err(pending) => req = pending,
            }
            if let Some(limit) = limit {
                if start.elapsed() > limit {
                    // SAFETY: unregisters the request without completing it; its buffers are
                    // leased and stay allocated (leaked), so MPI writing them later is harmless.
                    let _ = unsafe { req.into_raw() };
                    return Err(timeout_error(self.rank(), op, elems, start.elapsed()));
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn check_count(&self, op: &str, local: usize, counts: &[usize]) -> Result<()> {
        if counts.len() != self.world_size() || counts[self.rank()] != local {
            return Err(Error::Distributed(format!(
                "{op}: rank {} holds {local} values but the counts are {counts:?}",
                self.rank()
            )));
        }
        Ok(())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let _serial = self.serialize();
        let (send, send_buf) = Leased::shared(buf.to_vec().into_boxed_slice());
        let (recv, recv_buf) = Leased::new(vec![0f32; buf.len()].into_boxed_slice());
        let req = self.world.immediate_all_reduce_into(StaticScope, send_buf, recv_buf, SystemOperation::sum());
        self.wait("all_reduce", buf.len(), req)?;
        // SAFETY: the request completed.
        let (_, out) = unsafe { (send.reclaim(), recv.reclaim()) };
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather(&self, local: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let _serial = self.serialize();
        self.check_count("all_gather", local.len(), counts)?;
        let (c, d) = counts_displs(counts)?;
        let total: usize = counts.iter().sum();
        let (send, send_buf) = Leased::shared(local.to_vec().into_boxed_slice());
        let (recv, recv_buf) = Leased::new(vec![0f32; total].into_boxed_slice());
        let (part, part_buf) = Leased::new(Box::new(PartitionMut::new(recv_buf, c, d)));
        let req = self.world.immediate_all_gather_varcount_into(StaticScope, send_buf, part_buf);
        self.wait("all_gather", total, req)?;
        // SAFETY: the request completed.
        let (_, _, out) = unsafe { (send.reclaim(), part.reclaim(), recv.reclaim()) };
        Ok(out.into_vec())
    }

    fn reduce_scatter_sum(&self, buf: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let _serial = self.serialize();
        let total: usize = counts.iter().sum();
        if counts.len() != self.world_size() || total != buf.len() {
            return Err(Error::Distributed(format!(
                "reduce_scatter: rank {} holds {} values but the counts are {counts:?}",
                self.rank(),
                buf.len()
            )));
        }
        let (c, _) = counts_displs(counts)?;
        let mine = counts[self.rank()];
        let (send, send_buf) = Leased::shared(buf.to_vec().into_boxed_slice());
        let (recv, recv_buf) = Leased::new(vec![0f32; mine].into_boxed_slice());
        let (cnt, cnt_buf) = Leased::shared(c.into_boxed_slice());
        // rsmpi wraps only the equal-block form; MPI_Ireduce_scatter takes a count per rank.
        let mut raw = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: every buffer is leased (alive until the request completes, leaked if it
        // never does), the counts match the buffers (checked above), and MPI writes the
        // request handle before returning.
        let req = unsafe {
            mpi::ffi::MPI_Ireduce_scatter(
                send_buf.as_ptr().cast(),
                recv_buf.as_mut_ptr().cast(),
                cnt_buf.as_ptr(),
                f32::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                self.world.as_raw(),
                raw.as_mut_ptr(),
            );
            Request::from_raw(raw.assume_init(), &*recv_buf, StaticScope)
        };
        self.wait("reduce_scatter", total, req)?;
        // SAFETY: the request completed.
        let (_, _, out) = unsafe { (send.reclaim(), cnt.reclaim(), recv.reclaim()) };
        Ok(out.into_vec())
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<f32>> {
        let _serial = self.serialize();
        let world = self.world_size();
        if send_counts.len() != world || recv_counts.len() != world || send_counts.iter().sum::<usize>() != send.len() {
            return Err(Error::Distributed(format!(
                "all_to_all: rank {} sends {} values but the counts are {send_counts:?} (receiving {recv_counts:?})",
                self.rank(),
                send.len()
            )));
        }
        let (sc, sd) = counts_displs(send_counts)?;
        let (rc, rd) = counts_displs(recv_counts)?;
        let total: usize = recv_counts.iter().sum();
        let (data, data_buf) = Leased::shared(send.to_vec().into_boxed_slice());
        let (sp, sp_buf) = Leased::shared(Box::new(Partition::new(data_buf, sc, sd)));
        let (recv, recv_buf) = Leased::new(vec![0f32; total].into_boxed_slice());
        let (rp, rp_buf) = Leased::new(Box::new(PartitionMut::new(recv_buf, rc, rd)));
        let req = self.world.immediate_all_to_all_varcount_into(StaticScope, sp_buf, rp_buf);
        self.wait("all_to_all", send.len() + total, req)?;
        // SAFETY: the request completed.
        let (_, _, _, out) = unsafe { (sp.reclaim(), data.reclaim(), rp.reclaim(), recv.reclaim()) };
        Ok(out.into_vec())
    }

    fn gather(&self, local: &[f32], counts: &[usize], root: usize) -> Result<Option<Vec<f32>>> {
        let _serial = self.serialize();
        self.check_count("gather", local.len(), counts)?;
        let root_process = self.world.process_at_rank(root as mpi::Rank);
        let (send, send_buf) = Leased::shared(local.to_vec().into_boxed_slice());
        if self.rank() != root {
            let req = root_process.immediate_gather_varcount_into(StaticScope, send_buf);
            self.wait("gather", local.len(), req)?;
            // SAFETY: the request completed.
            drop(unsafe { send.reclaim() });
            return Ok(None);
        }
        let (c, d) = counts_displs(counts)?;
        let total: usize = counts.iter().sum();
        let (recv, recv_buf) = Leased::new(vec![0f32; total].into_boxed_slice());
        let (part, part_buf) = Leased::new(Box::new(PartitionMut::new(recv_buf, c, d)));
        let req = root_process.immediate_gather_varcount_into_root(StaticScope, send_buf, part_buf);
        self.wait("gather", total, req)?;
        // SAFETY: the request completed.
        let (_, _, out) = unsafe { (send.reclaim(), part.reclaim(), recv.reclaim()) };
        Ok(Some(out.into_vec()))
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let _serial = self.serialize();
        let (data, data_buf) = Leased::new(buf.to_vec().into_boxed_slice());
        let req = self.world.process_at_rank(root as mpi::Rank).immediate_broadcast_into(StaticScope, data_buf);
        self.wait("broadcast", buf.len(), req)?;
        // SAFETY: the request completed.
        let out = unsafe { data.reclaim() };
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let _serial = self.serialize();
        let root_process = self.world.process_at_rank(root as mpi::Rank);
        let (len, len_buf) = Leased::new(Box::new([buf.len() as u64]));
        let req = root_process.immediate_broadcast_into(StaticScope, &mut len_buf[..]);
        self.wait("broadcast", 1, req)?;
        // SAFETY: the request completed.
        let n = unsafe { len.reclaim() }[0] as usize;
        buf.resize(n, 0);
        let (data, data_buf) = Leased::new(buf.clone().into_boxed_slice());
        let req = root_process.immediate_broadcast_into(StaticScope, data_buf);
        self.wait("broadcast", n, req)?;
        // SAFETY: the request completed.
        *buf = unsafe { data.reclaim() }.into_vec();
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _serial = self.serialize();
        let req = self.world.immediate_barrier();
        self.wait("barrier", 0, req)
    }

    fn set_timeout(&self, timeout: Option<Duration>) {
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// A collective timed out or failed: what, on which rank, and what to do.
fn timeout_error(rank: usize, op: &str, elems: usize, waited: Duration) -> Error {
    Error::Distributed(format!(
        "rank {rank}: {op} of {elems} values did not complete within {:.0} s: another process died \
         or hangs ([distributed] timeout_s). The job stops; continue from the last checkpoint \
         with `lmforge train --resume RUN_DIR` (any process count)",
        waited.as_secs_f64()
    ))
}
