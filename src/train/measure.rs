//! The measurements a mixer can ask for (`StatsRequest`), beyond the probed training step:
//! the target's validation gradient, per-source group influence (TiKMiX), virtual-step loss
//! changes of candidate mixtures (TiKMiX-M), excess losses against a reference (DoReMi).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::probe::{grad_dot, virtual_step};
use super::Session;
use crate::backend::TrainBackend;
use crate::data::{Shard, Source};
use crate::error::{Error, Result};
use crate::mixer::{GradScope, VirtualStepSpec};
use crate::model::{token_losses, Gpt};
use crate::target::Target;

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

impl<B: TrainBackend> Session<B> {
    /// Gradient of the mean token loss of the target on `batches` fresh validation batches
    /// (random windows, equal numbers per target member: source or target set).
    pub fn validation_gradient(&mut self, batches: usize) -> GradientsParams {
        let streams = target_streams(&self.target, &self.sources, &self.target_sets);
        let batch_size = self.config.train.batch_size;
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        for _ in 0..batches {
            let batch = self.sampler.probe_batch(&streams, batch_size);
            let (inputs, targets) = Self::batch_tensors::<B>(&batch, &self.device);
            let loss = token_losses(self.model.forward(inputs), targets).mean() / batches as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
        }
        accumulator.grads()
    }

    /// G_k: the gradient of source k's mean token loss over `samples` random training windows
    /// (extra forward/backward passes).
    fn source_gradient(&mut self, k: usize, samples: usize) -> GradientsParams {
        let batch_size = self.config.train.batch_size;
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        let mut left = samples;
        while left > 0 {
            let n = left.min(batch_size);
            left -= n;
            let batch = self.sampler.probe_batch(&[&self.sources[k].train], n);
            let (inputs, targets) = Self::batch_tensors::<B>(&batch, &self.device);
            let loss = token_losses(self.model.forward(inputs), targets).sum()
                / (samples * batch.seq_len) as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
        }
        accumulator.grads()
    }

    /// ⟨g_val, G_k⟩ for every source (TiKMiX).
    pub fn group_influence(&mut self, g_val: &GradientsParams, samples: usize) -> Vec<f64> {
        let head = self.head_name();
        (0..self.sources.len())
            .map(|k| {
                let g_k = self.source_gradient(k, samples);
                grad_dot(&self.model, g_val, &g_k, GradScope::All, head, None)
            })
            .collect()
    }

    /// ΔL_val(w) = L_val(θ − scale · lr · P ⊙ Σ_k w_k G_k) − L_val(θ) for each candidate w
    /// (TiKMiX-M): one backward per source for G_k, then forward passes only, every candidate
    /// on the same fresh validation batches of the target.
    pub fn virtual_step_deltas(
        &mut self,
        spec: VirtualStepSpec,
        lr: f64,
        candidates: &[Vec<f64>],
    ) -> Vec<f64> {
        let gradients: Vec<GradientsParams> = (0..self.sources.len())
            .map(|k| self.source_gradient(k, spec.samples_per_source))
            .collect();
        let streams = target_streams(&self.target, &self.sources, &self.target_sets);
        let batch_size = self.config.train.batch_size;
        let batches: Vec<_> = (0..spec.val_batches)
            .map(|_| {
                let batch = self.sampler.probe_batch(&streams, batch_size);
                Self::batch_tensors::<B::InnerBackend>(&batch, &self.device)
            })
            .collect();
        let mean_loss = |model: &Gpt<B::InnerBackend>| -> f64 {
            let total: f64 = batches
                .iter()
                .map(|(inputs, targets)| {
                    token_losses(model.forward(inputs.clone()), targets.clone())
                        .mean()
                        .into_scalar()
                        .elem::<f64>()
                })
                .sum();
            total / batches.len() as f64
        };
        let model = self.model.valid();
        let base = mean_loss(&model);
        let optim = spec.precondition.then_some(&self.optim);
        candidates
            .iter()
            .map(|w| {
                let stepped = virtual_step(model.clone(), &gradients, w, spec.scale * lr, optim);
                mean_loss(&stepped) - base
            })
            .collect()
    }

    /// λ_k = mean over tokens of max(ℓ_θ − ℓ_ref, 0) on `samples` random training sequences of
    /// each source (forward passes of both models, no backward).
    pub fn excess_losses(&mut self, samples: usize) -> Result<Vec<f64>> {
        let reference = self.reference.as_ref().ok_or_else(|| {
            Error::Training("the doremi mixer needs a reference model, and none is loaded".into())
        })?;
        let model = self.model.valid();
        let batch_size = self.config.train.batch_size;
        let mut out = Vec::with_capacity(self.sources.len());
        for k in 0..self.sources.len() {
            let mut total = 0.0;
            let mut tokens = 0usize;
            let mut left = samples;
            while left > 0 {
                let n = left.min(batch_size);
                left -= n;
                let batch = self.sampler.probe_batch(&[&self.sources[k].train], n);
                let (inputs, targets) =
                    Self::batch_tensors::<B::InnerBackend>(&batch, &self.device);
                let ours = token_losses(model.forward(inputs.clone()), targets.clone());
                let theirs = token_losses(reference.forward(inputs), targets);
                total += (ours - theirs)
                    .clamp_min(0.0)
                    .sum()
                    .into_scalar()
                    .elem::<f64>();
                tokens += n * batch.seq_len;
            }
            out.push(total / tokens as f64);
        }
        Ok(out)
    }
}
