//! Independent forward/backward passes (a step's micro-batches, the validation batches behind
//! g_val, TiKMiX's per-source batches) and forward passes (evaluation, DoReMi's pool) run side
//! by side where the backend gains from it (the CPU: `StatKernels::concurrent_passes`,
//! `mixtrain_kernels::cpu::concurrent`), one after the other elsewhere. The results come back in
//! job order and callers add them up in that order, so the bits are the same either way
//! (`tests/it/determinism.rs`).

use burn::module::AutodiffModule;
use mixtrain_kernels::cpu::concurrent::{run_concurrently, run_streaming};
use mixtrain_kernels::StatKernels;

use crate::backend::TrainBackend;
use crate::data::Batch;
use crate::model::Gpt;

/// The rows of each pass a batch of `rows` runs as: one pass, or on a backend that splits
/// passes (`StatKernels::SPLITS_PASSES`) with `pass_size` > 0, ⌈rows / pass_size⌉ passes of
/// near-equal size (the first ones one row larger). Depends on neither the thread count nor
/// the machine.
pub(super) fn pass_ranges<BB: StatKernels>(
    rows: usize,
    pass_size: usize,
) -> Vec<std::ops::Range<usize>> {
    if !BB::SPLITS_PASSES || pass_size == 0 || rows <= pass_size {
        return std::iter::once(0..rows).collect();
    }
    let passes = rows.div_ceil(pass_size);
    let (base, larger) = (rows / passes, rows % passes);
    let mut first = 0;
    (0..passes)
        .map(|i| {
            let size = base + usize::from(i < larger);
            first += size;
            first - size..first
        })
        .collect()
}

/// `batch` as the batches of its passes (`pass_ranges`), in row order; the batch itself,
/// uncopied, when it is one pass.
pub(super) fn split_into_passes<BB: StatKernels>(batch: Batch, pass_size: usize) -> Vec<Batch> {
    let passes = pass_ranges::<BB>(batch.len(), pass_size);
    if passes.len() == 1 {
        return vec![batch];
    }
    passes.into_iter().map(|rows| batch.rows(rows)).collect()
}

/// `pass(model, job)` for every job, handing each result to `take` in job order. Side by
/// side, each pass runs on a replica of `model`: the same parameters (and parameter ids, so
/// its gradients add up with the model's) behind autodiff nodes of its own; passes on `model`
/// itself would share one autodiff graph, which every backward locks for its whole length. A
/// lane that finishes a pass starts the next at once (`concurrent::run_streaming`), so passes
/// of uneven sizes (a probed step's one per source) keep every lane busy; no more than twice
/// as many results as lanes (each a whole gradient) are held before `take` gets them: a step
/// with `grad_accum = 64` on 16 threads holds at most 32 gradients, not 64.
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
    run_streaming(
        jobs,
        lanes,
        2 * lanes,
        |job| {
            let replica = Gpt::<B>::from_inner(model.valid());
            pass(&replica, job)
        },
        take,
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};

    #[test]
    fn the_cpu_splits_a_batch_into_near_equal_passes_of_at_most_the_pass_size() {
        assert_eq!(pass_ranges::<NdArray>(16, 8), vec![0..8, 8..16]);
        assert_eq!(pass_ranges::<NdArray>(12, 8), vec![0..6, 6..12]);
        assert_eq!(pass_ranges::<NdArray>(17, 8), vec![0..6, 6..12, 12..17]);
        assert_eq!(pass_ranges::<NdArray>(8, 8), vec![0..8]);
        assert_eq!(pass_ranges::<NdArray>(3, 8), vec![0..3]);
        assert_eq!(pass_ranges::<NdArray>(16, 1).len(), 16);
        // 0 turns the split off; backends that do not split run one pass.
        assert_eq!(pass_ranges::<NdArray>(16, 0), vec![0..16]);
        assert_eq!(pass_ranges::<Flex>(16, 8), vec![0..16]);
    }

    #[test]
    fn passes_cover_every_row_once_in_order() {
        for rows in 0..40 {
            for size in 1..12 {
                let passes = pass_ranges::<NdArray>(rows, size);
                let covered: Vec<usize> = passes.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(covered, (0..rows).collect::<Vec<_>>());
                assert!(passes.iter().all(|r| r.len() <= size));
                let (min, max) = (
                    passes.iter().map(|r| r.len()).min().unwrap(),
                    passes.iter().map(|r| r.len()).max().unwrap(),
                );
                assert!(max - min <= 1, "{rows} rows, size {size}: {passes:?}");
            }
        }
    }
}
