//! The session's side of persistence: a checkpoint nests its parts' states (`trainer`,
//! `batches`, `mixing`), each written and restored by its part. The file format (and its
//! crash safety) is `checkpoint`'s; it knows nothing of sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::Session;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, Snapshot, TrainState, FORMAT};
use crate::error::{Error, Result};

/// The state of part `name` in a checkpoint's state.json (at `state_path`, for errors).
pub(super) fn part<T: DeserializeOwned>(
    state: &TrainState,
    name: &str,
    state_path: &Path,
) -> Result<T> {
    let value = state
        .parts
        .get(name)
        .ok_or_else(|| Error::checkpoint(state_path, format!("parts.{name} is missing")))?;
    serde_json::from_value(value.clone())
        .map_err(|e| Error::checkpoint(state_path, format!("parts.{name}: {e}")))
}

impl<B: TrainBackend> Session<B> {
    /// Everything needed to continue this session exactly; `log_lengths` are the lengths of
    /// metrics.jsonl and ratios.csv at this moment.
    pub(crate) fn snapshot(&self, log_lengths: (u64, u64)) -> Snapshot {
        let (model, optimizer, trainer) = self.trainer.state();
        let (mixing, mixing_tensors) = self.mixing.state(&self.trainer.model);
        let parts = [
            ("trainer", trainer),
            ("batches", self.batches.state()),
            ("mixing", mixing),
        ];
        Snapshot {
            model,
            optimizer,
            mixing: mixing_tensors,
            state: TrainState {
                format: FORMAT,
                step: self.trainer.progress.step,
                config_hash: self.config.hash(),
                metrics_bytes: log_lengths.0,
                ratios_bytes: log_lengths.1,
                world_size: self.config.distributed.world_size,
                parts: parts
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<BTreeMap<_, _>>(),
            },
        }
    }

    /// Writes a checkpoint of this session into `checkpoints_dir`, keeping the newest `keep`.
    pub(crate) fn save_checkpoint(
        &self,
        checkpoints_dir: &Path,
        log_lengths: (u64, u64),
        keep: usize,
    ) -> Result<PathBuf> {
        checkpoint::save(&self.snapshot(log_lengths), checkpoints_dir, keep)
    }

    /// Restores every part from the checkpoint in `dir`; its config must hash the same.
    pub(crate) fn restore_checkpoint(&mut self, dir: &Path) -> Result<TrainState> {
        let restored = checkpoint::read(dir, &self.config.hash())?;
        let state_path = checkpoint::state_path(dir);
        let k = self.batches.sources.len();
        self.trainer
            .restore(&restored, k, &state_path, &self.device)?;
        self.batches.restore(&restored.state, &state_path)?;
        self.mixing
            .restore(&restored, &self.trainer.model, k, &state_path)?;
        let state = restored.state;
        let world_size = self.config.distributed.world_size;
        if state.world_size != world_size {
            // Supported: every rank holds the whole state. Only the rounding of the sums over
            // ranks changes, so the run continues equivalently but not bit for bit.
            tracing::warn!(
                "checkpoint {} was written by {} rank(s), resuming with {world_size}: the run \
                 continues, but not bit-identically to continuing with {}",
                dir.display(),
                state.world_size,
                state.world_size
            );
        }
        Ok(state)
    }
}
