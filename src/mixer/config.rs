//! `[mixer]`: which mixer, how its mixture is applied and when it updates, the initial
//! mixture, the floor, and each mixer's own section (declared beside the mixer).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::TikMixMConfig;
use super::{Ado, DoReMi, FastMix, Guard, Mixer, Odm, StaticMixer, TikMix, TikMixM, TrustRegion};
use super::{AdoConfig, DoremiConfig, EntropyKind, FastMixConfig, OdmConfig, TikMixConfig};
use super::{EvidenceGuard, GuardConfig, GuardKind};
use super::{ScheduleConfig, ScheduleMixer};
pub use crate::data::ApplyMode;
use crate::error::{Error, Result};
use crate::validate::{at_least_one, unit_closed_above};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixerKind {
    Static,
    Fastmix,
    Tikmix,
    TikmixM,
    Odm,
    Doremi,
    Ado,
    Schedule,
}

/// How a probed training step gets ⟨g_val, g_k⟩ for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradStats {
    /// Domain-homogeneous micro-batches; each one's gradient buffer dotted with g_val.
    PerSource,
    /// Any micro-batches; per-token output gradients of every layer from the step's own
    /// backward, segment-summed by source (src/train/single_pass.rs).
    SinglePass,
}

/// Which training steps measure ⟨g_val, g_k⟩ for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeSteps {
    /// The step right before each update, against a g_val computed just before it.
    Last,
    /// Every step since the previous update (the update's window of `every` steps), against
    /// one g_val computed at the window's first step; the update takes each source's mean
    /// over the window's steps that drew it.
    Window,
}

/// How a mixer that takes ⟨g_val, g_k⟩ from training steps probes them: keys of its own
/// section (`[mixer.fastmix]`, `[mixer.tikmix]`), read into this by each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    pub(crate) grad_stats: GradStats,
    pub(crate) probe_steps: ProbeSteps,
    /// Mixer updates one validation gradient g_val serves (≥ 1).
    pub(crate) gval_every: usize,
}

/// The keys that moved from `[mixer]` into the probing mixers' own sections (2026-12-06).
pub const MOVED_TO_MIXER_SECTIONS: [&str; 3] = ["grad_stats", "probe_steps", "gval_every"];

/// `mixer.init`: a named rule, or explicit weights by source name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitSpec {
    Named(String),
    Explicit(BTreeMap<String, f64>),
}

