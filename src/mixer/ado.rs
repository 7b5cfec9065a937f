//! ADO, Adaptive Data Optimization (Jiang et al., arXiv 2410.11820): each source's training
//! loss follows a power law in the tokens trained on it, L_k(n) = ε_k + β_k n^(−α_k); the
//! source that is improving fastest per token gets more of the next tokens.
//!
//! Each update:
//! 1. appends (n_k, L̄_k) to source k's history (n_k: its training tokens so far, L̄_k: its
//!    mean training loss since the last update), keeping the newest `history` points;
//! 2. credit h_k ← γ₁ h_k + (1 − γ₁) p_k: how much of the recent training was source k;
//! 3. fits (ε_k, β_k, α_k) per source (`fit_power_law`) and takes its rate of improvement
//!    r_k = −dL̂_k/dn = α_k (L̂_k(n_k) − ε_k) / n_k;
//! 4. ρ_k ∝ μ_k h_k^s r_k (μ: the initial mixture, the prior), π̄ ← γ₂ π̄ + (1 − γ₂) ρ,
//!    p = floor(π̄).
//!
//! No update until every source has `min_points` points (the power law needs a history).
//! Needs nothing but the training losses: no extra passes. The counts are tokens drawn, so
//! ADO is meant for `apply = "sample"` or `"hybrid"`; with `reweight` every source is drawn
//! equally and the weights only scale its loss.

use serde::{Deserialize, Serialize};

use super::init::{apply_floor, normalise};
use super::{restore_state, Mixer, MixerUpdate, SourceStats, StatsRequest};
use crate::error::Error;
use crate::validate::{non_negative, unit_open};

/// `[mixer.ado]`: Adaptive Data Optimization (arXiv 2410.11820): a power law per source fitted
/// to its training-loss history, weight ∝ prior × credit × fitted rate of improvement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdoConfig {
    /// γ₁ of the credit h_k ← γ₁ h_k + (1 − γ₁) p_k (how much each source was trained on
    /// lately). Default 0.9.
    pub(crate) credit_smoothing: f64,
    /// Exponent s of the credit in ρ_k ∝ μ_k h_k^s r_k. Default 0.5.
    pub(crate) credit_power: f64,
    /// γ₂ of the mixture π̄ ← γ₂ π̄ + (1 − γ₂) ρ. Default 0.9.
    pub(crate) smoothing: f64,
    /// Loss points a source needs before its power law is fitted (no update before every
    /// source has them). Default 4.
    pub(crate) min_points: usize,
    /// Newest loss points kept per source for the fit. Default 64.
    pub(crate) history: usize,
}

impl Default for AdoConfig {
    fn default() -> Self {
        AdoConfig {
            credit_smoothing: 0.9,
            credit_power: 0.5,
            smoothing: 0.9,
            min_points: 4,
            history: 64,
        }
    }
}

impl AdoConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        unit_open("mixer.ado.credit_smoothing", self.credit_smoothing)?;
        unit_open("mixer.ado.smoothing", self.smoothing)?;
        non_negative("mixer.ado.credit_power", self.credit_power)?;
        if self.min_points < 2 {
            return Err(Error::value(
                "mixer.ado.min_points",
                format!("must be at least 2 (got {})", self.min_points),
            ));
        }
        if self.history < self.min_points {
            return Err(Error::value(
                "mixer.ado.history",
                format!(
                    "must be >= mixer.ado.min_points = {} (got {})",
                    self.min_points, self.history
                ),
            ));
        }
        Ok(())
    }
}

/// Values of ε tried by the fit, as fractions of the smallest loss seen.
const EPS_GRID: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// Per source: (tokens trained on, mean training loss) at each update, oldest first.
    history: Vec<Vec<(f64, f64)>>,
    credit: Vec<f64>,
    smoothed: Vec<f64>,
    weights: Vec<f64>,
}

pub struct Ado {
    config: AdoConfig,
    prior: Vec<f64>,
    floor: f64,
    state: State,
}

/// A fitted L(n) = ε + β n^(−α).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PowerLaw {
    pub(crate) eps: f64,
    pub(crate) beta: f64,
    pub(crate) alpha: f64,
}

impl PowerLaw {
    pub(crate) fn at(&self, n: f64) -> f64 {
        self.eps + self.beta * n.powf(-self.alpha)
    }

