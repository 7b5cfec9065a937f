//! The mixers compared on the quickstart corpus: same model, same steps, several seeds, in
//! three scenarios (SCENARIO):
//!
//! - `all` (default): target = the mean validation loss of the five training sources;
//! - `one-source`: target = one training source (TARGET, default `man`);
//! - `leave-one-out`: for each source in HELD_OUT (default all five) in turn, train on the
//!   other four and target the held-out one as a validation-only `[[target.sets]]` entry.
//!
//! Runs the real training loop (configs/quickstart.toml, evaluation every 25 steps) for each
//! method and seed into target/comparison/<case>/ (static baselines of cases that train on all
//! five sources share target/comparison/static/), reusing finished runs, then prints a
//! Markdown table per case: final target loss (mean ± sd over seeds), its paired difference to
//! uniform and to the best static baseline (uniform, proportional, temperature τ = 0.5, the
//! one with the lowest mean), and the first evaluated step at which the target loss reaches
//! uniform's final target loss (same seed), with that step as a fraction of the run.
//!
//!     cargo bench --bench mixer_comparison                                   # all, 3 seeds
//!     SCENARIO=one-source TARGET=man cargo bench --bench mixer_comparison
//!     SCENARIO=leave-one-out HELD_OUT=man,legal METHODS=fastmix,tikmix cargo bench --bench mixer_comparison
//!     SEEDS=1 METHODS=fastmix@sample,fastmix@reweight cargo bench --bench mixer_comparison
//!     METHODS=tikmix-m,tikmix-m-extra-passes PAIR=tikmix-m-extra-passes cargo bench --bench mixer_comparison
//!
//! A method is a name from the list below or `oracle-<source><weight>` (a static mixture
//! with that weight on one source, the rest shared equally), optionally `@sample`,
//! `@reweight` or `@hybrid` to override `mixer.apply` (default: mixtrain's default apply).
//! The static baselines always run (STATIC=uniform,temperature limits them; uniform always
//! runs; "best static" is then the best of those run).
//! About 5 minutes a run on 2 cores (tikmix about 2x, doremi adds 100 reference steps).
//!
//! `RUNS=dir` puts (and reuses) the runs in dir instead: for comparing a version whose
//! arithmetic changed against fresh baselines, not the cached ones.
//!
//! `CORPUS=nine` adds four sources to the quickstart's five (Rust and Go code, Linux kernel
//! docs, ScanCode licence texts; built once by `python3 data/nine/build.py` into
//! target/corpora/nine/), so that one target source has 1/9 of a uniform batch and every
//! held-out source has a neighbour of its own domain among the other eight. Its runs go to
//! target/comparison-nine/.

#[macro_use]
mod report;

use std::path::{Path, PathBuf};

use mixtrain::config::{
    ApplyMode, Config, ExcessFrom, GuardKind, InfluenceFrom, InitSpec, MixerConfig, MixerKind,
    ProbeSteps, SignalNorm, TargetSetConfig, VirtualFrom,
};
use mixtrain::train::{run, RunOptions};

struct Method {
    name: &'static str,
    apply: fn(&mut Config),
}

/// TiKMiX-M measuring each update's `candidates` (besides the K one-source mixtures) on
/// `windows` target windows. These variants keep the virtual step from the updated
/// parameters, as when they were measured (the default until 2026-12-07), so their cached
/// runs stay what they are.
fn tikmix_m_budget(c: &mut Config, windows: usize, candidates: usize) {
    tikmix_m_virtual_from_updated(c);
    c.mixer.tikmix_m.val_sequences = windows;
    c.mixer.tikmix_m.candidates = candidates;
}

/// TiKMiX-M with probed G_k and the virtual step from the parameters after the update's
/// optimizer step (the default until 2026-12-07).
fn tikmix_m_virtual_from_updated(c: &mut Config) {
    c.mixer.kind = MixerKind::TikmixM;
    c.mixer.tikmix_m.virtual_from = Some(VirtualFrom::Updated);
}

