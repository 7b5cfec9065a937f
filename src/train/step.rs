//! One training step in four parts: plan (draw the step's sources from the mixture, lay out
//! its micro-batches), run passes (forward/backward of each with per-sequence loss weights,
//! `PassContext::run`, side by side on the CPU: `passes`; losses and statistics summed in
//! `StepSums`), reduce (sums over ranks), apply (finite check and its policy, clip, AdamW,
//! counters). Before a mixer update whose mixer asks for
//! ⟨g_val, g_k⟩ the step is probed and returns the measurement in its report.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};

use super::micro::{
    micro_batch_ranges, pair_up_passes, sequence_weights, MicroBatch, MicroOut, MicroProbe,
    PassContext, StepSums,
};
use super::passes::{backward_passes, split_into_passes};
use super::probe::{grad_dot, FlatGrads, GradProbe, ProbeWindow};
use super::{NonFinitePolicy, Session, StepReport};
use crate::backend::TrainBackend;
use crate::error::{Error, Result};
use crate::mixer::{ExcessSpec, GradStats};
use crate::model::Gpt;
use crate::optim::{global_grad_norm, lr_at};

/// What `plan_step` decides before any pass runs.
pub(super) struct StepPlan {
    lr: f64,
    /// The mixture the step draws from. [k]
    pub(super) weights: Vec<f64>,
    /// Each sequence's source, sorted by source. [n]
    sources: Vec<usize>,
    /// Sequences of each source. [k]
    counts: Vec<usize>,
    /// Each sequence's loss weight (`sequence_weights`). [n]
    seq_weights: Vec<f64>,
    /// Σ of the step's loss weights.
    pub(super) weight_total: f64,
    /// The micro-batches' rows of `sources`.
    ranges: Vec<std::ops::Range<usize>>,
    /// A probed step measures ⟨g_val, g_k⟩ from its traced backward (`grad_stats`).
    single_pass: bool,
    /// The step measures each source's gradient from its traced backward (TiKMiX-M).
    source_grads: bool,
}

impl<B: TrainBackend> Session<B> {
    /// The probe window the next training step measures into, if it is probed
    /// (`MixerConfig::probes_at`): the open window, or a new one at the window's first step,
    /// around the g_val kept from earlier updates (`gval_every` of the mixer's section) or a fresh one.
    fn probe_for_next_step(&mut self) -> Result<Option<ProbeWindow>> {
        let Some(spec) = self.mixing.mixer.needs().grad_probe else {
            return Ok(None);
        };
        if !self
            .config
            .mixer
            .probes_at(self.trainer.progress.step + 1, self.config.train.steps)
        {
            return Ok(None);
        }
        if let Some(window) = self.mixing.probe.window.take() {
            return Ok(Some(window));
        }
        if let Some((probe, served)) = self.mixing.probe.kept.take() {
            return Ok(Some(ProbeWindow::new(
                probe,
                self.batches.sources.len(),
                served,
            )));
        }
        let probe = GradProbe {
            g_val: self.validation_gradient(spec.val_batches)?,
            scope: spec.scope,
            precondition: spec.precondition,
        };
        Ok(Some(ProbeWindow::new(probe, self.batches.sources.len(), 0)))
    }

    /// One optimizer step: draw the step's sequences from the mixture, forward/backward each
    /// micro-batch with per-sequence loss weights, accumulate, clip, AdamW. On the steps that
    /// measure ⟨g_val, g_k⟩ for a mixer update (`probe_steps` of the mixer's section), micro-batches are
    /// domain-homogeneous (or traced, single-pass) and the measurement joins the update's
    /// probe window.
    pub fn train_step(&mut self) -> Result<StepReport> {
        // Taken before the probe: its validation batches draw from the sampler too.
        let sampler_before = self.batches.sampler.state().clone();
        let opened_here = self.mixing.probe.window.is_none();
        let mut window = self.probe_for_next_step()?;
        let excess = self.excess_for_next_step();
        let source_grads = self.source_grads_for_next_step();
        let probe = window.as_ref().map(|w| &w.probe);
        let result = self.step_from(probe, excess, source_grads, sampler_before);
        match &result {
            Ok(report) => {
                if let (Some(window), Some(dots)) = (window.as_mut(), &report.grad_dot) {
                    window.add(dots);
                }
                self.mixing.probe.window = window;
            }
            // The sampler is back where it was before this step's g_val was drawn: a window
            // opened by this step goes too, so the replayed step opens it again identically
            // (around the same kept g_val, if it had one).
            Err(_) => match window {
                Some(window) if opened_here && window.served > 0 => {
                    self.mixing.probe.kept = Some((window.probe, window.served));
                }
                Some(window) if !opened_here => self.mixing.probe.window = Some(window),
                _ => {}
            },
        }
        result
    }

