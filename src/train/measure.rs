//! The measurements a mixer can ask for (`StatsRequest`), beyond the probed training step:
//! the target's validation gradient, per-source group influence (TiKMiX), virtual-step loss
//! changes of candidate mixtures (TiKMiX-M), excess losses against a reference (DoReMi).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use mixtrain_kernels::ExecPolicy;

use super::evaluator::batch_tensors;
use super::passes::{backward_passes, forward_passes, pass_ranges, split_into_passes};
use super::probe::{grad_dot, virtual_step, FlatGrads};
use super::Session;
use crate::backend::TrainBackend;
use crate::data::{Shard, Source};
use crate::error::{Error, Result};
use crate::mixer::VirtualStepSpec;
use crate::model::{token_losses, Gpt};
use crate::target::Target;

/// DoReMi's fixed pool (`mixer.doremi.excess_from = "pool"`): per source, this rank's rows of
/// the same training sequences at every update, with the reference model's token losses on
/// them (the reference never changes, so they are computed once).
pub(crate) struct ExcessPool<B: Backend> {
    /// This rank's rows of every source's pool, source by source; None where it holds none.
    batch: Option<PoolBatch<B>>,
    /// Tokens of each source's whole pool (over all ranks).
    tokens_per_source: usize,
}

struct PoolBatch<B: Backend> {
    /// [k · rows, seq]
    inputs: Tensor<B, 2, Int>,
    /// [k · rows · seq]
    targets: Tensor<B, 1, Int>,
    /// ℓ_ref of every token. [k · rows · seq]
    reference_losses: Tensor<B, 1>,
    /// rows · seq: this rank's tokens of each source.
    tokens_per_source_here: usize,
}

/// Validation streams of the target's members, in the order probes take them in turn.
fn target_streams<'a>(
    target: &Target,
    sources: &'a [Source],
    sets: &'a [Source],
) -> Vec<&'a Shard> {
    target
        .sources
        .iter()
        .map(|&k| &sources[k].val)
        .chain(target.sets.iter().map(|&j| &sets[j].val))
        .collect()
}

/// Mean token loss of a batch from this rank's rows: the batch mean alone, else the sum over
/// this rank's tokens divided by the whole batch's (`tokens`), which the ranks then sum.
fn batch_mean<BB: Backend>(losses: Tensor<BB, 1>, tokens: usize, alone: bool) -> Tensor<BB, 1> {
    if alone {
        losses.mean()
    } else {
        losses.sum() / tokens as f64
    }
}

impl<B: TrainBackend> Session<B> {
    /// Gradient of the mean token loss of the target on `batches` fresh validation batches
    /// (random windows, equal numbers per target member: source or target set). Distributed,
    /// each rank computes its rows of every batch and the gradients are summed over ranks.
    pub fn validation_gradient(&mut self, batches: usize) -> Result<GradientsParams> {
        let streams = target_streams(
            &self.mixing.target,
            &self.batches.sources,
            &self.batches.target_sets,
        );
        let batch_size = self.config.train.batch_size;
        let alone = self.reducer.is_alone();
        let mine = self.my_rows(batch_size);
        // Drawn in turn (on the CPU as passes of at most `train.cpu_pass_size` rows, each then
        // a share of its batch's mean), then forward/backward side by side (`passes`), added
        // up in order.
        let pass_size = self.config.train.cpu_pass_size;
        let mut drawn = Vec::new();
        for _ in 0..batches {
            let batch = self
                .batches
                .sampler
                .probe_batch_share(&streams, batch_size, mine.clone());
            let passes = split_into_passes::<B>(batch, pass_size);
            let whole = alone && passes.len() == 1;
            drawn.extend(passes.into_iter().map(|pass| (whole, pass)));
        }
        drawn.retain(|(_, batch)| !batch.is_empty());
        let device = &self.device;
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        backward_passes(
            &self.trainer.model,
            &drawn,
            |model, (whole, batch)| {
                let (inputs, targets) = batch_tensors::<B>(batch, device);
                let losses = token_losses(model.forward(inputs), targets);
                let loss = batch_mean(losses, batch_size * batch.seq_len, *whole) / batches as f64;
                GradientsParams::from_grads(loss.backward(), model)
            },
            |_, grads| accumulator.accumulate(&self.trainer.model, grads),
        );
        self.sum_grads_over_ranks(accumulator.grads())
    }

