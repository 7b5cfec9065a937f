//! `mixtrain mixture`: a run's mixture (final, time-averaged, or its trajectory as a
//! schedule) written for the trainers people pre-train with. Each format says in a comment
//! line what reads it; source names stand where a trainer wants paths or dataset prefixes.

use std::fmt::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::repetition::{cap_run_mixture, RepetitionCap};
use crate::trajectory::Trajectory;

/// What to export from a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MixtureUse {
    /// The weights the run ended with.
    Final,
    /// The weights averaged over training steps.
    Average,
    /// The trajectory: one stage per ratios.csv row, placed by fraction of training.
    Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MixtureFormat {
    /// JSON: sources, weights by name, or stages.
    Json,
    /// A mixtrain config fragment: `[mixer] init = {...}`, or `kind = "schedule"` with stages.
    Toml,
    /// levanter/marin `train_weights` (YAML): a dict, or `[step, {name: weight}]` stages.
    Levanter,
    /// Megatron-LM `--data-path WEIGHT PREFIX ...`, one per phase with
    /// `--phase-transition-iterations`.
    Megatron,
    /// OLMo-core source mixture (YAML): `sources: [{source_name, target_ratio, paths, ...}]`.
    Olmo,
    /// nanotron `data_stages` (YAML): `dataset_folder` / `dataset_weights` per stage.
    Nanotron,
    /// Hugging Face `datasets.interleave_datasets` (Python): names and probabilities.
    Hf,
    /// torchtitan's Grain pipeline (Python): `DatasetMixConfig` of `WeightedDataset`s.
    Torchtitan,
}

/// A static mixture, or stages as (fraction of training, step when `--steps` is given,
/// weights).
enum Exported {
    Weights(Vec<f64>),
    Stages(Vec<Stage>),
}

struct Stage {
    fraction: f64,
    step: Option<usize>,
    weights: Vec<f64>,
}

pub struct MixtureExport {
    pub format: MixtureFormat,
    pub what: MixtureUse,
    /// Steps of the run the schedule is for (stages placed by fraction of it).
    pub steps: Option<usize>,
    /// Round each stage's step to a multiple of this (levanter wants step × batch size to be
    /// a multiple of its `mixture_block_size`).
    pub round_steps: usize,
    /// `--format megatron`: the directory `prepare --megatron` wrote; sources are named by
    /// their prefixes DIR/NAME/train instead of their names.
    pub data_prefix: Option<std::path::PathBuf>,
    /// Cap each source's weight so it repeats at most this often in the planned run.
    pub repetition_cap: Option<RepetitionCap>,
}

/// The run's mixture in `options.format`.
pub fn export_mixture(run: &Path, options: &MixtureExport) -> Result<String> {
    if options.data_prefix.is_some() && options.format != MixtureFormat::Megatron {
        let message = format!(
            "only --format megatron names data prefixes (got {:?})",
            options.format
        );
        return Err(Error::value("--data-prefix", message.to_lowercase()));
    }
    let trajectory = Trajectory::read(run)?;
    let mut exported = match options.what {
        MixtureUse::Final => Exported::Weights(trajectory.final_weights().to_vec()),
        MixtureUse::Average => Exported::Weights(trajectory.average()),
        MixtureUse::Schedule => Exported::Stages(stages(&trajectory, options)?),
    };
    let names = &trajectory.names;
    let mut header = describe(run, options, &trajectory);
    if let Some(cap) = options.repetition_cap {
        let Exported::Weights(weights) = &mut exported else {
            return Err(crate::repetition::schedule_refused());
        };
        header += &cap_run_mixture(run, names, weights, cap)?;
    }
    let by_step = |format: &str| needs_steps(&exported, format);
    Ok(match (options.format, &exported) {
        (MixtureFormat::Json, _) => json(names, &exported, options, &header),
        (MixtureFormat::Toml, _) => toml(names, &exported, &header),
        (MixtureFormat::Levanter, _) => levanter(names, &exported, &header, by_step("levanter")?),
        (MixtureFormat::Megatron, _) => {
            let prefixes = data_prefixes(names, options.data_prefix.as_deref())?;
            megatron(&prefixes, &exported, &header, by_step("megatron")?)
        }
        (MixtureFormat::Nanotron, _) => nanotron(names, &exported, &header, by_step("nanotron")?),
        (MixtureFormat::Olmo, Exported::Weights(w)) => olmo(names, w, options, &header),
        (MixtureFormat::Hf, Exported::Weights(w)) => hf(names, w, &header),
        (MixtureFormat::Torchtitan, Exported::Weights(w)) => torchtitan(names, w, &header),
        (format, Exported::Stages(_)) => {
            let message = format!(
                "--format {format:?} has no mixture schedule; use --use final or --use average"
            );
            return Err(Error::value("--use", message.to_lowercase()));
        }
    })
}

