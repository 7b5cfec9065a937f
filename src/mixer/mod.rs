//! The outer loop's seam: a `Mixer` holds pure CPU state over K sources, reads per-source
//! statistics the trainer gathers for it, and returns weights on the simplex. It never touches
//! files; its state is serialisable into checkpoints.

mod init;
mod static_mixer;

pub use init::{apply_floor, resolve_init};
pub use static_mixer::StaticMixer;

use crate::config::{Config, MixerKind};
use crate::error::Result;

/// Parameter scope of gradient inner products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradScope {
    /// The LM head only.
    Head,
    /// Every parameter.
    All,
}

/// What a mixer needs the trainer to measure before each update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsRequest {
    /// Mean training loss per source since the last update (always gathered; free).
    pub train_losses: bool,
    /// Per-source validation loss on the fixed validation batches.
    pub val_losses: bool,
    /// ⟨g_val, g_k⟩ per source over this scope, g_val the gradient of the target validation loss.
    pub grad_dot_val: Option<GradScope>,
    /// Per-source loss of a reference model.
    pub reference_losses: bool,
}

/// Statistics handed to `Mixer::update`. Entries the mixer did not request are None.
#[derive(Debug, Clone)]
pub struct SourceStats {
    /// Optimizer steps completed.
    pub step: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Mean training loss per source since the last update; None where a source had no sequence.
    pub train_loss: Vec<Option<f64>>,
    pub val_loss: Option<Vec<f64>>,
    pub grad_dot_val: Option<Vec<f64>>,
    pub reference_loss: Option<Vec<f64>>,
}

/// New weights from an update, and the raw per-source signal behind them (logged).
#[derive(Debug, Clone, PartialEq)]
pub struct MixerUpdate {
    pub weights: Vec<f64>,
    /// (signal name, value per source), e.g. ("s", ⟨g_val, g_k⟩).
    pub signal: Option<(&'static str, Vec<f64>)>,
}

pub trait Mixer: Send {
    /// Current weights, on the simplex.
    fn weights(&self) -> &[f64];
    fn needs(&self) -> StatsRequest;
    /// One outer step; None when the weights do not change.
    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate>;
    /// Everything needed to continue exactly after a restart.
    fn state(&self) -> serde_json::Value;
    fn restore(&mut self, state: &serde_json::Value) -> std::result::Result<(), String>;
}

/// Builds the mixer named by `mixer.kind`. `train_tokens[k]` is source k's training size.
pub fn build(config: &Config, train_tokens: &[usize]) -> Result<Box<dyn Mixer>> {
    let init = resolve_init(
        &config.mixture_init()?,
        &config.source_names(),
        train_tokens,
    )?;
    Ok(match config.mixer.kind {
        MixerKind::Static => Box::new(StaticMixer::new(init)),
    })
}
