//! A training session: model, optimizer, sampler and mixer over K loaded sources, with the
//! training step and the per-source evaluation.

use burn::module::AutodiffModule;
use burn::prelude::*;

use super::batches::Batches;
use super::evaluator::{batch_tensors, Evaluation, Evaluator};
use super::mixing::MixingDriver;
use super::reducer::Reducer;
use super::trainer::Trainer;
use crate::backend::TrainBackend;
use crate::config::Config;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::mixer::{self, SourceStats};
use crate::model::Gpt;

/// A training run's parts: each owns its state and saves it into checkpoints itself.
pub struct Session<B: TrainBackend> {
    pub config: Config,
    pub(crate) device: B::Device,
    /// The model, its optimizer and the counters of what it has trained on.
    pub(crate) trainer: Trainer<B>,
    /// The sources, the target sets and the sampler over them.
    pub(crate) batches: Batches,
    /// The fixed validation windows of the sources and target sets.
    pub(super) evaluator: Evaluator,
    /// The mixer and what its updates need.
    pub(crate) mixing: MixingDriver<B>,
    /// Sums over the ranks of a distributed run (the identity alone).
    pub(crate) reducer: Reducer,
}

/// What one training step measured.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The optimised (mixture-weighted) loss.
    pub(crate) loss: f64,
    /// Mean sequence loss per source in this step; None for a source with no sequence.
    pub(crate) loss_by_source: Vec<Option<f64>>,
    /// Global gradient norm before clipping.
    pub(crate) grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
    /// Why the step was skipped unapplied (`train.on_nonfinite = "skip"`); None when applied.
    pub(crate) skipped: Option<String>,
    /// ⟨g_val, g_k⟩ per source measured by a probed step (None for a source with no sequence
    /// in it); the next mixer update takes it.
    pub grad_dot: Option<Vec<Option<f64>>>,
    /// DoReMi's λ_k measured on this step's sequences (`excess_from = "step"`, the step before
    /// an update; None for a source with no sequence in it); the next mixer update takes it.
    pub excess_loss: Option<Vec<Option<f64>>>,
    /// Whether this step measured TiKMiX-M's G_k (`gradients = "probe"`), now in the update's
    /// window.
    pub measured_gradients: bool,
}