    /// Whether the next step measures DoReMi's excess losses for the update right after it.
    fn excess_for_next_step(&self) -> bool {
        self.mixing.mixer.needs().excess_loss == Some(ExcessSpec::Step)
            && self
                .config
                .mixer
                .updates_at(self.trainer.progress.step + 1, self.config.train.steps)
    }

    /// One optimizer step; with `probe`, it also measures ⟨g_val, g_k⟩ per source the way
    /// the mixer's `grad_stats` says (returned in the report's `grad_dot`). `train_step` probes the
    /// steps right before the mixer's updates; benches call this directly to time a probed step.
    pub fn train_step_probed(&mut self, probe: Option<GradProbe>) -> Result<StepReport> {
        let sampler_before = self.batches.sampler.state().clone();
        self.step_from(probe.as_ref(), false, false, sampler_before)
    }

    /// The step itself, as four parts: plan it (`plan_step`), run its passes (`run_passes`),
    /// sum over ranks (`reduce_step`), apply it (`apply_step`). With `excess`, it also
    /// measures DoReMi's excess losses on its sequences (returned in the report's
    /// `excess_loss`). `sampler_before` is the sampler as it was before this step (and its
    /// probe), restored if the step turns out non-finite and the run stops: its checkpoint
    /// then replays this very step.
    /// With `source_grads`, it measures each source's gradient (TiKMiX-M's probed G_k) and,
    /// if the step was applied, adds it to the update's window (`add_step_source_grads`).
    fn step_from(
        &mut self,
        probe: Option<&GradProbe>,
        excess: bool,
        source_grads: bool,
        sampler_before: crate::data::SamplerState,
    ) -> Result<StepReport> {
        let plan = self.plan_step(probe.is_some(), source_grads);
        let mut sums = StepSums::new(plan.weights.len());
        let passes = self.draw_passes(&plan, probe.is_some() || source_grads, &mut sums);
        let grads = self.run_passes(&plan, passes, probe, excess, &mut sums);
        let grads = self.reduce_step(grads, &mut sums, excess)?;
        let measured = sums.source_grads.take();
        let dots = sums.dots.clone();
        let before = (source_grads && self.virtual_step_from_probed_params())
            .then(|| self.trainer.model.valid());
        let mut report =
            self.apply_step(&plan, grads, sums, probe.is_some(), excess, sampler_before)?;
        // The last probed step alone decides (none if skipped): a resumed window agrees.
        if source_grads {
            self.mixing.probe.before_probed_step = before.filter(|_| report.skipped.is_none());
        }
        if let (Some(raw), None) = (measured, &report.skipped) {
            self.add_step_source_grads(raw, &dots, plan.weight_total)?;
            report.measured_gradients = true;
        }
        Ok(report)
    }

    /// Draws the step's sources from the mixture and lays out its micro-batches; `probed`:
    /// it measures ⟨g_val, g_k⟩, `source_grads`: each source's gradient.
    pub(super) fn plan_step(&mut self, probed: bool, source_grads: bool) -> StepPlan {
        let train = &self.config.train;
        let apply = self.config.mixer.apply;
        let weights = self.mixing.mixer.weights().to_vec();
        let sources =
            self.batches
                .sampler
                .draw_sources(&weights, apply, train.batch_size * train.grad_accum);
        let mut counts = vec![0usize; weights.len()];
        for &s in &sources {
            counts[s] += 1;
        }
        let seq_weights = sequence_weights(&sources, &weights, &counts, apply);
        // Normalised over the whole step so micro-batches add up to the step's weighted mean:
        // Σ_i w_i ℓ_i / Σ_i w_i.
        let weight_total: f64 = seq_weights.iter().sum();
        // Per-source statistics from the step's own backward need no homogeneous micro-batches.
        let probed = probed || source_grads;
        let single_pass = probed
            && self.config.mixer.probing().map(|p| p.grad_stats) == Some(GradStats::SinglePass);
        let ranges = micro_batch_ranges(&sources, train.batch_size, probed && !single_pass);
        StepPlan {
            lr: lr_at(self.trainer.progress.step, train),
            weights,
            sources,
            counts,
            seq_weights,
            weight_total,
            ranges,
            single_pass,
            source_grads,
        }
    }