/// How the initial mixture is computed, resolved from `InitSpec` by `validate`.
#[derive(Debug, Clone, PartialEq)]
pub enum MixtureInit {
    Uniform,
    /// p ∝ training tokens of each source.
    Proportional,
    /// p ∝ n_k^τ with τ = `mixer.temperature`.
    Temperature(f64),
    /// Weights by source name (normalised to sum 1).
    Explicit(BTreeMap<String, f64>),
    /// The "final" weights of a mixture.json written by an earlier run.
    File(PathBuf),
    /// p ∝ an entropy of each source's training tokens (BiMix).
    Entropy(EntropyKind),
    /// The seed of `mixtrain demix`: a demix/ directory or its mixture.json; None = this run's
    /// own out_dir/demix, computed first when missing.
    Demix(Option<PathBuf>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixerConfig {
    /// The mixer: "static", "fastmix", "tikmix", "tikmix-m", "odm", "doremi", "ado" or
    /// "schedule" (`[mixer.schedule]`). Default "static".
    pub kind: MixerKind,
    /// "sample", "reweight" or "hybrid" (see ApplyMode). Default "hybrid" (README, "Mixer
    /// comparison": the compute follows the mixture).
    pub apply: ApplyMode,
    /// Steps between mixer updates. Default 10.
    pub every: usize,
    /// No mixer update before this step (the mixture stays at `init`; the first update is at
    /// the first multiple of `every` at or after it). Default 0.
    pub warmup_steps: usize,
    /// Trust region: an update moves the applied mixture by at most this much in total
    /// variation (½ Σ |Δp_k|) toward the mixer's proposal. Unset: no bound. Default unset.
    pub(crate) max_change: Option<f64>,
    /// Weight floor ε for online mixers, p ← (1−Kε)p + ε; must satisfy Kε < 1. Default 0.2/K.
    /// The static mixer uses its weights exactly as given.
    pub min_weight: Option<f64>,
    /// Exponent τ of `init = "temperature"` (p ∝ tokens^τ). Default 0.5.
    pub temperature: f64,
    /// Initial mixture: "uniform", "proportional", "temperature", "file:PATH/mixture.json",
    /// or a table of weights by source name (`{ code = 2, prose = 1 }`, normalised).
    /// Default "uniform".
    pub init: InitSpec,
    pub fastmix: FastMixConfig,
    pub tikmix: TikMixConfig,
    #[serde(rename = "tikmix-m")]
    pub tikmix_m: TikMixMConfig,
    pub(crate) odm: OdmConfig,
    pub doremi: DoremiConfig,
    pub(crate) ado: AdoConfig,
    /// The trust region of fastmix, tikmix and tikmix-m around the initial mixture, its
    /// radius following the measured target loss (src/mixer/guard/); off by default. Left
    /// out of a run's config.toml while at its defaults, so runs from before it keep their
    /// config hash.
    #[serde(skip_serializing_if = "GuardConfig::is_default")]
    pub guard: GuardConfig,
    /// `kind = "schedule"`: stages, or another run's trajectory (`from`).
    pub schedule: ScheduleConfig,
}

/// The registration point of the mixers: adding one touches its own file (the `Mixer` impl
/// and its `[mixer.NAME]` config with `validate`) and this file: a `MixerKind` variant, the
/// config field with its default and `validate` call, and one arm of `build`.
impl MixerConfig {
    /// Builds the mixer named by `kind`, starting from `init` (one weight per source, named
    /// `names`) for a run of `total_steps`; `seed` feeds the mixers that draw candidates.
    pub(crate) fn build(
        &self,
        init: &[f64],
        seed: u64,
        names: &[String],
        total_steps: usize,
    ) -> Result<Box<dyn Mixer>> {
        let floor = self.min_weight(init.len());
        let init = init.to_vec();
        let built: Box<dyn Mixer> = match self.kind {
            MixerKind::Static => Box::new(StaticMixer::new(init)),
            MixerKind::Fastmix => Box::new(FastMix::new(self.fastmix.clone(), &init, floor)),
            MixerKind::Tikmix => Box::new(TikMix::new(self.tikmix.clone(), &init, floor)),
            MixerKind::TikmixM => Box::new(TikMixM::new(self.tikmix_m.clone(), &init, floor, seed)),
            MixerKind::Odm => Box::new(Odm::new(self.odm.clone(), &init)),
            MixerKind::Doremi => Box::new(DoReMi::new(self.doremi.clone(), &init)),
            MixerKind::Ado => Box::new(Ado::new(self.ado.clone(), &init, floor)),
            MixerKind::Schedule => {
                let schedule = self.schedule.resolve(names, total_steps)?;
                Box::new(ScheduleMixer::new(schedule, self.every))
            }
        };
        let target_directed = matches!(
            self.kind,
            MixerKind::Fastmix | MixerKind::Tikmix | MixerKind::TikmixM
        );
        let built: Box<dyn Mixer> = match self.guard.kind {
            GuardKind::TrustRegion if target_directed => {
                Box::new(Guard::new(built, self.guard.clone()))
            }
            GuardKind::Evidence if target_directed => {
                Box::new(EvidenceGuard::new(built, self.guard.clone()))
            }
            _ => built,
        };
        let fixed = matches!(self.kind, MixerKind::Static | MixerKind::Schedule);
        Ok(match self.max_change {
            Some(delta) if !fixed => Box::new(TrustRegion::new(built, delta)),
            _ => built,
        })
    }

    /// True when the mixer updates after `step` optimizer steps of a `total`-step run: every
    /// `every` steps from `warmup_steps` on, never at step 0 or at the end. The schedule is
    /// asked after every step (it changes only where its points say).
    pub(crate) fn updates_at(&self, step: usize, total: usize) -> bool {
        let inside = step > 0 && step < total;
        if self.kind == MixerKind::Schedule {
            return inside;
        }
        inside && step >= self.warmup_steps && step.is_multiple_of(self.every)
    }

    /// The probing settings of the active mixer when it takes ⟨g_val, g_k⟩ from training
    /// steps (`[mixer.fastmix]`, `[mixer.tikmix]`); None for the others.
    pub(crate) fn probing(&self) -> Option<Probing> {
        match self.kind {
            MixerKind::Fastmix => Some(self.fastmix.probing()),
            MixerKind::Tikmix => Some(self.tikmix.probing()),
            MixerKind::TikmixM => self.tikmix_m.probing(),
            _ => None,
        }
    }

    /// True when the mixer measures ⟨g_val, g_k⟩ on step `step` (1-based: the step that ends
    /// with `step` optimizer steps done): the update's own step for `probe_steps = "last"`,
    /// any step of an update's window (the `every` steps ending with the update) for
    /// `"window"`; never for a mixer without probing settings.
    pub(crate) fn probes_at(&self, step: usize, total: usize) -> bool {
        match self.probing().map(|p| p.probe_steps) {
            None => false,
            Some(ProbeSteps::Last) => self.updates_at(step, total),
            Some(ProbeSteps::Window) => {
                (step..step + self.every).any(|u| self.updates_at(u, total))
            }
        }
    }
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            kind: MixerKind::Static,
            apply: ApplyMode::Hybrid,
            every: 10,
            warmup_steps: 0,
            max_change: None,
            min_weight: None,
            temperature: 0.5,
            init: InitSpec::Named("uniform".into()),
            fastmix: FastMixConfig::default(),
            tikmix: TikMixConfig::default(),
            tikmix_m: TikMixMConfig::default(),
            odm: OdmConfig::default(),
            doremi: DoremiConfig::default(),
            ado: AdoConfig::default(),
            guard: GuardConfig::default(),
            schedule: ScheduleConfig::default(),
        }
    }
}

