//! A training session: model, optimizer, sampler and mixer over K loaded sources, with the
//! training step and the per-source evaluation.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::probe::{grad_dot, virtual_step, GradProbe};
use super::single_pass::{param_names, SinglePass};
use super::NonFinitePolicy;
use crate::backend::TrainBackend;
use crate::config::Config;
use crate::data::{
    load_sources, load_target_sets, validation_windows, Batch, Sampler, Shard, Source, Tokenizer,
};
use crate::error::{Error, Result};
use crate::mixer::{self, GradScope, Mixer, SourceStats, VirtualStepSpec};
use crate::mixer::{ApplyMode, GradStats};
use crate::model::{token_losses, Gpt, Trace};
use crate::optim::{global_grad_norm, lr_at, AdamW};
use crate::target::Target;

pub struct Session<B: TrainBackend> {
    pub config: Config,
    pub device: B::Device,
    pub sources: Vec<Source>,
    pub vocab_size: usize,
    pub sampler: Sampler,
    pub model: Gpt<B>,
    pub optim: AdamW<B::InnerBackend>,
    pub mixer: Box<dyn Mixer>,
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed (inputs, all micro-batches).
    pub tokens: u64,
    /// Σ over steps of the weights in force at each step, for the time-averaged mixture.
    pub weight_sums: Vec<f64>,
    /// Per source: (Σ sequence losses, sequences) since the last mixer update.
    pub loss_since_update: Vec<(f64, u64)>,
    /// Per source: training tokens drawn so far (inputs). Target sets never appear here.
    pub tokens_by_source: Vec<u64>,
    /// Steps skipped for a non-finite loss or gradient (`train.on_nonfinite = "skip"`).
    pub skipped_steps: u32,
    /// Start offsets of each source's fixed validation windows.
    val_windows: Vec<Vec<usize>>,
    /// The validation-only target sets (`[[target.sets]]`); the sampler never draws from them.
    pub target_sets: Vec<Source>,
    /// Start offsets of each target set's fixed validation windows.
    set_windows: Vec<Vec<usize>>,
    /// The resolved `[target]`.
    pub target: Target,
    /// s_k measured by the probed step just before a mixer update; consumed by the update.
    pending_grad_dot: Option<Vec<Option<f64>>>,
    /// The mixture the run started from.
    pub initial: mixer::InitialMixture,
    /// Parameter names by id, for single-pass statistics (built on first use).
    param_names: Option<std::collections::HashMap<burn::module::ParamId, String>>,
    /// The reference model of DoReMi's excess loss.
    pub reference: Option<Gpt<B::InnerBackend>>,
}

/// What one training step measured.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The optimised (mixture-weighted) loss.
    pub loss: f64,
    /// Mean sequence loss per source in this step; None for a source with no sequence.
    pub loss_by_source: Vec<Option<f64>>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
    /// Why the step was skipped unapplied (`train.on_nonfinite = "skip"`); None when applied.
    pub skipped: Option<String>,
}

/// Mean token losses on the fixed validation windows: per training source (its validation
/// split) and per target set.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub sources: Vec<f64>,
    pub sets: Vec<f64>,
}

impl Evaluation {
    /// The target loss: the mean over the target's members.
    pub fn target(&self, target: &Target) -> f64 {
        target.mean(&self.sources, &self.sets)
    }

    /// The mean over training sources.
    pub fn mean(&self) -> f64 {
        self.sources.iter().sum::<f64>() / self.sources.len() as f64
    }
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

impl<B: TrainBackend> Session<B> {
    /// Loads the tokenizer and sources (tokenising them on first use), seeds and builds the
    /// model, optimizer, sampler and mixer.
    pub fn build(config: Config, device: B::Device) -> Result<Self> {
        let tokenizer = Tokenizer::from_spec(&config.data.tokenizer)?;
        let sources = load_sources(&config.data, &tokenizer)?;
        let target_sets = load_target_sets(&config.target, &config.data, &tokenizer)?;
        let vocab_size = tokenizer.vocab_size();
        let initial =
            mixer::initial_mixture(&config.mixer, &config.run.out_dir, &sources, vocab_size)?;
        let mixer = mixer::build(&config.mixer, &initial.weights, config.run.seed)?;
        B::seed(&device, config.run.seed);
        let model = config.model.init::<B>(vocab_size, &device);
        crate::params::materialize(&model);
        let seq_len = config.data.seq_len;
        let eval_sequences = config.train.eval_batches * config.train.batch_size;
        let val_windows = sources
            .iter()
            .map(|s| validation_windows(s, seq_len, eval_sequences))
            .collect();
        let set_windows = target_sets
            .iter()
            .map(|s| validation_windows(s, seq_len, eval_sequences))
            .collect();
        let k = sources.len();
        let target = config.target();
        Ok(Session {
            sampler: Sampler::new(config.run.seed, seq_len, &sources),
            optim: AdamW::new(&config.train),
            config,
            device,
            sources,
            vocab_size,
            model,
            mixer,
            step: 0,
            tokens: 0,
            weight_sums: vec![0.0; k],
            loss_since_update: vec![(0.0, 0); k],
            tokens_by_source: vec![0; k],
            skipped_steps: 0,
            val_windows,
            target_sets,
            set_windows,
            target,
            pending_grad_dot: None,
            initial,
            param_names: None,
            reference: None,
        })
    }

