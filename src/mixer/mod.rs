//! The outer loop's seam: a `Mixer` holds pure CPU state over K sources, reads per-source
//! statistics the trainer gathers for it, and returns weights on the simplex. It never touches
//! files; its state is serialisable into checkpoints.

mod ado;
mod config;
mod doremi;
mod entropy;
mod fastmix;
mod guard;
mod init;
mod odm;
mod schedule;
mod static_mixer;
mod tikmix;
mod tikmix_m;
mod trust_region;

pub use ado::{Ado, AdoConfig};
pub use config::{
    ApplyMode, GradStats, InitSpec, MixerConfig, MixerKind, MixtureInit, ProbeSteps, Probing,
    MOVED_TO_MIXER_SECTIONS,
};
pub use doremi::{DoReMi, DoremiConfig, ExcessFrom};
pub(crate) use entropy::{token_entropy, EntropyKind};
pub use fastmix::{FastMix, FastMixConfig, SignalNorm};
pub(crate) use guard::{EvidenceGuard, Guard};
pub use guard::{EvidenceLog, GuardConfig, GuardKind, GuardLog, GuardReport};
pub use init::{apply_floor, demix_mixture_file, normalise, resolve_init, softmax};
pub use odm::{Odm, OdmConfig};
pub(crate) use schedule::ScheduleMixer;
pub use schedule::{Interpolate, ScheduleConfig, StageConfig};
pub(crate) use static_mixer::StaticMixer;
pub use tikmix::{InfluenceFrom, InfluenceNorm, TikMix, TikMixConfig};
pub use tikmix_m::{TikMixM, TikMixMConfig, VirtualFrom};
pub(crate) use trust_region::TrustRegion;

use crate::data::Source;
use crate::error::Result;

/// Parameter scope of gradient inner products (`mixer.fastmix.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradScope {
    /// The LM head only (the embedding when tied), as FastMix's reference code.
    Head,
    /// Every parameter.
    All,
}

/// How to measure ⟨g_val, g_k⟩ in a probed training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub(crate) scope: GradScope,
    /// Use ⟨P g_val, g_k⟩ with AdamW's diagonal preconditioner P.
    pub(crate) precondition: bool,
    /// Fresh validation batches (of train.batch_size sequences) behind g_val.
    pub(crate) val_batches: usize,
}

/// How to measure group influence I_k = ⟨g_val, G_k⟩ with extra passes at an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InfluenceSpec {
    /// Sequences of each source behind G_k.
    pub(crate) samples_per_source: usize,
    pub(crate) val_batches: usize,
}

/// How to measure each candidate mixture's one-step group influence (TiKMiX-M).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct VirtualStepSpec {
    /// G_k from the probed training steps of the update's window (traced), not extra passes.
    pub(crate) from_probe: bool,
    /// The virtual step starts from the parameters before the last probed step's optimizer
    /// step (`virtual_from = "probed"`), not the current ones.
    pub(crate) from_probed_params: bool,
    /// Sequences of each source behind G_k (extra passes).
    pub(crate) samples_per_source: usize,
    /// Fresh random windows of the target ΔL_val is measured on (the same for every candidate).
    pub(crate) val_sequences: usize,
    /// The virtual step is θ − scale · lr · P ⊙ Σ_k w_k G_k.
    pub(crate) scale: f64,
    /// P = the preconditioner AdamW would apply next (else 1).
    pub(crate) precondition: bool,
}

/// What a mixer needs the trainer to measure before each update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct StatsRequest {
    /// s_k = ⟨g_val, g_k⟩ from the training step just before the update, g_k the gradient of
    /// source k's mean loss in that step (domain-homogeneous micro-batches, no extra backward).
    pub(crate) grad_probe: Option<ProbeSpec>,
    /// I_k = ⟨g_val, G_k⟩ with G_k from extra per-source passes.
    pub(crate) group_influence: Option<InfluenceSpec>,
    /// λ_k = mean over source-k tokens of max(ℓ_θ − ℓ_ref, 0) (needs a reference model).
    pub(crate) excess_loss: Option<ExcessSpec>,
    /// ΔL_val(w) = L_val(θ − η Σ_k w_k G_k) − L_val(θ) for every mixture w the mixer's
    /// `candidates` returns (forward passes only, after one backward per source for G_k).
    pub(crate) virtual_step: Option<VirtualStepSpec>,
    /// The target loss on this many of its fixed validation windows (the guard's test).
    pub(crate) target_check: Option<usize>,
}

/// Where DoReMi's excess losses are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExcessSpec {
    /// On this many fresh random training sequences of each source at the update (a forward
    /// of both models on each).
    Samples(usize),
    /// On a fixed pool of this many training sequences of each source, drawn once; the
    /// reference model's losses on it are computed once (a forward of the model only).
    Pool(usize),
    /// On the sequences of the training step just before the update: the model's token losses
    /// are the step's own; only the reference model's forward is extra.
    Step,
}