    /// G_k: the gradient of source k's mean token loss over `samples` random training windows
    /// (extra forward/backward passes, side by side: `passes`), from this rank's rows only:
    /// the caller sums over ranks what it needs.
    pub(super) fn source_gradient_share(&mut self, k: usize, samples: usize) -> GradientsParams {
        let batch_size = self.config.train.batch_size;
        let mut drawn = Vec::new();
        let mut left = samples;
        while left > 0 {
            let n = left.min(batch_size);
            left -= n;
            let mine = self.my_rows(n);
            let batch =
                self.batches
                    .sampler
                    .probe_batch_share(&[&self.batches.sources[k].train], n, mine);
            drawn.extend(split_into_passes::<B>(
                batch,
                self.config.train.cpu_pass_size,
            ));
        }
        drawn.retain(|batch| !batch.is_empty());
        let device = &self.device;
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        backward_passes(
            &self.trainer.model,
            &drawn,
            |model, batch| {
                let (inputs, targets) = batch_tensors::<B>(batch, device);
                let loss = token_losses(model.forward(inputs), targets).sum()
                    / (samples * batch.seq_len) as f64;
                GradientsParams::from_grads(loss.backward(), model)
            },
            |_, grads| accumulator.accumulate(&self.trainer.model, grads),
        );
        accumulator.grads()
    }

    /// ⟨g_val, G_k⟩ for every source (TiKMiX); distributed, Σ over ranks of ⟨g_val, G_k's
    /// share⟩ (the inner product is linear in G_k).
    pub(crate) fn group_influence(
        &mut self,
        g_val: &GradientsParams,
        samples: usize,
    ) -> Result<Vec<f64>> {
        let mine = self.group_influences(&[g_val], samples).remove(0);
        self.sum_values_over_ranks(mine)
    }

    /// ⟨g, G_k⟩ for each g of `g_vals` and every source, against the same G_k (one extra
    /// backward per source): [g_vals.len()][K]. Distributed, each rank's G_k is its share of
    /// the samples; `group_influence` sums over ranks.
    pub fn group_influences(
        &mut self,
        g_vals: &[&GradientsParams],
        samples: usize,
    ) -> Vec<Vec<f64>> {
        let g_vals: Vec<FlatGrads<B::InnerBackend>> = g_vals
            .iter()
            .map(|g_val| FlatGrads::of(&self.trainer.model, g_val))
            .collect();
        let mut out = vec![Vec::new(); g_vals.len()];
        for k in 0..self.batches.sources.len() {
            let g_k = self.source_gradient_share(k, samples);
            for (row, g_val) in out.iter_mut().zip(&g_vals) {
                row.push(grad_dot(&self.trainer.model, g_val, &g_k));
            }
        }
        out
    }

    /// G_k of every source from `samples` extra sequences each (one backward per source),
    /// summed over ranks.
    pub(crate) fn extra_pass_source_gradients(
        &mut self,
        samples: usize,
    ) -> Result<Vec<GradientsParams>> {
        let mut gradients = Vec::with_capacity(self.batches.sources.len());
        for k in 0..self.batches.sources.len() {
            let share = self.source_gradient_share(k, samples);
            gradients.push(self.sum_grads_over_ranks(share)?);
        }
        Ok(gradients)
    }

