//! Independent forward/backward passes (a step's micro-batches, the validation batches behind
//! g_val, TiKMiX's per-source batches) and forward passes (evaluation, DoReMi's pool) run side
//! by side where the backend gains from it (the CPU: `StatKernels::concurrent_passes`,
//! `mixtrain_kernels::concurrent`), one after the other elsewhere. The results come back in
//! job order and callers add them up in that order, so the bits are the same either way
//! (`tests/determinism.rs`).

use burn::module::AutodiffModule;
use mixtrain_kernels::concurrent::run_concurrently;
use mixtrain_kernels::StatKernels;

use crate::backend::TrainBackend;
use crate::model::Gpt;

/// `pass(model, job)` for every job, handing each result to `take` in job order. Side by
/// side, each pass runs on a replica of `model`: the same parameters (and parameter ids, so
/// its gradients add up with the model's) behind autodiff nodes of its own; passes on `model`
/// itself would share one autodiff graph, which every backward locks for its whole length. A
/// window of jobs runs at a time (four per lane; one at a time without lanes), so no more
/// results than that are held before `take` gets them.
pub(super) fn backward_passes<B, T, R, F, C>(model: &Gpt<B>, jobs: &[T], pass: F, mut take: C)
where
    B: TrainBackend,
    T: Sync,
    R: Send,
    F: Fn(&Gpt<B>, &T) -> R + Sync,
    C: FnMut(&T, R),
{
    let lanes = B::concurrent_passes();
    if lanes <= 1 || jobs.len() <= 1 {
        for job in jobs {
            take(job, pass(model, job));
        }
        return;
    }
    for window in jobs.chunks(4 * lanes) {
        let results = run_concurrently(window, lanes, |job| {
            let replica = Gpt::<B>::from_inner(model.valid());
            pass(&replica, job)
        });
        for (job, result) in window.iter().zip(results) {
            take(job, result);
        }
    }
}

/// `pass(job)` for every job (forward passes without autodiff, which share no graph), with
/// the results in job order.
pub(super) fn forward_passes<BB, T, R, F>(jobs: &[T], pass: F) -> Vec<R>
where
    BB: StatKernels,
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    run_concurrently(jobs, BB::concurrent_passes(), pass)
}
