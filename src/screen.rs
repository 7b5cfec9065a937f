//! `mixtrain screen`: a search of static mixtures on a small model, RegMix's way at its
//! smallest: uniform and, for each training source, a tilt towards it (`weight` on that
//! source, the rest shared equally), each trained from step 0 with the config's model and
//! steps, ranked by final target loss. The nine-source measurements (docs/results/mixing.md)
//! found the one mixture that helps a held-out target this way where the online mixers'
//! one-step signal pointed elsewhere; the best candidate's run directory is an ordinary run,
//! so `mixtrain mixture` exports it and `mixer.init = "file:…"` starts from it.
//!
//! Runs go to `run.out_dir/screen/NAME-seedN/`; a finished one is reused and an unfinished one
//! resumes from its last checkpoint, so an interrupted screen continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::{Config, InitSpec, MixerConfig, MixerKind};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::mixture_file::{by_name, MIXTURE_FILE};
use crate::rundir::{holds_run, read_metrics, RunDir, METRICS_FILE};
use crate::train::{run, RunOptions};

/// What `mixtrain screen` varies.
#[derive(Debug, Clone)]
pub struct ScreenOptions {
    /// The weight a tilt puts on its source (the other sources share 1 − weight).
    pub weight: f64,
    /// One run per candidate and seed; the ranking uses the mean over seeds.
    pub seeds: Vec<u64>,
}

/// One static mixture of the screen and what its runs measured, one entry per seed.
#[derive(Debug, Clone)]
pub struct ScreenRow {
    /// `uniform` or `tilt-SOURCE`.
    pub name: String,
    pub weights: Vec<f64>,
    pub run_dirs: Vec<PathBuf>,
    pub final_target: Vec<f64>,
    /// Final target loss minus uniform's, paired by seed.
    pub delta_vs_uniform: Vec<f64>,
    /// The first evaluated step whose target loss is at most uniform's final one (same seed).
    pub steps_to_uniform: Vec<Option<u64>>,
}

/// The screen's candidates, best (lowest mean final target loss) first.
#[derive(Debug, Clone)]
pub struct ScreenReport {
    pub sources: Vec<String>,
    pub weight: f64,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub rows: Vec<ScreenRow>,
    /// Where screen.json was written.
    pub report_path: PathBuf,
}

/// Checks the options against the config's sources before anything trains.
fn validate(config: &Config, options: &ScreenOptions) -> Result<()> {
    let k = config.source_names().len();
    if k < 2 {
        return Err(Error::value(
            "data.sources",
            "a screen needs at least 2 training sources",
        ));
    }
    let w = options.weight;
    if !(w.is_finite() && w > 0.0 && w < 1.0) || (w - 1.0 / k as f64).abs() < 1e-9 {
        return Err(Error::value(
            "--weight",
            format!("must lie in (0, 1) and differ from uniform's 1/{k} (got {w})"),
        ));
    }
    let mut seeds = options.seeds.clone();
    seeds.sort_unstable();
    seeds.dedup();
    if seeds.is_empty() || seeds.len() != options.seeds.len() {
        return Err(Error::value("--seeds", "give one or more distinct seeds"));
    }
    Ok(())
}

/// Uniform first, then one tilt per source, in the config's source order.
fn candidates(names: &[String], weight: f64) -> Vec<(String, Vec<f64>)> {
    let k = names.len();
    let rest = (1.0 - weight) / (k - 1) as f64;
    let tilt = |at: usize| {
        (0..k)
            .map(|j| if j == at { weight } else { rest })
            .collect()
    };
    std::iter::once(("uniform".to_string(), vec![1.0 / k as f64; k]))
        .chain(
            names
                .iter()
                .enumerate()
                .map(|(at, n)| (format!("tilt-{n}"), tilt(at))),
        )
        .collect()
}

