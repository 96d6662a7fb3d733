//! A thread that runs collectives one after another, in the order they were submitted, beside
//! the computing thread: ZeRO-3 gathers the next layer's weights there while the current layer
//! computes, and reduce-scatters a layer's gradients there while the backward goes on. Every
//! process submits the same collectives in the same order, so this thread issues them in one
//! order everywhere; the computing thread issues collectives of its own only after
//! [`CommThread::flush`] (two threads of one process issuing collectives at once could pair
//! them differently on different processes).

use crate::error::{Error, Result};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    /// Jobs submitted and not finished.
    pending: usize,
    /// The first error of a job whose result nobody waits for.
    error: Option<Error>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct CommThread {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The result of a submitted job, when it is done.
pub struct Pending<T>(mpsc::Receiver<Result<T>>);

impl<T> Pending<T> {
    /// Waits for the result; returns it and the seconds waited.
    pub fn wait(self) -> Result<(T, f64)> {
        let t = Instant::now();
        let out = self.0.recv().map_err(|_| Error::Distributed("the communication thread stopped".into()))?;
        Ok((out?, t.elapsed().as_secs_f64()))
    }
}

impl CommThread {
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared::default());
        let done = shared.clone();
        let thread = std::thread::spawn(move || {
            for job in rx {
                job();
                done.lock().pending -= 1;
                done.changed.notify_all();
            }
        });
        Self { jobs: Mutex::new(Some(tx)), shared, thread: Mutex::new(Some(thread)) }
    }

    fn push(&self, job: Job) -> Result<()> {
        self.shared.lock().pending += 1;
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let sent = jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.shared.lock().pending -= 1;
            return Err(Error::Distributed("the communication thread stopped".into()));
        }
        Ok(())
    }

    /// Runs `f` after every job submitted before it; its result comes through the handle.
    pub fn submit<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<Pending<T>> {
        let (tx, rx) = mpsc::channel();
        self.push(Box::new(move || {
            // Nobody waiting any more is not this job's concern.
            let _ = tx.send(f());
        }))?;
        Ok(Pending(rx))
    }

    /// Runs `f` after every job submitted before it; an error is reported by the next
    /// [`Self::flush`] or [`Self::wait_until_at_most`].
    pub fn submit_detached(&self, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        let shared = self.shared.clone();
        self.push(Box::new(move || {
            if let Err(e) = f() {
                shared.lock().error.get_or_insert(e);
            }
        }))
    }

    /// Waits until at most `n` jobs are pending; returns the seconds waited, or the first error
    /// of a detached job.
    pub fn wait_until_at_most(&self, n: usize) -> Result<f64> {
        let t = Instant::now();
        let mut state = self.shared.lock();
        while state.pending > n && state.error.is_none() {
            state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        match state.error.take() {
            Some(e) => Err(e),
            None => Ok(t.elapsed().as_secs_f64()),
        }
    }

    /// Waits until every submitted job has run (see [`Self::wait_until_at_most`]).
    pub fn flush(&self) -> Result<f64> {
        self.wait_until_at_most(0)
    }
}

impl Drop for CommThread {
    fn drop(&mut self) {
        // The thread ends once the queue is empty and closed.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_submission_order_and_flush_waits_for_all() {
        let comm = CommThread::start();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..20 {
            let log = log.clone();
            if i % 3 == 0 {
                comm.submit_detached(move || {
                    log.lock().unwrap().push(i);
                    Ok(())
                })
                .unwrap();
            } else {
                handles.push(
                    comm.submit(move || {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        log.lock().unwrap().push(i);
                        Ok(i * 10)
                    })
                    .unwrap(),
                );
            }
        }
        comm.flush().unwrap();
        assert_eq!(*log.lock().unwrap(), (0..20).collect::<Vec<_>>());
        let results: Vec<i32> = handles.into_iter().map(|h| h.wait().unwrap().0).collect();
        assert_eq!(results, (0..20).filter(|i| i % 3 != 0).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn a_detached_jobs_error_comes_with_the_next_flush() {
        let comm = CommThread::start();
        comm.submit_detached(|| Err(Error::Distributed("rank 1 timed out".into()))).unwrap();
        let e = comm.flush().err().unwrap();
        assert!(e.to_string().contains("rank 1 timed out"), "{e}");
        comm.flush().unwrap();
        let failed = comm.submit(|| -> Result<()> { Err(Error::Distributed("gather failed".into())) }).unwrap();
        assert!(failed.wait().err().unwrap().to_string().contains("gather failed"));
    }
}