/// The evidence guard with its opt-in effect gate (1 σ) and hold.
fn evidence_gated(c: &mut Config) {
    c.mixer.guard.kind = GuardKind::Evidence;
    c.mixer.guard.effect = 1.0;
    c.mixer.guard.hold = true;
}

/// TiKMiX-M with G_k from `samples` extra sequences of each source per update.
fn tikmix_m_extra_passes(c: &mut Config, samples: usize) {
    c.mixer.kind = MixerKind::TikmixM;
    c.mixer.tikmix_m.gradients = InfluenceFrom::ExtraPasses;
    c.mixer.tikmix_m.samples_per_source = samples;
}

const STATIC_BASELINES: &[&str] = &["uniform", "proportional", "temperature"];

const METHODS: &[Method] = &[
    Method {
        name: "uniform",
        apply: |_| {},
    },
    Method {
        name: "proportional",
        apply: |c| c.mixer.init = InitSpec::Named("proportional".into()),
    },
    Method {
        name: "temperature",
        apply: |c| c.mixer.init = InitSpec::Named("temperature".into()),
    },
    // Static, all weight on the target's training sources (one-source only): what a mixer
    // that knew the answer from step 0 would reach; bounds the "steps to uniform" column.
    Method {
        name: "target-only",
        apply: |c| {
            let target = c
                .target
                .sources
                .clone()
                .expect("target-only needs SCENARIO=one-source");
            c.mixer.init = InitSpec::Explicit(target.into_iter().map(|t| (t, 1.0)).collect());
        },
    },
    Method {
        name: "fastmix",
        apply: |c| c.mixer.kind = MixerKind::Fastmix,
    },
    // The target-directed mixers with their guard (`mixer.guard.kind = "trust-region"`).
    Method {
        name: "fastmix-guarded",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        },
    },
    Method {
        name: "fastmix-lr1-guarded",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 1.0;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        },
    },
    // The evidence guard (`mixer.guard.kind = "evidence"`): the radius opens as the signal
    // proves consistent. `-gated`: with the opt-in effect gate and hold (a source's t counts
    // only with an effect of at least 1 σ, and the opening never closes).
    Method {
        name: "fastmix-evidence",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.guard.kind = GuardKind::Evidence;
        },
    },
    Method {
        name: "fastmix-lr1-evidence",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 1.0;
            c.mixer.guard.kind = GuardKind::Evidence;
        },
    },
    Method {
        name: "fastmix-evidence-gated",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            evidence_gated(c);
        },
    },
    Method {
        name: "fastmix-lr1-evidence-gated",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 1.0;
            evidence_gated(c);
        },
    },
    Method {
        name: "tikmix-guarded",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        },
    },
    Method {
        name: "tikmix-m-guarded",
        apply: |c| {
            tikmix_m_virtual_from_updated(c);
            c.mixer.guard.kind = GuardKind::TrustRegion;
        },
    },
    // tikmix blending half of each update's argmax in (probe window), guarded.
    Method {
        name: "tikmix-blend0.5-guarded",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.blend = 0.5;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        },
    },
    // fastmix with a 3x larger step on the mixture logits.
    Method {
        name: "fastmix-lr0.3",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 0.3;
        },
    },
    // fastmix with a 10x larger step: the mixture can follow a consistent signal within a
    // few updates (Adam moves each logit by at most about lr per update).
    Method {
        name: "fastmix-lr1",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 1.0;
        },
    },
    // fastmix for a user who only cares about the target (`target_only_fastmix`), then with
    // no mixer update before step 30 (the end of the learning rate's warmup, when a g_val that
    // serves five updates is least like a later one), a fresh g_val at every update, or an
    // update every 5 steps instead of 10 (twice the probed steps).
    Method {
        name: "fastmix-lr1-floor0.001",
        apply: target_only_fastmix,
    },
    Method {
        name: "fastmix-lr1-floor0.001-warm30",
        apply: |c| {
            target_only_fastmix(c);
            c.mixer.warmup_steps = 30;
        },
    },
    Method {
        name: "fastmix-lr1-floor0.001-gval1",
        apply: |c| {
            target_only_fastmix(c);
            c.mixer.fastmix.gval_every = 1;
        },
    },
    Method {
        name: "fastmix-lr1-floor0.001-every5",
        apply: |c| {
            target_only_fastmix(c);
            c.mixer.every = 5;
        },
    },
    // fastmix measuring s on every step of each update's window (one g_val per window).
    Method {
        name: "fastmix-window",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.probe_steps = ProbeSteps::Window;
        },
    },
    Method {
        name: "fastmix-window-lr0.3",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.probe_steps = ProbeSteps::Window;
            c.mixer.fastmix.lr = 0.3;
        },
    },
    // fastmix with a fresh g_val for every update (`mixer.fastmix.gval_every = 1`, the default before
    // 2026-11-24; the default reuses one for 5 updates).
    Method {
        name: "fastmix-gval1",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.gval_every = 1;
        },
    },
    // fastmix with a 3x smaller step on the mixture logits.
    Method {
        name: "fastmix-lr0.03",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.lr = 0.03;
        },
    },
    // fastmix without its per-update standardisation of s (the default before it).
    Method {
        name: "fastmix-raw",
        apply: |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.normalise = SignalNorm::None;
        },
    },
    // The default: I_k from every probed step of the update's window (one g_val per window).
    Method {
        name: "tikmix",
        apply: |c| c.mixer.kind = MixerKind::Tikmix,
    },
    // I_k from 32 extra sequences of each source, forward and backward, at every update (the
    // default before 2026-11-25).
    Method {
        name: "tikmix-extra-passes",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::ExtraPasses;
        },
    },
    // I_k from the probed training step before each update only.
    Method {
        name: "tikmix-probe",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::Probe;
            c.mixer.tikmix.probe_steps = ProbeSteps::Last;
        },
    },
    // The default's settings spelled out (the name the results before 2026-11-25 use).
    Method {
        name: "tikmix-probe-window",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::Probe;
            c.mixer.tikmix.probe_steps = ProbeSteps::Window;
        },
    },
    // Extra passes with blend 0.5 (p moves half-way to softmax(Ĩ/τ) per update), the
    // defaults before 2026-11-25; the default 0.1 averages the signal over about ten updates.
    Method {
        name: "tikmix-blend0.5",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::ExtraPasses;
            c.mixer.tikmix.blend = 0.5;
        },
    },
    Method {
        name: "tikmix-probe-blend0.5",
        apply: |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::Probe;
            c.mixer.tikmix.probe_steps = ProbeSteps::Last;
            c.mixer.tikmix.blend = 0.5;
        },
    },
    // The default: G_k from the traced step before each update (sources it did not draw:
    // extra passes), the virtual step from the parameters they were taken at.
    Method {
        name: "tikmix-m",
        apply: |c| c.mixer.kind = MixerKind::TikmixM,
    },
    // The same with the virtual step from the parameters after the update's own optimizer
    // step (the default until 2026-12-07; its runs were cached as `tikmix-m` before).
    Method {
        name: "tikmix-m-virtual-updated",
        apply: tikmix_m_virtual_from_updated,
    },
    // The earlier defaults: 12 candidates besides the K one-source mixtures, each measured
    // on 16 target windows (now 3 on 3).
    Method {
        name: "tikmix-m-wide",
        apply: |c| tikmix_m_budget(c, 16, 12),
    },
    // Between the two: the old 12 candidates on the new 3 windows, the new 3 on the old 16.
    Method {
        name: "tikmix-m-12-candidates",
        apply: |c| tikmix_m_budget(c, 3, 12),
    },
    Method {
        name: "tikmix-m-16-windows",
        apply: |c| tikmix_m_budget(c, 16, 3),
    },
    // About the default's window-forwards per update, more windows and fewer candidates.
    Method {
        name: "tikmix-m-6-windows-2-candidates",
        apply: |c| tikmix_m_budget(c, 6, 2),
    },
    Method {
        name: "tikmix-m-8-windows-1-candidate",
        apply: |c| tikmix_m_budget(c, 8, 1),
    },
    // G_k from every traced step of each update's window (their mean).
    Method {
        name: "tikmix-m-probe-window",
        apply: |c| {
            tikmix_m_virtual_from_updated(c);
            c.mixer.tikmix_m.probe_steps = ProbeSteps::Window;
        },
    },
    // G_k from 16 extra sequences of each source per update (the default before 2026-12-06).
    Method {
        name: "tikmix-m-extra-passes",
        apply: |c| tikmix_m_extra_passes(c, 16),
    },
    // Extra passes with as few sequences per source as the probed step has at the uniform
    // start (3 of 16): does the probe trail the extra passes for its sample size alone?
    Method {
        name: "tikmix-m-extra-passes-3",
        apply: |c| tikmix_m_extra_passes(c, 3),
    },
    Method {
        name: "odm",
        apply: |c| c.mixer.kind = MixerKind::Odm,
    },
    Method {
        name: "doremi",
        apply: |c| c.mixer.kind = MixerKind::Doremi,
    },
    // doremi's pool at half the size (8 sequences per source): half the forward per update.
    Method {
        name: "doremi-pool8",
        apply: |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.samples_per_source = 8;
        },
    },
    // doremi with λ_k from the step before each update (one reference forward of its batch).
    Method {
        name: "doremi-step",
        apply: |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.excess_from = ExcessFrom::Step;
        },
    },
    // doremi with λ_k on 16 fresh sequences per source at each update (the default before
    // 2026-11-24; the default scores one fixed pool).
    Method {
        name: "doremi-samples",
        apply: |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.excess_from = ExcessFrom::Samples;
        },
    },
    Method {
        name: "ado",
        apply: |c| c.mixer.kind = MixerKind::Ado,
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

/// fastmix with a 10x larger step (`lr = 1`) and a floor of 0.001 per source instead of 0.2/K:
/// the mixture follows a consistent signal within a few updates and can put nearly all of the
/// batch on what helps the target (the default floor keeps 0.18 of it on the other eight of
/// nine sources).
fn target_only_fastmix(c: &mut Config) {
    c.mixer.kind = MixerKind::Fastmix;
    c.mixer.fastmix.lr = 1.0;
    c.mixer.min_weight = Some(0.001);
}

/// One DeMix search (configs/demix-quickstart.toml, seed 42) seeds every seed's run of the
/// `all` scenario: the seed mixture is a data decision made once.
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

/// One evaluation line: step, target loss, the mean and the worst of the training sources'
/// validation losses.
struct Eval {
    step: u64,
    target: f64,
    mean_source: f64,
    worst_source: f64,
}

/// A finished run: its evaluations and the largest weight of its final mixture.
struct Run {
    evals: Vec<Eval>,
    largest_weight: f64,
}

fn finished_run(run_dir: &Path, members: &[String]) -> Run {
    let text = std::fs::read_to_string(run_dir.join("mixture.json")).expect("mixture.json");
    let mixture: serde_json::Value = serde_json::from_str(&text).expect("mixture.json parses");
    let largest_weight = mixture["final"]
        .as_object()
        .expect("mixture.json has final weights")
        .values()
        .filter_map(|w| w.as_f64())
        .fold(0.0, f64::max);
    Run {
        evals: evaluations(run_dir, members),
        largest_weight,
    }
}

/// The evaluations of a run, with the case's target loss: the mean over `members` of their
/// validation losses (sources or target sets), so one static run serves every case that trains
/// on the same sources.
fn evaluations(run_dir: &Path, members: &[String]) -> Vec<Eval> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let by_source = v.get("val_loss_by_source")?.as_object()?.clone();
            let loss = |m: &String| {
                by_source
                    .get(m)
                    .or_else(|| v.get("val_loss_by_target_set")?.get(m))
                    .and_then(|x| x.as_f64())
            };
            let target = members.iter().map(loss).sum::<Option<f64>>()? / members.len() as f64;
            let sources: Vec<f64> = by_source.values().filter_map(|x| x.as_f64()).collect();
            Some(Eval {
                step: v["step"].as_u64()?,
                target,
                mean_source: sources.iter().sum::<f64>() / sources.len() as f64,
                worst_source: by_source
                    .values()
                    .filter_map(|x| x.as_f64())
                    .fold(f64::MIN, f64::max),
            })
        })
        .collect()
}