    /// s_k measured by the last probed step, not yet handed to the mixer.
    pub fn pending_grad_dot(&self) -> Option<&[Option<f64>]> {
        self.pending_grad_dot.as_deref()
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// [n, seq_len + 1] tokens → inputs [n, seq_len] and targets [n · seq_len].
    fn batch_tensors<BB: Backend>(
        batch: &Batch,
        device: &BB::Device,
    ) -> (Tensor<BB, 2, Int>, Tensor<BB, 1, Int>) {
        let n = batch.len();
        let seq = batch.seq_len;
        let tokens = Tensor::<BB, 2, Int>::from_data(
            TensorData::new(batch.tokens.clone(), [n, seq + 1]),
            device,
        );
        let inputs = tokens.clone().narrow(1, 0, seq); // [n, seq]
        let targets = tokens.narrow(1, 1, seq).reshape([n * seq]); // [n · seq]
        (inputs, targets)
    }

    /// Name of the LM head's weight (the embedding when tied).
    pub fn head_name(&self) -> &'static str {
        if self.model.lm_head.is_some() {
            "lm_head.weight"
        } else {
            "tok_emb.weight"
        }
    }

    /// The probe the next training step runs, if the mixer updates right after it.
    fn probe_for_next_step(&mut self) -> Option<GradProbe> {
        let spec = self.mixer.needs().grad_probe?;
        if !self
            .config
            .mixer
            .updates_at(self.step + 1, self.config.train.steps)
        {
            return None;
        }
        Some(GradProbe {
            g_val: self.validation_gradient(spec.val_batches),
            scope: spec.scope,
            precondition: spec.precondition,
        })
    }

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

    /// One optimizer step: draw the step's sequences from the mixture, forward/backward each
    /// micro-batch with per-sequence loss weights, accumulate, clip, AdamW. Before a mixer
    /// update whose mixer asks for ⟨g_val, g_k⟩, micro-batches are domain-homogeneous and each
    /// one's gradient is dotted with g_val before it joins the accumulation buffer.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let probe = self.probe_for_next_step();
        self.train_step_probed(probe)
    }

