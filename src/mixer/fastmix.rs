//! FastMix: the mixture is softmax(z); every update takes the one-step unrolled hypergradient
//! h_k = −η_t s_k (s_k = ⟨g_val, g_k⟩, optionally AdamW-preconditioned and EMA-smoothed),
//! ∇_z = p ⊙ (h − ⟨p, h⟩), and an Adam step on z (β = 0.9, 0.95).

use serde::{Deserialize, Serialize};

use super::config::{GradStats, ProbeSteps, Probing};

use super::init::{apply_floor, softmax};
use super::{restore_state, GradScope, Mixer, MixerUpdate, ProbeSpec, SourceStats, StatsRequest};
use crate::validate::{at_least_one, positive, unit_open};

/// `[mixer.fastmix]`: validation-gradient hypergradient on softmax logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastMixConfig {
    /// Adam learning rate of the mixture logits. Default 0.1.
    pub lr: f64,
    /// Parameters of ⟨g_val, g_k⟩: "all" or "head". Default "all".
    pub(crate) scope: GradScope,
    /// Use ⟨P g_val, g_k⟩ with AdamW's diagonal preconditioner P. Default true.
    pub(crate) precondition: bool,
    /// EMA factor of s_k across updates (0 = none). Default 0.5.
    pub(crate) ema: f64,
    /// Fresh validation batches behind g_val at each update. Default 2.
    pub(crate) val_batches: usize,
    /// Per-update standardisation of s before the EMA: "std" (s̃_k = (s_k − mean s) / std s
    /// over the sources measured) or "none". Default "std": the magnitude of ⟨P g_val, g_k⟩
    /// swings by 50x between updates (P and the gradient norms change fast early on), and one
    /// large early update then holds Adam's momentum for ~30 updates (README, "Target-directed
    /// mixing").
    pub normalise: SignalNorm,
    /// How a probed step measures ⟨g_val, g_k⟩: "per-source" (domain-homogeneous
    /// micro-batches) or "single-pass" (the step's own backward, any micro-batches). Default
    /// "per-source".
    pub grad_stats: GradStats,
    /// Which steps measure s_k = ⟨g_val, g_k⟩: "last" (the step before each update) or
    /// "window" (every step since the previous update, one g_val for the window). Default
    /// "last": s_k steers a gradient step, and the window did not help it (docs/results/
    /// mixing.md).
    pub probe_steps: ProbeSteps,
    /// Mixer updates one validation gradient g_val serves: computed for the first, reused by
    /// the next `gval_every − 1` (the preconditioner P is still taken fresh at every probed
    /// step). 1 recomputes it for every update. Default 5 (as good as 1 on the benchmark, at a
    /// fifth of the cost: docs/results/stale_gval.md).
    pub gval_every: usize,
}

/// fastmix's per-update normalisation of s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalNorm {
    Std,
    None,
}

impl Default for FastMixConfig {
    fn default() -> Self {
        FastMixConfig {
            lr: 0.1,
            scope: GradScope::All,
            precondition: true,
            ema: 0.5,
            val_batches: 2,
            normalise: SignalNorm::Std,
            grad_stats: GradStats::PerSource,
            probe_steps: ProbeSteps::Last,
            gval_every: 5,
        }
    }
}

