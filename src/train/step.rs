//! One training step, built from micro-steps: draw the step's sequences from the mixture,
//! forward/backward each micro-batch with per-sequence loss weights (`PassContext::run`, side
//! by side on the CPU: `passes`), accumulate,
//! check that the step is finite, clip, AdamW. Before a mixer update whose mixer asks for
//! ⟨g_val, g_k⟩ the step is probed and returns the measurement in its report.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::evaluator::batch_tensors;
use super::measure::excess_by_sequence;
use super::passes::{backward_passes, split_into_passes};
use super::probe::{grad_dot, FlatGrads, GradProbe, ProbeWindow};
use super::single_pass::SinglePass;
use super::{NonFinitePolicy, Session, StepReport};
use crate::backend::TrainBackend;
use crate::error::{Error, Result};
use crate::mixer::{ApplyMode, ExcessSpec, GradStats};
use crate::model::{token_losses, Gpt, Trace};
use crate::optim::{global_grad_norm, lr_at};

/// What one micro-batch's forward and backward produced.
struct MicroOut<B: TrainBackend> {
    grads: GradientsParams,
    /// Mean token loss of each sequence. [n]
    seq_loss: Vec<f32>,
    probe: MicroProbe<B>,
    /// Per sequence, Σ over its tokens of max(ℓ_θ − ℓ_ref, 0), when the step measures it.
    excess: Option<Vec<f32>>,
}

/// A micro-batch's share of ⟨g_val, g_k⟩.
enum MicroProbe<B: TrainBackend> {
    None,
    /// ⟨g_val, this micro-batch's gradient⟩; all its sequences are of one source.
    Homogeneous(f64),
    /// Per source, from the traced backward. [k]
    SinglePass(Tensor<B::InnerBackend, 1>),
}

impl<B: TrainBackend> Session<B> {
    /// The probe window the next training step measures into, if it is probed
    /// (`MixerConfig::probes_at`): the open window, or a new one at the window's first step,
    /// around the g_val kept from earlier updates (`mixer.gval_every`) or a fresh one.
    fn probe_for_next_step(&mut self) -> Result<Option<ProbeWindow>> {
        let Some(spec) = self.mixer.needs().grad_probe else {
            return Ok(None);
        };
        if !self
            .config
            .mixer
            .probes_at(self.progress.step + 1, self.config.train.steps)
        {
            return Ok(None);
        }
        if let Some(window) = self.probe_window.take() {
            return Ok(Some(window));
        }
        if let Some((probe, served)) = self.kept_probe.take() {
            return Ok(Some(ProbeWindow::new(probe, self.sources.len(), served)));
        }
        let probe = GradProbe {
            g_val: self.validation_gradient(spec.val_batches)?,
            scope: spec.scope,
            precondition: spec.precondition,
        };
        Ok(Some(ProbeWindow::new(probe, self.sources.len(), 0)))
    }

    /// One optimizer step: draw the step's sequences from the mixture, forward/backward each
    /// micro-batch with per-sequence loss weights, accumulate, clip, AdamW. On the steps that
    /// measure ⟨g_val, g_k⟩ for a mixer update (`mixer.probe_steps`), micro-batches are
    /// domain-homogeneous (or traced, single-pass) and the measurement joins the update's
    /// probe window.
    pub fn train_step(&mut self) -> Result<StepReport> {
        // Taken before the probe: its validation batches draw from the sampler too.
        let sampler_before = self.sampler.state().clone();
        let opened_here = self.probe_window.is_none();
        let mut window = self.probe_for_next_step()?;
        let excess = self.excess_for_next_step();
        let result = self.step_from(window.as_ref().map(|w| &w.probe), excess, sampler_before);
        match &result {
            Ok(report) => {
                if let (Some(window), Some(dots)) = (window.as_mut(), &report.grad_dot) {
                    window.add(dots);
                }
                self.probe_window = window;
            }
            // The sampler is back where it was before this step's g_val was drawn: a window
            // opened by this step goes too, so the replayed step opens it again identically
            // (around the same kept g_val, if it had one).
            Err(_) => match window {
                Some(window) if opened_here && window.served > 0 => {
                    self.kept_probe = Some((window.probe, window.served));
                }
                Some(window) if !opened_here => self.probe_window = Some(window),
                _ => {}
            },
        }
        result
    }

    /// Whether the next step measures DoReMi's excess losses for the update right after it.
    fn excess_for_next_step(&self) -> bool {
        self.mixer.needs().excess_loss == Some(ExcessSpec::Step)
            && self
                .config
                .mixer
                .updates_at(self.progress.step + 1, self.config.train.steps)
    }