/// The header line: the run and what was taken from it.
fn describe(run: &Path, options: &MixtureExport, trajectory: &Trajectory) -> String {
    let what = format!("{:?}", options.what).to_lowercase();
    let taken = match (options.what, options.steps) {
        (MixtureUse::Schedule, Some(steps)) => format!(
            "{what}: its {} steps mapped onto {steps} by fraction of training",
            trajectory.total_steps
        ),
        _ => format!("{what}, {} training steps", trajectory.total_steps),
    };
    format!("mixtrain mixture of {} ({taken})", run.display())
}

/// The trajectory's rows as stages, placed on `options.steps` when given (rounded to
/// `round_steps`; rows landing on one step keep the later).
fn stages(trajectory: &Trajectory, options: &MixtureExport) -> Result<Vec<Stage>> {
    if options.round_steps == 0 {
        return Err(Error::value("--round-steps", "must be at least 1"));
    }
    let mut stages: Vec<Stage> = Vec::new();
    for (fraction, weights) in trajectory.stages() {
        let step = options.steps.map(|total| {
            let step = (fraction * total as f64).round() as usize;
            let multiple = options.round_steps;
            (step + multiple / 2) / multiple * multiple
        });
        match stages.last_mut() {
            Some(last) if step.is_some() && last.step == step => last.weights = weights,
            _ => stages.push(Stage {
                fraction,
                step,
                weights,
            }),
        }
    }
    Ok(stages)
}

/// The formats that place stages by step need `--steps`.
fn needs_steps(exported: &Exported, format: &str) -> Result<bool> {
    match exported {
        Exported::Stages(stages) if stages.iter().any(|s| s.step.is_none()) => Err(Error::value(
            "--steps",
            format!("{format} places a schedule's stages by step: give the length of the run it is for (--steps N)"),
        )),
        Exported::Stages(_) => Ok(true),
        Exported::Weights(_) => Ok(false),
    }
}

