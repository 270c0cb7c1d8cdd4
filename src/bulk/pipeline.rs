//! An ordered, bounded, multi-threaded pipeline: one reader, N workers, one
//! writer, results written in input order.
//!
//! Work moves in *slots* — reusable buffers that carry one chunk from the
//! reader through a worker to the writer and then back to the reader. A
//! fixed number of slots exists, so memory stays bounded whatever the input
//! size and however unevenly the workers run.
//!
//! ```text
//!        free slots ◄──────────────────────────────┐
//!            │                                      │
//!   reader ──┴─► jobs ─► worker × N ─► done ─► writer (reorders by sequence)
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

/// The three stages of a pipeline over slots of type `Self::Slot`.
pub(crate) trait Stages: Sync {
    /// A reusable buffer carrying one chunk.
    type Slot: Send;
    /// Per-worker scratch state (e.g. a batch deriver).
    type Worker;
    /// Errors of the reader and the writer (fatal for the run).
    type Error: Send;

    /// A fresh, empty slot.
    fn new_slot(&self) -> Self::Slot;
    /// A worker's scratch state.
    fn new_worker(&self) -> Self::Worker;
}

/// Runs the pipeline: `read` fills a slot (returning `false` at the end of
/// input), `work` processes it on a worker thread, `write` consumes it on the
/// calling thread in input order. Returns the first fatal error.
pub(crate) fn run<S, R, W>(
    stages: &S,
    threads: usize,
    slots: usize,
    mut read: R,
    work: impl Fn(&mut S::Worker, &mut S::Slot) + Sync,
    mut write: W,
) -> Result<(), S::Error>
where
    S: Stages,
    R: FnMut(&mut S::Slot) -> Result<bool, S::Error> + Send,
    W: FnMut(&mut S::Slot) -> Result<(), S::Error>,
{
    let threads = threads.max(1);
    let slots = slots.max(threads + 1);
    let (free_tx, free_rx) = sync_channel::<S::Slot>(slots);
    for _ in 0..slots {
        // The channel has room for every slot, so this cannot block or fail.
        let _ = free_tx.send(stages.new_slot());
    }
    let (job_tx, job_rx) = sync_channel::<(u64, S::Slot)>(slots);
    // Each worker owns a handle on the job queue and no other handle exists,
    // so when the workers stop the queue closes and a blocked reader wakes.
    let shared_jobs = Arc::new(Mutex::new(job_rx));
    let worker_jobs: Vec<_> = (0..threads).map(|_| Arc::clone(&shared_jobs)).collect();
    drop(shared_jobs);
    let (done_tx, done_rx) = sync_channel::<(u64, Done<S::Slot>)>(slots);

    thread::scope(|scope| {
        let reader = scope.spawn(move || read_loop(&mut read, free_rx, job_tx));
        for job_rx in worker_jobs {
            let done_tx = done_tx.clone();
            let work = &work;
            scope.spawn(move || {
                let mut worker = stages.new_worker();
                while let Some((seq, mut slot)) = next_job(&job_rx) {
                    // A panic here is a bug; it must stop the whole run (not
                    // leave the writer waiting for this chunk forever), so it
                    // travels to the writer in the chunk's place.
                    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                        work(&mut worker, &mut slot);
                    }));
                    let panicked = outcome.is_err();
                    if done_tx.send((seq, outcome.map(|()| slot))).is_err() || panicked {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let written = write_loop(&mut write, done_rx, free_tx);
        // If writing stopped, the writer dropped its channels, so the reader
        // and workers stop at their next send or receive.
        let read = match reader.join() {
            Ok(read) => read,
            Err(payload) => panic::resume_unwind(payload),
        };
        match written {
            Ok(()) => read,
            Err(Stop::Failed(error)) => Err(error),
            Err(Stop::Panicked(payload)) => panic::resume_unwind(payload),
        }
    })
}

/// A processed slot, or the panic that happened instead.
type Done<T> = Result<T, Box<dyn Any + Send>>;

/// Why the writer stopped early.
enum Stop<E> {
    Failed(E),
    Panicked(Box<dyn Any + Send>),
}

fn next_job<T>(jobs: &Mutex<Receiver<T>>) -> Option<T> {
    // A poisoned lock means a worker panicked; stop taking work.
    jobs.lock().ok()?.recv().ok()
}

fn read_loop<T, E>(
    read: &mut impl FnMut(&mut T) -> Result<bool, E>,
    free: Receiver<T>,
    jobs: SyncSender<(u64, T)>,
) -> Result<(), E> {
    let mut seq = 0u64;
    while let Ok(mut slot) = free.recv() {
        if !read(&mut slot)? {
            break;
        }
        if jobs.send((seq, slot)).is_err() {
            break;
        }
        seq += 1;
    }
    Ok(())
}

fn write_loop<T, E>(
    write: &mut impl FnMut(&mut T) -> Result<(), E>,
    done: Receiver<(u64, Done<T>)>,
    free: SyncSender<T>,
) -> Result<(), Stop<E>> {
    let mut next = 0u64;
    let mut waiting = BTreeMap::new();
    for (seq, outcome) in done {
        waiting.insert(seq, outcome.map_err(Stop::Panicked)?);
        while let Some(mut slot) = waiting.remove(&next) {
            write(&mut slot).map_err(Stop::Failed)?;
            next += 1;
            // The reader may have finished; a closed pool is not an error.
            let _ = free.send(slot);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Squares;
    impl Stages for Squares {
        type Slot = Vec<u64>;
        type Worker = ();
        type Error = String;
        fn new_slot(&self) -> Vec<u64> {
            Vec::new()
        }
        fn new_worker(&self) {}
    }

    #[test]
    fn keeps_order_with_many_workers() {
        let mut next = 0u64;
        let mut seen = Vec::new();
        run(
            &Squares,
            4,
            3,
            |slot: &mut Vec<u64>| {
                slot.clear();
                if next >= 1000 {
                    return Ok(false);
                }
                slot.extend(next..next + 10);
                next += 10;
                Ok(true)
            },
            |_, slot| {
                for value in slot.iter_mut() {
                    *value *= *value;
                }
            },
            |slot| {
                seen.extend_from_slice(slot);
                Ok(())
            },
        )
        .unwrap();
        let expected: Vec<u64> = (0..1000).map(|v| v * v).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_worker_panic_stops_the_run_instead_of_hanging() {
        let outcome = panic::catch_unwind(|| {
            run(
                &Squares,
                2,
                2,
                |slot: &mut Vec<u64>| {
                    slot.clear();
                    slot.push(1);
                    Ok(true)
                },
                |_, slot| {
                    if slot[0] == 1 {
                        panic!("bug in a worker");
                    }
                },
                |_| Ok::<(), String>(()),
            )
        });
        assert!(outcome.is_err());
    }

    #[test]
    fn a_writer_error_stops_the_run() {
        let result = run(
            &Squares,
            2,
            2,
            |slot: &mut Vec<u64>| {
                slot.push(1);
                Ok(true)
            },
            |_, _| {},
            |_| Err("disk full".to_owned()),
        );
        assert_eq!(result, Err("disk full".to_owned()));
    }
}