/// A scenario's case: its name (a directory), how it changes the base config, the names of
/// its target's members, and whether it trains on the base's sources (then the static
/// baselines, which ignore the target, share their runs with every such case).
struct Case {
    name: String,
    configure: Box<dyn Fn(&mut Config)>,
    members: Vec<String>,
    same_sources: bool,
}

fn cases(scenario: &str, base: &Config) -> Vec<Case> {
    let names = base.source_names();
    match scenario {
        "all" => vec![Case {
            name: "all".into(),
            configure: Box::new(|_| {}),
            members: names.clone(),
            same_sources: true,
        }],
        "one-source" => {
            let target = std::env::var("TARGET").unwrap_or_else(|_| "man".into());
            assert!(
                names.contains(&target),
                "TARGET={target} is not a quickstart source ({names:?})"
            );
            vec![Case {
                name: format!("one-source-{target}"),
                members: vec![target.clone()],
                configure: Box::new(move |c| c.target.sources = Some(vec![target.clone()])),
                same_sources: true,
            }]
        }
        "leave-one-out" => {
            let held: Vec<String> = std::env::var("HELD_OUT")
                .map(|h| h.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_else(|_| names.clone());
            held.into_iter()
                .map(|name| {
                    assert!(
                        names.contains(&name),
                        "HELD_OUT: {name} is not a quickstart source ({names:?})"
                    );
                    Case {
                        name: format!("leave-out-{name}"),
                        members: vec![name.clone()],
                        same_sources: false,
                        configure: Box::new(move |c| {
                            let at = c
                                .data
                                .sources
                                .iter()
                                .position(|s| s.name == name)
                                .expect("checked above");
                            let source = c.data.sources.remove(at);
                            c.target.sets = vec![TargetSetConfig {
                                name: source.name,
                                path: source.path,
                                text_field: source.text_field,
                            }];
                            c.target.sources = None;
                        }),
                    }
                })
                .collect()
        }
        other => panic!("SCENARIO={other}: expected all, one-source or leave-one-out"),
    }
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// A method from `METHODS`, or a static tilt `oracle-<source><weight>` (`report::static_tilt`).
fn method_named(name: &str) -> report::ConfigChange {
    if let Some(method) = METHODS.iter().find(|m| m.name == name) {
        return Box::new(method.apply);
    }
    report::static_tilt(name).unwrap_or_else(|| panic!("unknown method {name}"))
}

fn parse_apply(name: &str) -> (String, Option<ApplyMode>) {
    match name.split_once('@') {
        Some((base, "sample")) => (base.into(), Some(ApplyMode::Sample)),
        Some((base, "reweight")) => (base.into(), Some(ApplyMode::Reweight)),
        Some((base, "hybrid")) => (base.into(), Some(ApplyMode::Hybrid)),
        Some((_, other)) => panic!("{name}: unknown apply {other:?} (sample, reweight, hybrid)"),
        None => (name.into(), None),
    }
}

fn main() -> mixtrain::Result<()> {
    let scenario = std::env::var("SCENARIO").unwrap_or_else(|_| "all".into());
    let seeds: Vec<u64> = std::env::var("SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut wanted: Vec<String> = match std::env::var("METHODS") {
        Ok(m) => m.split(',').map(|s| s.trim().to_string()).collect(),
        Err(_) if scenario == "all" => METHODS.iter().map(|m| m.name.to_string()).collect(),
        Err(_) => ["fastmix", "tikmix", "tikmix-m", "ado"]
            .map(String::from)
            .to_vec(),
    };
    // STATIC=uniform,temperature runs only those baselines (uniform always runs).
    let baselines: Vec<String> = std::env::var("STATIC")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_else(|_| STATIC_BASELINES.iter().map(|s| s.to_string()).collect());
    for (i, baseline) in STATIC_BASELINES.iter().enumerate() {
        let chosen = *baseline == "uniform" || baselines.iter().any(|b| b == baseline);
        if chosen && !wanted.iter().any(|w| w == baseline) {
            wanted.insert(i.min(wanted.len()), baseline.to_string());
        }
    }
    wanted.sort_by_key(|w| w != "uniform");
    if wanted.iter().any(|m| m.contains("+demix")) {
        ensure_demix_seed()?;
    }
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    // The baseline is the static uniform mixture, whatever the quickstart's own mixer is;
    // every method runs at mixtrain's default apply unless it names one.
    base.mixer.kind = MixerKind::Static;
    base.mixer.init = InitSpec::Named("uniform".into());
    base.mixer.apply = MixerConfig::default().apply;
    base.train.eval_every = 25;
    base.train.checkpoint_every = 0;
    let root = match std::env::var("CORPUS").as_deref() {
        Ok("quickstart") | Err(_) => PathBuf::from("target/comparison"),
        Ok("nine") => {
            report::add_nine_sources(&mut base);
            PathBuf::from("target/comparison-nine")
        }
        Ok(other) => panic!("CORPUS={other}: expected quickstart or nine"),
    };
    // RUNS=dir keeps this version's runs apart from cached runs of an earlier version.
    let root = std::env::var("RUNS").map(PathBuf::from).unwrap_or(root);

    for case in cases(&scenario, &base) {
        let mut rows: Vec<(String, Vec<Run>)> = Vec::new();
        for wanted_name in &wanted {
            let (name, apply) = parse_apply(wanted_name);
            let apply_method = method_named(&name);
            let mut runs = Vec::new();
            for &seed in &seeds {
                let mut config = base.clone();
                (case.configure)(&mut config);
                apply_method(&mut config);
                if let Some(apply) = apply {
                    config.mixer.apply = apply;
                }
                config.run.seed = seed;
                let shared = case.same_sources && STATIC_BASELINES.contains(&wanted_name.as_str());
                let dir = if shared { "static" } else { &case.name };
                config.run.out_dir = root.join(dir).join(format!("{wanted_name}-seed{seed}"));
                if config.run.out_dir.join("mixture.json").is_file() {
                    eprintln!("reusing finished run {}", config.run.out_dir.display());
                } else {
                    // An unfinished run is started over, unless another bench process is
                    // training in it right now (two processes would write one directory).
                    if config.run.out_dir.is_dir() {
                        if let Err(e) = mixtrain::run_lock::RunLock::acquire(&config.run.out_dir) {
                            panic!("{}: {e}", config.run.out_dir.display());
                        }
                    }
                    let _ = std::fs::remove_dir_all(&config.run.out_dir);
                    eprintln!("running {} {wanted_name} seed {seed}", case.name);
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
                runs.push(finished_run(&config.run.out_dir, &case.members));
            }
            rows.push((wanted_name.clone(), runs));
        }
        print_table(&case.name, &rows, &seeds, base.train.steps);
    }
    // One region per scenario (and target, held-out sources and corpus), so that one
    // scenario's rerun keeps the others.
    let knob = |name: &str| std::env::var(name).unwrap_or_default();
    let region = [
        scenario.clone(),
        knob("TARGET"),
        knob("HELD_OUT"),
        knob("CORPUS"),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .cloned()
    .collect::<Vec<_>>()
    .join(" ");
    report::finish_case(
        "mixer_comparison",
        &region,
        "mixing",
        &[
            "SCENARIO",
            "SEEDS",
            "METHODS",
            "STATIC",
            "TARGET",
            "HELD_OUT",
            "CORPUS",
            "RUNS",
            "PAIR",
            "RAYON_NUM_THREADS",
        ],
    );
    Ok(())
}

fn print_table(case: &str, rows: &[(String, Vec<Run>)], seeds: &[u64], steps: usize) {
    let last = |run: &Run| run.evals.last().expect("a run logs evaluations").target;
    let finals = |runs: &Vec<Run>| runs.iter().map(last).collect::<Vec<f64>>();
    let uniform = finals(&rows[0].1);
    let best_static = rows
        .iter()
        .filter(|(n, _)| STATIC_BASELINES.contains(&n.as_str()))
        .min_by(|a, b| {
            mean_sd(&finals(&a.1))
                .0
                .total_cmp(&mean_sd(&finals(&b.1)).0)
        })
        .expect("the static baselines always run");
    let best = finals(&best_static.1);
    say!(
        "\n### {case} (seeds {seeds:?}; best static: {})\n",
        best_static.0
    );
    say!(
        "| method | final target loss | Δ vs uniform | Δ vs best static | final mean / worst \
         source loss | largest final weight (max over seeds) | step reaching uniform's final \
         target loss (per seed) | as a fraction of {steps} steps (max) |"
    );
    say!("|---|---|---|---|---|---|---|---|");
    for (name, runs) in rows {
        let f = finals(runs);
        let (mean, sd) = mean_sd(&f);
        let paired =
            |other: &[f64]| mean_sd(&f.iter().zip(other).map(|(a, b)| a - b).collect::<Vec<_>>());
        let (du, du_sd) = paired(&uniform);
        let (db, db_sd) = paired(&best);
        let final_mean = |field: fn(&Eval) -> f64| {
            let values: Vec<f64> = runs
                .iter()
                .map(|r| field(r.evals.last().expect("evaluations")))
                .collect();
            mean_sd(&values).0
        };
        let (mean_source, worst) = (
            final_mean(|e| e.mean_source),
            final_mean(|e| e.worst_source),
        );
        let largest = runs.iter().map(|r| r.largest_weight).fold(0.0, f64::max);
        let reach: Vec<Option<u64>> = runs
            .iter()
            .zip(&uniform)
            .map(|(run, target)| {
                let reached = run.evals.iter().find(|e| e.target <= *target);
                reached.map(|e| e.step)
            })
            .collect();
        let reach_text: Vec<String> = reach
            .iter()
            .map(|r| r.map_or("never".into(), |s| s.to_string()))
            .collect();
        let fraction = if reach.iter().all(Option::is_some) {
            let max = reach.iter().flatten().max().copied().unwrap_or(0);
            format!("{:.2}", max as f64 / steps as f64)
        } else {
            "-".into()
        };
        say!(
            "| {name} | {mean:.4} ± {sd:.4} | {du:+.4} ± {du_sd:.4} | {db:+.4} ± {db_sd:.4} | \
             {mean_source:.4} / {worst:.4} | {largest:.2} | {} | {fraction} |",
            reach_text.join(", ")
        );
    }
    say!("\n(mean ± sd over seeds; Δ paired by seed; losses in nats per byte-token)");
    // PAIR=method: every method's final target loss against that one's, paired by seed.
    let pair = std::env::var("PAIR").ok();
    let Some((pair, pair_runs)) = pair.and_then(|p| rows.iter().find(|(n, _)| *n == p)) else {
        return;
    };
    let against = finals(pair_runs);
    say!("\nΔ final target loss vs {pair} (paired by seed; per seed):");
    for (name, runs) in rows.iter().filter(|(n, _)| n != pair) {
        let d: Vec<f64> = finals(runs)
            .iter()
            .zip(&against)
            .map(|(a, b)| a - b)
            .collect();
        let (mean, sd) = mean_sd(&d);
        let per_seed: Vec<String> = d.iter().map(|x| format!("{x:+.4}")).collect();
        say!("- {name}: {mean:+.4} ± {sd:.4} ({})", per_seed.join(", "));
    }
}
