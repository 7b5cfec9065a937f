//! A session's view of the other ranks of a distributed run: which rows of a batch this rank
//! computes, and sums over ranks of gradients and statistics. Alone (no `[distributed]`) the
//! share is everything and the sums are the identity, so a one-process run computes exactly
//! what it computed before distributed training existed.

use std::ops::Range;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;

use super::evaluator::Evaluation;
use super::Session;
use crate::backend::TrainBackend;
use crate::distributed::{flatten_grads, mixture_check, unflatten_grads, Payload};
use crate::error::Result;

impl<B: TrainBackend> Session<B> {
    /// (rank, world size); (0, 1) alone.
    pub(crate) fn rank_and_world(&self) -> (usize, usize) {
        self.reducer.rank_and_world()
    }

    /// The rows of a batch of `n` this rank computes.
    pub(crate) fn my_rows(&self, n: usize) -> Range<usize> {
        self.reducer.my_rows(n)
    }

    /// Sums over ranks (in rank order) of `f32s` and `f64s`; the same values back alone. The
    /// step and the mixture in force are compared across ranks on the way.
    pub(crate) fn sum_over_ranks(&mut self, f32s: Vec<f32>, f64s: Vec<f64>) -> Result<Payload> {
        let step = self.trainer.progress.step as u64;
        let check = mixture_check(self.mixing.mixer.weights());
        self.reducer.sum(step, check, Payload { f32s, f64s })
    }

    /// Σ over ranks of a statistic (one value per source, candidate, ...).
    pub(crate) fn sum_values_over_ranks(&mut self, values: Vec<f64>) -> Result<Vec<f64>> {
        if self.reducer.is_alone() {
            return Ok(values);
        }
        Ok(self.sum_over_ranks(Vec::new(), values)?.f64s)
    }

    /// The evaluation on the fixed validation windows, each rank computing its rows of every
    /// batch of windows and the loss totals summed over ranks; alone, `evaluate`.
    pub(crate) fn evaluate_over_ranks(&mut self) -> Result<Evaluation> {
        if self.reducer.is_alone() {
            return Ok(self.evaluate());
        }
        let model = self.trainer.model.valid();
        let totals = self.evaluator.token_loss_totals(
            &model,
            &self.batches.sources,
            &self.batches.target_sets,
            &self.device,
            self.rank_and_world(),
        );
        let totals = self.sum_values_over_ranks(totals)?;
        Ok(self.evaluator.evaluation_of_totals(&totals))
    }

    /// The target loss on `windows` of its fixed validation windows (the guard's check), each
    /// rank computing its rows and the totals summed over ranks.
    pub(crate) fn target_check_over_ranks(&mut self, windows: usize) -> Result<f64> {
        let model = self.trainer.model.valid();
        let (totals, counts) = self.evaluator.target_check_totals(
            &model,
            (&self.batches.sources, &self.batches.target_sets),
            &self.mixing.target,
            windows,
            &self.device,
            self.rank_and_world(),
        );
        let totals = self.sum_values_over_ranks(totals)?;
        Ok(self.evaluator.target_check_loss(&totals, &counts))
    }

    /// Σ over ranks of a gradient computed on this rank's rows.
    pub(crate) fn sum_grads_over_ranks(
        &mut self,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if self.reducer.is_alone() {
            return Ok(grads);
        }
        let flat = flatten_grads(&self.trainer.model, &grads);
        let summed = self.sum_over_ranks(flat, Vec::new())?;
        Ok(unflatten_grads(&self.trainer.model, &summed.f32s))
    }

    /// Sums the step's gradients and statistics over the ranks of a distributed run: the
    /// gradient, the weighted loss, per source (Σ sequence losses, sequences) and Σ ⟨g_val, ·⟩.
    /// The step and the mixture in force are compared across ranks on the way.
    pub(super) fn sum_step_over_ranks(
        &mut self,
        grads: GradientsParams,
        loss: &mut f64,
        sums: &mut [(f64, u64)],
        dots: &mut [(f64, f64)],
        excess_sums: Option<&mut [f64]>,
    ) -> Result<GradientsParams> {
        let mut f64s = vec![*loss];
        f64s.extend(sums.iter().map(|&(sum, _)| sum));
        f64s.extend(sums.iter().map(|&(_, n)| n as f64));
        f64s.extend(dots.iter().map(|&(dot, _)| dot));
        if let Some(excess) = &excess_sums {
            f64s.extend(excess.iter());
        }
        let flat = flatten_grads(&self.trainer.model, &grads);
        let summed = self.sum_over_ranks(flat, f64s)?;
        let k = sums.len();
        *loss = summed.f64s[0];
        for s in 0..k {
            sums[s] = (summed.f64s[1 + s], summed.f64s[1 + k + s] as u64);
            dots[s].0 = summed.f64s[1 + 2 * k + s];
        }
        if let Some(excess) = excess_sums {
            excess.copy_from_slice(&summed.f64s[1 + 3 * k..1 + 4 * k]);
        }
        Ok(unflatten_grads(&self.trainer.model, &summed.f32s))
    }
}