    /// Every micro-batch drawn first, in order (the sampler's draws are those of one
    /// micro-batch after another): this rank's rows of each, as passes of at most
    /// `train.cpu_pass_size` rows on the CPU. A probed step's Σ w_i per source goes to `sums`.
    pub(super) fn draw_passes(
        &mut self,
        plan: &StepPlan,
        probed: bool,
        sums: &mut StepSums<B>,
    ) -> Vec<MicroBatch> {
        let pass_size = self.config.train.cpu_pass_size;
        let mut drawn = Vec::with_capacity(plan.ranges.len());
        for range in &plan.ranges {
            let micro = &plan.sources[range.clone()];
            let micro_weights = &plan.seq_weights[range.clone()];
            // Σ w_i per source over the whole micro-batch: the same on every rank.
            if probed && plan.single_pass {
                for (&s, &w) in micro.iter().zip(micro_weights) {
                    sums.dots[s].1 += w;
                }
            } else if probed {
                sums.dots[micro[0]].1 += micro_weights.iter().sum::<f64>();
            }
            // A distributed rank trains on its share of every micro-batch; the sums over ranks
            // make the step the same as one process training on all of it.
            let mine = self.my_rows(micro.len());
            let batch = self
                .batches
                .sampler
                .fill_share(micro, &self.batches.sources, mine.clone());
            if mine.is_empty() {
                continue;
            }
            let mut first_row = mine.start;
            for batch in split_into_passes::<B>(batch, pass_size) {
                let at = first_row..first_row + batch.len();
                first_row = at.end;
                drawn.push(MicroBatch {
                    sources: micro[at.clone()].to_vec(),
                    weights: micro_weights[at.clone()].to_vec(),
                    first_row: at.start,
                    batch,
                });
            }
        }
        drawn
    }

    /// Forward and backward of every pass (side by side on the CPU: `passes`), their results
    /// added into `sums` in pass order, so the bits do not depend on how many ran at once.
    /// Returns the step's accumulated gradient.
    pub(super) fn run_passes(
        &self,
        plan: &StepPlan,
        mut drawn: Vec<MicroBatch>,
        probe: Option<&GradProbe>,
        excess: bool,
        sums: &mut StepSums<B>,
    ) -> GradientsParams {
        let target = probe
            .map(|p| p.step_target(&self.trainer.model, self.head_name(), &self.trainer.optim));
        // Per-source passes dot their gradient with the target where they run.
        let flat_target = match (&target, plan.single_pass) {
            (Some(target), false) => Some(FlatGrads::of(&self.trainer.model, target)),
            _ => None,
        };
        // A probed step's per-source passes (about three rows each on the quickstart) run two
        // at a time on two cores, each pair finishing together; an odd number leaves the last
        // alone, at 1.5× the time per row. Splitting the largest in two makes the count even
        // ([3, 3, 4, 3, 3] took 112 ms, its plain step 97). The rule reads only the rows, so
        // the bits do not depend on the thread count.
        if flat_target.is_some() && self.config.train.cpu_pass_size > 0 && B::SPLITS_PASSES {
            pair_up_passes(&mut drawn);
        }
        let passes = PassContext {
            reference: self.mixing.reference.as_ref(),
            device: &self.device,
            k: plan.weights.len(),
            weight_total: plan.weight_total,
            excess,
            source_grads: plan.source_grads,
        };
        let poison = crate::fault::nonfinite_loss(self.trainer.progress.step + 1);
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        let mut take = |micro: &MicroBatch, out: MicroOut<B>| {
            accumulator.accumulate(
                &self.trainer.model,
                sums.add(micro, out, plan.weight_total, poison),
            );
        };
        // Single-pass statistics read the step's P ⊙ g_val inside the pass: one at a time.
        match target.as_ref().filter(|_| plan.single_pass) {
            Some(traced) => {
                for micro in &drawn {
                    take(micro, passes.run(&self.trainer.model, micro, Some(traced)));
                }
            }
            None => backward_passes(
                &self.trainer.model,
                &drawn,
                |model, micro| {
                    let mut out = passes.run(model, micro, None);
                    if let Some(target) = &flat_target {
                        out.probe = MicroProbe::Homogeneous(grad_dot(model, target, &out.grads));
                    }
                    out
                },
                take,
            ),
        }
        sums.read_single_pass_dots();
        accumulator.grads()
    }