    /// −dL/dn at n.
    pub(crate) fn rate(&self, n: f64) -> f64 {
        self.alpha * (self.at(n) - self.eps) / n
    }
}

/// Least-squares power law through `points` (n > 0, L > 0): for each ε on a grid over
/// [0, min L) (ε_j = min L · j / 32), a straight line through (ln n, ln(L − ε)) gives
/// α = −slope (at least 0) and β = e^intercept; the ε with the smallest Σ (L − L̂(n))² wins
/// (the first on ties). None with fewer than two distinct n.
pub(crate) fn fit_power_law(points: &[(f64, f64)]) -> Option<PowerLaw> {
    let count = points.len() as f64;
    let x: Vec<f64> = points.iter().map(|(n, _)| n.ln()).collect();
    let x_mean = x.iter().sum::<f64>() / count;
    let sxx: f64 = x.iter().map(|v| (v - x_mean).powi(2)).sum();
    if points.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let min_loss = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let mut best: Option<(f64, PowerLaw)> = None;
    for j in 0..EPS_GRID {
        let eps = min_loss * j as f64 / EPS_GRID as f64;
        let y: Vec<f64> = points.iter().map(|(_, l)| (l - eps).ln()).collect();
        let y_mean = y.iter().sum::<f64>() / count;
        let sxy: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - x_mean) * (b - y_mean))
            .sum();
        let slope = sxy / sxx;
        let alpha = (-slope).max(0.0);
        // With α clamped to 0 the best constant is the mean of L − ε.
        let beta = if slope > 0.0 {
            points.iter().map(|(_, l)| l - eps).sum::<f64>() / count
        } else {
            (y_mean - slope * x_mean).exp()
        };
        let law = PowerLaw { eps, beta, alpha };
        let sse: f64 = points.iter().map(|&(n, l)| (l - law.at(n)).powi(2)).sum();
        if best.is_none_or(|(b, _)| sse < b) {
            best = Some((sse, law));
        }
    }
    best.map(|(_, law)| law)
}

impl Ado {
    /// Starts from `init`, which is also the prior μ.
    pub(crate) fn new(config: AdoConfig, init: &[f64], floor: f64) -> Self {
        let k = init.len();
        Ado {
            config,
            prior: init.to_vec(),
            floor,
            state: State {
                history: vec![Vec::new(); k],
                credit: init.to_vec(),
                smoothed: init.to_vec(),
                weights: init.to_vec(),
            },
        }
    }
}