impl<B: TrainBackend> Session<B> {
    /// Loads the tokenizer and sources (tokenising them on first use), seeds and builds the
    /// model, optimizer, sampler and mixer.
    pub fn build(config: Config, device: B::Device) -> Result<Self> {
        let batches = Batches::load(&config)?;
        let mixing = MixingDriver::new(&config, &batches.sources, batches.vocab_size)?;
        let k = batches.sources.len();
        let trainer = Trainer::new(&config, batches.vocab_size, k, &device);
        if config.mixer.kind == mixer::MixerKind::TikmixM {
            let params = trainer.model.num_params();
            let lanes = B::concurrent_passes();
            config.mixer.tikmix_m.check_memory(k, params, lanes)?;
        }
        let evaluator = Evaluator::new(&config, &batches.sources, &batches.target_sets);
        Ok(Session {
            config,
            device,
            trainer,
            batches,
            evaluator,
            mixing,
            reducer: Reducer::Alone,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Gpt<B> {
        &self.trainer.model
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> usize {
        self.trainer.progress.step
    }

    /// Tokens in the vocabulary (the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.batches.vocab_size
    }

    /// Sets DoReMi's reference model (normally trained by the run loop first).
    pub fn set_reference(&mut self, reference: Gpt<B::InnerBackend>) {
        self.mixing.reference = Some(reference);
        self.mixing.excess_pool = None;
    }

    pub(crate) fn source_names(&self) -> Vec<String> {
        self.batches
            .sources
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// [n, seq_len + 1] tokens → inputs [n, seq_len] and targets [n · seq_len].
    pub(super) fn batch_tensors<BB: Backend>(
        batch: &Batch,
        device: &BB::Device,
    ) -> (Tensor<BB, 2, Int>, Tensor<BB, 1, Int>) {
        batch_tensors::<BB>(batch, device)
    }

    /// Name of the LM head's weight (the embedding when tied).
    pub(crate) fn head_name(&self) -> &'static str {
        if self.trainer.model.lm_head.is_some() {
            "lm_head.weight"
        } else {
            "tok_emb.weight"
        }
    }

    pub(crate) fn evaluate(&self) -> Evaluation {
        self.evaluate_model(&self.trainer.model.valid())
    }

    /// Mean token loss of `model` (same architecture) on each source's and target set's fixed
    /// validation windows.
    pub(crate) fn evaluate_model(&self, model: &Gpt<B::InnerBackend>) -> Evaluation {
        self.evaluator.evaluate(
            model,
            &self.batches.sources,
            &self.batches.target_sets,
            &self.device,
        )
    }

    /// Gathers what the mixer asked for and updates it (resetting the running training-loss
    /// means and closing the probe window, whose per-source means of ⟨g_val, g_k⟩ the mixers
    /// that take it get). `step_excess` is the step's excess losses (its report's
    /// `excess_loss`), for DoReMi with `excess_from = "step"`.
    pub fn mixer_update(
        &mut self,
        lr: f64,
        step_excess: Option<Vec<Option<f64>>>,
    ) -> Result<Option<mixer::MixerUpdate>> {
        let needs = self.mixing.mixer.needs();
        let grad_dot = self
            .mixing
            .probe
            .close_window(self.config.mixer.probing().map_or(1, |p| p.gval_every) as u32);
        let influence = match needs.group_influence {
            Some(spec) => {
                let g_val = self.validation_gradient(spec.val_batches)?;
                Some(self.group_influence(&g_val, spec.samples_per_source)?)
            }
            None => None,
        };
        let excess_loss = match needs.excess_loss {
            Some(mixer::ExcessSpec::Samples(samples)) => Some(self.excess_losses(samples)?),
            Some(mixer::ExcessSpec::Pool(samples)) => Some(self.pool_excess_losses(samples)?),
            // No signal for a source the step did not draw.
            Some(mixer::ExcessSpec::Step) => {
                if self.mixing.reference.is_none() {
                    return Err(Error::Training(
                        "the doremi mixer needs a reference model, and none is loaded".into(),
                    ));
                }
                step_excess
                    .map(|per_source| per_source.into_iter().map(|e| e.unwrap_or(0.0)).collect())
            }
            None => None,
        };
        let candidate_delta = match needs.virtual_step {
            Some(spec) => {
                let gradients = match spec.from_probe {
                    true => self.probed_source_gradients(spec.samples_per_source)?,
                    false => self.extra_pass_source_gradients(spec.samples_per_source)?,
                };
                let candidates = self.mixing.mixer.candidates();
                Some(self.virtual_step_deltas(spec, lr, &candidates, &gradients)?)
            }
            None => None,
        };
        let target_loss = match needs.target_check {
            Some(windows) => Some(self.target_check_over_ranks(windows)?),
            None => None,
        };
        let stats = SourceStats {
            step: self.trainer.progress.step,
            lr,
            train_loss: self
                .trainer
                .progress
                .loss_since_update
                .iter()
                .map(|&(s, n)| (n > 0).then(|| s / n as f64))
                .collect(),
            grad_dot_val: grad_dot,
            influence,
            excess_loss,
            candidate_delta,
            tokens_seen: self.trainer.progress.tokens_by_source.clone(),
            target_loss,
        };
        let k = self.batches.sources.len();
        self.trainer.progress.loss_since_update = vec![(0.0, 0); k];
        let update = self.mixing.mixer.update(&stats);
        if let Some(update) = &update {
            self.refuse_non_distribution(&update.weights)?;
        }
        Ok(update)
    }

    /// A mixture with NaN in it would silently starve or flood a source: stop instead.
    fn refuse_non_distribution(&self, weights: &[f64]) -> Result<()> {
        let total: f64 = weights.iter().sum();
        if weights.iter().all(|w| w.is_finite() && *w >= 0.0) && (total - 1.0).abs() <= 1e-6 {
            return Ok(());
        }
        Err(Error::NonFinite {
            step: self.trainer.progress.step,
            message: format!(
                "the {:?} mixer's update gave weights {weights:?} (not a distribution); the run \
                 stops before using them (its last checkpoint is intact)",
                self.config.mixer.kind
            ),
        })
    }
}