    /// ΔL_val(w) = L_val(θ − scale · lr · P ⊙ Σ_k w_k G_k) − L_val(θ) for each candidate w
    /// (TiKMiX-M) from the sources' `gradients` G_k: forward passes only, every candidate on
    /// the same `val_sequences` fresh validation windows of the target. Distributed, each rank
    /// evaluates its rows of the validation batches.
    pub(crate) fn virtual_step_deltas(
        &mut self,
        spec: VirtualStepSpec,
        lr: f64,
        candidates: &[Vec<f64>],
        gradients: &[GradientsParams],
    ) -> Result<Vec<f64>> {
        let streams = target_streams(
            &self.mixing.target,
            &self.batches.sources,
            &self.batches.target_sets,
        );
        // `val_sequences` windows in batches of at most train.batch_size: (batch, its size).
        let batch_size = self.config.train.batch_size;
        let sizes: Vec<usize> = (0..spec.val_sequences)
            .step_by(batch_size)
            .map(|start| batch_size.min(spec.val_sequences - start))
            .collect();
        let alone = self.reducer.is_alone();
        let mut batches = Vec::with_capacity(sizes.len());
        for &n in &sizes {
            let mine = self.my_rows(n);
            let batch = self.batches.sampler.probe_batch_share(&streams, n, mine);
            let tensors = (!batch.is_empty())
                .then(|| Self::batch_tensors::<B::InnerBackend>(&batch, &self.device));
            batches.push((tensors, n));
        }
        let seq_len = self.config.data.seq_len;
        let sequences = spec.val_sequences as f64;
        // The mean token loss over all the windows (each batch's mean weighted by its size).
        let mean_loss = |model: &Gpt<B::InnerBackend>| -> f64 {
            batches
                .iter()
                .filter_map(|(tensors, n)| tensors.as_ref().map(|t| (t, *n)))
                .map(|((inputs, targets), n)| {
                    let losses = token_losses(model.forward(inputs.clone()), targets.clone());
                    let mean = batch_mean(losses, n * seq_len, alone)
                        .into_scalar()
                        .elem::<f64>();
                    mean * n as f64 / sequences
                })
                .sum()
        };
        // From the parameters the probed G_k were taken at, if asked and a probed step of
        // this update's window kept them; else the current ones.
        let before = self.mixing.probe.before_probed_step.take();
        let model = match before {
            Some(before) if spec.from_probed_params => before,
            _ => self.trainer.model.valid(),
        };
        let optim = spec.precondition.then_some(&self.trainer.optim);
        // [L(θ), L(θ_1), …, L(θ_C)]: θ and the stepped models built a lane's worth at a time
        // and forwarded side by side (`passes`; each forward's bits do not depend on it),
        // summed over ranks before the differences are taken.
        let lanes = <B::InnerBackend as ExecPolicy>::concurrent_passes().max(1);
        let indices: Vec<usize> = (0..=candidates.len()).collect();
        let mut losses = Vec::with_capacity(indices.len());
        for chunk in indices.chunks(lanes) {
            let models: Vec<Gpt<B::InnerBackend>> = chunk
                .iter()
                .map(|&i| match i {
                    0 => model.clone(),
                    i => virtual_step(
                        model.clone(),
                        gradients,
                        &candidates[i - 1],
                        spec.scale * lr,
                        optim,
                    ),
                })
                .collect();
            losses.extend(forward_passes::<B::InnerBackend, _, _, _>(&models, |m| {
                mean_loss(m)
            }));
        }
        let losses = self.sum_values_over_ranks(losses)?;
        Ok(losses[1..].iter().map(|l| l - losses[0]).collect())
    }

    /// λ_k = mean over tokens of max(ℓ_θ − ℓ_ref, 0) on `samples` random training sequences of
    /// each source (forward passes of both models, no backward). Distributed, each rank takes
    /// its rows of every batch and the sums are added over ranks.
    pub(crate) fn excess_losses(&mut self, samples: usize) -> Result<Vec<f64>> {
        let reference = self.mixing.reference.as_ref().ok_or_else(|| {
            Error::Training("the doremi mixer needs a reference model, and none is loaded".into())
        })?;
        let model = self.trainer.model.valid();
        let batch_size = self.config.train.batch_size;
        let mut totals = Vec::with_capacity(self.batches.sources.len());
        let mut token_counts = Vec::with_capacity(self.batches.sources.len());
        for k in 0..self.batches.sources.len() {
            let mut total = 0.0;
            let mut tokens = 0usize;
            let mut left = samples;
            while left > 0 {
                let n = left.min(batch_size);
                left -= n;
                let mine = self.my_rows(n);
                let batch = self.batches.sampler.probe_batch_share(
                    &[&self.batches.sources[k].train],
                    n,
                    mine,
                );
                tokens += n * batch.seq_len;
                if batch.is_empty() {
                    continue;
                }
                let (inputs, targets) =
                    Self::batch_tensors::<B::InnerBackend>(&batch, &self.device);
                let ours = token_losses(model.forward(inputs.clone()), targets.clone());
                let theirs = token_losses(reference.forward(inputs), targets);
                total += (ours - theirs)
                    .clamp_min(0.0)
                    .sum()
                    .into_scalar()
                    .elem::<f64>();
            }
            totals.push(total);
            token_counts.push(tokens);
        }
        let totals = self.sum_values_over_ranks(totals)?;
        Ok(totals
            .iter()
            .zip(&token_counts)
            .map(|(total, &tokens)| total / tokens as f64)
            .collect())
    }

