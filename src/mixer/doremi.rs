//! DoReMi (baseline): λ_k = mean over source-k tokens of max(ℓ_θ − ℓ_ref, 0) against a
//! reference model; α ← softmax(log α + η λ); α ← (1 − c) α + c / K. The time-averaged α is
//! what DoReMi exports (mixture.json's "time_averaged").

use serde::{Deserialize, Serialize};

use super::init::softmax;
use super::{restore_state, ExcessSpec, Mixer, MixerUpdate, SourceStats, StatsRequest};
use crate::validate::{at_least_one, positive, unit_open};

/// `[mixer.doremi]`: excess loss against a reference model, exponentiated-gradient update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoremiConfig {
    /// The reference model: a run directory (its newest checkpoint) or a checkpoint directory
    /// of a run with the same model, tokenizer and sources. Empty: train one first for
    /// `reference_steps` steps on the initial mixture. Default "".
    pub(crate) reference: String,
    /// Steps of reference training when `reference` is empty. Default 100.
    pub(crate) reference_steps: usize,
    /// Step size η of log α ← log α + η λ. Default 1.0.
    pub(crate) eta: f64,
    /// Smoothing c: α ← (1 − c) α + c / K. Default 1e-3.
    pub(crate) smoothing: f64,
    /// Random training sequences of each source behind λ_k at each update (with
    /// `excess_from = "samples"` or `"pool"`). Default 16.
    pub samples_per_source: usize,
    /// Where λ_k is measured: "pool" (default: the same `samples_per_source` sequences of each
    /// source at every update, drawn once; the reference model's losses on them are computed
    /// once, so an update costs one forward of the model only; README, "Target-directed
    /// mixing"), "samples" (`samples_per_source` fresh sequences of each source, two forward
    /// passes each) or "step" (the sequences of the training step before the update: one
    /// reference forward of that batch; a source absent from it gets λ = 0).
    pub excess_from: ExcessFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExcessFrom {
    Samples,
    Pool,
    Step,
}

impl Default for DoremiConfig {
    fn default() -> Self {
        DoremiConfig {
            reference: String::new(),
            reference_steps: 100,
            eta: 1.0,
            smoothing: 1e-3,
            samples_per_source: 16,
            excess_from: ExcessFrom::Pool,
        }
    }
}

impl DoremiConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.reference.is_empty() {
            at_least_one("mixer.doremi.reference_steps", self.reference_steps)?;
        }
        positive("mixer.doremi.eta", self.eta)?;
        unit_open("mixer.doremi.smoothing", self.smoothing)?;
        at_least_one("mixer.doremi.samples_per_source", self.samples_per_source)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    alpha: Vec<f64>,
}

pub struct DoReMi {
    config: DoremiConfig,
    state: State,
}

impl DoReMi {
    pub(crate) fn new(config: DoremiConfig, init: &[f64]) -> Self {
        DoReMi {
            config,
            state: State {
                alpha: init.to_vec(),
            },
        }
    }
}

impl Mixer for DoReMi {
    fn weights(&self) -> &[f64] {
        &self.state.alpha
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest {
            excess_loss: Some(match self.config.excess_from {
                ExcessFrom::Samples => ExcessSpec::Samples(self.config.samples_per_source),
                ExcessFrom::Pool => ExcessSpec::Pool(self.config.samples_per_source),
                ExcessFrom::Step => ExcessSpec::Step,
            }),
            ..StatsRequest::default()
        }
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let excess = stats.excess_loss.as_ref()?;
        let k = excess.len() as f64;
        let logits: Vec<f64> = self
            .state
            .alpha
            .iter()
            .zip(excess)
            .map(|(a, l)| a.max(1e-300).ln() + self.config.eta * l)
            .collect();
        let c = self.config.smoothing;
        self.state.alpha = softmax(&logits)
            .iter()
            .map(|a| (1.0 - c) * a + c / k)
            .collect();
        Some(MixerUpdate {
            weights: self.state.alpha.clone(),
            signal: Some(("excess_loss", excess.clone())),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.alpha.len();
        self.state = restore_state("doremi", state, k, |s: &State| s.alpha.len())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden numbers (tests/golden/mixers.py, `doremi_one_update`): α = (0.5, 0.3, 0.2), λ = (0.1, 0.4, 0), η = 1, c = 1e-3:
    /// softmax(ln α + λ) then (1 − c) α + c/3
    /// = (0.4603097977283569, 0.37287530237810873, 0.16681489989353437)
    #[test]
    fn one_update_matches_hand_computation() {
        let mut mixer = DoReMi::new(DoremiConfig::default(), &[0.5, 0.3, 0.2]);
        let stats = SourceStats {
            step: 0,
            lr: 1e-3,
            train_loss: vec![None; 3],
            grad_dot_val: None,
            influence: None,
            excess_loss: Some(vec![0.1, 0.4, 0.0]),
            candidate_delta: None,
            tokens_seen: Vec::new(),
            target_loss: None,
        };
        let w = mixer.update(&stats).unwrap().weights;
        let expected = crate::mixer::golden_weights("doremi_one_update");
        assert_eq!(w.len(), expected.len());
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
    }

    #[test]
    fn smoothing_keeps_every_source_alive() {
        let mut mixer = DoReMi::new(DoremiConfig::default(), &[0.25; 4]);
        for _ in 0..500 {
            let stats = SourceStats {
                step: 0,
                lr: 1e-3,
                train_loss: vec![None; 4],
                grad_dot_val: None,
                influence: None,
                excess_loss: Some(vec![5.0, 0.0, 0.0, 0.0]),
                candidate_delta: None,
                tokens_seen: Vec::new(),
                target_loss: None,
            };
            let w = mixer.update(&stats).unwrap().weights;
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(w.iter().all(|&x| x >= 1e-3 / 4.0 - 1e-15));
        }
    }
}
