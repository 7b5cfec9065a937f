//! Independent passes (micro-batches, validation batches, chunks of a forward) run side by
//! side on the CPU, one per thread of rayon's pool.
//!
//! Why: a pass over a few sequences spends much of its time in work that runs on one thread
//! (burn-ndarray's elementwise ops, the autodiff graph's bookkeeping), and its matrix products
//! are too small to split well over two cores: on the 2-core development machine a step of 16
//! sequences as micro-batches of three ran at 1.59× the speed of one thread with two, against
//! 1.76× for one batch of 16 (`static/micro-batches-of-3` in `cargo bench --bench
//! mixer_overhead` with `RAYON_NUM_THREADS=1` and 2). Two passes at once, each on one thread,
//! keep both cores busy with no splitting at all.
//!
//! Why each thread runs one pass at a time, handed out by a counter inside a broadcast,
//! rather than the passes as rayon tasks: a pass's ops split their rows with rayon, and a
//! worker that waits on its own split runs whatever task it can find; if that were another
//! pass, it would run on top of the first one's stack. burn's autodiff holds a lock on a graph
//! for its whole backward and, when a backward ends, briefly locks every other graph to drop
//! what is no longer used: a pass run on top of a backward could wait on a lock its own
//! thread holds. A broadcast job only ever runs on its own thread, and the tasks a waiting
//! worker can pick up are row splits, which touch no autodiff state.
//!
//! The values do not depend on the lanes: each pass runs the same ops on the same inputs
//! whichever thread runs it (the host ops and products give the same bits for any thread
//! count), and the results come back in job order for the caller to add up in that order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// `f` applied to every job, with the results in job order. With more than one lane and job,
/// every thread of rayon's pool runs a loop that takes the next job until none is left (so
/// a thread is never handed a second job while one of its own is unfinished); a thread with
/// no job left helps the others' row splits. One lane, or one job, runs them in turn on the
/// calling thread.
pub fn run_concurrently<T, R, F>(jobs: &[T], lanes: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    if lanes.min(jobs.len()) <= 1 {
        return jobs.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    rayon::broadcast(|_| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let result = f(job);
        *results[i]
            .lock()
            .expect("no job panicked holding a result slot") = Some(result);
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("no job panicked holding a result slot")
                .expect("every job ran")
        })
        .collect()
}

/// `f` applied to every job, each result handed to `take` in job order, on the calling
/// thread, as soon as it and every result before it are done, with at most `held` jobs
/// running or finished but not yet taken. Unlike `run_concurrently` over windows of `lanes`
/// jobs, a thread that finishes its job starts the next at once instead of waiting for the
/// window's slowest: a probed training step's passes (one per source, of uneven sizes) on two
/// threads ran as windows of [4, 3], [3, 3], [3] sequences, 10 units of time for 8 of work. A
/// thread whose next job would exceed `held` waits, helping the other threads' row splits
/// meanwhile. One lane, or one job, runs them in turn on the calling thread; so do windows of
/// `lanes` jobs when the caller is itself one of rayon's threads (it must not block on a
/// result that only it could produce).
pub fn run_streaming<T, R, F, C>(jobs: &[T], lanes: usize, held: usize, f: F, mut take: C)
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
    C: FnMut(&T, R),
{
    if lanes.min(jobs.len()) <= 1 {
        for job in jobs {
            take(job, f(job));
        }
        return;
    }
    if rayon::current_thread_index().is_some() {
        for window in jobs.chunks(lanes) {
            for (job, result) in window.iter().zip(run_concurrently(window, lanes, &f)) {
                take(job, result);
            }
        }
        return;
    }
    let held = held.max(1);
    let next = AtomicUsize::new(0);
    // Set when a job panicked: the other threads stop taking jobs (and waiting for room).
    let abandoned = AtomicBool::new(false);
    // Jobs taken so far; read without the lock by threads waiting for room.
    let taken = AtomicUsize::new(0);
    // Results finished out of order, by job index; a job's panic is handed to the calling
    // thread, which would otherwise wait for its result forever.
    let finished: Mutex<BTreeMap<usize, std::thread::Result<R>>> = Mutex::new(BTreeMap::new());
    let done = Condvar::new();
    rayon::in_place_scope(|scope| {
        scope.spawn_broadcast(|_, _| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else { break };
            // Job i's result may wait for the `i − taken` before it: start it only when that
            // leaves at most `held` running or waiting.
            while i >= taken.load(Ordering::Acquire) + held && !abandoned.load(Ordering::Relaxed) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::yield_now();
                }
            }
            if abandoned.load(Ordering::Relaxed) {
                break;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(job)));
            finished
                .lock()
                .expect("no thread panicked holding the results")
                .insert(i, result);
            done.notify_one();
        });
        // A panic in `take` (or a job's, resumed below) stops the other threads too: they
        // would otherwise wait for room forever and the scope for them.
        let _stop_on_panic = StopOnPanic(&abandoned);
        for (i, job) in jobs.iter().enumerate() {
            let mut waiting = finished
                .lock()
                .expect("no thread panicked holding the results");
            let result = loop {
                if let Some(result) = waiting.remove(&i) {
                    break result;
                }
                waiting = done
                    .wait(waiting)
                    .expect("no thread panicked holding the results");
            };
            drop(waiting);
            let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            take(job, result);
            taken.store(i + 1, Ordering::Release);
        }
    });
}