    /// λ_k as `excess_losses`, on the fixed pool of `samples` training sequences of each
    /// source (`ExcessPool`): one forward of the model over the whole pool per update; the
    /// reference model's token losses were computed when the pool was built. Distributed,
    /// each rank holds its rows of every source's pool and the sums are added over ranks.
    pub fn pool_excess_losses(&mut self, samples: usize) -> Result<Vec<f64>> {
        if self.mixing.excess_pool.is_none() {
            self.mixing.excess_pool = Some(self.build_excess_pool(samples)?);
        }
        let pool = self.mixing.excess_pool.as_ref().expect("built above");
        let k = self.batches.sources.len();
        let totals: Vec<f64> = match &pool.batch {
            Some(b) => {
                let model = self.trainer.model.valid();
                // The pool's rows as passes of at most `train.cpu_pass_size` on the CPU,
                // forwarded side by side (`passes`); every row's losses are those of one
                // forward over the whole pool.
                let rows = b.inputs.dims()[0];
                let seq = self.config.data.seq_len;
                let shares = pass_ranges::<B::InnerBackend>(rows, self.config.train.cpu_pass_size);
                let losses = forward_passes::<B::InnerBackend, _, _, _>(&shares, |share| {
                    token_losses(
                        model.forward(b.inputs.clone().slice(share.clone())),
                        b.targets.clone().slice(share.start * seq..share.end * seq),
                    )
                });
                let ours = Tensor::cat(losses, 0); // [k · rows · seq]
                (ours - b.reference_losses.clone()) // [k · rows · seq]
                    .clamp_min(0.0)
                    .reshape([k, b.tokens_per_source_here])
                    .sum_dim(1) // [k, 1]
                    .into_data()
                    .convert::<f64>()
                    .to_vec()
                    .expect("converted to f64")
            }
            None => vec![0.0; k],
        };
        let tokens = pool.tokens_per_source;
        let totals = self.sum_values_over_ranks(totals)?;
        Ok(totals.iter().map(|t| t / tokens as f64).collect())
    }

    /// The pool of `ExcessPool`: this rank's rows of `samples` windows of each source's
    /// training stream, drawn from the run's seed, as one batch (source by source), and the
    /// reference model's token losses on it.
    fn build_excess_pool(&self, samples: usize) -> Result<ExcessPool<B::InnerBackend>> {
        let reference = self.mixing.reference.as_ref().ok_or_else(|| {
            Error::Training("the doremi mixer needs a reference model, and none is loaded".into())
        })?;
        let mine = self.my_rows(samples);
        let tokens_per_source = samples * self.config.data.seq_len;
        if mine.is_empty() {
            return Ok(ExcessPool {
                batch: None,
                tokens_per_source,
            });
        }
        let mut pool = crate::data::Batch {
            tokens: Vec::new(),
            sources: Vec::new(),
            seq_len: self.config.data.seq_len,
        };
        for (k, source) in self.batches.sources.iter().enumerate() {
            let batch = self.batches.sampler.fixed_batch_share(
                &[&source.train],
                samples,
                mine.clone(),
                k as u64,
            );
            pool.tokens.extend(batch.tokens);
            pool.sources.extend(batch.sources.iter().map(|_| k));
        }
        let (inputs, targets) = Self::batch_tensors::<B::InnerBackend>(&pool, &self.device);
        let reference_losses = token_losses(reference.forward(inputs.clone()), targets.clone());
        Ok(ExcessPool {
            batch: Some(PoolBatch {
                inputs,
                targets,
                reference_losses,
                tokens_per_source_here: mine.len() * pool.seq_len,
            }),
            tokens_per_source,
        })
    }
}

/// Per sequence of `batch`: Σ over its tokens of max(ℓ_θ − ℓ_ref, 0), from the model's token
/// losses `ours` ([n · seq], already computed by the step) and one forward of the `reference`
/// model.
pub(super) fn excess_by_sequence<BB: mixtrain_kernels::StatKernels>(
    reference: &Gpt<BB>,
    batch: &crate::data::Batch,
    ours: Tensor<BB, 1>,
    device: &BB::Device,
) -> Vec<f32> {
    let (n, seq) = (batch.len(), batch.seq_len);
    let (inputs, targets) = batch_tensors::<BB>(batch, device);
    let theirs = token_losses(reference.forward(inputs), targets); // [n · seq]
    (ours - theirs)
        .clamp_min(0.0)
        .reshape([n, seq])
        .sum_dim(1)
        .reshape([n])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("converted to f32")
}
