//! The guard of the target-directed mixers (`[mixer.guard] kind = "trust-region"`, for
//! fastmix, tikmix and tikmix-m; off by default: on the nine-source benchmark it changed
//! fastmix at its defaults by less than the seed spread, and did not stop fastmix with
//! `lr = 1` from losing where the target has no neighbour, docs/results/mixing.md): a trust
//! region around the initial mixture whose radius follows what the target loss does.
//!
//! The applied mixture is the inner mixer's proposal q pulled toward the initial mixture a
//! until it lies within total variation r of it: p = a + min(1, r / TV(a, q)) (q − a). At every
//! update the trainer measures the target loss L on a fixed subset of the target's validation
//! windows (`windows`), and the guard runs the ratio test of trust-region methods on it:
//!
//! - measured decrease D = L_prev − L over the window of steps just trained with p_prev;
//! - predicted decrease T = the trend of D (an EMA of the measured decreases before it): what
//!   the loss curve was doing;
//! - ρ = D / T. ρ < −`SHRINK_BELOW` (the target got worse by more than a quarter of a typical
//!   window's progress): the radius halves and the mixture rolls back to the last mixture whose
//!   window passed, pulled within the new radius; ρ ≥ `GROW_ABOVE` with the bound active: the
//!   window is trusted; otherwise the radius stays.
//!
//! The guard remembers its rollbacks: after n of them the radius doubles only after 2ⁿ trusted
//! windows in a row. The window right after a rollback measures the rollback's own recovery,
//! so it neither counts as trusted nor enters the trend, and windows that failed never enter
//! the trend (it predicts what a trusted mixture does). Without that memory, on the nine-source
//! corpus the next window after each rollback doubled the radius again and the mixture spent
//! most windows on one source where the target had no neighbour (docs/results/mixing.md).
//!
//! Why not the hypergradient's own first-order prediction ⟨Δp, ∂L/∂p⟩: from one probed step it
//! is dominated by noise (on the nine-source corpus its ratio to the measured decrease ranged
//! from −2.4 to +0.8 between consecutive updates of one run, with sign flips while the loss fell
//! steadily: docs/results/mixing.md, "The guard"). The trend of the measured loss is the
//! prediction that held.
//!
//! The applied mixture is a convex combination of a, of q and of earlier applied mixtures, all
//! on the simplex and above the floor, so it stays there.

use serde::{Deserialize, Serialize};

use super::trust_region::{bounded_step, total_variation};
use super::{Mixer, MixerUpdate, SourceStats, StatsRequest};
use crate::validate::{at_least_one, unit_closed_above};

/// ρ below −this: the target got worse beyond its noise; shrink and roll back.
const SHRINK_BELOW: f64 = 0.25;
/// ρ at or above this, with the bound active: grow. Below the classical 0.75 because the
/// trend over-predicts while the loss curve decelerates (early on each window's decrease is
/// about half the last): at 0.5 the radius stayed at 0.1 for the first 60 steps on the
/// nine-source corpus while the target fell steadily.
const GROW_ABOVE: f64 = 0.25;
/// EMA factor of the trend T of measured decreases.
const TREND_EMA: f64 = 0.5;

/// `[mixer.guard]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// "trust-region" or "off" (the mixer's proposal is applied as it is). Default "off".
    /// Used by fastmix, tikmix and tikmix-m.
    pub kind: GuardKind,
    /// Initial radius r: total variation ½ Σ |p_k − a_k| from the initial mixture a.
    /// Default 0.1.
    pub radius: f64,
    /// The radius never shrinks below this. Default 0.025.
    pub min_radius: f64,
    /// The radius never grows above this. Default 1 (no bound once trusted).
    pub max_radius: f64,
    /// Fixed validation windows of the target measured at each update (split evenly over the
    /// target's members, at least one each): a forward pass only. Default 16 (one batch of
    /// the quickstart).
    pub windows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardKind {
    TrustRegion,
    Off,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            kind: GuardKind::Off,
            radius: 0.1,
            min_radius: 0.025,
            max_radius: 1.0,
            windows: 16,
        }
    }
}