    /// One optimizer step; with `probe`, it also measures ⟨g_val, g_k⟩ per source the way
    /// `mixer.grad_stats` says (left in `pending_grad_dot`). `train_step` probes the steps
    /// right before the mixer's updates; benches call this directly to time a probed step.
    pub fn train_step_probed(&mut self, probe: Option<GradProbe>) -> Result<StepReport> {
        let train = &self.config.train;
        let apply = self.config.mixer.apply;
        let lr = lr_at(self.step, train);
        let weights = self.mixer.weights().to_vec();
        let k = weights.len();
        // The sampler as it was before this step, restored if the step turns out non-finite
        // and the run stops: its checkpoint then replays this very step.
        let sampler_before = self.sampler.state().clone();
        let sources =
            self.sampler
                .draw_sources(&weights, apply, train.batch_size * train.grad_accum);
        // Per-sequence loss weights, normalised over the whole step so micro-batches add up to
        // the step's weighted mean: Σ_i w_i ℓ_i / Σ_i w_i.
        // Sequences of each source in this step.
        let mut counts = vec![0usize; k];
        for &s in &sources {
            counts[s] += 1;
        }
        let n = sources.len() as f64;
        let seq_weights: Vec<f64> = sources
            .iter()
            .map(|&s| match apply {
                ApplyMode::Sample => 1.0,
                ApplyMode::Reweight => weights[s],
                // The draw follows p up to rounding; the weight corrects the rounding only.
                ApplyMode::Hybrid => weights[s] * n / counts[s] as f64,
            })
            .collect();
        let weight_total: f64 = seq_weights.iter().sum();
        // Per-source statistics from the step's own backward need no homogeneous micro-batches.
        let single_pass = probe.is_some() && self.config.mixer.grad_stats == GradStats::SinglePass;
        let micro_batches =
            micro_batch_ranges(&sources, train.batch_size, probe.is_some() && !single_pass);

        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        let mut loss = 0.0;
        let mut sums = vec![(0.0f64, 0u64); k];
        // Per source: Σ ⟨g_val, Δ buffer⟩ and Σ w_i of its sequences.
        let mut dots = vec![(0.0f64, 0.0f64); k];
        // Single-pass: Σ over micro-batches of the per-source dots, kept on the device and read
        // once after the last micro-batch. [k]
        let mut single_pass_dots: Option<Tensor<B::InnerBackend, 1>> = None;
        let head = self.head_name();
        for range in micro_batches {
            let micro = &sources[range.clone()];
            let micro_weights = &seq_weights[range];
            let batch = self.sampler.fill(micro, &self.sources);
            let n = batch.len();
            let seq = batch.seq_len;
            let (inputs, targets) = Self::batch_tensors::<B>(&batch, &self.device);
            let mut trace = single_pass.then(Trace::new);
            let logits = self.model.forward_traced(inputs, trace.as_mut()); // [n · seq, vocab]
            let seq_loss = token_losses(logits, targets)
                .reshape([n, seq])
                .mean_dim(1)
                .reshape([n]); // [n]
            let w: Vec<f32> = micro_weights
                .iter()
                .map(|w| (w / weight_total) as f32)
                .collect();
            let w = Tensor::<B, 1>::from_data(TensorData::new(w, [n]), &self.device);
            let micro_loss = (seq_loss.clone() * w).sum();
            let mut raw_grads = micro_loss.backward();
            if let (Some(probe), Some(trace)) = (&probe, trace) {
                let names = self
                    .param_names
                    .get_or_insert_with(|| param_names(&self.model));
                let stats = SinglePass {
                    g_val: &probe.g_val,
                    names,
                    scope: probe.scope,
                    head,
                    optim: probe.precondition.then_some(&self.optim),
                };
                // Token t belongs to sequence t / seq. [n · seq]
                let seg: Vec<i64> = micro
                    .iter()
                    .flat_map(|&s| std::iter::repeat_n(s as i64, seq))
                    .collect();
                let seg = Tensor::<B::InnerBackend, 1, Int>::from_data(
                    TensorData::new(seg, [n * seq]),
                    &self.device,
                );
                let micro_dots = stats.source_dots(trace, &mut raw_grads, seg, k);
                single_pass_dots = Some(match single_pass_dots.take() {
                    Some(total) => total + micro_dots,
                    None => micro_dots,
                });
                for (&s, &w) in micro.iter().zip(micro_weights) {
                    dots[s].1 += w;
                }
            }
            let grads = GradientsParams::from_grads(raw_grads, &self.model);
            if let (Some(probe), false) = (&probe, single_pass) {
                let optim = probe.precondition.then_some(&self.optim);
                let dot = grad_dot(&self.model, &probe.g_val, &grads, probe.scope, head, optim);
                let source = micro[0];
                dots[source].0 += dot;
                dots[source].1 += micro_weights.iter().sum::<f64>();
            }
            accumulator.accumulate(&self.model, grads);

            // Host sync: per-sequence losses for the per-source report.
            let seq_loss: Vec<f32> = seq_loss
                .inner()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("converted to f32");
            let poison = crate::fault::nonfinite_loss(self.step + 1);
            for (i, ((&s, &l), &w)) in micro.iter().zip(&seq_loss).zip(micro_weights).enumerate() {
                let l = if poison && i == 0 { f32::NAN } else { l };
                sums[s].0 += l as f64;
                sums[s].1 += 1;
                loss += l as f64 * w / weight_total;
            }
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
        if probe.is_some() {
            // The buffer grew by (Σ_{i∈k} w_i / W) ∇(mean loss of k) when source k's sequences
            // share one weight: undo that factor to get ⟨g_val, g_k⟩.
            self.pending_grad_dot = Some(
                dots.iter()
                    .map(|&(dot, w)| (w > 0.0).then(|| dot * weight_total / w))
                    .collect(),
            );
        }

        let mut grads = accumulator.grads();
        let grad_norm = global_grad_norm(&self.model, &grads);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let (policy, max_skipped) = (train.on_nonfinite, train.max_skipped_steps);
            self.pending_grad_dot = None;
            let message = self.nonfinite_message(loss, grad_norm, &sums);
            if policy == NonFinitePolicy::Skip && self.skipped_steps < max_skipped {
                // The batch is dropped; the schedule moves on as if the step had happened.
                self.skipped_steps += 1;
                self.step += 1;
                for (sum, w) in self.weight_sums.iter_mut().zip(&weights) {
                    *sum += w;
                }
                return Ok(StepReport {
                    loss,
                    loss_by_source: vec![None; k],
                    grad_norm,
                    lr,
                    tokens: 0,
                    skipped: Some(message),
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
                step: self.step + 1,
                message,
            });
        }
        let clip = train.grad_clip;
        let scale = if clip > 0.0 && grad_norm > clip {
            clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let model = self.model.clone();
        self.model = self.optim.step(model, &mut grads, lr, scale);

        let step_tokens = sources.len() * self.config.data.seq_len;
        self.step += 1;
        self.tokens += step_tokens as u64;
        for (total, &n) in self.tokens_by_source.iter_mut().zip(&counts) {
            *total += (n * self.config.data.seq_len) as u64;
        }
        for (sum, w) in self.weight_sums.iter_mut().zip(&weights) {
            *sum += w;
        }
        for (acc, (s, n)) in self.loss_since_update.iter_mut().zip(&sums) {
            acc.0 += s;
            acc.1 += n;
        }
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
        })
    }

