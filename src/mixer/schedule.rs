//! The schedule mixer: a mixture that changes at fixed points of training and is otherwise
//! static. Its points come from `[mixer.schedule]`: stages in the config (a fraction of
//! training or a step → weights) or another run's ratios.csv, mapped by fraction of training
//! so that a 300-step proxy's trajectory drives a run of any length.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Mixer, MixerUpdate, SourceStats, StatsRequest};
use crate::error::{Error, Result};
use crate::trajectory::{check_simplex, Trajectory};

/// How weights go from one point of the schedule to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolate {
    /// Each point's weights hold until the next point.
    #[default]
    Step,
    /// Weights move linearly from one point to the next, applied every `mixer.every` steps
    /// (and at every point); after the last point they hold.
    Linear,
}

/// One stage of `[mixer.schedule] stages`: where it starts (`at`, a fraction of training in
/// [0, 1], or `step`) and its weights by source name (on the simplex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub weights: BTreeMap<String, f64>,
}

/// `[mixer.schedule]`: exactly one of `from` and `stages`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Another run's directory or its ratios.csv: its trajectory, by fraction of its training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Stages in order, the first at 0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageConfig>,
    /// "step" (default) or "linear".
    pub interpolate: Interpolate,
}

/// Where a point of the schedule sits before it is mapped onto a run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Position {
    Fraction(f64),
    Step(usize),
}

impl ScheduleConfig {
    /// The schedule's points over `names` (the run's sources, in order), checked: the file
    /// read and each row, or each stage's position and weights, naming file, line or key.
    fn points(&self, names: &[String]) -> Result<Vec<(Position, Vec<f64>)>> {
        match (&self.from, self.stages.is_empty()) {
            (Some(_), false) => Err(Error::value(
                "mixer.schedule",
                "give either `from` (a run's ratios.csv) or `stages`, not both",
            )),
            (None, true) => Err(Error::value(
                "mixer.schedule",
                "the schedule mixer needs `from = \"RUN_DIR\"` (or its ratios.csv) or `stages`",
            )),
            (Some(from), true) => points_from_run(from, names),
            (None, false) => self.points_from_stages(names),
        }
    }

    fn points_from_stages(&self, names: &[String]) -> Result<Vec<(Position, Vec<f64>)>> {
        let mut points = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let key = format!("mixer.schedule.stages[{i}]");
            let position = match (stage.at, stage.step) {
                (Some(at), None) if (0.0..=1.0).contains(&at) => Position::Fraction(at),
                (Some(at), None) => {
                    let message = format!("must be a fraction of training in [0, 1] (got {at})");
                    return Err(Error::value(format!("{key}.at"), message));
                }
                (None, Some(step)) => Position::Step(step),
                _ => return Err(Error::value(&key, "give exactly one of `at` and `step`")),
            };
            let weights = stage_weights(&stage.weights, names, &key)?;
            points.push((position, weights));
        }
        if !matches!(points[0].0, Position::Fraction(0.0) | Position::Step(0)) {
            let message = "the first stage must start at 0 (`at = 0` or `step = 0`)";
            return Err(Error::value("mixer.schedule.stages[0]", message));
        }
        Ok(points)
    }

    /// Checks the schedule against the run's sources (reads `from`).
    pub(crate) fn validate(&self, names: &[String]) -> Result<()> {
        self.points(names).map(|_| ())
    }

    /// The schedule laid out over a run of `total_steps` steps.
    pub(crate) fn resolve(&self, names: &[String], total_steps: usize) -> Result<Schedule> {
        let mut points: Vec<(usize, Vec<f64>)> = Vec::new();
        for (position, weights) in self.points(names)? {
            let step = match position {
                Position::Fraction(f) => (f * total_steps as f64).round() as usize,
                Position::Step(s) => s,
            };
            match points.last_mut() {
                // Two points on one step (a short run): the later one wins.
                Some(last) if last.0 == step => last.1 = weights,
                Some(last) if last.0 > step => {
                    let message = format!(
                        "stages must start in increasing order (step {step} comes after step {})",
                        last.0
                    );
                    return Err(Error::value("mixer.schedule.stages", message));
                }
                _ => points.push((step, weights)),
            }
        }
        Ok(Schedule {
            points,
            interpolate: self.interpolate,
        })
    }
}

