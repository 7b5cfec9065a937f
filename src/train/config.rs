//! `[run]` (where, which seed, which backend) and `[train]` (the optimiser, its schedule, and
//! the loop's cadence of evaluation, logging and checkpoints).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::validate::{at_least_one, non_negative, positive, unit_open};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Directory the run writes into (config.toml, metrics.jsonl, ratios.csv, checkpoints/).
    /// Default "runs/default".
    pub out_dir: PathBuf,
    /// Seed of model initialisation and of the data sampler. Default 42.
    pub seed: u64,
    /// Compute backend: "cpu" (the faster CPU backend, ndarray), "ndarray", "flex", "wgpu"
    /// (needs `--features wgpu`), "cuda" (needs `--features cuda`). Default "cpu".
    pub backend: BackendKind,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            out_dir: PathBuf::from("runs/default"),
            seed: 42,
            backend: BackendKind::Cpu,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps. Default 300.
    pub steps: usize,
    /// Sequences per micro-batch. Default 16.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation). Default 1.
    pub grad_accum: usize,
    /// The CPU backend (`run.backend = "cpu"`): sequences per forward/backward pass. A
    /// micro-batch of more runs as passes of at most this many (as equal as can be), side by
    /// side on the cores, their gradients summed: the same step, rounded differently. The
    /// split does not depend on the thread count, so neither do the bits. 0: one pass per
    /// micro-batch (the bits of mixtrain before 2026-11-25 for plain steps; a probed step's
    /// ⟨g_val, g_k⟩ has been summed differently since that evening). Other backends run one pass per
    /// micro-batch. Default 4: 16 sequences as four passes of 4 trained 3–8% faster than two
    /// of 8 on two cores (`PASS_SIZES=8,4 cargo bench --bench vs_pytorch`; README,
    /// "Training throughput against PyTorch"); 8 was the default until 2026-11-25 evening.
    pub cpu_pass_size: usize,
    /// Peak learning rate of AdamW. Default 3e-3.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (cosine decay). Default 0.1.
    pub(crate) min_lr_ratio: f64,
    /// Steps of linear warmup from 0 to `lr`. Default 30.
    pub(crate) warmup_steps: usize,
    /// Decoupled weight decay, applied to matrices and embeddings only. Default 0.1.
    pub(crate) weight_decay: f64,
    /// AdamW beta1. Default 0.9.
    pub(crate) beta1: f64,
    /// AdamW beta2. Default 0.95.
    pub(crate) beta2: f64,
    /// AdamW epsilon. Default 1e-8.
    pub(crate) adam_eps: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off. Default 1.0.
    pub(crate) grad_clip: f64,
    /// Evaluate per-source validation loss every this many steps (and at step 0 and the end).
    /// Default 50.
    pub eval_every: usize,
    /// Validation batches (of `batch_size` sequences) per source in each evaluation; the same
    /// fixed sequences every time. Default 4.
    pub(crate) eval_batches: usize,
    /// Write a checkpoint every this many steps (and at the end); 0 writes only the final one.
    /// Default 100.
    pub checkpoint_every: usize,
    /// Complete checkpoints kept; older ones are deleted once a newer one is complete. Default 2.
    pub(crate) keep_checkpoints: usize,
    /// Write a training line to metrics.jsonl every this many steps. Default 10.
    pub(crate) log_every: usize,
    /// What a step with a non-finite loss or gradient does: "stop" (default: the step is not
    /// applied, a checkpoint of the last good state is written, the run exits with an error
    /// naming the step and sources) or "skip" (the step's batch is dropped unapplied, logged,
    /// and training goes on).
    pub(crate) on_nonfinite: NonFinitePolicy,
    /// With `on_nonfinite = "skip"`: the run stops once more steps than this were skipped.
    /// Default 10.
    pub(crate) max_skipped_steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    Stop,
    Skip,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch_size: 16,
            grad_accum: 1,
            cpu_pass_size: 4,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 30,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 50,
            eval_batches: 4,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            log_every: 10,
            on_nonfinite: NonFinitePolicy::Stop,
            max_skipped_steps: 10,
        }
    }
}

impl TrainConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("train.steps", self.steps)?;
        at_least_one("train.batch_size", self.batch_size)?;
        at_least_one("train.grad_accum", self.grad_accum)?;
        positive("train.lr", self.lr)?;
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::value(
                "train.min_lr_ratio",
                format!("must be in [0, 1] (got {})", self.min_lr_ratio),
            ));
        }
        non_negative("train.weight_decay", self.weight_decay)?;
        unit_open("train.beta1", self.beta1)?;
        unit_open("train.beta2", self.beta2)?;
        positive("train.adam_eps", self.adam_eps)?;
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(Error::value(
                "train.grad_clip",
                format!(
                    "must be >= 0 (0 turns clipping off) (got {})",
                    self.grad_clip
                ),
            ));
        }
        at_least_one("train.eval_every", self.eval_every)?;
        at_least_one("train.eval_batches", self.eval_batches)?;
        at_least_one("train.keep_checkpoints", self.keep_checkpoints)?;
        at_least_one("train.log_every", self.log_every)
    }
}