/// Statistics handed to `Mixer::update`. Entries the mixer did not request are None.
/// Mean training losses since the last update are always there (they cost nothing).
#[derive(Debug, Clone)]
pub(crate) struct SourceStats {
    /// Optimizer steps done (the update comes after this step).
    pub(crate) step: usize,
    /// The learning rate of the last step.
    pub(crate) lr: f64,
    /// Mean training loss per source since the last update; None where a source had no sequence.
    pub(crate) train_loss: Vec<Option<f64>>,
    /// s_k; None for a source absent from the probed step.
    pub(crate) grad_dot_val: Option<Vec<Option<f64>>>,
    pub(crate) influence: Option<Vec<f64>>,
    pub(crate) excess_loss: Option<Vec<f64>>,
    /// ΔL_val of each candidate, in the order `candidates` returned them.
    pub(crate) candidate_delta: Option<Vec<f64>>,
    /// Training tokens drawn from each source since the start of the run.
    pub(crate) tokens_seen: Vec<u64>,
    /// The target loss on the windows `target_check` asked for.
    pub(crate) target_loss: Option<f64>,
}

/// New weights from an update, and the raw per-source signal behind them (logged).
#[derive(Debug, Clone, PartialEq)]
pub struct MixerUpdate {
    pub(crate) weights: Vec<f64>,
    /// (signal name, value per source), e.g. ("s", ⟨g_val, g_k⟩).
    pub(crate) signal: Option<(&'static str, Vec<f64>)>,
    /// What the guard did at this update (`[mixer.guard]`).
    pub(crate) guard: Option<GuardReport>,
}

pub(crate) trait Mixer: Send {
    /// Current weights, on the simplex.
    fn weights(&self) -> &[f64];
    fn needs(&self) -> StatsRequest;
    /// Mixtures whose one-step group influence the next update needs measured (asked right
    /// before `update` when `needs().virtual_step` is set).
    fn candidates(&mut self) -> Vec<Vec<f64>> {
        Vec::new()
    }
    /// One outer step; None when the weights do not change.
    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate>;
    /// Everything needed to continue exactly after a restart.
    fn state(&self) -> serde_json::Value;
    fn restore(&mut self, state: &serde_json::Value) -> std::result::Result<(), String>;
}

/// Deserialises a mixer's checkpointed state and checks it holds `k` sources (`len` reads the
/// count from the state).
fn restore_state<S: serde::de::DeserializeOwned>(
    mixer: &str,
    value: &serde_json::Value,
    k: usize,
    len: impl Fn(&S) -> usize,
) -> std::result::Result<S, String> {
    let state: S =
        serde_json::from_value(value.clone()).map_err(|e| format!("{mixer} state: {e}"))?;
    if len(&state) != k {
        return Err(format!(
            "{mixer} state holds {} sources, the run has {k}",
            len(&state)
        ));
    }
    Ok(state)
}

/// The mixture a run starts from, and what it was computed from (written to mixture.json).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InitialMixture {
    pub(crate) weights: Vec<f64>,
    /// `mixer.init` as written ("table" for a table of weights).
    pub(crate) method: String,
    /// Nats per source, for `init = "entropy:..."`.
    pub(crate) entropy: Option<Vec<f64>>,
}

/// The initial mixture of `mixer.init` over the loaded `sources` (entropy seeds read each
/// training shard once), or the schedule's start; `out_dir` is the run's, where `init =
/// "demix"` finds its seed; the run has `total_steps` steps.
pub(crate) fn initial_mixture(
    mixer: &MixerConfig,
    out_dir: &std::path::Path,
    sources: &[Source],
    vocab_size: usize,
    total_steps: usize,
) -> Result<InitialMixture> {
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    if mixer.kind == MixerKind::Schedule {
        return Ok(InitialMixture {
            weights: mixer.schedule.resolve(&names, total_steps)?.weights_at(0),
            method: "schedule".into(),
            entropy: None,
        });
    }
    let init = match mixer.mixture_init()? {
        MixtureInit::Demix(None) => MixtureInit::Demix(Some(out_dir.join("demix"))),
        other => other,
    };
    let train_tokens: Vec<usize> = sources.iter().map(|s| s.train.len()).collect();
    let entropy = match init {
        MixtureInit::Entropy(kind) => Some(
            sources
                .iter()
                .map(|s| {
                    token_entropy(
                        (0..s.train.len()).map(|i| s.train.token(i)),
                        vocab_size,
                        kind,
                    )
                })
                .collect::<Vec<f64>>(),
        ),
        _ => None,
    };
    let weights = resolve_init(&init, &names, &train_tokens, entropy.as_deref())?;
    let method = match &mixer.init {
        InitSpec::Named(name) => name.clone(),
        InitSpec::Explicit(_) => "table".into(),
    };
    Ok(InitialMixture {
        weights,
        method,
        entropy,
    })
}

/// The mixers' golden numbers, computed by tests/golden/mixers.py (plain Python from the
/// update rules in docs/design.md) and checked against that script by `.ci/run`.
#[cfg(test)]
pub(crate) fn golden(name: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/golden/mixers.json")).expect("JSON");
    all.get(name)
        .unwrap_or_else(|| panic!("{name} is not in tests/golden/mixers.json"))
        .clone()
}

/// A golden case that is one list of numbers.
#[cfg(test)]
pub(crate) fn golden_weights(name: &str) -> Vec<f64> {
    serde_json::from_value(golden(name)).expect("a list of numbers")
}