/// The config of one candidate's run: the user's config with a static mixture.
fn candidate_config(base: &Config, name: &str, weights: &[f64], seed: u64) -> Config {
    let mut c = base.clone();
    let names = base.source_names();
    let table: BTreeMap<String, f64> = names.iter().cloned().zip(weights.to_vec()).collect();
    c.mixer = MixerConfig {
        kind: MixerKind::Static,
        apply: base.mixer.apply,
        init: InitSpec::Explicit(table),
        ..MixerConfig::default()
    };
    c.run.seed = seed;
    c.run.out_dir = base
        .run
        .out_dir
        .join("screen")
        .join(format!("{name}-seed{seed}"));
    c
}

/// (step, target loss) at each evaluation of a finished run.
fn read_evals(dir: &Path) -> Result<Evals> {
    let path = dir.join(METRICS_FILE);
    let evals: Evals = read_metrics(&path)?
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("target_val_loss")?.as_f64()?)))
        .collect();
    if evals.is_empty() {
        return Err(Error::data(
            &path,
            "no target_val_loss: the run never evaluated",
        ));
    }
    Ok(evals)
}

/// Trains one candidate's run unless it finished earlier with the same config (resuming an
/// unfinished one), then reads its evaluations.
fn ensure_run(config: Config) -> Result<Evals> {
    let dir = config.run.out_dir.clone();
    if dir.join(MIXTURE_FILE).is_file() {
        RunDir::check_same_config(&config)?;
    } else {
        // Any part of a run here: `--resume` continues it, or restarts it from step 0 when no
        // checkpoint is complete.
        let resume = holds_run(&dir);
        tracing::info!("screen: training {} (resume: {resume})", dir.display());
        run(
            config,
            RunOptions {
                resume,
                ..RunOptions::default()
            },
        )?;
    }
    read_evals(&dir)
}

/// Runs (or reuses) every candidate for every seed, ranks them and writes
/// `run.out_dir/screen/screen.json`.
pub fn screen(config: Config, options: &ScreenOptions) -> Result<ScreenReport> {
    validate(&config, options)?;
    let names = config.source_names();
    let mut measured = Vec::new();
    for (name, weights) in candidates(&names, options.weight) {
        let mut m = Measured {
            name,
            weights,
            run_dirs: Vec::new(),
            evals: Vec::new(),
        };
        for &seed in &options.seeds {
            let c = candidate_config(&config, &m.name, &m.weights, seed);
            m.run_dirs.push(c.run.out_dir.clone());
            m.evals.push(ensure_run(c)?);
        }
        measured.push(m);
    }
    let rows = rank(measured);
    let report = ScreenReport {
        sources: names,
        weight: options.weight,
        seeds: options.seeds.clone(),
        steps: config.train.steps,
        rows,
        report_path: config.run.out_dir.join("screen").join("screen.json"),
    };
    let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON");
    write_atomic(&report.report_path, format!("{text}\n").as_bytes())?;
    Ok(report)
}

/// (step, target loss) at each evaluation of one run.
type Evals = Vec<(u64, f64)>;

/// One candidate's runs, one per seed.
struct Measured {
    name: String,
    weights: Vec<f64>,
    run_dirs: Vec<PathBuf>,
    evals: Vec<Evals>,
}

