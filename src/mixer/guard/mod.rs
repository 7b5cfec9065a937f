//! The guard of the target-directed mixers (`[mixer.guard] kind = "trust-region"`, for
//! fastmix, tikmix and tikmix-m; off by default: on the nine-source benchmark it changed
//! fastmix at its defaults by less than the seed spread, and with `lr = 1` it kept the large
//! step's gains where the target has a neighbour but still lost to uniform on two targets
//! without one, docs/results/mixing.md): a trust region around the initial mixture whose
//! radius follows what the target loss does.
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
//! windows in a row, and never above `max_radius` / 2ⁿ. The window right after a rollback measures the rollback's own recovery,
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
use crate::validate::{at_least_one, non_negative, positive, unit_closed_above};

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
    /// The radius never shrinks below this; with `kind = "evidence"`, the radius while there
    /// is no evidence. Default 0.025.
    pub min_radius: f64,
    /// The radius never grows above this. Default 1 (no bound once trusted).
    pub max_radius: f64,
    /// Fixed validation windows of the target measured at each update (split evenly over the
    /// target's members, at least one each): a forward pass only. Default 16 (one batch of
    /// the quickstart). Trust-region only.
    pub windows: usize,
    /// `kind = "evidence"`: the t statistic of the most consistent source at which the radius
    /// starts opening from `min_radius`; it reaches `max_radius` at twice this (evidence.rs).
    /// Default 2.5: about the 90th percentile of the largest |t| of 8 sources with no real
    /// difference.
    pub evidence: f64,
    /// `kind = "evidence"`: a source's t counts only while its effect |t_k| / √n_k (mean
    /// standardised signal in units of σ) is at least this; 0: every t counts. Default 0.
    pub effect: f64,
    /// `kind = "evidence"`: the radius never closes below the largest opening reached.
    /// Default false.
    pub hold: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardKind {
    TrustRegion,
    Evidence,
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
            evidence: 2.5,
            effect: 0.0,
            hold: false,
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
        positive("mixer.guard.evidence", self.evidence)?;
        non_negative("mixer.guard.effect", self.effect)?;
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

/// A checkpoint's guard state (either guard's, `S`): the inner mixer's beside the guard's own.
#[derive(Serialize, Deserialize)]
struct Saved<S> {
    inner: serde_json::Value,
    #[serde(flatten)]
    guard: S,
}

/// What the guard did at one update: the `guard` object of the mixer in metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GuardReport {
    TrustRegion(GuardLog),
    Evidence(EvidenceLog),
}

/// What one update of the trust-region guard did.
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
        let (patience, ceiling) = (self.patience(), self.ceiling());
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
                    st.radius = (st.radius * 2.0).min(ceiling);
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

    /// The largest radius growth may reach: `max_radius` / 2ⁿ after n rollbacks, not below
    /// `min_radius`.
    fn ceiling(&self) -> f64 {
        let halved = self.config.max_radius / f64::from(self.patience());
        halved.max(self.config.min_radius)
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
            guard: Some(GuardReport::TrustRegion(log)),
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
        let Saved::<State> {
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

mod evidence;
pub(crate) use evidence::EvidenceGuard;
pub use evidence::EvidenceLog;

#[cfg(test)]
mod tests;