    /// Mean token loss of each source and target set on its fixed validation windows.
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

    pub fn evaluate(&self) -> Evaluation {
        self.evaluate_model(&self.model.valid())
    }

    /// Mean token loss of `model` (same architecture) on each source's and target set's fixed
    /// validation windows.
    pub fn evaluate_model(&self, model: &Gpt<B::InnerBackend>) -> Evaluation {
        let losses = |data: &[Source], windows: &[Vec<usize>]| -> Vec<f64> {
            data.iter()
                .zip(windows)
                .map(|(source, starts)| self.windows_loss(model, &source.val, starts))
                .collect()
        };
        Evaluation {
            sources: losses(&self.sources, &self.val_windows),
            sets: losses(&self.target_sets, &self.set_windows),
        }
    }

    /// Mean token loss of `model` on the windows of `stream` starting at `starts`.
    fn windows_loss(&self, model: &Gpt<B::InnerBackend>, stream: &Shard, starts: &[usize]) -> f64 {
        let seq = self.config.data.seq_len;
        let mut total = 0.0f64;
        for chunk in starts.chunks(self.config.train.batch_size) {
            let mut tokens = Vec::with_capacity(chunk.len() * (seq + 1));
            for &start in chunk {
                stream.extend_window(start, seq + 1, &mut tokens);
            }
            let batch = Batch {
                tokens,
                sources: vec![0; chunk.len()],
                seq_len: seq,
            };
            let (inputs, targets) = Self::batch_tensors::<B::InnerBackend>(&batch, &self.device);
            let sum = token_losses(model.forward(inputs), targets).sum();
            total += sum.into_scalar().elem::<f64>();
        }
        total / (starts.len() * seq) as f64
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

    /// Asks the mixer for an update with the statistics it requested. Resets the running
    /// training-loss means.
    pub fn mixer_update(
        &mut self,
        lr: f64,
        val_loss: Option<&[f64]>,
    ) -> Result<Option<mixer::MixerUpdate>> {
        let needs = self.mixer.needs();
        let val_loss = if needs.val_losses {
            Some(match val_loss {
                Some(v) => v.to_vec(),
                None => self.evaluate().sources,
            })
        } else {
            None
        };
        let influence = needs.group_influence.map(|spec| {
            let g_val = self.validation_gradient(spec.val_batches);
            self.group_influence(&g_val, spec.samples_per_source)
        });
        let excess_loss = match needs.excess_loss {
            Some(samples) => Some(self.excess_losses(samples)?),
            None => None,
        };
        let candidate_delta = needs.virtual_step.map(|spec| {
            let candidates = self.mixer.candidates();
            self.virtual_step_deltas(spec, lr, &candidates)
        });
        let stats = SourceStats {
            step: self.step,
            lr,
            train_loss: self
                .loss_since_update
                .iter()
                .map(|&(s, n)| (n > 0).then(|| s / n as f64))
                .collect(),
            val_loss,
            grad_dot_val: self.pending_grad_dot.take(),
            influence,
            excess_loss,
            candidate_delta,
            tokens_seen: self.tokens_by_source.clone(),
        };
        let k = self.sources.len();
        self.loss_since_update = vec![(0.0, 0); k];
        let update = self.mixer.update(&stats);
        if let Some(update) = &update {
            // A mixture with NaN in it would silently starve or flood a source: stop instead.
            let total: f64 = update.weights.iter().sum();
            if update.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || (total - 1.0).abs() > 1e-6
            {
                return Err(Error::NonFinite {
                    step: self.step,
                    message: format!(
                        "the {:?} mixer's update gave weights {:?} (not a distribution); the \
                         run stops before using them (its last checkpoint is intact)",
                        self.config.mixer.kind, update.weights
                    ),
                });
            }
        }
        Ok(update)
    }
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
