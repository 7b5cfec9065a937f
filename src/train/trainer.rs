//! The trainer part: the model, its optimizer and the counters of what it has trained on,
//! with its own checkpoint state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::TrainBackend;
use crate::checkpoint::Restored;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::optim::AdamW;
use crate::params::{collect_params, load_params, NamedTensor};

/// The model, its AdamW and the progress counters.
pub(crate) struct Trainer<B: TrainBackend> {
    pub(crate) model: Gpt<B>,
    pub(crate) optim: AdamW<B::InnerBackend>,
    /// Steps, tokens and the per-source counters.
    pub(crate) progress: Progress,
}

/// The trainer's entry in a checkpoint's state.json (its tensors are the model and optimizer
/// files).
#[derive(Serialize, Deserialize)]
struct TrainerState {
    progress: Progress,
    optimizer_steps: u64,
}

impl<B: TrainBackend> Trainer<B> {
    /// A freshly initialised model (seeded on `device` from `run.seed`) over `sources` sources.
    pub(crate) fn new(
        config: &Config,
        vocab_size: usize,
        sources: usize,
        device: &B::Device,
    ) -> Self {
        B::seed(device, config.run.seed);
        let model = config.model.init::<B>(vocab_size, device);
        crate::params::materialize(&model);
        Trainer {
            model,
            optim: AdamW::new(&config.train),
            progress: Progress::new(sources),
        }
    }

    /// The model's and the optimizer's tensors, and the state beside them.
    pub(crate) fn state(&self) -> (Vec<NamedTensor>, Vec<NamedTensor>, serde_json::Value) {
        let state = TrainerState {
            progress: self.progress.clone(),
            optimizer_steps: self.optim.steps,
        };
        let state = serde_json::to_value(state).expect("the trainer state serialises");
        (collect_params(&self.model), self.optim.to_named(), state)
    }

    /// Restores the model, the optimizer and the progress of a checkpoint of a run over
    /// `sources` sources.
    pub(crate) fn restore(
        &mut self,
        restored: &Restored,
        sources: usize,
        state_path: &Path,
        device: &B::Device,
    ) -> Result<()> {
        let state: TrainerState = super::state::part(&restored.state, "trainer", state_path)?;
        self.model = load_params(self.model.clone(), &restored.model, &restored.model_path)?;
        if !self.optim.load_named(&restored.optimizer, device) {
            return Err(Error::checkpoint(
                &restored.optimizer_path,
                "optimizer moments are incomplete",
            ));
        }
        self.optim.steps = state.optimizer_steps;
        let mut progress = state.progress;
        if progress.tokens_by_source.is_empty() {
            progress.tokens_by_source = vec![0; sources];
        }
        if progress.weight_sums.len() != sources
            || progress.loss_since_update.len() != sources
            || progress.tokens_by_source.len() != sources
        {
            return Err(Error::checkpoint(
                state_path,
                format!("state is for a different number of sources than {sources}"),
            ));
        }
        self.progress = progress;
        Ok(())
    }
}

/// What a session has done so far: the counters a checkpoint carries beside the model,
/// optimizer, sampler and mixer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Optimizer steps completed (skipped steps included: the schedule moves on).
    pub(crate) step: usize,
    /// Training tokens consumed (inputs, all micro-batches).
    pub(crate) tokens: u64,
    /// Σ over steps of the weights in force at each step, for the time-averaged mixture.
    pub(crate) weight_sums: Vec<f64>,
    /// Per source: (Σ sequence losses, sequences) since the last mixer update.
    pub(crate) loss_since_update: Vec<(f64, u64)>,
    /// Per source: training tokens drawn so far (inputs). Target sets never appear here.
    /// (Empty in checkpoints older than it: zeros.)
    #[serde(default)]
    pub(crate) tokens_by_source: Vec<u64>,
    /// Steps skipped for a non-finite loss or gradient (`train.on_nonfinite = "skip"`).
    #[serde(default)]
    pub(crate) skipped_steps: u32,
}

impl Progress {
    pub(crate) fn new(sources: usize) -> Self {
        Progress {
            step: 0,
            tokens: 0,
            weight_sums: vec![0.0; sources],
            loss_since_update: vec![(0.0, 0); sources],
            tokens_by_source: vec![0; sources],
            skipped_steps: 0,
        }
    }

    /// An applied step of `tokens` inputs: `sequences[k]` sequences of `seq_len` from source
    /// k, the mixture `weights` in force, and per source (Σ sequence losses, sequences).
    pub(crate) fn record_step(
        &mut self,
        tokens: u64,
        seq_len: usize,
        sequences: &[usize],
        weights: &[f64],
        loss_sums: &[(f64, u64)],
    ) {
        self.step += 1;
        self.tokens += tokens;
        for (total, &n) in self.tokens_by_source.iter_mut().zip(sequences) {
            *total += (n * seq_len) as u64;
        }
        self.add_weights(weights);
        for (acc, (sum, n)) in self.loss_since_update.iter_mut().zip(loss_sums) {
            acc.0 += sum;
            acc.1 += n;
        }
    }

    /// A step dropped unapplied: the schedule and the time-averaged mixture move on, no tokens
    /// are counted.
    pub(crate) fn record_skipped(&mut self, weights: &[f64]) {
        self.skipped_steps += 1;
        self.step += 1;
        self.add_weights(weights);
    }

    fn add_weights(&mut self, weights: &[f64]) {
        for (sum, w) in self.weight_sums.iter_mut().zip(weights) {
            *sum += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    /// An applied step counts tokens per source, the weights in force and the loss sums; a
    /// skipped one moves the step and the weights on and counts nothing else.
    #[test]
    fn progress_counts_applied_and_skipped_steps() {
        let mut progress = Progress::new(2);
        progress.record_step(5 * 8, 8, &[3, 2], &[0.6, 0.4], &[(6.0, 3), (3.0, 2)]);
        progress.record_skipped(&[0.5, 0.5]);
        progress.record_step(5 * 8, 8, &[1, 4], &[0.2, 0.8], &[(1.5, 1), (8.0, 4)]);
        assert_eq!(progress.step, 3);
        assert_eq!(progress.skipped_steps, 1);
        assert_eq!(progress.tokens, 80);
        assert_eq!(progress.tokens_by_source, vec![32, 48]);
        assert_eq!(progress.weight_sums, vec![0.6 + 0.5 + 0.2, 0.4 + 0.5 + 0.8]);
        assert_eq!(progress.loss_since_update, vec![(7.5, 4), (11.0, 6)]);
    }
}