impl GuardConfig {
    pub(crate) fn is_default(&self) -> bool {
        *self == GuardConfig::default()
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        unit_closed_above("mixer.guard.radius", self.radius)?;
        unit_closed_above("mixer.guard.min_radius", self.min_radius)?;
        unit_closed_above("mixer.guard.max_radius", self.max_radius)?;
        at_least_one("mixer.guard.windows", self.windows)?;
        if !(self.min_radius <= self.radius && self.radius <= self.max_radius) {
            return Err(crate::Error::value(
                "mixer.guard.radius",
                format!(
                    "must lie in [min_radius, max_radius] = [{}, {}] (got {})",
                    self.min_radius, self.max_radius, self.radius
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) struct Guard {
    inner: Box<dyn Mixer>,
    config: GuardConfig,
    /// The initial mixture a (the inner mixer's, above its floor).
    anchor: Vec<f64>,
    state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    applied: Vec<f64>,
    radius: f64,
    /// The target loss measured at the last update.
    last_loss: Option<f64>,
    /// T: EMA of measured decreases (None before two measurements).
    trend: Option<f64>,
    /// The applied mixture of the last window that passed the test.
    last_good: Vec<f64>,
    rollbacks: u32,
    /// Trusted windows in a row since the last change of the radius.
    #[serde(default)]
    streak: u32,
    /// The last update rolled back: the window now being trained measures the recovery.
    #[serde(default)]
    recovering: bool,
}

/// A checkpoint's guard state: the inner mixer's beside the guard's own.
#[derive(Serialize, Deserialize)]
struct Saved {
    inner: serde_json::Value,
    #[serde(flatten)]
    guard: State,
}

/// What one update of the guard did (the `guard` object of the mixer in metrics.jsonl).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardLog {
    /// The target loss on the guard's fixed windows.
    pub target_loss: f64,
    /// Measured decrease since the last update (None at the first).
    pub measured: Option<f64>,
    /// Predicted decrease: the trend before this update.
    pub predicted: Option<f64>,
    pub ratio: Option<f64>,
    /// The radius after this update's test.
    pub radius: f64,
    /// TV distance of the applied mixture from the initial one.
    pub distance: f64,
    pub rolled_back: bool,
    pub rollbacks: u32,
}

/// The test's verdict on one measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Worse,
    Kept,
    Trusted,
}

/// ρ = measured / predicted and its verdict; a trend that is not a decrease makes any rise
/// worse and any fall trusted.
fn ratio_test(measured: f64, predicted: f64) -> (f64, Verdict) {
    let ratio = if predicted > 0.0 {
        measured / predicted
    } else {
        measured.signum() * f64::INFINITY
    };
    let verdict = if ratio < -SHRINK_BELOW {
        Verdict::Worse
    } else if ratio >= GROW_ABOVE {
        Verdict::Trusted
    } else {
        Verdict::Kept
    };
    (ratio, verdict)
}

impl Guard {
    pub(crate) fn new(inner: Box<dyn Mixer>, config: GuardConfig) -> Self {
        let anchor = inner.weights().to_vec();
        let state = State {
            applied: anchor.clone(),
            radius: config.radius,
            last_loss: None,
            trend: None,
            last_good: anchor.clone(),
            rollbacks: 0,
            streak: 0,
            recovering: false,
        };
        Guard {
            inner,
            config,
            anchor,
            state,
        }
    }

    /// Runs the test on the window just measured (target loss `loss`): (measured decrease,
    /// ρ, rolled back).
    fn test(&mut self, loss: f64, bound_active: bool) -> (Option<f64>, Option<f64>, bool) {
        let patience = self.patience();
        let st = &mut self.state;
        let recovering = std::mem::replace(&mut st.recovering, false);
        let Some(last) = st.last_loss.replace(loss) else {
            return (None, None, false);
        };
        let measured = last - loss;
        let Some(predicted) = st.trend else {
            st.trend = Some(measured);
            st.last_good = st.applied.clone();
            return (Some(measured), None, false);
        };
        let (ratio, verdict) = ratio_test(measured, predicted);
        if verdict == Verdict::Worse {
            st.radius = (st.radius * 0.5).max(self.config.min_radius);
            st.rollbacks += 1;
            st.streak = 0;
            st.recovering = true;
            return (Some(measured), Some(ratio), true);
        }
        st.last_good = st.applied.clone();
        if recovering {
            return (Some(measured), Some(ratio), false);
        }
        st.trend = Some(TREND_EMA * predicted + (1.0 - TREND_EMA) * measured);
        match verdict {
            Verdict::Trusted if bound_active => {
                st.streak += 1;
                if st.streak >= patience {
                    st.radius = (st.radius * 2.0).min(self.config.max_radius);
                    st.streak = 0;
                }
            }
            Verdict::Trusted => {}
            _ => st.streak = 0,
        }
        (Some(measured), Some(ratio), false)
    }

    /// Trusted windows in a row needed to double the radius: 2ⁿ after n rollbacks.
    fn patience(&self) -> u32 {
        1u32 << self.state.rollbacks.min(16)
    }
}

impl Mixer for Guard {
    fn weights(&self) -> &[f64] {
        &self.state.applied
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest {
            target_check: Some(self.config.windows),
            ..self.inner.needs()
        }
    }

    fn candidates(&mut self) -> Vec<Vec<f64>> {
        self.inner.candidates()
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let proposal = self.inner.update(stats);
        let loss = stats.target_loss?;
        // Was the bound holding the last applied mixture back from where the mixer wanted it?
        let bound_active =
            total_variation(&self.anchor, &self.state.applied) >= self.state.radius * (1.0 - 1e-9);
        let predicted = self.state.trend;
        let (measured, ratio, rolled_back) = self.test(loss, bound_active);
        let st = &mut self.state;
        st.applied = if rolled_back {
            bounded_step(&self.anchor, &st.last_good, st.radius)
        } else {
            let wanted = proposal.as_ref().map_or(&st.applied, |p| &p.weights);
            bounded_step(&self.anchor, wanted, st.radius)
        };
        let log = GuardLog {
            target_loss: loss,
            measured,
            predicted: ratio.and(predicted),
            ratio,
            radius: st.radius,
            distance: total_variation(&self.anchor, &st.applied),
            rolled_back,
            rollbacks: st.rollbacks,
        };
        Some(MixerUpdate {
            weights: st.applied.clone(),
            signal: proposal.and_then(|p| p.signal),
            guard: Some(log),
        })
    }

    fn state(&self) -> serde_json::Value {
        let saved = Saved {
            inner: self.inner.state(),
            guard: self.state.clone(),
        };
        serde_json::to_value(saved).expect("guard state serialises")
    }

    fn restore(&mut self, value: &serde_json::Value) -> Result<(), String> {
        let Saved {
            inner,
            guard: state,
        } = serde_json::from_value(value.clone()).map_err(|e| {
            format!(
                "mixer state: {e} (a checkpoint of a run without the guard cannot continue \
                 with mixer.guard.kind = \"trust-region\", nor the other way round)"
            )
        })?;
        if state.applied.len() != self.anchor.len() || state.last_good.len() != self.anchor.len() {
            return Err(format!(
                "guard state holds {} sources, the run has {}",
                state.applied.len(),
                self.anchor.len()
            ));
        }
        self.inner.restore(&inner)?;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixer::StaticMixer;

    /// An inner mixer that proposes whatever it is told (a stand-in for fastmix).
    struct Scripted {
        weights: Vec<f64>,
        next: Vec<f64>,
    }

    impl Mixer for Scripted {
        fn weights(&self) -> &[f64] {
            &self.weights
        }
        fn needs(&self) -> StatsRequest {
            StatsRequest::default()
        }
        fn update(&mut self, _: &SourceStats) -> Option<MixerUpdate> {
            self.weights = self.next.clone();
            Some(MixerUpdate {
                weights: self.weights.clone(),
                signal: None,
                guard: None,
            })
        }
        fn state(&self) -> serde_json::Value {
            serde_json::json!(self.weights)
        }
        fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
            self.weights = serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    fn stats(loss: f64) -> SourceStats {
        SourceStats {
            step: 10,
            lr: 1e-3,
            train_loss: vec![None; 2],
            grad_dot_val: None,
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: vec![0; 2],
            target_loss: Some(loss),
        }
    }

    fn guard(config: GuardConfig) -> Guard {
        let config = GuardConfig {
            kind: GuardKind::TrustRegion,
            ..config
        };
        let inner = Scripted {
            weights: vec![0.5, 0.5],
            next: vec![0.95, 0.05],
        };
        Guard::new(Box::new(inner), config)
    }

    /// While the target keeps falling at its pace the radius doubles per update until the
    /// proposal fits; a rise beyond a quarter of the trend halves it and rolls back to the
    /// last mixture whose window passed.
    #[test]
    fn radius_grows_on_progress_and_a_worse_target_rolls_back() {
        let mut g = guard(GuardConfig::default());
        let tv = |g: &Guard| total_variation(&g.anchor, g.weights());
        g.update(&stats(3.0)).unwrap();
        assert!((tv(&g) - 0.1).abs() < 1e-12, "first update: within r0");
        g.update(&stats(2.9)).unwrap(); // the first decrease sets the trend
        assert!((tv(&g) - 0.1).abs() < 1e-12);
        let log = g.update(&stats(2.8)).unwrap().guard.unwrap(); // ρ = 1: grow
        assert_eq!((log.radius, log.rolled_back), (0.2, false));
        assert!((tv(&g) - 0.2).abs() < 1e-12);
        g.update(&stats(2.7)).unwrap();
        assert!((tv(&g) - 0.4).abs() < 1e-12);
        g.update(&stats(2.6)).unwrap(); // radius 0.8: the proposal itself (TV 0.45)
        assert!((tv(&g) - 0.45).abs() < 1e-12);
        let good = g.weights().to_vec();
        g.update(&stats(2.5)).unwrap(); // the bound was not active: the radius stays
        assert_eq!(g.state.radius, 0.8);
        let log = g.update(&stats(2.6)).unwrap().guard.unwrap(); // rose by the whole trend
        assert!(log.rolled_back && log.ratio.unwrap() < -SHRINK_BELOW);
        assert_eq!((log.radius, log.rollbacks), (0.4, 1));
        assert_eq!(g.weights(), &bounded_step(&g.anchor, &good, 0.4)[..]);
        assert!(
            (tv(&g) - 0.4).abs() < 1e-12,
            "the last good mixture, within the new radius"
        );
    }

    /// After a rollback the guard remembers: the recovery window neither grows the radius nor
    /// enters the trend, and the radius doubles only after 2ⁿ trusted windows in a row.
    #[test]
    fn after_a_rollback_growth_needs_a_longer_streak() {
        let mut g = guard(GuardConfig::default());
        for loss in [3.0, 2.9, 2.8] {
            g.update(&stats(loss)); // the third grows the radius to 0.2
        }
        let log = g.update(&stats(2.9)).unwrap().guard.unwrap();
        assert!(log.rolled_back);
        let trend = |g: &Guard| g.state.trend.unwrap();
        assert_eq!(log.radius, 0.1);
        assert!(
            (trend(&g) - 0.1).abs() < 1e-12,
            "a failed window is not trend"
        );
        let log = g.update(&stats(2.6)).unwrap().guard.unwrap(); // the recovery: ρ = 3
        assert_eq!((log.radius, g.state.streak), (0.1, 0));
        assert!((trend(&g) - 0.1).abs() < 1e-12, "nor is the recovery");
        let log = g.update(&stats(2.5)).unwrap().guard.unwrap();
        assert_eq!(
            (log.radius, g.state.streak),
            (0.1, 1),
            "one of two trusted windows"
        );
        let log = g.update(&stats(2.4)).unwrap().guard.unwrap();
        assert_eq!((log.radius, g.state.streak), (0.2, 0));
        g.update(&stats(2.5)).unwrap(); // a second rollback: now four in a row are needed
        g.update(&stats(2.3)).unwrap();
        for loss in [2.2, 2.1, 2.0] {
            let log = g.update(&stats(loss)).unwrap().guard.unwrap();
            assert_eq!(log.radius, 0.1);
        }
        assert_eq!(g.update(&stats(1.9)).unwrap().guard.unwrap().radius, 0.2);
    }

    /// Repeated rises shrink the radius to its floor, never below, and the mixture stays
    /// within it, on the simplex.
    #[test]
    fn the_radius_never_leaves_its_bounds() {
        let mut g = guard(GuardConfig::default());
        let mut loss = 3.0;
        for i in 0..40 {
            loss += if i % 2 == 0 { -0.1 } else { 0.08 };
            let log = g.update(&stats(loss)).unwrap().guard.unwrap();
            assert!(log.radius >= 0.025 - 1e-15 && log.radius <= 1.0);
            assert!(log.distance <= log.radius + 1e-12);
            assert!((g.weights().iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(g.state.rollbacks > 5);
    }

    /// The state round-trips, inner mixer included; a checkpoint without the guard's fields
    /// is refused with the key that resumes it.
    #[test]
    fn state_round_trips_and_an_unguarded_checkpoint_is_named() {
        let mut g = guard(GuardConfig::default());
        for loss in [3.0, 2.9, 2.85] {
            g.update(&stats(loss));
        }
        let saved = g.state();
        let mut h = guard(GuardConfig::default());
        h.restore(&saved).unwrap();
        assert_eq!(h.state, g.state);
        assert_eq!(h.inner.weights(), g.inner.weights());
        let old = StaticMixer::new(vec![0.5, 0.5]).state();
        let err = h.restore(&old).unwrap_err();
        assert!(err.contains("mixer.guard.kind"), "{err}");
    }
}