impl MixerConfig {
    /// The weight floor ε of online mixers over `k` sources (default 0.2/K).
    pub(crate) fn min_weight(&self, k: usize) -> f64 {
        self.min_weight.unwrap_or(0.2 / k as f64)
    }

    /// Parses `init`.
    pub(crate) fn mixture_init(&self) -> Result<MixtureInit> {
        match &self.init {
            InitSpec::Named(name) => match name.as_str() {
                "uniform" => Ok(MixtureInit::Uniform),
                "proportional" => Ok(MixtureInit::Proportional),
                "temperature" => Ok(MixtureInit::Temperature(self.temperature)),
                other => {
                    if let Some(path) = other.strip_prefix("file:").filter(|p| !p.is_empty()) {
                        return Ok(MixtureInit::File(PathBuf::from(path)));
                    }
                    if let Some(kind) = other.strip_prefix("entropy:").and_then(EntropyKind::parse)
                    {
                        return Ok(MixtureInit::Entropy(kind));
                    }
                    if other == "demix" {
                        return Ok(MixtureInit::Demix(None));
                    }
                    if let Some(path) = other.strip_prefix("demix:").filter(|p| !p.is_empty()) {
                        return Ok(MixtureInit::Demix(Some(PathBuf::from(path))));
                    }
                    Err(Error::value(
                        "mixer.init",
                        format!(
                            "unknown mixture {other:?}; expected \"uniform\", \"proportional\", \
                             \"temperature\", \"entropy:conditional\" (or :shannon, :joint), \"demix\", \
                             \"demix:PATH\", \"file:PATH/mixture.json\" or a table of weights \
                             by source name"
                        ),
                    ))
                }
            },
            InitSpec::Explicit(weights) => Ok(MixtureInit::Explicit(weights.clone())),
        }
    }