    /// One optimizer step; with `probe`, it also measures ⟨g_val, g_k⟩ per source the way
    /// `mixer.grad_stats` says (returned in the report's `grad_dot`). `train_step` probes the
    /// steps right before the mixer's updates; benches call this directly to time a probed step.
    pub fn train_step_probed(&mut self, probe: Option<GradProbe>) -> Result<StepReport> {
        let sampler_before = self.sampler.state().clone();
        self.step_from(probe.as_ref(), false, sampler_before)
    }

    /// The step itself; with `excess`, it also measures DoReMi's excess losses on its
    /// sequences (returned in the report's `excess_loss`). `sampler_before` is the sampler as
    /// it was before this step (and its probe), restored if the step turns out non-finite and
    /// the run stops: its checkpoint then replays this very step.
    fn step_from(
        &mut self,
        probe: Option<&GradProbe>,
        excess: bool,
        sampler_before: crate::data::SamplerState,
    ) -> Result<StepReport> {
        let train = &self.config.train;
        let apply = self.config.mixer.apply;
        let (policy, max_skipped) = (train.on_nonfinite, train.max_skipped_steps);
        let step_sequences = train.batch_size * train.grad_accum;
        let batch_size = train.batch_size;
        let lr = lr_at(self.progress.step, train);
        let weights = self.mixer.weights().to_vec();
        let k = weights.len();
        let sources = self.sampler.draw_sources(&weights, apply, step_sequences);
        let mut counts = vec![0usize; k]; // sequences of each source in this step
        for &s in &sources {
            counts[s] += 1;
        }
        let seq_weights = sequence_weights(&sources, &weights, &counts, apply);
        // Normalised over the whole step so micro-batches add up to the step's weighted mean:
        // Σ_i w_i ℓ_i / Σ_i w_i.
        let weight_total: f64 = seq_weights.iter().sum();
        // Per-source statistics from the step's own backward need no homogeneous micro-batches.
        let single_pass = probe.is_some() && self.config.mixer.grad_stats == GradStats::SinglePass;
        let ranges = micro_batch_ranges(&sources, batch_size, probe.is_some() && !single_pass);
        let head = self.head_name();
        let target = probe.map(|p| p.step_target(&self.model, head, &self.optim));
        // Per-source passes dot their gradient with the target where they run.
        let flat_target = match (&target, single_pass) {
            (Some(target), false) => Some(FlatGrads::of(&self.model, target)),
            _ => None,
        };

        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        let mut loss = 0.0;
        let mut sums = vec![(0.0f64, 0u64); k];
        // Per source: Σ over its sequences' tokens of max(ℓ_θ − ℓ_ref, 0), with `excess`.
        let mut excess_sums = vec![0.0f64; k];
        // Per source: Σ ⟨g_val, Δ buffer⟩ and Σ w_i of its sequences.
        let mut dots = vec![(0.0f64, 0.0f64); k];
        // Single-pass: Σ over micro-batches of the per-source dots, kept on the device and read
        // once after the last micro-batch. [k]
        let mut single_pass_dots: Option<Tensor<B::InnerBackend, 1>> = None;
        // Every micro-batch is drawn first, in order (the sampler's draws are those of one
        // micro-batch after another), then their forward/backward passes run: side by side on
        // the CPU (`passes::backward_passes`). What they return is added up in pass order
        // either way, so the step's bits do not depend on how many ran at once.
        let pass_size = self.config.train.cpu_pass_size;
        let mut drawn = Vec::with_capacity(ranges.len());
        for range in ranges {
            let micro = &sources[range.clone()];
            let micro_weights = &seq_weights[range.clone()];
            // Σ w_i per source over the whole micro-batch: the same on every rank.
            if probe.is_some() && single_pass {
                for (&s, &w) in micro.iter().zip(micro_weights) {
                    dots[s].1 += w;
                }
            } else if probe.is_some() {
                dots[micro[0]].1 += micro_weights.iter().sum::<f64>();
            }
            // A distributed rank trains on its share of every micro-batch; the sums over ranks
            // below make the step the same as one process training on all of it.
            let mine = self.my_rows(micro.len());
            let batch = self.sampler.fill_share(micro, &self.sources, mine.clone());
            if mine.is_empty() {
                continue;
            }
            // On the CPU, passes of at most `train.cpu_pass_size` rows.
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
        // A probed step's per-source passes (about three rows each on the quickstart) run two
        // at a time on two cores, each pair finishing together (their row splits help each
        // other, so a pair takes as long as its larger pass would next to an equal one); an
        // odd number leaves the last alone, at 1.5× the time per row. Splitting the largest
        // in two makes the count even and its halves a pair ([3, 3, 4, 3, 3] took 112 ms, its
        // plain step 97). The rule reads only the rows, so the bits do not depend on the
        // thread count.
        if flat_target.is_some() && pass_size > 0 && B::SPLITS_PASSES {
            pair_up_passes(&mut drawn);
        }
        // Single-pass statistics read the step's P ⊙ g_val inside the pass: one at a time.
        let traced = if single_pass { target.as_ref() } else { None };
        let poison = crate::fault::nonfinite_loss(self.progress.step + 1);
        let passes = PassContext {
            reference: self.reference.as_ref(),
            device: &self.device,
            k,
            weight_total,
            excess,
        };
        let mut take = |micro: &MicroBatch, out: MicroOut<B>| {
            if let Some(per_sequence) = &out.excess {
                for (&s, &e) in micro.sources.iter().zip(per_sequence) {
                    excess_sums[s] += e as f64;
                }
            }
            match out.probe {
                MicroProbe::None => {}
                MicroProbe::Homogeneous(dot) => dots[micro.sources[0]].0 += dot,
                MicroProbe::SinglePass(micro_dots) => {
                    single_pass_dots = Some(match single_pass_dots.take() {
                        Some(total) => total + micro_dots,
                        None => micro_dots,
                    });
                }
            }
            accumulator.accumulate(&self.model, out.grads);
            for (i, ((&s, &l), &w)) in micro
                .sources
                .iter()
                .zip(&out.seq_loss)
                .zip(&micro.weights)
                .enumerate()
            {
                let l = if poison && micro.first_row + i == 0 {
                    f32::NAN
                } else {
                    l
                };
                sums[s].0 += l as f64;
                sums[s].1 += 1;
                loss += l as f64 * w / weight_total;
            }
        };
        match traced {
            Some(traced) => {
                for micro in &drawn {
                    take(micro, passes.run(&self.model, micro, Some(traced)));
                }
            }
            None => backward_passes(
                &self.model,
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
        if let Some(total) = single_pass_dots {
            let per_source: Vec<f64> = total
                .into_data()
                .convert::<f64>()
                .to_vec()
                .expect("converted to f64");
            for (dot, value) in dots.iter_mut().zip(per_source) {
                dot.0 += value;
            }
        }
        let mut grads = accumulator.grads();
        if self.collective.is_some() {
            grads = self.sum_step_over_ranks(
                grads,
                &mut loss,
                &mut sums,
                &mut dots,
                excess.then_some(&mut excess_sums[..]),
            )?;
        }
        // The buffer grew by (Σ_{i∈k} w_i / W) ∇(mean loss of k) when source k's sequences share
        // one weight: undo that factor to get ⟨g_val, g_k⟩.
        let grad_dot = probe.is_some().then(|| {
            dots.iter()
                .map(|&(dot, w)| (w > 0.0).then(|| dot * weight_total / w))
                .collect()
        });

        if crate::fault::nonfinite_grad(self.progress.step + 1) {
            crate::optim::poison_first_gradient(&self.model, &mut grads);
        }
        let grad_norm = global_grad_norm(&self.model, &grads);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let message = self.nonfinite_message(loss, grad_norm, &sums);
            if policy == NonFinitePolicy::Skip && self.progress.skipped_steps < max_skipped {
                // The batch is dropped; the schedule moves on as if the step had happened.
                self.progress.record_skipped(&weights);
                return Ok(StepReport {
                    loss,
                    loss_by_source: vec![None; k],
                    grad_norm,
                    lr,
                    tokens: 0,
                    skipped: Some(message),
                    grad_dot: None,
                    excess_loss: None,
                });
            }
            self.sampler.restore(sampler_before);
            let message = if policy == NonFinitePolicy::Skip {
                format!(
                    "{message}; more than train.max_skipped_steps = {max_skipped} steps skipped"
                )
            } else {
                message
            };
            return Err(Error::NonFinite {
                step: self.progress.step + 1,
                message,
            });
        }
        let clip = self.config.train.grad_clip;
        let scale = if clip > 0.0 && grad_norm > clip {
            clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let model = self.model.clone();
        self.model = self.optim.step(model, &mut grads, lr, scale);

        let seq_len = self.config.data.seq_len;
        let step_tokens = sources.len() * seq_len;
        self.progress
            .record_step(step_tokens as u64, seq_len, &counts, &weights, &sums);
        Ok(StepReport {
            loss,
            loss_by_source: sums
                .iter()
                .map(|&(s, n)| (n > 0).then(|| s / n as f64))
                .collect(),
            grad_norm,
            lr,
            tokens: step_tokens,
            skipped: None,
            grad_dot,
            excess_loss: excess.then(|| {
                excess_sums
                    .iter()
                    .zip(&counts)
                    .map(|(&e, &n)| (n > 0).then(|| e / (n * seq_len) as f64))
                    .collect()
            }),
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

/// One micro-batch of a step, drawn: this rank's rows of it.
struct MicroBatch {
    /// Each row's source.
    sources: Vec<usize>,
    /// Each row's loss weight (of the step's total).
    weights: Vec<f64>,
    /// Where this rank's rows start in the whole micro-batch.
    first_row: usize,
    batch: crate::data::Batch,
}

impl MicroBatch {
    /// The first `rows` rows and the rest, as two passes.
    fn split_at(self, rows: usize) -> [MicroBatch; 2] {
        let n = self.sources.len();
        let part = |range: std::ops::Range<usize>| MicroBatch {
            sources: self.sources[range.clone()].to_vec(),
            weights: self.weights[range.clone()].to_vec(),
            first_row: self.first_row + range.start,
            batch: self.batch.rows(range),
        };
        [part(0..rows), part(rows..n)]
    }
}

/// An odd number of passes becomes even: the first of the largest is split in two
/// near-equal halves, which move to the front so that they run side by side as one pair
/// (nothing to split when every pass has one row).
fn pair_up_passes(passes: &mut Vec<MicroBatch>) {
    if passes.len().is_multiple_of(2) {
        return;
    }
    let Some((largest, rows)) = passes
        .iter()
        .map(|p| p.sources.len())
        .enumerate()
        .rev()
        .max_by_key(|&(_, rows)| rows)
    else {
        return;
    };
    if rows < 2 {
        return;
    }
    let [first, second] = passes.remove(largest).split_at(rows.div_ceil(2));
    passes.insert(0, second);
    passes.insert(0, first);
}

/// What a micro-batch's forward and backward pass reads; shared by passes running side by
/// side, so nothing in it changes during a pass.
struct PassContext<'a, B: TrainBackend> {
    /// DoReMi's reference model, for excess losses.
    reference: Option<&'a Gpt<B::InnerBackend>>,
    device: &'a B::Device,
    k: usize,
    /// Σ of the step's loss weights.
    weight_total: f64,
    /// Measure DoReMi's excess loss of each sequence (one reference forward).
    excess: bool,
}

impl<B: TrainBackend> PassContext<'_, B> {
    /// Forward and backward of one micro-batch on `model` with its per-sequence loss weights; with
    /// `traced` (the step's P ⊙ g_val), the micro-batch's ⟨P ⊙ g_val, g_k⟩ per source from the
    /// traced backward (single-pass statistics); with `excess`, DoReMi's excess loss per
    /// sequence.
    fn run(
        &self,
        model: &Gpt<B>,
        micro: &MicroBatch,
        traced: Option<&GradientsParams>,
    ) -> MicroOut<B> {
        let batch = &micro.batch;
        let n = batch.len();
        let seq = batch.seq_len;
        let (inputs, targets) = batch_tensors::<B>(batch, self.device);
        let mut trace = traced.is_some().then(Trace::new);
        let logits = model.forward_traced(inputs, trace.as_mut()); // [n · seq, vocab]
        let token_loss = token_losses(logits, targets); // [n · seq]
        let excess = match (self.excess, self.reference) {
            (true, Some(reference)) => Some(excess_by_sequence(
                reference,
                batch,
                token_loss.clone().inner(),
                self.device,
            )),
            _ => None,
        };
        let seq_loss = token_loss.reshape([n, seq]).mean_dim(1).reshape([n]); // [n]
        let w: Vec<f32> = micro
            .weights
            .iter()
            .map(|w| (w / self.weight_total) as f32)
            .collect();
        let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), self.device);
        let mut raw_grads = (seq_loss.clone() * w).sum().backward();
        let mut probe = MicroProbe::None;
        if let (Some(target), Some(trace)) = (traced, trace) {
            let stats = SinglePass {
                target,
                backend: std::marker::PhantomData,
            };
            // Token t belongs to sequence t / seq. [n · seq]
            let seg: Vec<i64> = micro
                .sources
                .iter()
                .flat_map(|&s| std::iter::repeat_n(s as i64, seq))
                .collect();
            let seg = Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(seg, [n * seq]),
                self.device,
            );
            probe = MicroProbe::SinglePass(stats.source_dots(trace, &mut raw_grads, seg, self.k));
        }
        let grads = GradientsParams::from_grads(raw_grads, model);
        // Host sync: per-sequence losses for the per-source report.
        let seq_loss: Vec<f32> = seq_loss
            .inner()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("converted to f32");
        MicroOut {
            grads,
            seq_loss,
            probe,
            excess,
        }
    }
}

/// Each sequence's loss weight under `apply`: 1 (sample), p_k (reweight), or p_k n / n_k
/// (hybrid: the draw follows p up to rounding; the weight corrects the rounding only).
fn sequence_weights(
    sources: &[usize],
    weights: &[f64],
    counts: &[usize],
    apply: ApplyMode,
) -> Vec<f64> {
    let n = sources.len() as f64;
    sources
        .iter()
        .map(|&s| match apply {
            ApplyMode::Sample => 1.0,
            ApplyMode::Reweight => weights[s],
            ApplyMode::Hybrid => weights[s] * n / counts[s] as f64,
        })
        .collect()
}

/// Index ranges of a step's micro-batches over `sources` (sorted by source): chunks of
/// `batch_size`, or, when `homogeneous`, chunks that never mix two sources.
fn micro_batch_ranges(
    sources: &[usize],
    batch_size: usize,
    homogeneous: bool,
) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < sources.len() {
        let mut end = (start + batch_size).min(sources.len());
        if homogeneous {
            end = start
                + sources[start..end]
                    .iter()
                    .take_while(|&&s| s == sources[start])
                    .count();
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Batch;

    /// A pass of `rows` rows of source `source`, its tokens numbering its rows from `first`.
    fn pass(source: usize, rows: usize, first: usize) -> MicroBatch {
        let seq_len = 2;
        MicroBatch {
            sources: vec![source; rows],
            weights: vec![0.5; rows],
            first_row: first,
            batch: Batch {
                tokens: (first..first + rows).flat_map(|r| [r as i32; 3]).collect(),
                sources: vec![source; rows],
                seq_len,
            },
        }
    }

    fn shape(passes: &[MicroBatch]) -> Vec<(usize, usize, usize)> {
        passes
            .iter()
            .map(|p| (p.sources[0], p.sources.len(), p.first_row))
            .collect()
    }

    /// [3, 3, 4, 3, 3] becomes [2, 2, 3, 3, 3, 3]: the 4 split in halves that run first, each
    /// half with its own rows (tokens and first row) and nothing else moved.
    #[test]
    fn an_odd_number_of_passes_splits_the_largest_into_a_leading_pair() {
        let mut passes: Vec<MicroBatch> = [3, 3, 4, 3, 3]
            .iter()
            .enumerate()
            .scan(0, |first, (source, &rows)| {
                *first += rows;
                Some(pass(source, rows, *first - rows))
            })
            .collect();
        pair_up_passes(&mut passes);
        assert_eq!(
            shape(&passes),
            vec![
                (2, 2, 6),
                (2, 2, 8),
                (0, 3, 0),
                (1, 3, 3),
                (3, 3, 10),
                (4, 3, 13)
            ]
        );
        assert_eq!(passes[1].batch.tokens, vec![8, 8, 8, 9, 9, 9]);
        // Even already, or nothing to split: unchanged.
        let mut even = vec![pass(0, 3, 0), pass(1, 5, 3)];
        pair_up_passes(&mut even);
        assert_eq!(shape(&even), vec![(0, 3, 0), (1, 5, 3)]);
        let mut ones = vec![pass(0, 1, 0), pass(1, 1, 1), pass(2, 1, 2)];
        pair_up_passes(&mut ones);
        assert_eq!(shape(&ones), vec![(0, 1, 0), (1, 1, 1), (2, 1, 2)]);
        // The first of equal largest.
        let mut tied = vec![pass(0, 2, 0), pass(1, 3, 2), pass(2, 3, 5)];
        pair_up_passes(&mut tied);
        assert_eq!(
            shape(&tied),
            vec![(1, 2, 2), (1, 1, 4), (0, 2, 0), (2, 3, 5)]
        );
    }
}