/// Sets its flag when dropped during a panic.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Lanes for independent passes on the CPU: one per thread of rayon's pool
/// (`RAYON_NUM_THREADS`), at least one.
pub fn cpu_lanes() -> usize {
    rayon::current_num_threads().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_whatever_the_lanes() {
        let jobs: Vec<u64> = (0..37).collect();
        let expected: Vec<u64> = jobs.iter().map(|x| x * x + 1).collect();
        for lanes in [1, 2, 3, 8] {
            assert_eq!(run_concurrently(&jobs, lanes, |x| x * x + 1), expected);
        }
    }

    /// Jobs of uneven length: `take` still sees them in order, and no more than `held` are
    /// ever finished and waiting.
    #[test]
    fn streamed_results_are_taken_in_job_order_with_at_most_held_waiting() {
        use std::sync::atomic::AtomicUsize;
        let jobs: Vec<u64> = (0..23).collect();
        for (lanes, held) in [(1, 1), (2, 1), (2, 2), (3, 4), (8, 3)] {
            let finished = AtomicUsize::new(0);
            let most_waiting = AtomicUsize::new(0);
            let mut seen = Vec::new();
            run_streaming(
                &jobs,
                lanes,
                held,
                |&x| {
                    // Early jobs are the slow ones, so later ones finish first.
                    std::thread::sleep(std::time::Duration::from_micros((23 - x) * 200));
                    let now = finished.fetch_add(1, Ordering::SeqCst) + 1;
                    most_waiting.fetch_max(now, Ordering::SeqCst);
                    x * x + 1
                },
                |&x, r| {
                    finished.fetch_sub(1, Ordering::SeqCst);
                    seen.push((x, r));
                },
            );
            let expected: Vec<(u64, u64)> = jobs.iter().map(|&x| (x, x * x + 1)).collect();
            assert_eq!(seen, expected, "lanes {lanes}, held {held}");
            assert!(
                most_waiting.load(Ordering::SeqCst) <= held.max(1),
                "lanes {lanes}, held {held}: {} waiting",
                most_waiting.load(Ordering::SeqCst)
            );
        }
    }

    /// A job that panics makes the call panic (on the calling thread) instead of leaving it
    /// waiting for that job's result.
    #[test]
    fn a_panicking_job_panics_the_caller() {
        let jobs: Vec<u64> = (0..12).collect();
        let outcome = std::panic::catch_unwind(|| {
            let mut taken = Vec::new();
            run_streaming(
                &jobs,
                2,
                2,
                |&x| {
                    assert!(x != 5, "job 5 fails");
                    x
                },
                |&x, _| taken.push(x),
            );
            taken
        });
        assert!(outcome.is_err());
    }

    /// A `take` that panics makes the call panic rather than leave the other threads waiting
    /// for room (`held = 1` keeps them waiting on every job).
    #[test]
    fn a_panicking_take_panics_the_caller() {
        let jobs: Vec<u64> = (0..12).collect();
        let outcome = std::panic::catch_unwind(|| {
            run_streaming(&jobs, 2, 1, |&x| x, |&x, _| assert!(x != 3, "take 3 fails"));
        });
        assert!(outcome.is_err());
    }

    /// Called from one of rayon's own threads, the jobs run in windows instead (the caller
    /// must not block on a result only it could produce): same results, same order.
    #[test]
    fn streaming_from_a_pool_thread_takes_the_results_in_order() {
        let jobs: Vec<u64> = (0..9).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool of 2");
        let seen = pool.install(|| {
            assert!(rayon::current_thread_index().is_some());
            let mut seen = Vec::new();
            run_streaming(&jobs, 2, 4, |&x| x + 100, |&x, r| seen.push((x, r)));
            seen
        });
        assert_eq!(seen, jobs.iter().map(|&x| (x, x + 100)).collect::<Vec<_>>());
    }

    #[test]
    fn nested_parallel_work_inside_a_job_finishes() {
        use rayon::prelude::*;
        let jobs: Vec<usize> = (1..9).collect();
        let sums = run_concurrently(&jobs, 2, |&n| {
            (0..n * 1000).into_par_iter().map(|x| x as u64).sum::<u64>()
        });
        let expected: Vec<u64> = jobs.iter().map(|&n| (0..(n * 1000) as u64).sum()).collect();
        assert_eq!(sums, expected);
    }
}
