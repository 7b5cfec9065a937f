//! Independent passes (micro-batches, validation batches, chunks of a forward) run side by
//! side on the CPU, each on a rayon pool of its own that gets an equal share of rayon's threads
//! (one each on two cores).
//!
//! Why: a pass over a few sequences spends much of its time in work that runs on one thread
//! (burn-ndarray's elementwise ops, the autodiff graph's bookkeeping), and its matrix products
//! are too small to split well over two cores: on the 2-core development machine a step of 16
//! sequences as micro-batches of three ran at 1.59× the speed of one thread with two, against
//! 1.76× for one batch of 16 (`static/micro-batches-of-3` in `cargo bench --bench
//! mixer_overhead` with `RAYON_NUM_THREADS=1` and 2). Two passes at once, each on one thread,
//! keep both cores busy with no splitting at all.
//!
//! Why one pool per lane rather than rayon's global pool: a pass's ops split their rows with
//! rayon, and a worker of a shared pool that waits on its own split may steal another pass and
//! run it on top of the first one's stack (a lane's pool only holds its own pass's tasks: the
//! passes are handed out by a counter, not as rayon tasks). burn's autodiff holds a lock on a graph for its
//! whole backward and, when a backward ends, briefly locks every other graph to drop what is
//! no longer used: a pass stolen on top of a backward could wait on a lock its own thread
//! holds. A pool of one thread only ever runs its own pass's work.
//!
//! The values do not depend on the lanes: each pass runs the same ops on the same inputs
//! whichever thread runs it (the host ops and products give the same bits for any thread
//! count), and the results come back in job order for the caller to add up in that order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// `lanes` pools that share rayon's threads between them (at least one each), created on first
/// use for each number of lanes and kept (their threads sleep when idle).
fn lane_pools(lanes: usize) -> std::sync::Arc<Vec<ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, std::sync::Arc<Vec<ThreadPool>>>>> =
        OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .expect("no thread panicked creating lane pools");
    pools
        .entry(lanes)
        .or_insert_with(|| {
            let threads = (rayon::current_num_threads() / lanes).max(1);
            std::sync::Arc::new(
                (0..lanes)
                    .map(|lane| {
                        ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .thread_name(move |i| format!("mixtrain-lane-{lane}-{i}"))
                            .build()
                            .expect("a rayon pool starts")
                    })
                    .collect(),
            )
        })
        .clone()
}

/// `f` applied to every job, `lanes` jobs at a time (each lane takes the next job when it is
/// done with one), with the results in job order. One lane, or one job, runs them in turn on
/// the calling thread.
pub fn run_concurrently<T, R, F>(jobs: &[T], lanes: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let lanes = lanes.min(jobs.len());
    if lanes <= 1 {
        return jobs.iter().map(f).collect();
    }
    let pools = lane_pools(lanes);
    let pools = &pools[..];
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let result = f(job);
        *results[i]
            .lock()
            .expect("no job panicked holding a result slot") = Some(result);
    };
    std::thread::scope(|scope| {
        let (first, rest) = pools.split_first().expect("at least two lanes");
        for pool in rest {
            scope.spawn(|| pool.install(work));
        }
        first.install(work);
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
/// (`RAYON_NUM_THREADS`), at least one; `run_concurrently` uses no more than it has jobs and
/// gives each lane its share of the threads.
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