    /// Checks `[mixer]` and every mixer's section, for a run over `sources` (names).
    pub(crate) fn validate(&self, sources: &[String]) -> Result<()> {
        at_least_one("mixer.every", self.every)?;
        if let Some(delta) = self.max_change {
            unit_closed_above("mixer.max_change", delta)?;
        }
        let k = sources.len() as f64;
        if let Some(eps) = self.min_weight {
            if !(eps >= 0.0 && eps * k < 1.0) {
                return Err(Error::value(
                    "mixer.min_weight",
                    format!("must be >= 0 and below 1/K = {} (got {eps})", 1.0 / k),
                ));
            }
        }
        if !self.temperature.is_finite() {
            return Err(Error::value(
                "mixer.temperature",
                format!("must be finite (got {})", self.temperature),
            ));
        }
        if let MixtureInit::Explicit(weights) = self.mixture_init()? {
            for (name, w) in &weights {
                if !sources.contains(name) {
                    return Err(Error::value(
                        format!("mixer.init.{name}"),
                        format!("no source named {name:?} (sources: {})", sources.join(", ")),
                    ));
                }
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(Error::value(
                        format!("mixer.init.{name}"),
                        format!("must be >= 0 (got {w})"),
                    ));
                }
            }
            if weights.values().sum::<f64>() <= 0.0 {
                return Err(Error::value(
                    "mixer.init",
                    "explicit weights must have a positive sum",
                ));
            }
        }
        self.fastmix.validate()?;
        self.tikmix.validate()?;
        self.tikmix_m.validate()?;
        self.odm.validate()?;
        self.ado.validate()?;
        self.guard.validate()?;
        if self.kind == MixerKind::Schedule {
            self.schedule.validate(sources)?;
        }
        self.doremi.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(config: &MixerConfig, total: usize) -> Vec<usize> {
        (1..=total)
            .filter(|&s| config.probes_at(s, total))
            .collect()
    }

    /// "last" probes each update's own step; "window" every step of the `every` steps ending
    /// with an update, none before the first update's window or after the last update.
    #[test]
    fn probe_steps_cover_the_update_windows() {
        let mut config = MixerConfig {
            kind: MixerKind::Fastmix,
            every: 4,
            warmup_steps: 6,
            ..MixerConfig::default()
        };
        assert_eq!(probed(&config, 14), vec![8, 12]);
        config.fastmix.probe_steps = ProbeSteps::Window;
        assert_eq!(probed(&config, 14), vec![5, 6, 7, 8, 9, 10, 11, 12]);
        config.warmup_steps = 0;
        assert_eq!(probed(&config, 12), (1..=8).collect::<Vec<_>>());
    }

    /// tikmix probes its whole window by default and fastmix the last step; each reads its
    /// own section; the other mixers probe no training step.
    #[test]
    fn probing_follows_the_active_mixer() {
        let mut config = MixerConfig::default();
        for (kind, steps) in [
            (MixerKind::Fastmix, Some(ProbeSteps::Last)),
            (MixerKind::Tikmix, Some(ProbeSteps::Window)),
            (MixerKind::TikmixM, Some(ProbeSteps::Last)),
            (MixerKind::Doremi, None),
        ] {
            config.kind = kind;
            assert_eq!(config.probing().map(|p| p.probe_steps), steps, "{kind:?}");
        }
        config.kind = MixerKind::Fastmix;
        config.tikmix.probe_steps = ProbeSteps::Last;
        config.fastmix.gval_every = 3;
        assert_eq!(config.probing().unwrap().probe_steps, ProbeSteps::Last);
        assert_eq!(config.probing().unwrap().gval_every, 3);
        config.kind = MixerKind::Tikmix;
        assert_eq!(config.probing().unwrap().probe_steps, ProbeSteps::Last);
        assert_eq!(config.probing().unwrap().gval_every, 5);
        config.kind = MixerKind::Static;
        assert_eq!(probed(&config, 20), Vec::<usize>::new());
    }
}