impl Mixer for Ado {
    fn weights(&self) -> &[f64] {
        &self.state.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let st = &mut self.state;
        let c = &self.config;
        for (k, loss) in stats.train_loss.iter().enumerate() {
            let n = stats.tokens_seen.get(k).copied().unwrap_or(0) as f64;
            if let (Some(loss), true) = (loss, n > 0.0) {
                let history = &mut st.history[k];
                history.push((n, *loss));
                if history.len() > c.history {
                    history.remove(0);
                }
            }
        }
        for (h, p) in st.credit.iter_mut().zip(&st.weights) {
            *h = c.credit_smoothing * *h + (1.0 - c.credit_smoothing) * p;
        }
        if st.history.iter().any(|h| h.len() < c.min_points) {
            return None;
        }
        let rates: Vec<f64> = st
            .history
            .iter()
            .map(|h| {
                let n = h.last().expect("min_points >= 2").0;
                fit_power_law(h).map_or(0.0, |law| law.rate(n))
            })
            .collect();
        let preference: Vec<f64> = self
            .prior
            .iter()
            .zip(&st.credit)
            .zip(&rates)
            .map(|((mu, h), r)| mu * h.powf(c.credit_power) * r)
            .collect();
        let total: f64 = preference.iter().sum();
        if total.is_nan() || total <= 0.0 {
            // Every fitted rate is zero (losses flat or rising): keep the mixture.
            return None;
        }
        let rho = normalise(&preference);
        for (s, r) in st.smoothed.iter_mut().zip(&rho) {
            *s = c.smoothing * *s + (1.0 - c.smoothing) * r;
        }
        st.weights = apply_floor(&normalise(&st.smoothed), self.floor);
        Some(MixerUpdate {
            weights: st.weights.clone(),
            signal: Some(("rate", rates)),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.weights.len();
        self.state = restore_state("ado", state, k, |s: &State| s.weights.len())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn stats(losses: &[f64], tokens: &[u64]) -> SourceStats {
        SourceStats {
            step: 0,
            lr: 1e-3,
            train_loss: losses.iter().map(|&l| Some(l)).collect(),
            grad_dot_val: None,
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: tokens.to_vec(),
            target_loss: None,
        }
    }

    #[test]
    fn fit_recovers_an_exact_power_law() {
        let truth = PowerLaw {
            eps: 1.5,
            beta: 40.0,
            alpha: 0.5,
        };
        let points: Vec<(f64, f64)> = (1..=12)
            .map(|i| {
                let n = 1000.0 * i as f64;
                (n, truth.at(n))
            })
            .collect();
        let law = fit_power_law(&points).unwrap();
        // ε = 1.5 is on the grid only approximately (min L · j / 32); the fitted curve and its
        // slope must still match closely.
        for &(n, l) in &points {
            assert!((law.at(n) - l).abs() < 1e-2, "{law:?} at {n}");
        }
        let n = 12_000.0;
        assert!(
            (law.rate(n) - truth.rate(n)).abs() / truth.rate(n) < 0.05,
            "{} vs {}",
            law.rate(n),
            truth.rate(n)
        );
        assert!(fit_power_law(&[(5.0, 2.0), (5.0, 1.0)]).is_none());
    }

    /// Golden numbers from tests/golden/ado.py (the same update in plain Python), held in
    /// tests/golden/mixers.json as `ado_after_six_updates`.
    #[test]
    fn updates_match_the_python_reference() {
        let mut mixer = Ado::new(AdoConfig::default(), &[0.25, 0.25, 0.25, 0.25], 0.05);
        // Source 0 keeps improving fast, 1 slowly, 2 is flat, 3 in between.
        let curves = |t: f64| -> [f64; 4] {
            [
                2.0 + 30.0 * t.powf(-0.6),
                2.5 + 5.0 * t.powf(-0.3),
                3.0,
                1.0 + 10.0 * t.powf(-0.4),
            ]
        };
        let mut tokens = [0u64; 4];
        let mut last = None;
        for update in 1..=6 {
            for (k, n) in tokens.iter_mut().enumerate() {
                *n += 1000 * (k as u64 + 1);
            }
            let losses = curves(update as f64 * 1000.0);
            let result = mixer.update(&stats(&losses, &tokens));
            assert_eq!(result.is_some(), update >= 4, "update {update}");
            last = result.map(|u| u.weights);
        }
        let expected = crate::mixer::golden_weights("ado_after_six_updates");
        let weights = last.unwrap();
        assert_eq!(weights.len(), expected.len());
        for (w, e) in weights.iter().zip(expected) {
            assert!((w - e).abs() < 1e-12, "{weights:?}");
        }
    }

    #[test]
    fn weights_stay_on_the_simplex_above_the_floor() {
        let mut rng = Rng::new(3, 0);
        for _ in 0..50 {
            let k = 2 + rng.below(6) as usize;
            let floor = 0.2 / k as f64;
            let mut mixer = Ado::new(AdoConfig::default(), &vec![1.0 / k as f64; k], floor);
            let mut tokens = vec![0u64; k];
            for _ in 0..20 {
                let losses: Vec<f64> = (0..k).map(|_| 0.5 + 4.0 * rng.next_f64()).collect();
                for n in tokens.iter_mut() {
                    *n += 1 + rng.below(5000);
                }
                if let Some(update) = mixer.update(&stats(&losses, &tokens)) {
                    let w = update.weights;
                    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
                    assert!(w.iter().all(|&x| x >= floor - 1e-12), "{w:?}");
                }
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let mut a = Ado::new(AdoConfig::default(), &[0.5, 0.5], 0.1);
        for t in 1..=5u64 {
            a.update(&stats(&[3.0 / t as f64, 2.0], &[t * 100, t * 100]));
        }
        let mut b = Ado::new(AdoConfig::default(), &[0.5, 0.5], 0.1);
        b.restore(&a.state()).unwrap();
        let next = stats(&[0.5, 1.9], &[600, 600]);
        assert_eq!(a.update(&next), b.update(&next));
    }
}
