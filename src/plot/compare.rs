//! `mixtrain plot RUN RUN...`: several runs on one page: target_loss.svg (each run's target
//! loss against steps and against tokens) and weights.svg (one panel per run, one shared
//! weight axis fitted to the data).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::{after_step_zero, draw_on, weight_range, weight_steps, Chart, Series};
use crate::error::{Error, IoContext, Result};
use crate::rundir::{read_metrics, METRICS_FILE, RATIOS_FILE};
use crate::trajectory::read_ratios;

/// One run's curves.
struct RunCurves {
    label: String,
    /// (step, target loss) and (tokens, target loss) at each evaluation.
    by_step: Vec<(f64, f64)>,
    by_tokens: Vec<(f64, f64)>,
    weights: Series,
}

/// Writes target_loss.svg and weights.svg into `out` (created if missing).
pub fn plot_runs(run_dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let labels = labels(run_dirs);
    let runs = run_dirs
        .iter()
        .zip(labels)
        .map(|(dir, label)| read_run(dir, label))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).at(out)?;
    let loss_path = out.join("target_loss.svg");
    draw_losses(&loss_path, &runs)?;
    let weights_path = out.join("weights.svg");
    draw_weights(&weights_path, &runs)?;
    Ok(vec![loss_path, weights_path])
}

/// Each run's directory name, or its last two components where names repeat.
fn labels(run_dirs: &[PathBuf]) -> Vec<String> {
    let last = |p: &Path, n: usize| {
        let parts: Vec<String> = p
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts[parts.len().saturating_sub(n)..].join("/")
    };
    let short: Vec<String> = run_dirs.iter().map(|p| last(p, 1)).collect();
    short
        .iter()
        .zip(run_dirs)
        .map(|(s, p)| match short.iter().filter(|o| *o == s).count() {
            1 => s.clone(),
            _ => last(p, 2),
        })
        .collect()
}

fn read_run(dir: &Path, label: String) -> Result<RunCurves> {
    let metrics = dir.join(METRICS_FILE);
    let (mut by_step, mut by_tokens, mut last_step) = (Vec::new(), Vec::new(), 0.0f64);
    for record in read_metrics(&metrics)? {
        let step = record["step"].as_f64().unwrap_or(0.0);
        last_step = last_step.max(step);
        if let Some(loss) = record.get("target_val_loss").and_then(|v| v.as_f64()) {
            by_step.push((step, loss));
            by_tokens.push((record["tokens"].as_f64().unwrap_or(0.0), loss));
        }
    }
    let (names, rows) = read_ratios(&dir.join(RATIOS_FILE))?;
    let rows: Vec<(f64, Vec<f64>)> = rows.into_iter().map(|(s, w)| (s as f64, w)).collect();
    let end = last_step.max(rows.last().map_or(0.0, |r| r.0));
    Ok(RunCurves {
        label,
        by_step,
        by_tokens,
        weights: weight_steps(&names, &rows, end),
    })
}

fn draw_losses(path: &Path, runs: &[RunCurves]) -> Result<()> {
    let fail = |e: String| Error::data(path, format!("could not draw: {e}"));
    let root = SVGBackend::new(path, (1300, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let panels = root.split_evenly((1, 2));
    for (panel, by_tokens) in panels.iter().zip([false, true]) {
        let series: Series = runs
            .iter()
            .map(|r| {
                let points = if by_tokens { &r.by_tokens } else { &r.by_step };
                (r.label.clone(), points.clone())
            })
            .collect();
        let chart = Chart {
            title: "Target loss (after step 0)",
            x_label: if by_tokens { "training tokens" } else { "step" },
            y_label: "target loss (nats/token)",
            y_range: None,
            markers: true,
        };
        draw_on(panel, &chart, &after_step_zero(series)).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}

fn draw_weights(path: &Path, runs: &[RunCurves]) -> Result<()> {
    let fail = |e: String| Error::data(path, format!("could not draw: {e}"));
    let height = 90 + 300 * runs.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let all: Series = runs.iter().flat_map(|r| r.weights.clone()).collect();
    let y_range = Some(weight_range(&all));
    for (panel, run) in root.split_evenly((runs.len(), 1)).iter().zip(runs) {
        let title = format!("Mixture weights: {}", run.label);
        let chart = Chart {
            title: &title,
            x_label: "step",
            y_label: "weight",
            y_range,
            markers: false,
        };
        draw_on(panel, &chart, &run.weights).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_directory_names_unless_they_repeat() {
        let dirs = [
            PathBuf::from("runs/proxy"),
            PathBuf::from("big/seed1/uniform"),
            PathBuf::from("big/seed2/uniform"),
        ];
        assert_eq!(labels(&dirs), ["proxy", "seed1/uniform", "seed2/uniform"]);
    }
}
