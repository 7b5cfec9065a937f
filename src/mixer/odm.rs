//! Online Data Mixing (EXP3): rewards R_k ← a R_k + (1 − a) L̄_k / p_k (importance-weighted
//! mean training loss since the last update), exploration ε_t = min(1/K, sqrt(ln K / (K t))),
//! p = (1 − K ε_t) softmax(ε_{t−1} R) + ε_t. Needs no extra passes. Its own ε_t replaces
//! mixer.min_weight.

use serde::{Deserialize, Serialize};

use super::init::softmax;
use super::{restore_state, Mixer, MixerUpdate, SourceStats, StatsRequest};
use crate::validate::unit_open;

/// `[mixer.odm]`: EXP3 bandit on importance-weighted training loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OdmConfig {
    /// Reward smoothing a: R ← a R + (1 − a) L̄_k / p_k. Default 0.9.
    pub(crate) alpha: f64,
}

impl Default for OdmConfig {
    fn default() -> Self {
        OdmConfig { alpha: 0.9 }
    }
}

impl OdmConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        unit_open("mixer.odm.alpha", self.alpha)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    rewards: Vec<f64>,
    updates: u32,
    weights: Vec<f64>,
}

pub struct Odm {
    config: OdmConfig,
    state: State,
}

fn exploration(k: usize, t: u32) -> f64 {
    let k = k as f64;
    if t == 0 {
        return 1.0 / k;
    }
    (1.0 / k).min((k.ln() / (k * t as f64)).sqrt())
}

impl Odm {
    pub(crate) fn new(config: OdmConfig, init: &[f64]) -> Self {
        Odm {
            config,
            state: State {
                rewards: vec![0.0; init.len()],
                updates: 0,
                weights: init.to_vec(),
            },
        }
    }
}

impl Mixer for Odm {
    fn weights(&self) -> &[f64] {
        &self.state.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let st = &mut self.state;
        let a = self.config.alpha;
        for ((r, loss), p) in st
            .rewards
            .iter_mut()
            .zip(&stats.train_loss)
            .zip(&st.weights)
        {
            if let Some(loss) = loss {
                *r = a * *r + (1.0 - a) * loss / p;
            }
        }
        let k = st.rewards.len();
        let eps_prev = exploration(k, st.updates);
        st.updates += 1;
        let eps = exploration(k, st.updates);
        let scaled: Vec<f64> = st.rewards.iter().map(|r| eps_prev * r).collect();
        st.weights = softmax(&scaled)
            .iter()
            .map(|p| (1.0 - k as f64 * eps) * p + eps)
            .collect();
        Some(MixerUpdate {
            weights: st.weights.clone(),
            signal: Some(("reward", st.rewards.clone())),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.rewards.len();
        self.state = restore_state("odm", state, k, |s: &State| s.rewards.len())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden numbers (tests/golden/mixers.py, `odm_one_update`): K = 4, after 9 updates R = (1, 0, 0, 0), p = 0.25 each,
    /// L̄ = (2, 1, 1, 1), a = 0.9: R = (1.7, 0.4, 0.4, 0.4); ε_9 = sqrt(ln 4 / 36) = 0.19624,
    /// ε_10 = sqrt(ln 4 / 40) = 0.18616; p = (1 − 4 ε_10) softmax(ε_9 R) + ε_10
    /// = (0.26297046314188366, 0.24567651228603876, 0.24567651228603876, 0.24567651228603876)
    #[test]
    fn one_update_matches_hand_computation() {
        let mut mixer = Odm::new(OdmConfig { alpha: 0.9 }, &[0.25; 4]);
        mixer.state.rewards = vec![1.0, 0.0, 0.0, 0.0];
        mixer.state.updates = 9;
        let stats = SourceStats {
            step: 0,
            lr: 1e-3,
            train_loss: vec![Some(2.0), Some(1.0), Some(1.0), Some(1.0)],
            grad_dot_val: None,
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: Vec::new(),
            target_loss: None,
        };
        let update = mixer.update(&stats).unwrap();
        let expected = crate::mixer::golden_weights("odm_one_update");
        assert_eq!(update.weights.len(), expected.len());
        for (w, e) in update.weights.iter().zip(expected) {
            assert!((w - e).abs() < 1e-12, "{:?}", update.weights);
        }
    }

    #[test]
    fn first_updates_explore_uniformly() {
        // ε_t = 1/K until sqrt(ln K / (K t)) < 1/K: the weights stay uniform.
        let mut mixer = Odm::new(OdmConfig::default(), &[0.5, 0.5]);
        let stats = SourceStats {
            step: 0,
            lr: 1e-3,
            train_loss: vec![Some(3.0), Some(1.0)],
            grad_dot_val: None,
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: Vec::new(),
            target_loss: None,
        };
        assert_eq!(mixer.update(&stats).unwrap().weights, vec![0.5, 0.5]);
    }
}