/// A stage's weights in the run's source order: every source named, nothing else, on the
/// simplex.
fn stage_weights(given: &BTreeMap<String, f64>, names: &[String], key: &str) -> Result<Vec<f64>> {
    if let Some(unknown) = given.keys().find(|n| !names.contains(n)) {
        let message = format!(
            "no source named {unknown:?} (sources: {})",
            names.join(", ")
        );
        return Err(Error::value(format!("{key}.weights.{unknown}"), message));
    }
    let weights = names
        .iter()
        .map(|n| {
            given.get(n).copied().ok_or_else(|| {
                Error::value(
                    format!("{key}.weights.{n}"),
                    "missing: give every source a weight",
                )
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    check_simplex(&weights).map_err(|m| Error::value(format!("{key}.weights"), m))?;
    Ok(weights)
}

/// Another run's trajectory over this run's sources (matched by name, in any order).
fn points_from_run(from: &std::path::Path, names: &[String]) -> Result<Vec<(Position, Vec<f64>)>> {
    let trajectory = Trajectory::read(from)?;
    let mut theirs = trajectory.names.clone();
    theirs.sort();
    let mut ours = names.to_vec();
    ours.sort();
    if theirs != ours {
        let message = format!(
            "mixer.schedule.from: its sources ({}) are not this run's ({})",
            trajectory.names.join(", "),
            names.join(", ")
        );
        return Err(Error::data(from, message));
    }
    let order: Vec<usize> = names
        .iter()
        .map(|n| {
            trajectory
                .names
                .iter()
                .position(|t| t == n)
                .expect("same names")
        })
        .collect();
    Ok(trajectory
        .stages()
        .into_iter()
        .map(|(f, w)| (Position::Fraction(f), order.iter().map(|&i| w[i]).collect()))
        .collect())
}

/// A schedule over the steps of one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    /// (step, weights), steps increasing, the first at 0.
    points: Vec<(usize, Vec<f64>)>,
    interpolate: Interpolate,
}

impl Schedule {
    /// The weights for the steps after `step`.
    pub(crate) fn weights_at(&self, step: usize) -> Vec<f64> {
        let next = self.points.partition_point(|(s, _)| *s <= step);
        let (start, from) = &self.points[next - 1];
        match (self.interpolate, self.points.get(next)) {
            (Interpolate::Linear, Some((end, to))) => {
                let t = (step - start) as f64 / (end - start) as f64;
                let mixed: Vec<f64> = from.iter().zip(to).map(|(a, b)| a + t * (b - a)).collect();
                let total: f64 = mixed.iter().sum();
                mixed.iter().map(|w| w / total).collect()
            }
            _ => from.clone(),
        }
    }

    /// True when the weights may change after `step`: at every point, and for linear
    /// interpolation every `every` steps between them.
    fn changes_at(&self, step: usize, every: usize) -> bool {
        let at_point = self.points.iter().any(|(s, _)| *s == step);
        at_point || (self.interpolate == Interpolate::Linear && step.is_multiple_of(every))
    }
}

pub(crate) struct ScheduleMixer {
    schedule: Schedule,
    every: usize,
    weights: Vec<f64>,
}

impl ScheduleMixer {
    pub(crate) fn new(schedule: Schedule, every: usize) -> Self {
        let weights = schedule.weights_at(0);
        ScheduleMixer {
            schedule,
            every,
            weights,
        }
    }
}

impl Mixer for ScheduleMixer {
    fn weights(&self) -> &[f64] {
        &self.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        if !self.schedule.changes_at(stats.step, self.every) {
            return None;
        }
        let weights = self.schedule.weights_at(stats.step);
        if weights == self.weights {
            return None;
        }
        self.weights = weights.clone();
        Some(MixerUpdate {
            weights,
            signal: None,
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "weights": self.weights })
    }

    fn restore(&mut self, state: &serde_json::Value) -> std::result::Result<(), String> {
        let weights: Vec<f64> = serde_json::from_value(state["weights"].clone())
            .map_err(|e| format!("schedule mixer state: {e}"))?;
        if weights.len() != self.weights.len() {
            return Err(format!(
                "schedule mixer state has {} weights, the run has {} sources",
                weights.len(),
                self.weights.len()
            ));
        }
        self.weights = weights;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn stage(at: f64, a: f64) -> StageConfig {
        StageConfig {
            at: Some(at),
            step: None,
            weights: [("a".to_string(), a), ("b".to_string(), 1.0 - a)].into(),
        }
    }

    fn config(interpolate: Interpolate) -> ScheduleConfig {
        ScheduleConfig {
            from: None,
            stages: vec![stage(0.0, 0.2), stage(0.5, 0.6)],
            interpolate,
        }
    }

    /// Fractions map onto the run's length; "step" holds, "linear" moves between points.
    #[test]
    fn stages_map_by_fraction_of_training() {
        let step = config(Interpolate::Step).resolve(&names(), 100).unwrap();
        assert_eq!(step.weights_at(49), vec![0.2, 0.8]);
        assert_eq!(step.weights_at(50), vec![0.6, 0.4]);
        assert_eq!(step.weights_at(99), vec![0.6, 0.4]);
        let linear = config(Interpolate::Linear).resolve(&names(), 100).unwrap();
        let mid = linear.weights_at(25);
        assert!((mid[0] - 0.4).abs() < 1e-12 && (mid[1] - 0.6).abs() < 1e-12);
        assert_eq!(linear.weights_at(80), vec![0.6, 0.4]);
        let long = config(Interpolate::Step).resolve(&names(), 20_000).unwrap();
        assert_eq!(long.points[1].0, 10_000);
    }

    /// The mixer reports a change only where the schedule changes.
    #[test]
    fn the_mixer_updates_at_the_points_only() {
        let schedule = config(Interpolate::Step).resolve(&names(), 100).unwrap();
        let mut mixer = ScheduleMixer::new(schedule, 10);
        let stats = |step| SourceStats {
            step,
            lr: 0.0,
            train_loss: vec![None; 2],
            grad_dot_val: None,
            influence: None,
            excess_loss: None,
            candidate_delta: None,
            tokens_seen: vec![0; 2],
            target_loss: None,
        };
        let changed: Vec<usize> = (1..100)
            .filter(|&s| mixer.update(&stats(s)).is_some())
            .collect();
        assert_eq!(changed, vec![50]);
    }

    #[test]
    fn bad_stages_name_their_key() {
        let mut bad = config(Interpolate::Step);
        bad.stages[1].weights.insert("a".into(), 0.9);
        let error = bad.validate(&names()).unwrap_err().to_string();
        assert!(
            error.contains("mixer.schedule.stages[1].weights"),
            "{error}"
        );
        assert!(error.contains("sum to 1"), "{error}");
        let mut late = config(Interpolate::Step);
        late.stages[0].at = Some(0.1);
        let error = late.validate(&names()).unwrap_err().to_string();
        assert!(
            error.contains("stages[0]") && error.contains("start at 0"),
            "{error}"
        );
        let mut unknown = config(Interpolate::Step);
        unknown.stages[0].weights.insert("c".into(), 0.0);
        let error = unknown.validate(&names()).unwrap_err().to_string();
        assert!(error.contains("stages[0].weights.c"), "{error}");
        let error = ScheduleConfig::default().validate(&names()).unwrap_err();
        assert!(error.to_string().contains("needs `from"), "{error}");
    }
}