/// Rows measured against uniform (the first candidate), best mean final target loss first.
fn rank(measured: Vec<Measured>) -> Vec<ScreenRow> {
    let last = |e: &Evals| e.last().map_or(f64::NAN, |&(_, loss)| loss);
    let uniform_final: Vec<f64> = measured[0].evals.iter().map(last).collect();
    let mut rows: Vec<ScreenRow> = measured
        .into_iter()
        .map(|m| {
            let final_target: Vec<f64> = m.evals.iter().map(last).collect();
            let delta_vs_uniform = final_target
                .iter()
                .zip(&uniform_final)
                .map(|(f, u)| f - u)
                .collect();
            let steps_to_uniform = m
                .evals
                .iter()
                .zip(&uniform_final)
                .map(|(e, &u)| e.iter().find(|&&(_, loss)| loss <= u).map(|&(s, _)| s))
                .collect();
            ScreenRow {
                name: m.name,
                weights: m.weights,
                run_dirs: m.run_dirs,
                final_target,
                delta_vs_uniform,
                steps_to_uniform,
            }
        })
        .collect();
    rows.sort_by(|a, b| mean(&a.final_target).total_cmp(&mean(&b.final_target)));
    rows
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// "mean ± sample sd", or the value alone for one seed.
fn mean_sd(values: &[f64], sign: bool) -> String {
    let m = mean(values);
    let shown = if sign {
        format!("{m:+.4}")
    } else {
        format!("{m:.4}")
    };
    if values.len() < 2 {
        return shown;
    }
    let ss: f64 = values.iter().map(|v| (v - m).powi(2)).sum();
    format!("{shown} ± {:.4}", (ss / (values.len() - 1) as f64).sqrt())
}

impl ScreenReport {
    /// The winner: the first row.
    pub fn best(&self) -> &ScreenRow {
        &self.rows[0]
    }

    /// One line per candidate: mean ± sd final target loss, the paired difference to uniform,
    /// and the step reaching uniform's final loss per seed (`-`: never).
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<20} {:>17} {:>17}  steps to uniform's final (of {})\n",
            "candidate", "final target", "Δ vs uniform", self.steps
        );
        for row in &self.rows {
            let steps: Vec<String> = row
                .steps_to_uniform
                .iter()
                .map(|s| s.map_or("-".into(), |s| s.to_string()))
                .collect();
            out += &format!(
                "{:<20} {:>17} {:>17}  {}\n",
                row.name,
                mean_sd(&row.final_target, false),
                mean_sd(&row.delta_vs_uniform, true),
                steps.join(", ")
            );
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "weights": by_name(&self.sources, r.weights.iter().copied()),
                    "run_dirs": r.run_dirs,
                    "final_target_loss": r.final_target,
                    "delta_vs_uniform": r.delta_vs_uniform,
                    "step_reaching_uniform_final": r.steps_to_uniform,
                })
            })
            .collect();
        json!({
            "sources": self.sources,
            "weight": self.weight,
            "seeds": self.seeds,
            "steps": self.steps,
            "best": self.best().name,
            "candidates": rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilts_sum_to_one_and_favour_their_source() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let all = candidates(&names, 0.4);
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].0, "uniform");
        for (i, (name, w)) in all.iter().enumerate().skip(1) {
            assert_eq!(name, &format!("tilt-{}", names[i - 1]));
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert_eq!(w[i - 1], 0.4);
            assert!(w
                .iter()
                .enumerate()
                .all(|(j, &v)| j == i - 1 || (v - 0.2).abs() < 1e-12));
        }
    }

    #[test]
    fn rank_pairs_seeds_with_uniform_and_sorts_by_mean() {
        let run = |losses: &[f64]| -> Evals {
            losses
                .iter()
                .enumerate()
                .map(|(i, &l)| (25 * i as u64, l))
                .collect()
        };
        let measured = |name: &str, evals: Vec<Evals>| Measured {
            name: name.into(),
            weights: vec![],
            run_dirs: vec![],
            evals,
        };
        let rows = rank(vec![
            measured("uniform", vec![run(&[3.0, 2.0]), run(&[3.0, 2.2])]),
            measured("tilt-a", vec![run(&[3.0, 1.9, 1.8]), run(&[2.1, 2.3])]),
            measured("tilt-b", vec![run(&[3.0, 2.5]), run(&[3.0, 2.4])]),
        ]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["tilt-a", "uniform", "tilt-b"]);
        let a = &rows[0];
        assert!((a.delta_vs_uniform[0] + 0.2).abs() < 1e-12);
        assert!((a.delta_vs_uniform[1] - 0.1).abs() < 1e-12);
        assert_eq!(a.steps_to_uniform, [Some(25), Some(0)]);
        assert_eq!(rows[2].steps_to_uniform, [None, None]);
    }
}
