//! TiKMiX-D: group influence I_k = ⟨g_val, G_k⟩ (G_k from `samples_per_source` extra sequences
//! of source k, or from its sequences in the training step just before the update), normalised,
//! turned into the entropy-regularised argmax softmax(Ĩ / τ) and blended into the mixture:
//! p ← (1 − β) p + β p_new, then the floor.

use serde::{Deserialize, Serialize};

use super::config::{GradStats, ProbeSteps, Probing};

use super::init::{apply_floor, blend_and_floor, softmax};
use super::{
    restore_state, GradScope, InfluenceSpec, Mixer, MixerUpdate, ProbeSpec, SourceStats,
    StatsRequest,
};
use crate::validate::{at_least_one, positive, unit_closed_above};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluenceNorm {
    /// Ĩ = I / std(I).
    Std,
    /// Ĩ = I / max |I|.
    Max,
}

/// Where tikmix's G_k comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InfluenceFrom {
    /// The training step just before the update: G_k = the gradient of source k's sequences
    /// in that step, measured by the step's own backward (`grad_stats`), as fastmix's
    /// s_k. No extra backward.
    Probe,
    /// `samples_per_source` extra random sequences of each source, one extra backward each.
    ExtraPasses,
}

/// `[mixer.tikmix]`: group influence, entropy-regularised argmax, blended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TikMixConfig {
    /// Where G_k comes from: "probe" (the probed training steps of the update's window,
    /// `probe_steps`, no extra backward) or "extra-passes" (`samples_per_source` more
    /// sequences of each source, forward and backward, at every update: about one more
    /// step's work per step). Default "probe": with the window probe it mixed as well as the
    /// extra passes at about half their cost (README, "Mixer overhead"); the probe of the last
    /// step alone (2 sequences of each source on the synthetic test) was too noisy.
    pub influence: InfluenceFrom,
    /// Sequences of each source behind G_k with `influence = "extra-passes"`. Default 32.
    pub(crate) samples_per_source: usize,
    /// Entropy temperature τ: p_new = softmax(Ĩ / τ). Default 1.0.
    pub(crate) tau: f64,
    /// Blend β: p ← (1 − β) p + β p_new. Default 0.1: p averages the softmax of about the
    /// last ten updates' signals. At 0.5 (the default before 2026-11-25) p followed each
    /// update's validation noise and tikmix lost to uniform on the quickstart's `all`
    /// (+0.033 ± 0.024 nats over 3 seeds, +0.011 ± 0.033 at 0.1) for no gain on `one-source`
    /// (README, "Target-directed mixing").
    pub blend: f64,
    /// Normalisation of I: "std" or "max". Default "std".
    pub(crate) normalise: InfluenceNorm,
    /// Fresh validation batches behind g_val at each update. Default 2.
    pub(crate) val_batches: usize,
    /// How a probed step measures ⟨g_val, g_k⟩ (`influence = "probe"`): "per-source" or
    /// "single-pass", as fastmix's. Default "per-source".
    pub(crate) grad_stats: GradStats,
    /// Which steps measure I_k (`influence = "probe"`): "last" or "window". Default "window":
    /// I_k from about `every` times more sequences (docs/results/mixer_overhead.md).
    pub probe_steps: ProbeSteps,
    /// Mixer updates one validation gradient g_val serves (`influence = "probe"`). Default 5.
    pub(crate) gval_every: usize,
}

impl Default for TikMixConfig {
    fn default() -> Self {
        TikMixConfig {
            influence: InfluenceFrom::Probe,
            samples_per_source: 32,
            tau: 1.0,
            blend: 0.1,
            normalise: InfluenceNorm::Std,
            val_batches: 2,
            grad_stats: GradStats::PerSource,
            probe_steps: ProbeSteps::Window,
            gval_every: 5,
        }
    }
}