/// A weight as a float every reader takes: shortest round-trip digits with a '.' (YAML 1.1
/// reads `1e-05` as a string and TOML reads `1` as an integer).
fn number(w: f64) -> String {
    let text = format!("{w:?}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if !mantissa.contains('.') => format!("{mantissa}.0e{exponent}"),
        _ => text,
    }
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// `{"a": 0.2, "b": 0.8}` (a flow mapping in YAML, a JSON object).
fn flow_map(names: &[String], weights: &[f64]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(weights)
        .map(|(n, w)| format!("{}: {}", quoted(n), number(*w)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// JSON has no comments: the header line goes in `note`, a cap's limit in `max_epochs_per_source`.
fn json(names: &[String], exported: &Exported, options: &MixtureExport, header: &str) -> String {
    let by_name = |w: &[f64]| crate::mixture_file::by_name(names, w.iter().copied());
    let mut value = serde_json::json!({
        "sources": names,
        "use": format!("{:?}", options.what).to_lowercase(),
        "note": header,
    });
    if let Some(cap) = options.repetition_cap {
        value["max_epochs_per_source"] = cap.max_epochs.into();
    }
    match exported {
        Exported::Weights(w) => value["weights"] = by_name(w),
        Exported::Stages(stages) => {
            let stage = |s: &Stage| {
                let mut stage =
                    serde_json::json!({ "at": s.fraction, "weights": by_name(&s.weights) });
                if let Some(step) = s.step {
                    stage["step"] = step.into();
                }
                stage
            };
            value["stages"] = stages.iter().map(stage).collect::<Vec<_>>().into();
        }
    }
    serde_json::to_string_pretty(&value).expect("JSON serialises") + "\n"
}

fn toml(names: &[String], exported: &Exported, header: &str) -> String {
    let table = |w: &[f64]| {
        let pairs: Vec<String> = names
            .iter()
            .zip(w)
            .map(|(n, w)| format!("{n} = {}", number(*w)))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    };
    let mut out = format!("# {header}\n[mixer]\n");
    match exported {
        Exported::Weights(w) => {
            let _ = writeln!(out, "kind = \"static\"\ninit = {}", table(w));
        }
        Exported::Stages(stages) => {
            out.push_str("kind = \"schedule\"\n\n[mixer.schedule]\ninterpolate = \"step\"\n");
            for stage in stages {
                let position = match stage.step {
                    Some(step) => format!("step = {step}"),
                    None => format!("at = {}", number(stage.fraction)),
                };
                let weights = table(&stage.weights);
                let _ = write!(
                    out,
                    "\n[[mixer.schedule.stages]]\n{position}\nweights = {weights}\n"
                );
            }
        }
    }
    out
}

fn levanter(names: &[String], exported: &Exported, header: &str, _: bool) -> String {
    let mut out = format!(
        "# {header}\n# levanter/marin LMMixtureDatasetConfig.train_weights; a stage's step \
         times the batch size must be a multiple of mixture_block_size (2048): see --round-steps\n\
         train_weights:\n"
    );
    match exported {
        Exported::Weights(w) => {
            for (n, w) in names.iter().zip(w) {
                let _ = writeln!(out, "  {}: {}", quoted(n), number(*w));
            }
        }
        Exported::Stages(stages) => {
            for s in stages {
                let step = s.step.expect("checked by needs_steps");
                let _ = writeln!(out, "  - [{step}, {}]", flow_map(names, &s.weights));
            }
        }
    }
    out
}

fn data_path(names: &[String], weights: &[f64]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(weights)
        .map(|(n, w)| format!("{} {n}", number(*w)))
        .collect();
    format!("--data-path {}", pairs.join(" "))
}

/// Each source's name, or its prefix DIR/NAME/train under `prepare --megatron DIR`, which
/// must hold that source's index.
fn data_prefixes(names: &[String], dir: Option<&Path>) -> Result<Vec<String>> {
    let Some(dir) = dir else {
        return Ok(names.to_vec());
    };
    let prefix = |name: &String| {
        let prefix = dir.join(name).join("train");
        if !prefix.with_extension("idx").is_file() {
            let message = format!(
                "{} has no {} (write it with `mixtrain prepare CONFIG --megatron {}`)",
                dir.display(),
                prefix.with_extension("idx").display(),
                dir.display()
            );
            return Err(Error::value("--data-prefix", message));
        }
        Ok(prefix.display().to_string())
    };
    names.iter().map(prefix).collect()
}

fn megatron(names: &[String], exported: &Exported, header: &str, _: bool) -> String {
    let mut out = format!(
        "# {header}\n# Megatron-LM blend: each source is named by the path prefix of its \
         .bin/.idx files (`mixtrain prepare --megatron DIR` writes them; `--data-prefix DIR` \
         names them here)\n"
    );
    match exported {
        Exported::Weights(w) => {
            let _ = writeln!(out, "{}", data_path(names, w));
        }
        Exported::Stages(stages) => {
            out.push_str(
                "# one phase per stage: the run saves and exits at each phase transition; restart \
                 it with the next phase's --data-path\n",
            );
            for (i, s) in stages.iter().enumerate() {
                let step = s.step.expect("checked by needs_steps");
                let _ = writeln!(out, "# phase {i}: from iteration {step}");
                let _ = writeln!(out, "{}", data_path(names, &s.weights));
            }
            let starts: Vec<String> = stages[1..]
                .iter()
                .map(|s| s.step.expect("checked").to_string())
                .collect();
            if !starts.is_empty() {
                let _ = writeln!(out, "--phase-transition-iterations {}", starts.join(","));
            }
        }
    }
    out
}

fn nanotron(names: &[String], exported: &Exported, header: &str, _: bool) -> String {
    let one = [Stage {
        fraction: 0.0,
        step: Some(0),
        weights: match exported {
            Exported::Weights(w) => w.clone(),
            Exported::Stages(_) => Vec::new(),
        },
    }];
    let stages: &[Stage] = match exported {
        Exported::Weights(_) => &one,
        Exported::Stages(stages) => stages,
    };
    let folders: Vec<String> = names.iter().map(|n| quoted(n)).collect();
    let mut out = format!(
        "# {header}\n# nanotron data_stages: replace each dataset_folder with that source's \
         folder; start_training_step counts from 1\ndata_stages:\n"
    );
    for (i, s) in stages.iter().enumerate() {
        let weights: Vec<String> = s.weights.iter().map(|w| number(*w)).collect();
        let start = s.step.expect("checked by needs_steps") + 1;
        let _ = write!(
            out,
            "  - name: \"stage_{i}\"\n    start_training_step: {start}\n    data:\n      dataset:\n        \
             dataset_folder: [{}]\n        dataset_weights: [{}]\n",
            folders.join(", "),
            weights.join(", ")
        );
    }
    out
}

fn olmo(names: &[String], weights: &[f64], options: &MixtureExport, header: &str) -> String {
    let max_repetition = options.repetition_cap.map_or(1.0, |cap| cap.max_epochs);
    let mut out = format!(
        "# {header}\n# OLMo-core olmo_core.data.source_mixture: SourceMixtureConfig entries \
         (`source_list.sources`; `source_configs` before 2025); replace each path with that \
         source's .npy files\nsources:\n"
    );
    for (n, w) in names.iter().zip(weights) {
        let _ = write!(
            out,
            "  - source_name: {}\n    target_ratio: {}\n    paths: [{}]\n    max_repetition_ratio: {}\n",
            quoted(n),
            number(*w),
            quoted(&format!("{n}/*.npy")),
            number(max_repetition)
        );
    }
    out
}

fn hf(names: &[String], weights: &[f64], header: &str) -> String {
    let quoted_names: Vec<String> = names.iter().map(|n| quoted(n)).collect();
    let probabilities: Vec<String> = weights.iter().map(|w| number(*w)).collect();
    format!(
        "# {header}\n# Hugging Face datasets: interleave the sources' datasets in this order\n\
         names = [{}]\nprobabilities = [{}]\n\
         # mixed = datasets.interleave_datasets([by_name[n] for n in names], \
         probabilities=probabilities, seed=0, stopping_strategy=\"all_exhausted\")\n",
        quoted_names.join(", "),
        probabilities.join(", ")
    )
}

/// A function from each source's torchtitan dataset config to the mixture. torchtitan
/// refuses weights ≤ 0 (and normalises the rest), so a source at weight 0 is left out.
fn torchtitan(names: &[String], weights: &[f64], header: &str) -> String {
    let mut out = format!(
        "# {header}\n# torchtitan (Grain data pipeline, 2026): torchtitan.components.data.\
         DatasetMixConfig; pass each source's dataset config (e.g. a SingleDatasetConfig) by \
         name\nfrom torchtitan.components.data import DatasetMixConfig, WeightedDataset\n\n\n\
         def mixtrain_mixture(datasets_by_name):\n    return DatasetMixConfig(\n        \
         datasets=(\n"
    );
    for (n, w) in names.iter().zip(weights) {
        let line = if *w > 0.0 {
            format!(
                "WeightedDataset(dataset=datasets_by_name[{}], weight={}),",
                quoted(n),
                number(*w)
            )
        } else {
            format!(
                "# {} left out: weight 0 (torchtitan requires weights > 0)",
                quoted(n)
            )
        };
        let _ = writeln!(out, "            {line}");
    }
    out.push_str("        ),\n    )\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_a_decimal_point() {
        assert_eq!(number(1.0), "1.0");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1e-7), "1.0e-7");
        assert_eq!(number(2.5e-7), "2.5e-7");
    }

    #[test]
    fn torchtitan_leaves_out_a_source_at_weight_zero() {
        let names = ["web".to_string(), "code".to_string()];
        let text = torchtitan(&names, &[1.0, 0.0], "header");
        assert!(text.contains("WeightedDataset(dataset=datasets_by_name[\"web\"], weight=1.0),"));
        assert!(text.contains("# \"code\" left out: weight 0"));
        assert!(!text.contains("datasets_by_name[\"code\"]"));
    }
}
