//! The session's side of persistence: what a checkpoint saves from it, and restoring it from
//! one. The file format (and its crash safety) is `checkpoint`'s; it knows nothing of sessions.

use std::path::{Path, PathBuf};

use super::probe::{GradProbe, ProbeWindow};
use super::Session;
use crate::backend::TrainBackend;
use crate::checkpoint::{self, Snapshot, TrainState, FORMAT};
use crate::distributed::{flatten_grads, unflatten_grads};
use crate::error::{Error, Result};
use crate::params::{collect_params, load_params, NamedTensor};

/// The optimizer file's entry for an open probe window's g_val.
const PROBE_G_VAL: &str = "probe.g_val";

/// What a session has done so far: the counters a checkpoint carries beside the model,
/// optimizer, sampler and mixer.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Optimizer steps completed (skipped steps included: the schedule moves on).
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
}

impl Progress {
    pub fn new(sources: usize) -> Self {
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
    pub fn record_step(
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
    pub fn record_skipped(&mut self, weights: &[f64]) {
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

impl<B: TrainBackend> Session<B> {
    /// Everything needed to continue this session exactly; `log_lengths` are the lengths of
    /// metrics.jsonl and ratios.csv at this moment.
    pub fn snapshot(&self, log_lengths: (u64, u64)) -> Snapshot {
        let mut optimizer = self.optim.to_named();
        let saved_probe = match (&self.probe_window, &self.kept_probe) {
            (Some(window), _) => Some((&window.probe, window.served)),
            (None, Some((probe, served))) => Some((probe, *served)),
            (None, None) => None,
        };
        if let Some((probe, _)) = saved_probe {
            // The window's (or the kept) g_val, flat in the model's parameter order. [Σ numel]
            let data = flatten_grads(&self.model, &probe.g_val);
            optimizer.push(NamedTensor {
                name: PROBE_G_VAL.into(),
                shape: vec![data.len()],
                data,
                is_linear_weight: false,
            });
        }
        Snapshot {
            model: collect_params(&self.model),
            optimizer,
            state: TrainState {
                format: FORMAT,
                step: self.progress.step,
                tokens: self.progress.tokens,
                config_hash: self.config.hash(),
                optimizer_steps: self.optim.steps,
                sampler: self.sampler.state().clone(),
                mixer: self.mixer.state(),
                weight_sums: self.progress.weight_sums.clone(),
                loss_since_update: self.progress.loss_since_update.clone(),
                tokens_by_source: self.progress.tokens_by_source.clone(),
                skipped_steps: self.progress.skipped_steps,
                metrics_bytes: log_lengths.0,
                ratios_bytes: log_lengths.1,
                world_size: self.config.distributed.world_size,
                probe_window: self.probe_window.as_ref().map(|w| w.sums.clone()),
                gval_served: saved_probe.map(|(_, served)| served),
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
        let mut restored = checkpoint::read(dir, &self.config.hash())?;
        let state = restored.state;
        let state_path = checkpoint::state_path(dir);
        self.model = load_params(self.model.clone(), &restored.model, &restored.model_path)?;
        let g_val = restored.optimizer.remove(PROBE_G_VAL);
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
        (self.probe_window, self.kept_probe) =
            self.restore_probe(&state, g_val, &restored.optimizer_path, &state_path)?;
        self.progress = Progress {
            step: state.step,
            tokens: state.tokens,
            weight_sums: state.weight_sums.clone(),
            loss_since_update: state.loss_since_update.clone(),
            tokens_by_source: if state.tokens_by_source.is_empty() {
                vec![0; k]
            } else {
                state.tokens_by_source.clone()
            },
            skipped_steps: state.skipped_steps,
        };
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

impl<B: TrainBackend> Session<B> {
    /// The probe window a checkpoint saved (`sums` in its state, g_val in its optimizer file),
    /// or, with no window open, the g_val it kept for the next updates (`gval_served` in its
    /// state); None for what it had none of.
    #[allow(clippy::type_complexity)]
    fn restore_probe(
        &self,
        state: &TrainState,
        g_val: Option<NamedTensor>,
        optimizer_path: &Path,
        state_path: &Path,
    ) -> Result<(Option<ProbeWindow>, Option<(GradProbe, u32)>)> {
        if state.probe_window.is_none() && state.gval_served.is_none() {
            return Ok((None, None));
        }
        let Some(g_val) = g_val else {
            return Err(Error::checkpoint(
                optimizer_path,
                format!(
                    "{PROBE_G_VAL} is missing, but the state has an open probe window or a \
                     kept g_val (gval_served)"
                ),
            ));
        };
        let Some(spec) = self.mixer.needs().grad_probe else {
            return Ok((None, None));
        };
        let expected = self.model.num_params();
        if g_val.data.len() != expected {
            return Err(Error::checkpoint(
                optimizer_path,
                format!(
                    "{PROBE_G_VAL} has {} values for a model of {expected} parameters",
                    g_val.data.len()
                ),
            ));
        }
        let probe = GradProbe {
            g_val: unflatten_grads(&self.model, &g_val.data),
            scope: spec.scope,
            precondition: spec.precondition,
        };
        // Checkpoints from before `mixer.gval_every` have no gval_served: their g_val was fresh.
        let served = state.gval_served.unwrap_or(0);
        let Some(sums) = &state.probe_window else {
            return Ok((None, Some((probe, served))));
        };
        if sums.len() != self.sources.len() {
            return Err(Error::checkpoint(
                state_path,
                format!(
                    "probe_window has {} sources, the run {}",
                    sums.len(),
                    self.sources.len()
                ),
            ));
        }
        let mut window = ProbeWindow::new(probe, sums.len(), served);
        window.sums = sums.clone();
        Ok((Some(window), None))
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
