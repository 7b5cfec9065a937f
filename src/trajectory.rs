//! A run's mixture over time, read back from its ratios.csv (one row at step 0 and one per
//! update that changed the weights; each row holds until the next) and the length of the run
//! (`train.steps` of the config.toml beside it). What `mixtrain mixture`, `mixtrain plot` and
//! `mixer.kind = "schedule"` read.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::rundir::{CONFIG_FILE, RATIOS_FILE};

/// (step, weights) rows of a ratios.csv.
pub(crate) type Rows = Vec<(usize, Vec<f64>)>;

/// Weights on the simplex: each ≥ 0, summing to 1 within this.
pub(crate) const SIMPLEX_TOLERANCE: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// Source names, in the order of the weights.
    pub names: Vec<String>,
    /// (step, weights) rows in increasing step order; the first at step 0.
    pub rows: Vec<(usize, Vec<f64>)>,
    /// Steps of the run (`train.steps`).
    pub total_steps: usize,
}

impl Trajectory {
    /// Reads a run directory, or a ratios.csv inside one.
    pub fn read(path: &Path) -> Result<Trajectory> {
        if !path.exists() {
            return Err(Error::data(path, "no such run directory or ratios.csv"));
        }
        let (run_dir, csv) = locate(path);
        let (names, rows) = read_ratios(&csv)?;
        let total_steps = read_total_steps(&run_dir.join(CONFIG_FILE))?;
        if let Some((step, _)) = rows.iter().find(|(step, _)| *step > total_steps) {
            return Err(Error::data(
                &csv,
                format!("has a row at step {step}, past the run's {total_steps} steps"),
            ));
        }
        Ok(Trajectory {
            names,
            rows,
            total_steps,
        })
    }

    /// The weights the run ended with.
    pub fn final_weights(&self) -> &[f64] {
        &self.rows.last().expect("a trajectory has rows").1
    }

    /// The mixture averaged over training steps: each row weighted by the steps it held.
    pub fn average(&self) -> Vec<f64> {
        let mut sum = vec![0.0; self.names.len()];
        for (i, (step, weights)) in self.rows.iter().enumerate() {
            let next = self.rows.get(i + 1).map_or(self.total_steps, |r| r.0);
            let held = next.saturating_sub(*step) as f64;
            for (s, w) in sum.iter_mut().zip(weights) {
                *s += held * w;
            }
        }
        let total: f64 = sum.iter().sum();
        if total <= 0.0 {
            return self.final_weights().to_vec(); // a run of zero steps
        }
        sum.iter().map(|s| s / total).collect()
    }

    /// The rows as (fraction of training, weights): what a run of another length replays.
    pub fn stages(&self) -> Vec<(f64, Vec<f64>)> {
        let total = self.total_steps.max(1) as f64;
        self.rows
            .iter()
            .map(|(step, w)| (*step as f64 / total, w.clone()))
            .collect()
    }
}

/// The run directory of `path` (a run directory, or a file in one).
pub(crate) fn run_dir_of(path: &Path) -> PathBuf {
    locate(path).0
}

/// (run directory, ratios.csv) of a path naming either.
fn locate(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        return (path.to_path_buf(), path.join(RATIOS_FILE));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    (dir, path.to_path_buf())
}

/// `train.steps` of a run's config.toml (the default when the key is absent).
fn read_total_steps(config: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(config).at(config)?;
    let value: toml::Value = text
        .parse()
        .map_err(|e| Error::data(config, format!("not valid TOML: {e}")))?;
    match value.get("train").and_then(|t| t.get("steps")) {
        None => Ok(crate::train::TrainConfig::default().steps),
        Some(steps) => steps
            .as_integer()
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| Error::data(config, "train.steps: expected a positive integer")),
    }
}

/// The header's source names and the (step, weights) rows of a ratios.csv; every row on the
/// simplex, steps increasing from 0.
pub(crate) fn read_ratios(path: &Path) -> Result<(Vec<String>, Rows)> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .filter(|h| h.starts_with("step,"))
        .ok_or_else(|| Error::data(path, "line 1: expected a header starting with \"step,\""))?;
    let names: Vec<String> = header.split(',').skip(1).map(str::to_string).collect();
    let mut rows: Rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let at = |message: String| Error::data(path, format!("line {}: {message}", i + 2));
        let (step, weights) = parse_row(line, names.len()).map_err(at)?;
        if rows.is_empty() && step != 0 {
            return Err(at(format!("the first row must be at step 0 (got {step})")));
        }
        if let Some((previous, _)) = rows.last().filter(|(p, _)| *p >= step) {
            return Err(at(format!("step {step} does not follow step {previous}")));
        }
        check_simplex(&weights).map_err(at)?;
        rows.push((step, weights));
    }
    if rows.is_empty() {
        return Err(Error::data(path, "has no rows yet"));
    }
    Ok((names, rows))
}

fn parse_row(line: &str, k: usize) -> std::result::Result<(usize, Vec<f64>), String> {
    let expected = || format!("expected a step and {k} weights separated by commas");
    let mut fields = line.split(',');
    let step = fields
        .next()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(expected)?;
    let weights: Vec<f64> = fields
        .map(|f| f.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| expected())?;
    if weights.len() != k {
        return Err(expected());
    }
    Ok((step, weights))
}

/// Ok when every weight is finite and ≥ 0 and they sum to 1 (within `SIMPLEX_TOLERANCE`).
pub(crate) fn check_simplex(weights: &[f64]) -> std::result::Result<(), String> {
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(format!("weights must be finite and >= 0 (got {w})"));
    }
    let sum: f64 = weights.iter().sum();
    if (sum - 1.0).abs() > SIMPLEX_TOLERANCE {
        return Err(format!("weights must sum to 1 (got {sum})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trajectory(rows: Vec<(usize, Vec<f64>)>, total_steps: usize) -> Trajectory {
        Trajectory {
            names: vec!["a".into(), "b".into()],
            rows,
            total_steps,
        }
    }

    /// Each row counts for the steps it held: 0.5 for 10 steps, then 0.9 for 30 → 0.8.
    #[test]
    fn average_weights_rows_by_the_steps_they_held() {
        let t = trajectory(vec![(0, vec![0.5, 0.5]), (10, vec![0.9, 0.1])], 40);
        let avg = t.average();
        assert!((avg[0] - 0.8).abs() < 1e-12 && (avg[1] - 0.2).abs() < 1e-12);
        assert_eq!(t.final_weights(), &[0.9, 0.1]);
        assert_eq!(t.stages()[1].0, 0.25);
    }

    #[test]
    fn rows_off_the_simplex_or_out_of_order_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ratios.csv");
        for (body, message) in [
            ("0,0.5,0.6\n", "line 2: weights must sum to 1 (got 1.1)"),
            (
                "0,0.5,0.5\n0,0.5,0.5\n",
                "line 3: step 0 does not follow step 0",
            ),
            (
                "5,0.5,0.5\n",
                "line 2: the first row must be at step 0 (got 5)",
            ),
            (
                "0,-0.5,1.5\n",
                "line 2: weights must be finite and >= 0 (got -0.5)",
            ),
            ("0,0.5\n", "line 2: expected a step and 2 weights"),
            ("", "has no rows yet"),
        ] {
            std::fs::write(&path, format!("step,a,b\n{body}")).unwrap();
            let error = read_ratios(&path).unwrap_err().to_string();
            assert!(error.contains(message), "{body:?}: {error}");
            assert!(error.contains("ratios.csv"), "{error}");
        }
    }
}
