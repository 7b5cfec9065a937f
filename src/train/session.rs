//! A training session: model, optimizer, sampler and mixer over K loaded sources, with the
//! training step and the per-source evaluation.

use burn::module::AutodiffModule;
use burn::prelude::*;

use crate::backend::TrainBackend;
use crate::config::Config;
use crate::data::{
    load_sources, load_target_sets, validation_windows, Batch, Sampler, Shard, Source, Tokenizer,
};
use crate::error::{Error, Result};
use crate::mixer::{self, Mixer, SourceStats};
use crate::model::{token_losses, Gpt};
use crate::optim::AdamW;
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
    /// The mixture the run started from.
    pub initial: mixer::InitialMixture,
    /// Parameter names by id, for single-pass statistics (built on first use).
    pub(super) param_names: Option<std::collections::HashMap<burn::module::ParamId, String>>,
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
    /// ⟨g_val, g_k⟩ per source measured by a probed step (None for a source with no sequence
    /// in it); the next mixer update takes it.
    pub grad_dot: Option<Vec<Option<f64>>>,
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
            initial,
            param_names: None,
            reference: None,
        })
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// [n, seq_len + 1] tokens → inputs [n, seq_len] and targets [n · seq_len].
    pub(super) fn batch_tensors<BB: Backend>(
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

    /// Asks the mixer for an update with the statistics it requested. Resets the running
    /// training-loss means.
    /// Gathers what the mixer asked for and updates it. `grad_dot` is the probed step's
    /// measurement (its report's `grad_dot`), for mixers that take ⟨g_val, g_k⟩.
    pub fn mixer_update(
        &mut self,
        lr: f64,
        val_loss: Option<&[f64]>,
        grad_dot: Option<Vec<Option<f64>>>,
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
            grad_dot_val: grad_dot,
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
