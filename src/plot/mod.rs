//! `mixtrain plot`: ratios.svg (every source's weight over steps, held between updates) and
//! val_loss.svg (per-source validation loss at each evaluation, each validation-only target
//! set as "NAME (target set)", and the target's mean as "target" when the target is not the
//! mean over every source) in a run directory.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::rundir::{read_metrics, METRICS_FILE, RATIOS_FILE};
use crate::trajectory::read_ratios;

mod compare;
pub use compare::plot_runs;

/// One line per source: (name, points).
pub(crate) type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Writes both plots; returns their paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let (names, rows) = read_ratios(&run_dir.join(RATIOS_FILE))?;
    let rows: Vec<(f64, Vec<f64>)> = rows.into_iter().map(|(s, w)| (s as f64, w)).collect();
    let (last_step, val) = read_val_losses(&run_dir.join(METRICS_FILE), &names)?;
    let end = last_step.max(rows.last().map_or(0.0, |r| r.0));

    let ratios = weight_steps(&names, &rows, end);
    let ratios_path = run_dir.join("ratios.svg");
    let weights_chart = Chart {
        title: "Mixture weights",
        x_label: "step",
        y_label: "weight",
        y_range: Some(weight_range(&ratios)),
        markers: false,
    };
    draw(&ratios_path, &weights_chart, &ratios)?;
    let val_path = run_dir.join("val_loss.svg");
    let loss_chart = Chart {
        title: "Validation loss per source (after step 0)",
        x_label: "step",
        y_label: "loss (nats/token)",
        y_range: None,
        markers: true,
    };
    draw(&val_path, &loss_chart, &after_step_zero(val))?;
    Ok(vec![ratios_path, val_path])
}

/// The last logged step and each source's (step, validation loss) points.
fn read_val_losses(path: &Path, names: &[String]) -> Result<(f64, Series)> {
    let mut series: Series = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut last_step = 0.0;
    let mut target_points = Vec::new();
    for record in read_metrics(path)? {
        let step = record["step"].as_f64().unwrap_or(0.0);
        last_step = f64::max(last_step, step);
        if let Some(by_source) = record.get("val_loss_by_source") {
            for (name, points) in series.iter_mut().take(names.len()) {
                if let Some(v) = by_source[name.as_str()].as_f64() {
                    points.push((step, v));
                }
            }
        }
        if let Some(serde_json::Value::Object(by_set)) = record.get("val_loss_by_target_set") {
            for (set, v) in by_set {
                let label = format!("{set} (target set)");
                let at = match series.iter().position(|(n, _)| *n == label) {
                    Some(at) => at,
                    None => {
                        series.push((label, Vec::new()));
                        series.len() - 1
                    }
                };
                if let Some(v) = v.as_f64() {
                    series[at].1.push((step, v));
                }
            }
        }
        // The target's mean, drawn when it differs from the mean over sources.
        if let (Some(target), Some(mean)) = (
            record.get("target_val_loss").and_then(|v| v.as_f64()),
            record.get("val_loss").and_then(|v| v.as_f64()),
        ) {
            if target != mean {
                target_points.push((step, target));
            }
        }
    }
    if !target_points.is_empty() {
        series.push(("target".into(), target_points));
    }
    Ok((last_step, series))
}

/// Weights hold from one row to the next, the last until `end`: one step line per source.
pub(crate) fn weight_steps(names: &[String], rows: &[(f64, Vec<f64>)], end: f64) -> Series {
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mut points = Vec::new();
            for (i, (step, weights)) in rows.iter().enumerate() {
                let next = rows.get(i + 1).map_or(end, |r| r.0);
                points.push((*step, weights[k]));
                points.push((next, weights[k]));
            }
            (name.clone(), points)
        })
        .collect()
}

/// The weights' own range, padded, within [0, 1]: quickstart weights between 0.13 and 0.29
/// fill the chart instead of a fifth of it.
pub(crate) fn weight_range(series: &Series) -> (f64, f64) {
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(0.01);
    ((lo - pad).max(0.0), (hi + pad).min(1.0))
}

/// Loss points after step 0, where a series has any: the untrained model's loss (5.5 nats on
/// the quickstart) would squeeze every later difference into a few pixels.
pub(crate) fn after_step_zero(series: Series) -> Series {
    series
        .into_iter()
        .map(|(name, points)| {
            let later: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 > 0.0).collect();
            (name, if later.is_empty() { points } else { later })
        })
        .collect()
}

/// What a chart shows: its title, axis labels and the y range (None: the data's, padded).
pub(crate) struct Chart<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) y_range: Option<(f64, f64)>,
    /// A dot at every point (measurements, not a held value).
    pub(crate) markers: bool,
}

fn draw(path: &Path, chart: &Chart, series: &Series) -> Result<()> {
    let fail = |e: String| Error::data(path, format!("could not draw: {e}"));
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    draw_on(&root, chart, series).map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))
}

/// Draws `series` as lines on `area`, x from 0 to the largest x.
pub(crate) fn draw_on(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    chart: &Chart,
    series: &Series,
) -> std::result::Result<(), String> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let (y_min, y_max) = match chart.y_range {
        Some(range) => range,
        None if y_min.is_finite() => {
            let pad = ((y_max - y_min) * 0.05).max(1e-3);
            (y_min - pad, y_max + pad)
        }
        None => (0.0, 1.0),
    };
    let mut built = ChartBuilder::on(area)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)
        .map_err(|e| e.to_string())?;
    built
        .configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        built
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if chart.markers {
            let dots = points.iter().map(|&p| Circle::new(p, 3, color.filled()));
            built.draw_series(dots).map_err(|e| e.to_string())?;
        }
    }
    built
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

/// A scatter plot of (x, y) points with the diagonal y = x (for predicted vs measured).
pub(crate) fn scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> Result<()> {
    let fail = |e: String| Error::data(path, format!("could not draw: {e}"));
    let finite = points
        .iter()
        .flat_map(|&(x, y)| [x, y])
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad, hi + pad)
    } else {
        (0.0, 1.0)
    };
    let root = SVGBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.4)))
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(
            points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
        )
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