    /// The step's gradient and sums over ranks (the identity alone).
    fn reduce_step(
        &mut self,
        grads: GradientsParams,
        sums: &mut StepSums<B>,
        excess: bool,
    ) -> Result<GradientsParams> {
        if self.reducer.is_alone() {
            return Ok(grads);
        }
        self.sum_step_over_ranks(
            grads,
            &mut sums.loss,
            &mut sums.by_source,
            &mut sums.dots,
            excess.then_some(&mut sums.excess[..]),
        )
    }

    /// The finite check and its policy, clipping, AdamW and the counters; the step's report.
    fn apply_step(
        &mut self,
        plan: &StepPlan,
        mut grads: GradientsParams,
        sums: StepSums<B>,
        probed: bool,
        excess: bool,
        sampler_before: crate::data::SamplerState,
    ) -> Result<StepReport> {
        if crate::fault::nonfinite_grad(self.trainer.progress.step + 1) {
            crate::optim::poison_first_gradient(&self.trainer.model, &mut grads);
        }
        let grad_norm = global_grad_norm(&self.trainer.model, &grads);
        if !sums.loss.is_finite() || !grad_norm.is_finite() {
            return self.refuse_nonfinite(plan, &sums, grad_norm, sampler_before);
        }
        let clip = self.config.train.grad_clip;
        let scale = if clip > 0.0 && grad_norm > clip {
            clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let model = self.trainer.model.clone();
        self.trainer.model = self.trainer.optim.step(model, &mut grads, plan.lr, scale);

        let seq_len = self.config.data.seq_len;
        let step_tokens = plan.sources.len() * seq_len;
        self.trainer.progress.record_step(
            step_tokens as u64,
            seq_len,
            &plan.counts,
            &plan.weights,
            &sums.by_source,
        );
        Ok(StepReport {
            loss: sums.loss,
            loss_by_source: sums
                .by_source
                .iter()
                .map(|&(s, n)| (n > 0).then(|| s / n as f64))
                .collect(),
            grad_norm,
            lr: plan.lr,
            tokens: step_tokens,
            skipped: None,
            grad_dot: probed.then(|| sums.grad_dots(plan.weight_total)),
            excess_loss: excess.then(|| sums.excess_per_token(&plan.counts, seq_len)),
            measured_gradients: false,
        })
    }

    /// A non-finite step is never applied: with `train.on_nonfinite = "skip"` (and skips
    /// left) it is dropped and reported; otherwise the sampler goes back to before the step,
    /// so that the checkpoint the run stops with replays it, and the step is an error.
    fn refuse_nonfinite(
        &mut self,
        plan: &StepPlan,
        sums: &StepSums<B>,
        grad_norm: f64,
        sampler_before: crate::data::SamplerState,
    ) -> Result<StepReport> {
        let train = &self.config.train;
        let (policy, max_skipped) = (train.on_nonfinite, train.max_skipped_steps);
        let message = self.nonfinite_message(sums.loss, grad_norm, &sums.by_source);
        if policy == NonFinitePolicy::Skip && self.trainer.progress.skipped_steps < max_skipped {
            // The batch is dropped; the schedule moves on as if the step had happened.
            self.trainer.progress.record_skipped(&plan.weights);
            return Ok(StepReport {
                loss: sums.loss,
                loss_by_source: vec![None; plan.weights.len()],
                grad_norm,
                lr: plan.lr,
                tokens: 0,
                skipped: Some(message),
                grad_dot: None,
                excess_loss: None,
                measured_gradients: false,
            });
        }
        self.batches.sampler.restore(sampler_before);
        let message = if policy == NonFinitePolicy::Skip {
            format!("{message}; more than train.max_skipped_steps = {max_skipped} steps skipped")
        } else {
            message
        };
        Err(Error::NonFinite {
            step: self.trainer.progress.step + 1,
            message,
        })
    }

    /// Names what was non-finite in a step: the loss (and the sources whose mean sequence loss
    /// was), or the gradient norm.
    fn nonfinite_message(&self, loss: f64, grad_norm: f64, sums: &[(f64, u64)]) -> String {
        let names = self.source_names();
        let bad: Vec<String> = sums
            .iter()
            .zip(&names)
            .filter(|((s, n), _)| *n > 0 && !s.is_finite())
            .map(|(_, name)| name.clone())
            .collect();
        let what = if !loss.is_finite() {
            format!(
                "loss is {loss} (non-finite in source(s): {})",
                bad.join(", ")
            )
        } else {
            format!("gradient norm is {grad_norm} (the losses were finite)")
        };
        format!(
            "{what}; the step was not applied (lower train.lr, raise train.warmup_steps, or set \
             train.on_nonfinite = \"skip\")"
        )
    }
}
