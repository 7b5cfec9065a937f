//! A training session: model, optimizer, sampler and mixer over K loaded sources, with the
//! training step and the per-source evaluation.

use burn::module::AutodiffModule;
use burn::prelude::*;

use super::evaluator::{batch_tensors, Evaluation, Evaluator};
use super::state::Progress;
use crate::backend::TrainBackend;
use crate::config::Config;
use crate::data::{load_sources, load_target_sets, Batch, Sampler, Source, Tokenizer};
use crate::error::{Error, Result};
use crate::mixer::{self, Mixer, SourceStats};
use crate::model::Gpt;
use crate::optim::AdamW;
use crate::target::Target;

pub struct Session<B: TrainBackend> {
    pub config: Config,
    pub(crate) device: B::Device,
    pub(crate) sources: Vec<Source>,
    pub(crate) vocab_size: usize,
    pub(crate) sampler: Sampler,
    pub model: Gpt<B>,
    pub(crate) optim: AdamW<B::InnerBackend>,
    pub(crate) mixer: Box<dyn Mixer>,
    /// Steps, tokens and the per-source counters, saved with every checkpoint.
    pub(crate) progress: Progress,
    /// The fixed validation windows of the sources and target sets.
    pub(super) evaluator: Evaluator,
    /// The validation-only target sets (`[[target.sets]]`); the sampler never draws from them.
    pub(crate) target_sets: Vec<Source>,
    /// The resolved `[target]`.
    pub(crate) target: Target,
    /// The mixture the run started from.
    pub(crate) initial: mixer::InitialMixture,
    /// The reference model of DoReMi's excess loss.
    pub(crate) reference: Option<Gpt<B::InnerBackend>>,
    /// DoReMi's fixed pool (`excess_from = "pool"`), built at its first update from the run's
    /// seed and the reference model, so a resumed run rebuilds the same one.
    pub(crate) excess_pool: Option<super::measure::ExcessPool<B::InnerBackend>>,
    /// ⟨g_val, g_k⟩ measured so far for the next mixer update, with its g_val
    /// (`mixer.probe_steps`); saved with a checkpoint taken inside a window.
    pub(crate) probe_window: Option<super::probe::ProbeWindow>,
    /// A g_val kept for the next updates' windows (`mixer.gval_every`), with the number of
    /// updates it has served; saved with a checkpoint taken between those updates.
    pub(crate) kept_probe: Option<(super::probe::GradProbe, u32)>,
    /// The other ranks of a distributed run (`[distributed]`); None trains alone.
    pub(crate) collective: Option<crate::distributed::Collective>,
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
    /// ⟨g_val, g_k⟩ per source measured by a probed step (None for a source with no sequence
    /// in it); the next mixer update takes it.
    pub grad_dot: Option<Vec<Option<f64>>>,
    /// DoReMi's λ_k measured on this step's sequences (`excess_from = "step"`, the step before
    /// an update; None for a source with no sequence in it); the next mixer update takes it.
    pub excess_loss: Option<Vec<Option<f64>>>,
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
        let mixer = config.mixer.build(&initial.weights, config.run.seed)?;
        B::seed(&device, config.run.seed);
        let model = config.model.init::<B>(vocab_size, &device);
        crate::params::materialize(&model);
        let seq_len = config.data.seq_len;
        let evaluator = Evaluator::new(&config, &sources, &target_sets);
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
            progress: Progress::new(k),
            evaluator,
            target_sets,
            target,
            initial,
            reference: None,
            excess_pool: None,
            probe_window: None,
            kept_probe: None,
            collective: None,
        })
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> usize {
        self.progress.step
    }

    /// Tokens in the vocabulary (the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Sets DoReMi's reference model (normally trained by the run loop first).
    pub fn set_reference(&mut self, reference: Gpt<B::InnerBackend>) {
        self.reference = Some(reference);
        self.excess_pool = None;
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// [n, seq_len + 1] tokens → inputs [n, seq_len] and targets [n · seq_len].
    pub(super) fn batch_tensors<BB: Backend>(
        batch: &Batch,
        device: &BB::Device,
    ) -> (Tensor<BB, 2, Int>, Tensor<BB, 1, Int>) {
        batch_tensors::<BB>(batch, device)
    }

    /// Name of the LM head's weight (the embedding when tied).
    pub fn head_name(&self) -> &'static str {
        if self.model.lm_head.is_some() {
            "lm_head.weight"
        } else {
            "tok_emb.weight"
        }
    }

    pub fn evaluate(&self) -> Evaluation {
        self.evaluate_model(&self.model.valid())
    }

    /// Mean token loss of `model` (same architecture) on each source's and target set's fixed
    /// validation windows.
    pub fn evaluate_model(&self, model: &Gpt<B::InnerBackend>) -> Evaluation {
        self.evaluator
            .evaluate(model, &self.sources, &self.target_sets, &self.device)
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
        let needs = self.mixer.needs();
        let gval_every = self.config.mixer.gval_every as u32;
        let grad_dot = self.probe_window.take().map(|window| {
            let means = window.means();
            let served = window.served + 1;
            if served < gval_every {
                self.kept_probe = Some((window.probe, served));
            }
            means
        });
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
                if self.reference.is_none() {
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
                let candidates = self.mixer.candidates();
                Some(self.virtual_step_deltas(spec, lr, &candidates)?)
            }
            None => None,
        };
        let stats = SourceStats {
            step: self.progress.step,
            lr,
            train_loss: self
                .progress
                .loss_since_update
                .iter()
                .map(|&(s, n)| (n > 0).then(|| s / n as f64))
                .collect(),
            grad_dot_val: grad_dot,
            influence,
            excess_loss,
            candidate_delta,
            tokens_seen: self.progress.tokens_by_source.clone(),
        };
        let k = self.sources.len();
        self.progress.loss_since_update = vec![(0.0, 0); k];
        let update = self.mixer.update(&stats);
        if let Some(update) = &update {
            // A mixture with NaN in it would silently starve or flood a source: stop instead.
            let total: f64 = update.weights.iter().sum();
            if update.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || (total - 1.0).abs() > 1e-6
            {
                return Err(Error::NonFinite {
                    step: self.progress.step,
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
