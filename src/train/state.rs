//! The session's side of persistence: what a checkpoint saves from it, and restoring it from
//! one. The file format (and its crash safety) is `checkpoint`'s; it knows nothing of sessions.

use std::path::{Path, PathBuf};

use super::Session;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, Snapshot, TrainState, FORMAT};
use crate::error::{Error, Result};
use crate::params::{collect_params, load_params};

impl<B: TrainBackend> Session<B> {
    /// Everything needed to continue this session exactly; `log_lengths` are the lengths of
    /// metrics.jsonl and ratios.csv at this moment.
    pub fn snapshot(&self, log_lengths: (u64, u64)) -> Snapshot {
        Snapshot {
            model: collect_params(&self.model),
            optimizer: self.optim.to_named(),
            state: TrainState {
                format: FORMAT,
                step: self.step,
                tokens: self.tokens,
                config_hash: self.config.hash(),
                optimizer_steps: self.optim.steps,
                sampler: self.sampler.state().clone(),
                mixer: self.mixer.state(),
                weight_sums: self.weight_sums.clone(),
                loss_since_update: self.loss_since_update.clone(),
                tokens_by_source: self.tokens_by_source.clone(),
                skipped_steps: self.skipped_steps,
                metrics_bytes: log_lengths.0,
                ratios_bytes: log_lengths.1,
            },
        }
    }

    /// Writes a checkpoint of this session into `checkpoints_dir`, keeping the newest `keep`.
    pub fn save_checkpoint(
        &self,
        checkpoints_dir: &Path,
        log_lengths: (u64, u64),
        keep: usize,
    ) -> Result<PathBuf> {
        checkpoint::save(&self.snapshot(log_lengths), checkpoints_dir, keep)
    }

    /// Loads only the model weights of the checkpoint in `dir` (for evaluation).
    pub fn load_checkpoint_model(&mut self, dir: &Path) -> Result<()> {
        let (path, tensors) = checkpoint::read_model(dir)?;
        self.model = load_params(self.model.clone(), &tensors, &path)?;
        Ok(())
    }

    /// Restores everything the checkpoint in `dir` holds; its config must hash the same.
    pub fn restore_checkpoint(&mut self, dir: &Path) -> Result<TrainState> {
        let restored = checkpoint::read(dir, &self.config.hash())?;
        let state = restored.state;
        let state_path = checkpoint::state_path(dir);
        self.model = load_params(self.model.clone(), &restored.model, &restored.model_path)?;
        if !self.optim.load_named(&restored.optimizer, &self.device) {
            return Err(Error::checkpoint(
                &restored.optimizer_path,
                "optimizer moments are incomplete",
            ));
        }
        self.optim.steps = state.optimizer_steps;
        let k = self.sources.len();
        if state.weight_sums.len() != k
            || state.loss_since_update.len() != k
            || !(state.tokens_by_source.is_empty() || state.tokens_by_source.len() == k)
        {
            return Err(Error::checkpoint(
                &state_path,
                format!("state is for a different number of sources than {k}"),
            ));
        }
        if !self.sampler.restore(state.sampler.clone()) {
            return Err(Error::checkpoint(
                &state_path,
                "sampler state does not fit the sources (did the data change?)",
            ));
        }
        self.mixer
            .restore(&state.mixer)
            .map_err(|e| Error::checkpoint(&state_path, e))?;
        self.step = state.step;
        self.tokens = state.tokens;
        self.weight_sums = state.weight_sums.clone();
        self.loss_since_update = state.loss_since_update.clone();
        self.skipped_steps = state.skipped_steps;
        self.tokens_by_source = if state.tokens_by_source.is_empty() {
            vec![0; k]
        } else {
            state.tokens_by_source.clone()
        };
        Ok(state)
    }
}
