//! A bounded step per update for any online mixer (`mixer.max_change`): the inner mixer
//! proposes q; the applied mixture moves from p toward q by at most δ in total variation,
//! p ← p + min(1, δ / TV(p, q)) (q − p), TV(p, q) = ½ Σ_k |q_k − p_k|.
//!
//! Why: one update's signal (a single probed step's ⟨g_val, g_k⟩, a short loss history) is
//! noisy, and a mixer that jumps on it can leave the mixture far from any good one for many
//! steps. The step is a convex combination of two points of the simplex that are both above
//! the floor, so the applied mixture stays on the simplex and above the floor.

use serde::{Deserialize, Serialize};

use super::{Mixer, MixerUpdate, SourceStats, StatsRequest};

pub(crate) struct TrustRegion {
    inner: Box<dyn Mixer>,
    max_change: f64,
    applied: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct State {
    inner: serde_json::Value,
    applied: Vec<f64>,
}

impl TrustRegion {
    pub(crate) fn new(inner: Box<dyn Mixer>, max_change: f64) -> Self {
        let applied = inner.weights().to_vec();
        TrustRegion {
            inner,
            max_change,
            applied,
        }
    }
}

/// ½ Σ |p_k − q_k|.
pub(crate) fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (b - a).abs()).sum::<f64>()
}

/// p moved toward q by at most `max_change` in total variation.
pub(crate) fn bounded_step(p: &[f64], q: &[f64], max_change: f64) -> Vec<f64> {
    let tv = total_variation(p, q);
    let t = if tv > max_change {
        max_change / tv
    } else {
        1.0
    };
    p.iter().zip(q).map(|(a, b)| a + t * (b - a)).collect()
}

impl Mixer for TrustRegion {
    fn weights(&self) -> &[f64] {
        &self.applied
    }

    fn needs(&self) -> StatsRequest {
        self.inner.needs()
    }

    fn candidates(&mut self) -> Vec<Vec<f64>> {
        self.inner.candidates()
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let proposal = self.inner.update(stats)?;
        self.applied = bounded_step(&self.applied, &proposal.weights, self.max_change);
        Some(MixerUpdate {
            weights: self.applied.clone(),
            signal: proposal.signal,
            guard: proposal.guard,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(State {
            inner: self.inner.state(),
            applied: self.applied.clone(),
        })
        .expect("trust region state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let state: State = serde_json::from_value(state.clone())
            .map_err(|e| format!("mixer state (with mixer.max_change): {e}"))?;
        if state.applied.len() != self.applied.len() {
            return Err(format!(
                "mixer state holds {} sources, the run has {}",
                state.applied.len(),
                self.applied.len()
            ));
        }
        self.inner.restore(&state.inner)?;
        self.applied = state.applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn step_is_bounded_and_stays_on_the_simplex_above_the_floor() {
        let mut rng = Rng::new(7, 0);
        let floor = 0.02;
        for _ in 0..500 {
            let k = 2 + rng.below(8) as usize;
            let draw = |rng: &mut Rng| -> Vec<f64> {
                let raw = rng.dirichlet(&vec![0.3; k]);
                super::super::apply_floor(&raw, floor)
            };
            let p = draw(&mut rng);
            let q = draw(&mut rng);
            let delta = 0.01 + 0.3 * rng.next_f64();
            let next = bounded_step(&p, &q, delta);
            let tv = 0.5 * p.iter().zip(&next).map(|(a, b)| (b - a).abs()).sum::<f64>();
            assert!(tv <= delta + 1e-12, "moved {tv} > {delta}");
            assert!((next.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(next.iter().all(|&w| w >= floor - 1e-12));
            // A proposal within the region is taken exactly.
            let near = bounded_step(&p, &next, delta);
            assert!(near.iter().zip(&next).all(|(a, b)| (a - b).abs() < 1e-15));
        }
    }
}