impl FastMixConfig {
    /// The probing settings of this section.
    pub(crate) fn probing(&self) -> Probing {
        Probing {
            grad_stats: self.grad_stats,
            probe_steps: self.probe_steps,
            gval_every: self.gval_every,
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        positive("mixer.fastmix.lr", self.lr)?;
        unit_open("mixer.fastmix.ema", self.ema)?;
        at_least_one("mixer.fastmix.gval_every", self.gval_every)?;
        at_least_one("mixer.fastmix.val_batches", self.val_batches)
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    logits: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    updates: u32,
    /// EMA of s_k (None before the first measurement of k).
    signal_ema: Vec<Option<f64>>,
    weights: Vec<f64>,
}

pub struct FastMix {
    config: FastMixConfig,
    floor: f64,
    state: State,
}

impl FastMix {
    /// Starts from `init` (on the simplex): z = ln p.
    pub(crate) fn new(config: FastMixConfig, init: &[f64], floor: f64) -> Self {
        let k = init.len();
        let logits: Vec<f64> = init.iter().map(|p| p.max(1e-12).ln()).collect();
        let weights = apply_floor(&softmax(&logits), floor);
        FastMix {
            config,
            floor,
            state: State {
                logits,
                m: vec![0.0; k],
                v: vec![0.0; k],
                updates: 0,
                signal_ema: vec![None; k],
                weights,
            },
        }
    }
}

impl Mixer for FastMix {
    fn weights(&self) -> &[f64] {
        &self.state.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest {
            grad_probe: Some(ProbeSpec {
                scope: self.config.scope,
                precondition: self.config.precondition,
                val_batches: self.config.val_batches,
            }),
            ..StatsRequest::default()
        }
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let raw = stats.grad_dot_val.as_ref()?;
        let st = &mut self.state;
        let beta = self.config.ema;
        let normalised: Vec<Option<f64>> = match self.config.normalise {
            SignalNorm::None => raw.clone(),
            SignalNorm::Std => {
                let measured: Vec<f64> = raw.iter().flatten().copied().collect();
                let n = measured.len().max(1) as f64;
                let mean = measured.iter().sum::<f64>() / n;
                let std = (measured.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
                raw.iter()
                    .map(|s| s.map(|s| if std > 0.0 { (s - mean) / std } else { 0.0 }))
                    .collect()
            }
        };
        // Smoothed signal; a source absent from the probed step keeps its last value (or 0).
        for (ema, s) in st.signal_ema.iter_mut().zip(&normalised) {
            if let Some(s) = s {
                *ema = Some(match *ema {
                    Some(prev) => beta * prev + (1.0 - beta) * s,
                    None => *s,
                });
            }
        }
        let signal: Vec<f64> = st.signal_ema.iter().map(|s| s.unwrap_or(0.0)).collect();
        let p = softmax(&st.logits);
        let h: Vec<f64> = signal.iter().map(|s| -stats.lr * s).collect();
        let mean_h: f64 = p.iter().zip(&h).map(|(p, h)| p * h).sum();
        st.updates += 1;
        let t = st.updates as i32;
        for k in 0..p.len() {
            let grad = p[k] * (h[k] - mean_h);
            st.m[k] = BETA1 * st.m[k] + (1.0 - BETA1) * grad;
            st.v[k] = BETA2 * st.v[k] + (1.0 - BETA2) * grad * grad;
            let m_hat = st.m[k] / (1.0 - BETA1.powi(t));
            let v_hat = st.v[k] / (1.0 - BETA2.powi(t));
            st.logits[k] -= self.config.lr * m_hat / (v_hat.sqrt() + EPS);
        }
        st.weights = apply_floor(&softmax(&st.logits), self.floor);
        Some(MixerUpdate {
            weights: st.weights.clone(),
            signal: Some(("s", raw.iter().map(|s| s.unwrap_or(f64::NAN)).collect())),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.logits.len();
        self.state = restore_state("fastmix", state, k, |s: &State| s.logits.len())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(s: Vec<Option<f64>>, lr: f64) -> SourceStats {
        SourceStats {
            step: 0,
            lr,
            train_loss: vec![None; s.len()],
            grad_dot_val: Some(s),
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: Vec::new(),
            target_loss: None,
        }
    }

    /// Golden numbers (tests/golden/mixers.py, `fastmix_one_update`):
    ///   p = softmax(0,0,0); h = -0.01 * (2, 0, -1); g = p * (h - <p,h>)
    ///   = (-0.0055556, 0.0011111, 0.0044444); Adam step 1 (lr 0.1): z = -0.1 * g/(|g| + 1e-8)
    ///   = (0.0999998, -0.0999991, -0.0999998); w = 0.85 softmax(z) + 0.05
    ///   = (0.37227943656659945, 0.31386037076854345, 0.313860192664857)
    #[test]
    fn one_update_matches_hand_computation() {
        let config = FastMixConfig {
            lr: 0.1,
            ema: 0.0,
            normalise: SignalNorm::None,
            ..FastMixConfig::default()
        };
        let mut mixer = FastMix::new(config, &[1.0 / 3.0; 3], 0.05);
        let update = mixer
            .update(&stats(vec![Some(2.0), Some(0.0), Some(-1.0)], 0.01))
            .unwrap();
        let expected = crate::mixer::golden_weights("fastmix_one_update");
        assert_eq!(update.weights.len(), expected.len());
        for (w, e) in update.weights.iter().zip(expected) {
            assert!((w - e).abs() < 1e-9, "{:?}", update.weights);
        }
        assert_eq!(update.signal.unwrap().1, vec![2.0, 0.0, -1.0]);
    }

    /// With "std", an update's scale does not matter: one update 100x larger than the others
    /// moves the mixture exactly as if it were not (without it, it dominates Adam's momentum).
    #[test]
    fn standardised_signal_ignores_each_updates_scale() {
        let updates = [
            [3.0, 1.0, -2.0],
            [-1.0, 2.0, 0.5],
            [0.2, -0.4, 0.1],
            [1.0, 0.0, 2.0],
        ];
        let run = |normalise: SignalNorm, big: f64| {
            let config = FastMixConfig {
                normalise,
                ..FastMixConfig::default()
            };
            let mut mixer = FastMix::new(config, &[1.0 / 3.0; 3], 0.05);
            let mut w = Vec::new();
            for (i, s) in updates.iter().enumerate() {
                let scale = if i == 1 { big } else { 1.0 };
                let s = s.iter().map(|x| Some(x * scale)).collect();
                w = mixer.update(&stats(s, 0.01)).unwrap().weights;
            }
            w
        };
        let (a, b) = (run(SignalNorm::Std, 1.0), run(SignalNorm::Std, 100.0));
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12),
            "{a:?} {b:?}"
        );
        let (c, d) = (run(SignalNorm::None, 1.0), run(SignalNorm::None, 100.0));
        assert!(
            c.iter().zip(&d).any(|(x, y)| (x - y).abs() > 1e-3),
            "{c:?} {d:?}"
        );
    }

    #[test]
    fn weights_stay_on_the_simplex_above_the_floor_and_are_deterministic() {
        let run = || {
            let mut mixer = FastMix::new(FastMixConfig::default(), &[0.1, 0.2, 0.3, 0.4], 0.02);
            let mut all = Vec::new();
            for i in 0..200 {
                let s: Vec<Option<f64>> = (0..4)
                    .map(|k| (i % 7 != k).then(|| ((i * 31 + k * 17) % 13) as f64 - 4.0 + k as f64))
                    .collect();
                let w = mixer.update(&stats(s, 3e-3)).unwrap().weights;
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(w.iter().all(|&x| x >= 0.02 - 1e-12));
                all.push(w);
            }
            all
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn state_round_trips() {
        let mut a = FastMix::new(FastMixConfig::default(), &[0.5, 0.5], 0.1);
        a.update(&stats(vec![Some(1.0), None], 0.01));
        let mut b = FastMix::new(FastMixConfig::default(), &[0.5, 0.5], 0.1);
        b.restore(&a.state()).unwrap();
        let s = stats(vec![Some(-1.0), Some(2.0)], 0.01);
        assert_eq!(a.update(&s), b.update(&s));
    }
}
