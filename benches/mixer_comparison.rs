//! The mixers compared on the quickstart corpus: same model, same steps, several seeds. Runs
//! the real training loop (configs/quickstart.toml, evaluation every 25 steps) for each method
//! and seed into target/comparison/, then prints a Markdown table: mean and worst per-source
//! final validation loss (mean over seeds), and the first evaluated step at which each method's
//! mean validation loss reaches uniform's final mean validation loss (same seed).
//!
//!     cargo bench --bench mixer_comparison                          # 9 methods x 3 seeds
//!     SEEDS=1 METHODS=uniform,fastmix cargo bench --bench mixer_comparison
//!
//! About 3 minutes a run on 2 cores (tikmix about 2.3x, doremi adds 100 reference steps; the
//! DeMix seed search about 7 minutes, once).

use std::path::{Path, PathBuf};

use mixtrain::config::{Config, InitSpec, MixerKind};
use mixtrain::train::{run, RunOptions};

struct Method {
    name: &'static str,
    apply: fn(&mut Config),
}

const METHODS: &[Method] = &[
    Method {
        name: "uniform",
        apply: |_| {},
    },
    Method {
        name: "temperature",
        apply: |c| c.mixer.init = InitSpec::Named("temperature".into()),
    },
    Method {
        name: "fastmix",
        apply: |c| c.mixer.kind = MixerKind::Fastmix,
    },
    Method {
        name: "tikmix",
        apply: |c| c.mixer.kind = MixerKind::Tikmix,
    },
    Method {
        name: "tikmix-m",
        apply: |c| c.mixer.kind = MixerKind::TikmixM,
    },
    Method {
        name: "odm",
        apply: |c| c.mixer.kind = MixerKind::Odm,
    },
    Method {
        name: "doremi",
        apply: |c| c.mixer.kind = MixerKind::Doremi,
    },
    // Seeds for the online mixer of configs/quickstart.toml (doremi).
    Method {
        name: "doremi+entropy",
        apply: |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.init = InitSpec::Named("entropy:conditional".into());
        },
    },
    Method {
        name: "doremi+demix",
        apply: |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.init = InitSpec::Named(format!("demix:{DEMIX_DIR}/demix"));
        },
    },
];

/// One DeMix search (configs/demix-quickstart.toml, seed 42) seeds every seed's run: the seed
/// mixture is a data decision made once.
const DEMIX_DIR: &str = "target/comparison/demix";

fn ensure_demix_seed() -> mixtrain::Result<()> {
    if Path::new(DEMIX_DIR).join("demix/mixture.json").is_file() {
        return Ok(());
    }
    eprintln!("running the DeMix search for the doremi+demix seed");
    let mut config = Config::load(Path::new("configs/demix-quickstart.toml"), &[])?;
    config.run.out_dir = PathBuf::from(DEMIX_DIR);
    mixtrain::demix::demix(config, mixtrain::demix::DemixOptions::default())?;
    Ok(())
}

/// (step, mean val loss, per-source val losses) of every evaluation in a run.
fn evaluations(run_dir: &Path) -> Vec<(u64, f64, Vec<f64>)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let by_source = v.get("val_loss_by_source")?.as_object()?.clone();
            Some((
                v["step"].as_u64()?,
                v["val_loss"].as_f64()?,
                by_source.values().filter_map(|x| x.as_f64()).collect(),
            ))
        })
        .collect()
}

fn main() -> mixtrain::Result<()> {
    let seeds: Vec<u64> = std::env::var("SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let wanted: Option<Vec<String>> = std::env::var("METHODS")
        .ok()
        .map(|m| m.split(',').map(|s| s.trim().to_string()).collect());
    let methods: Vec<&Method> = METHODS
        .iter()
        .filter(|m| {
            m.name == "uniform"
                || wanted
                    .as_ref()
                    .is_none_or(|w| w.iter().any(|x| x == m.name))
        })
        .collect();
    if methods.iter().any(|m| m.name.ends_with("+demix")) {
        ensure_demix_seed()?;
    }
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    // The baseline is the static uniform mixture, whatever the quickstart's own mixer is.
    base.mixer.kind = MixerKind::Static;
    base.mixer.init = InitSpec::Named("uniform".into());
    let root = PathBuf::from("target/comparison");

    let mut rows = Vec::new();
    for method in &methods {
        let mut finals = Vec::new();
        for &seed in &seeds {
            let mut config = base.clone();
            (method.apply)(&mut config);
            config.run.seed = seed;
            config.train.eval_every = 25;
            config.train.checkpoint_every = 0;
            config.run.out_dir = root.join(format!("{}-seed{seed}", method.name));
            if config.run.out_dir.join("mixture.json").is_file() {
                eprintln!("reusing finished run {}", config.run.out_dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&config.run.out_dir);
                eprintln!("running {} seed {seed}", method.name);
                let started = std::time::Instant::now();
                run(
                    config.clone(),
                    RunOptions {
                        resume: false,
                        progress: false,
                    },
                )?;
                eprintln!("  {:.0} s", started.elapsed().as_secs_f64());
            }
            finals.push((seed, evaluations(&config.run.out_dir)));
        }
        rows.push((method.name, finals));
    }

    let uniform_final: Vec<f64> = rows[0]
        .1
        .iter()
        .map(|(_, e)| e.last().expect("evals").1)
        .collect();
    println!("| method | final mean val loss | final worst-source val loss | step reaching uniform's final mean (per seed) |");
    println!("|---|---|---|---|");
    for (name, runs) in &rows {
        let n = runs.len() as f64;
        let mean = runs
            .iter()
            .map(|(_, e)| e.last().expect("evals").1)
            .sum::<f64>()
            / n;
        let worst = runs
            .iter()
            .map(|(_, e)| {
                e.last()
                    .expect("evals")
                    .2
                    .iter()
                    .cloned()
                    .fold(f64::MIN, f64::max)
            })
            .sum::<f64>()
            / n;
        let reach: Vec<String> = runs
            .iter()
            .zip(&uniform_final)
            .map(|((_, evals), target)| {
                evals
                    .iter()
                    .find(|(_, m, _)| m <= target)
                    .map_or("never".to_string(), |(s, _, _)| s.to_string())
            })
            .collect();
        println!("| {name} | {mean:.4} | {worst:.4} | {} |", reach.join(", "));
    }
    println!(
        "\n(seeds {:?}; mean over seeds; losses in nats per byte-token)",
        seeds
    );
    Ok(())
}
