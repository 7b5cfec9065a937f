//! The guard's ratio test, its memory of rollbacks, its bounds and its checkpoint.

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
    let log = g.update(&stats(2.8)).unwrap().guard.unwrap().trust_region(); // ρ = 1: grow
    assert_eq!((log.radius, log.rolled_back), (0.2, false));
    assert!((tv(&g) - 0.2).abs() < 1e-12);
    g.update(&stats(2.7)).unwrap();
    assert!((tv(&g) - 0.4).abs() < 1e-12);
    g.update(&stats(2.6)).unwrap(); // radius 0.8: the proposal itself (TV 0.45)
    assert!((tv(&g) - 0.45).abs() < 1e-12);
    let good = g.weights().to_vec();
    g.update(&stats(2.5)).unwrap(); // the bound was not active: the radius stays
    assert_eq!(g.state.radius, 0.8);
    let log = g.update(&stats(2.6)).unwrap().guard.unwrap().trust_region(); // rose by the whole trend
    assert!(log.rolled_back && log.ratio.unwrap() < -SHRINK_BELOW);
    assert_eq!((log.radius, log.rollbacks), (0.4, 1));
    assert_eq!(g.weights(), &bounded_step(&g.anchor, &good, 0.4)[..]);
    assert!(
        (tv(&g) - 0.4).abs() < 1e-12,
        "the last good mixture, within the new radius"
    );
}

/// After a rollback the guard remembers: the recovery window neither grows the radius nor
/// enters the trend, and the radius doubles only after 2ⁿ trusted windows in a row, up to
/// max_radius / 2ⁿ.
#[test]
fn after_a_rollback_growth_needs_a_longer_streak() {
    let mut g = guard(GuardConfig::default());
    for loss in [3.0, 2.9, 2.8] {
        g.update(&stats(loss)); // the third grows the radius to 0.2
    }
    let log = g.update(&stats(2.9)).unwrap().guard.unwrap().trust_region();
    assert!(log.rolled_back);
    let trend = |g: &Guard| g.state.trend.unwrap();
    assert_eq!(log.radius, 0.1);
    assert!(
        (trend(&g) - 0.1).abs() < 1e-12,
        "a failed window is not trend"
    );
    let log = g.update(&stats(2.6)).unwrap().guard.unwrap().trust_region(); // the recovery: ρ = 3
    assert_eq!((log.radius, g.state.streak), (0.1, 0));
    assert!((trend(&g) - 0.1).abs() < 1e-12, "nor is the recovery");
    let log = g.update(&stats(2.5)).unwrap().guard.unwrap().trust_region();
    assert_eq!(
        (log.radius, g.state.streak),
        (0.1, 1),
        "one of two trusted windows"
    );
    let log = g.update(&stats(2.4)).unwrap().guard.unwrap().trust_region();
    assert_eq!((log.radius, g.state.streak), (0.2, 0));
    g.update(&stats(2.5)).unwrap(); // a second rollback: now four in a row are needed
    g.update(&stats(2.3)).unwrap();
    for loss in [2.2, 2.1, 2.0] {
        let log = g
            .update(&stats(loss))
            .unwrap()
            .guard
            .unwrap()
            .trust_region();
        assert_eq!(log.radius, 0.1);
    }
    assert_eq!(
        g.update(&stats(1.9))
            .unwrap()
            .guard
            .unwrap()
            .trust_region()
            .radius,
        0.2
    );
    // Two rollbacks: the radius never grows above max_radius / 4 again.
    let mut loss = 1.9;
    for _ in 0..12 {
        loss -= 0.1;
        let log = g
            .update(&stats(loss))
            .unwrap()
            .guard
            .unwrap()
            .trust_region();
        assert!(log.radius <= 0.25, "{}", log.radius);
    }
    assert_eq!(g.state.radius, 0.25);
}

/// Repeated rises shrink the radius to its floor, never below, and the mixture stays
/// within it, on the simplex.
#[test]
fn the_radius_never_leaves_its_bounds() {
    let mut g = guard(GuardConfig::default());
    let mut loss = 3.0;
    for i in 0..40 {
        loss += if i % 2 == 0 { -0.1 } else { 0.08 };
        let log = g
            .update(&stats(loss))
            .unwrap()
            .guard
            .unwrap()
            .trust_region();
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

impl GuardReport {
    fn trust_region(self) -> GuardLog {
        match self {
            GuardReport::TrustRegion(log) => log,
            GuardReport::Evidence(_) => panic!("an evidence log from the trust-region guard"),
        }
    }
}
