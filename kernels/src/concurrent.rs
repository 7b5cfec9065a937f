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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