impl TikMixConfig {
    /// The probing settings of this section.
    pub(crate) fn probing(&self) -> Probing {
        Probing {
            grad_stats: self.grad_stats,
            probe_steps: self.probe_steps,
            gval_every: self.gval_every,
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        at_least_one("mixer.tikmix.samples_per_source", self.samples_per_source)?;
        positive("mixer.tikmix.tau", self.tau)?;
        unit_closed_above("mixer.tikmix.blend", self.blend)?;
        at_least_one("mixer.tikmix.gval_every", self.gval_every)?;
        at_least_one("mixer.tikmix.val_batches", self.val_batches)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// The blended mixture before the floor.
    base: Vec<f64>,
    weights: Vec<f64>,
}

pub struct TikMix {
    config: TikMixConfig,
    floor: f64,
    state: State,
}

impl TikMix {
    pub(crate) fn new(config: TikMixConfig, init: &[f64], floor: f64) -> Self {
        TikMix {
            config,
            floor,
            state: State {
                base: init.to_vec(),
                weights: apply_floor(init, floor),
            },
        }
    }
}

impl Mixer for TikMix {
    fn weights(&self) -> &[f64] {
        &self.state.weights
    }

    fn needs(&self) -> StatsRequest {
        match self.config.influence {
            // ⟨g_val, g_k⟩ over all parameters, unpreconditioned: I_k of the step's own batch.
            InfluenceFrom::Probe => StatsRequest {
                grad_probe: Some(ProbeSpec {
                    scope: GradScope::All,
                    precondition: false,
                    val_batches: self.config.val_batches,
                }),
                ..StatsRequest::default()
            },
            InfluenceFrom::ExtraPasses => StatsRequest {
                group_influence: Some(InfluenceSpec {
                    samples_per_source: self.config.samples_per_source,
                    val_batches: self.config.val_batches,
                }),
                ..StatsRequest::default()
            },
        }
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let influence = match (&stats.influence, &stats.grad_dot_val) {
            (Some(influence), _) => influence.clone(),
            (None, Some(probed)) => fill_absent(probed)?,
            (None, None) => return None,
        };
        let influence = &influence;
        let k = influence.len() as f64;
        let scale = match self.config.normalise {
            InfluenceNorm::Std => {
                let mean = influence.iter().sum::<f64>() / k;
                (influence.iter().map(|i| (i - mean).powi(2)).sum::<f64>() / k).sqrt()
            }
            InfluenceNorm::Max => influence.iter().fold(0.0f64, |m, i| m.max(i.abs())),
        };
        if !(scale.is_finite() && scale > 0.0) {
            // All sources equally influential: nothing to prefer.
            return None;
        }
        let scores: Vec<f64> = influence
            .iter()
            .map(|i| i / scale / self.config.tau)
            .collect();
        let target = softmax(&scores);
        let st = &mut self.state;
        st.weights = blend_and_floor(&mut st.base, &target, self.config.blend, self.floor);
        Some(MixerUpdate {
            weights: st.weights.clone(),
            signal: Some(("influence", influence.clone())),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.base.len();
        self.state = restore_state("tikmix", state, k, |s: &State| s.base.len())?;
        Ok(())
    }
}

/// Probed influences with a source absent from the step (possible with `apply = "sample"`)
/// set to the mean of the others: no evidence either way. None when no source was present.
fn fill_absent(probed: &[Option<f64>]) -> Option<Vec<f64>> {
    let present: Vec<f64> = probed.iter().flatten().copied().collect();
    if present.is_empty() {
        return None;
    }
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    Some(probed.iter().map(|i| i.unwrap_or(mean)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(influence: Vec<f64>) -> SourceStats {
        SourceStats {
            step: 0,
            lr: 1e-3,
            train_loss: vec![None; influence.len()],
            grad_dot_val: None,
            influence: Some(influence),
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: Vec::new(),
            target_loss: None,
        }
    }

    /// Golden numbers (tests/golden/mixers.py, `tikmix_one_update`): I = (3, 1, -1), population std = 1.632993161855452,
    /// p_new = softmax(I / std / 0.5) = (0.91425076, 0.07893424, 0.00681500),
    /// base = 0.5/3 + 0.5 p_new, w = 0.85 base + 0.05
    /// = (0.580223240047721, 0.2252137202013394, 0.19456303975093958)
    #[test]
    fn one_update_matches_hand_computation() {
        let config = TikMixConfig {
            tau: 0.5,
            blend: 0.5,
            ..TikMixConfig::default()
        };
        let mut mixer = TikMix::new(config, &[1.0 / 3.0; 3], 0.05);
        let update = mixer.update(&stats(vec![3.0, 1.0, -1.0])).unwrap();
        let expected = crate::mixer::golden_weights("tikmix_one_update");
        assert_eq!(update.weights.len(), expected.len());
        for (w, e) in update.weights.iter().zip(expected) {
            assert!((w - e).abs() < 1e-12, "{:?}", update.weights);
        }
    }

    /// With `influence = "probe"` tikmix asks for the probed step's
    /// ⟨g_val, g_k⟩ (all parameters, no preconditioner) instead of extra passes, and an absent
    /// source counts as the mean of the others.
    #[test]
    fn probed_influence_is_used_and_absent_sources_are_neutral() {
        let config = TikMixConfig {
            influence: InfluenceFrom::Probe,
            ..TikMixConfig::default()
        };
        let mut mixer = TikMix::new(config.clone(), &[1.0 / 3.0; 3], 0.05);
        let needs = mixer.needs();
        assert!(needs.group_influence.is_none());
        let probe = needs.grad_probe.expect("probe requested");
        assert_eq!((probe.scope, probe.precondition), (GradScope::All, false));
        let mut from_probe = stats(vec![]);
        from_probe.influence = None;
        from_probe.grad_dot_val = Some(vec![Some(3.0), None, Some(-1.0)]);
        let probed = mixer.update(&from_probe).unwrap();
        let mut direct = TikMix::new(config, &[1.0 / 3.0; 3], 0.05);
        let expected = direct.update(&stats(vec![3.0, 1.0, -1.0])).unwrap();
        assert_eq!(probed, expected);
        from_probe.grad_dot_val = Some(vec![None; 3]);
        assert!(mixer.update(&from_probe).is_none());
    }

    #[test]
    fn weights_stay_on_the_simplex_above_the_floor() {
        let mut mixer = TikMix::new(TikMixConfig::default(), &[0.25; 4], 0.03);
        for i in 0..100 {
            let influence: Vec<f64> = (0..4)
                .map(|k| ((i * 7 + k * 5) % 11) as f64 - 5.0)
                .collect();
            if let Some(update) = mixer.update(&stats(influence)) {
                assert!((update.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(update.weights.iter().all(|&w| w >= 0.03 - 1e-12));
            }
        }
        assert!(
            mixer.update(&stats(vec![1.0; 4])).is_none(),
            "equal influence changes nothing"
        );
    }
}
