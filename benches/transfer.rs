//! Does a mixture found on a small proxy hold for a larger model trained longer?
//!
//! For each seed: the online mixer (MIXER, default fastmix, at its defaults) runs on the
//! proxy (the quickstart model, PROXY_STEPS = 150 steps), giving three mixtures: its final
//! weights, their average over training, and its trajectory replayed as a schedule
//! (`mixer.kind = "schedule"`, mapped by fraction of training); `final-capped` is the final
//! mixture exported with `--max-epochs 1` for the large run's tokens (no source repeats).
//! Each candidate then trains statically on the proxy and on the large model (d_model 256, 6 layers, d_ff 1024: 6.7×
//! the proxy's parameters, LARGE_STEPS = 2 × PROXY_STEPS), beside the baselines uniform,
//! proportional, temperature (τ = 0.5; `temperature-0.3`, `temperature-0.7`), BiMix's
//! entropy seed (`entropy`), DeMix's merged-component seed (`demix`: one `mixtrain demix`
//! search on the proxy at seed 1, under the scenario's `demix/`, shared by every seed) and,
//! as `online`, the mixer run directly on each model. Prints per model: final target loss
//! (mean ± sd), its difference to uniform and to the best baseline paired by seed, the first
//! evaluated step reaching uniform's final target loss, the epochs the target source and the
//! most repeated source went through, wall time; then the Spearman correlation between the
//! proxy's and the large model's ordering of the candidates.
//!
//!     cargo bench --bench transfer -- --out                      # one-source man, 3 seeds
//!     SEEDS=1 CANDIDATES=uniform,final cargo bench --bench transfer
//!     SCENARIO=all MIXER=tikmix cargo bench --bench transfer
//!     MIXER_SETTINGS=lr1-guarded CANDIDATES=uniform,final cargo bench --bench transfer
//!
//! SCENARIO: `one-source` (TARGET, default `man`: the target is one training source),
//! `held-out` (TARGET is removed from training and becomes a validation-only target set) or
//! `all` (the mean over every source). `CORPUS=nine` adds Rust, Go, kernel docs and licence
//! texts to the quickstart's five (`python3 data/nine/build.py` builds them once), so a
//! held-out target has a neighbour of its own domain among the other eight; `CORPUS=nine-skewed`
//! cuts those nine to shares from 1 to 1/8 of their files (`report::NINE_SKEWED_SHARES`), so
//! proportional and temperature differ from uniform. CANDIDATES: a subset of
//! uniform,final,final-capped,average,schedule,online,proportional,temperature,temperature-0.3,
//! temperature-0.7,entropy,demix (the default, in the
//! order they run: every seed's proxy runs first, then the large runs candidate by
//! candidate, so an interrupted bench has whole rows). Runs are cached under
//! target/transfer/ (a finished run is reused; an unfinished one resumes from its last
//! checkpoint, every 50 steps). A candidate `oracle-<source><weight>` (e.g. `oracle-kdocs0.4`)
//! is a static mixture with that weight on one source and the rest shared equally: the
//! winner of a screen of static mixtures on the proxy, RegMix's way, not counted as a
//! baseline.

#[macro_use]
mod report;

use std::path::{Path, PathBuf};

use mixtrain::config::{Config, GuardKind, InitSpec, MixerConfig, MixerKind, TargetSetConfig};
use mixtrain::mixture_export::{export_mixture, MixtureExport, MixtureFormat, MixtureUse};
use mixtrain::repetition::{PlannedTokens, RepetitionCap};
use mixtrain::train::{run, RunOptions};
use mixtrain::trajectory::Trajectory;

const ALL_CANDIDATES: &str =
    "uniform,final,final-capped,average,schedule,online,proportional,temperature,temperature-0.3,temperature-0.7,entropy,demix";
/// The static mixtures that need no online proxy run: `temperature` is τ = 0.5, `entropy`
/// BiMix's conditional-entropy seed, `demix` DeMix's merged-component seed.
const BASELINES: [&str; 7] = [
    "uniform",
    "proportional",
    "temperature",
    "temperature-0.3",
    "temperature-0.7",
    "entropy",
    "demix",
];

struct Setup {
    base: Config,
    mixer: MixerKind,
    target: Vec<String>,
    /// MIXER_SETTINGS other than `defaults`: `lr1-guarded` (fastmix `lr = 1` inside the
    /// trust-region guard, the nine-source comparison's fastest setting where the target has
    /// a neighbour). Names the runs and the results region.
    settings: Option<String>,
    root: PathBuf,
    proxy_steps: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Model {
    Proxy,
    Large,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Proxy => "proxy",
            Model::Large => "large",
        }
    }
}

/// What one finished run measured.
struct Outcome {
    /// (step, target loss) at each evaluation.
    evals: Vec<(u64, f64)>,
    epochs_target: f64,
    epochs_max: f64,
    wall_s: f64,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

fn setup() -> mixtrain::Result<Setup> {
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    base.mixer = MixerConfig::default();
    base.train.eval_every = 25;
    base.train.checkpoint_every = 50;
    let corpus = env_or("CORPUS", "quickstart");
    match corpus.as_str() {
        "quickstart" => {}
        "nine" | "nine-skewed" => report::add_nine_sources(&mut base),
        other => panic!("CORPUS={other}: expected quickstart, nine or nine-skewed"),
    }
    let names = base.source_names();
    let scenario = env_or("SCENARIO", "one-source");
    let target = match scenario.as_str() {
        "one-source" | "held-out" => vec![env_or("TARGET", "man")],
        "all" => names.clone(),
        other => panic!("SCENARIO={other}: expected one-source, held-out or all"),
    };
    let known = target.iter().all(|t| names.contains(t));
    assert!(known, "TARGET must be a source of the corpus");
    if scenario == "held-out" {
        hold_out(&mut base, &target[0]);
    } else if target.len() < names.len() {
        base.target.sources = Some(target.clone());
    }
    if corpus == "nine-skewed" {
        // After the hold-out, so a held-out target is evaluated on its whole file.
        report::skew_sources(&mut base, &report::NINE_SKEWED_SHARES)
            .expect("writing target/corpora/nine-skewed/");
    }
    let mixer: MixerKind = serde_json::from_value(env_or("MIXER", "fastmix").into())
        .expect("MIXER: a mixer name (fastmix, tikmix, ...)");
    let proxy_steps: usize = env_or("PROXY_STEPS", "150").parse().expect("PROXY_STEPS");
    let case = match scenario.as_str() {
        "all" => "all".to_string(),
        _ => format!("{scenario}-{}", target[0]),
    };
    let root = match corpus.as_str() {
        "quickstart" => PathBuf::from("target/transfer").join(case),
        _ => PathBuf::from("target/transfer").join(corpus).join(case),
    };
    Ok(Setup {
        base,
        mixer,
        target,
        settings: mixer_settings(mixer),
        root,
        proxy_steps,
    })
}

/// Moves source `name` out of training into a validation-only target set.
fn hold_out(base: &mut Config, name: &str) {
    let at = base
        .data
        .sources
        .iter()
        .position(|s| s.name == name)
        .expect("checked");
    let source = base.data.sources.remove(at);
    base.target.sets = vec![TargetSetConfig {
        name: source.name,
        path: source.path,
        text_field: source.text_field,
    }];
    base.target.sources = None;
}

/// The config of `candidate` on `model` for `seed`; the proxy's online run must be done for
/// the candidates derived from it.
fn configure(setup: &Setup, candidate: &str, model: Model, seed: u64) -> Config {
    let mut c = setup.base.clone();
    c.run.seed = seed;
    c.train.steps = setup.proxy_steps;
    if model == Model::Large {
        c.model.d_model = 256;
        c.model.n_layers = 6;
        c.model.d_ff = 1024;
        c.train.steps = large_steps(setup);
    }
    let proxy_run = run_dir(setup, "online", Model::Proxy, seed);
    let mixer_name = format!("{:?}", setup.mixer).to_lowercase();
    let from_proxy = |use_final: bool| {
        let t = Trajectory::read(&proxy_run).expect("the proxy's online run finished");
        let w = if use_final {
            t.final_weights().to_vec()
        } else {
            t.average()
        };
        InitSpec::Explicit(t.names.iter().cloned().zip(w).collect())
    };
    match candidate {
        "uniform" | "proportional" | "temperature" => {
            c.mixer.init = InitSpec::Named(candidate.into())
        }
        "entropy" => c.mixer.init = InitSpec::Named("entropy:conditional".into()),
        "demix" => {
            let search = demix_dir(setup).join("demix");
            c.mixer.init = InitSpec::Named(format!("demix:{}", search.display()));
        }
        tau if tau.starts_with("temperature-") => {
            c.mixer.init = InitSpec::Named("temperature".into());
            c.mixer.temperature = tau["temperature-".len()..]
                .parse()
                .expect("temperature-TAU");
        }
        "final" => c.mixer.init = from_proxy(true),
        "final-capped" => c.mixer.init = capped_final(setup, &proxy_run),
        "average" => c.mixer.init = from_proxy(false),
        "schedule" => {
            c.mixer.kind = MixerKind::Schedule;
            c.mixer.schedule.from = Some(proxy_run);
        }
        "online" => {
            c.mixer.kind = setup.mixer;
            apply_settings(&mut c, setup.settings.as_deref());
        }
        tilt if tilt.starts_with("oracle-") => {
            let apply = report::static_tilt(tilt)
                .unwrap_or_else(|| panic!("{tilt}: expected oracle-<source><weight>"));
            apply(&mut c);
        }
        other => panic!("unknown candidate {other} ({ALL_CANDIDATES}); mixer {mixer_name}"),
    }
    c.run.out_dir = run_dir(setup, candidate, model, seed);
    c
}

fn large_steps(setup: &Setup) -> usize {
    let steps = env_or("LARGE_STEPS", &(2 * setup.proxy_steps).to_string());
    steps.parse().expect("LARGE_STEPS")
}

/// The proxy's final mixture as `mixtrain mixture --max-epochs 1 --tokens Nx` exports it for
/// the large run (N = its steps over the proxy's): no source repeats.
fn capped_final(setup: &Setup, proxy_run: &Path) -> InitSpec {
    let times = large_steps(setup) as f64 / setup.proxy_steps as f64;
    let options = MixtureExport {
        format: MixtureFormat::Json,
        what: MixtureUse::Final,
        steps: None,
        round_steps: 1,
        data_prefix: None,
        repetition_cap: Some(RepetitionCap {
            max_epochs: 1.0,
            tokens: PlannedTokens::TimesRun(times),
        }),
    };
    let text = export_mixture(proxy_run, &options).expect("the proxy's online run finished");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON export");
    InitSpec::Explicit(serde_json::from_value(json["weights"].clone()).expect("weights by name"))
}

/// MIXER_SETTINGS, checked: `None` for `defaults`.
fn mixer_settings(mixer: MixerKind) -> Option<String> {
    match env_or("MIXER_SETTINGS", "defaults").as_str() {
        "defaults" => None,
        "lr1-guarded" if mixer == MixerKind::Fastmix => Some("lr1-guarded".into()),
        "lr1-guarded" => panic!("MIXER_SETTINGS=lr1-guarded is a fastmix setting (MIXER)"),
        other => panic!("MIXER_SETTINGS={other}: expected defaults or lr1-guarded"),
    }
}

/// The online mixer's settings other than its defaults (MIXER_SETTINGS).
fn apply_settings(c: &mut Config, settings: Option<&str>) {
    if settings == Some("lr1-guarded") {
        c.mixer.fastmix.lr = 1.0;
        c.mixer.guard.kind = GuardKind::TrustRegion;
    }
}

fn run_dir(setup: &Setup, candidate: &str, model: Model, seed: u64) -> PathBuf {
    let mut mixer = format!("{:?}", setup.mixer).to_lowercase();
    if let Some(settings) = &setup.settings {
        mixer = format!("{mixer}-{settings}");
    }
    let name = match candidate {
        c if BASELINES.contains(&c) || c.starts_with("oracle-") => candidate.to_string(),
        _ => format!("{mixer}-{candidate}"),
    };
    setup
        .root
        .join(model.name())
        .join(format!("{name}-seed{seed}"))
}

/// Where the scenario's one DeMix search lives (its `demix/` holds mixture.json).
fn demix_dir(setup: &Setup) -> PathBuf {
    setup.root.join("demix")
}

/// Runs the scenario's DeMix search on the proxy (seed 1, `[demix]` defaults) unless it has
/// finished: the seed mixture is a data decision made once, as in `mixer_comparison`.
fn ensure_demix_search(setup: &Setup) -> mixtrain::Result<()> {
    let mut config = configure(setup, "uniform", Model::Proxy, 1);
    config.run.out_dir = demix_dir(setup);
    if config.run.out_dir.join("demix/mixture.json").is_file() {
        return Ok(());
    }
    eprintln!(
        "running the DeMix search in {}",
        config.run.out_dir.display()
    );
    mixtrain::demix::demix(config, mixtrain::demix::DemixOptions::default())?;
    Ok(())
}

/// Runs (or reuses, or resumes) one run and reads what it measured.
fn ensure(config: Config, target: &[String]) -> mixtrain::Result<Outcome> {
    let dir = config.run.out_dir.clone();
    if !dir.join("mixture.json").is_file() {
        let resume = dir.join("checkpoints").is_dir();
        eprintln!("running {} (resume: {resume})", dir.display());
        run(
            config,
            RunOptions {
                resume,
                progress: false,
            },
        )?;
    }
    Ok(outcome(&dir, target))
}

fn outcome(dir: &Path, target: &[String]) -> Outcome {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let evals = records
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("target_val_loss")?.as_f64()?)))
        .collect();
    let epochs = records
        .iter()
        .rev()
        .find_map(|r| r.get("epochs_by_source")?.as_object().cloned())
        .unwrap_or_default();
    let epoch = |name: &String| epochs.get(name).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let wall_s = records
        .iter()
        .rev()
        .find_map(|r| r["wall"]["elapsed_s"].as_f64())
        .unwrap_or(0.0);
    Outcome {
        evals,
        epochs_target: target.iter().map(epoch).fold(0.0, f64::max),
        epochs_max: epochs
            .values()
            .filter_map(|v| v.as_f64())
            .fold(0.0, f64::max),
        wall_s,
    }
}

fn main() -> mixtrain::Result<()> {
    let setup = setup()?;
    let seeds: Vec<u64> = env_or("SEEDS", "1,2,3")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let candidates: Vec<String> = env_or("CANDIDATES", ALL_CANDIDATES)
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(
        candidates.first().map(String::as_str),
        Some("uniform"),
        "CANDIDATES start with uniform"
    );
    // The proxy's online runs first: the candidates derived from them need them.
    let run_all = |candidate: &str, model: Model| {
        seeds
            .iter()
            .map(|&seed| ensure(configure(&setup, candidate, model, seed), &setup.target))
            .collect::<mixtrain::Result<Vec<_>>>()
    };
    run_all("online", Model::Proxy)?;
    if candidates.iter().any(|c| c == "demix") {
        ensure_demix_search(&setup)?;
    }
    let mut proxy = Vec::new();
    for candidate in &candidates {
        proxy.push((candidate.clone(), run_all(candidate, Model::Proxy)?));
    }
    let mut large = Vec::new();
    for candidate in &candidates {
        large.push((candidate.clone(), run_all(candidate, Model::Large)?));
    }
    let proxy_config = configure(&setup, "uniform", Model::Proxy, seeds[0]);
    let large_config = configure(&setup, "uniform", Model::Large, seeds[0]);
    say!(
        "\n## {} · mixer {:?} ({}) · seeds {seeds:?}\n",
        setup.root.file_name().unwrap().to_string_lossy(),
        setup.mixer,
        setup.settings.as_deref().unwrap_or("defaults")
    );
    say!(
        "proxy: {} steps, d_model {}, {} layers; large: {} steps, d_model {}, {} layers, d_ff {}",
        proxy_config.train.steps,
        proxy_config.model.d_model,
        proxy_config.model.n_layers,
        large_config.train.steps,
        large_config.model.d_model,
        large_config.model.n_layers,
        large_config.model.d_ff
    );
    print_table(Model::Proxy, &proxy, proxy_config.train.steps);
    print_table(Model::Large, &large, large_config.train.steps);
    print_rank_agreement(&proxy, &large, seeds.len());
    // One results region per corpus, scenario and mixer settings.
    let case = setup
        .root
        .strip_prefix("target/transfer")
        .expect("under target/transfer");
    let mut region = case.display().to_string();
    if let Some(settings) = &setup.settings {
        region = format!("{region}/{settings}");
    }
    report::finish_case(
        "transfer",
        &region,
        "transfer",
        &[
            "CORPUS",
            "SCENARIO",
            "TARGET",
            "MIXER",
            "MIXER_SETTINGS",
            "SEEDS",
            "CANDIDATES",
            "PROXY_STEPS",
            "LARGE_STEPS",
        ],
    );
    Ok(())
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn finals(runs: &[Outcome]) -> Vec<f64> {
    runs.iter()
        .map(|r| r.evals.last().expect("evaluations").1)
        .collect()
}

fn print_table(model: Model, rows: &[(String, Vec<Outcome>)], steps: usize) {
    let uniform = finals(&rows[0].1);
    let best = rows
        .iter()
        .filter(|(n, _)| BASELINES.contains(&n.as_str()))
        .min_by(|a, b| {
            mean_sd(&finals(&a.1))
                .0
                .total_cmp(&mean_sd(&finals(&b.1)).0)
        })
        .expect("uniform runs");
    let best_finals = finals(&best.1);
    say!(
        "\n### {} ({steps} steps; best baseline: {})\n",
        model.name(),
        best.0
    );
    say!(
        "| candidate | final target loss | Δ vs uniform | Δ vs best baseline | step reaching uniform's \
         final (per seed) | fraction (max) | epochs: target source / most repeated | wall s per run |"
    );
    say!("|---|---|---|---|---|---|---|---|");
    for (name, runs) in rows {
        let f = finals(runs);
        let (mean, sd) = mean_sd(&f);
        let paired = |o: &[f64]| mean_sd(&f.iter().zip(o).map(|(a, b)| a - b).collect::<Vec<_>>());
        let ((du, du_sd), (db, db_sd)) = (paired(&uniform), paired(&best_finals));
        let reach: Vec<Option<u64>> = runs
            .iter()
            .zip(&uniform)
            .map(|(r, u)| r.evals.iter().find(|e| e.1 <= *u).map(|e| e.0))
            .collect();
        let text: Vec<String> = reach
            .iter()
            .map(|r| r.map_or("never".into(), |s| s.to_string()))
            .collect();
        let fraction = match reach.iter().copied().collect::<Option<Vec<u64>>>() {
            Some(steps_reached) => {
                format!(
                    "{:.2}",
                    *steps_reached.iter().max().unwrap() as f64 / steps as f64
                )
            }
            None => "-".into(),
        };
        let epochs_t = mean_sd(&runs.iter().map(|r| r.epochs_target).collect::<Vec<_>>()).0;
        let epochs_m = mean_sd(&runs.iter().map(|r| r.epochs_max).collect::<Vec<_>>()).0;
        let wall = mean_sd(&runs.iter().map(|r| r.wall_s).collect::<Vec<_>>()).0;
        say!(
            "| {name} | {mean:.4} ± {sd:.4} | {du:+.4} ± {du_sd:.4} | {db:+.4} ± {db_sd:.4} | {} | {fraction} | {epochs_t:.2} / {epochs_m:.2} | {wall:.0} |",
            text.join(", ")
        );
    }
}

/// Spearman's ρ between the proxy's and the large model's ordering of the candidates run on
/// both: on the seed means, and per seed (mean ± sd).
fn print_rank_agreement(
    proxy: &[(String, Vec<Outcome>)],
    large: &[(String, Vec<Outcome>)],
    seeds: usize,
) {
    let both: Vec<(&Vec<Outcome>, &Vec<Outcome>)> = large
        .iter()
        .filter_map(|(n, l)| proxy.iter().find(|(p, _)| p == n).map(|(_, p)| (p, l)))
        .collect();
    if both.len() < 3 {
        say!("\n(rank agreement needs 3 or more candidates on both models)");
        return;
    }
    let proxy_means: Vec<f64> = both.iter().map(|b| mean_sd(&finals(b.0)).0).collect();
    let large_means: Vec<f64> = both.iter().map(|b| mean_sd(&finals(b.1)).0).collect();
    let rho = spearman(&proxy_means, &large_means);
    let per_seed: Vec<f64> = (0..seeds)
        .map(|s| {
            let p: Vec<f64> = both.iter().map(|b| finals(b.0)[s]).collect();
            let l: Vec<f64> = both.iter().map(|b| finals(b.1)[s]).collect();
            spearman(&p, &l)
        })
        .collect();
    let (m, sd) = mean_sd(&per_seed);
    say!(
        "\nSpearman ρ, proxy vs large ordering of {} candidates: {rho:.3} on seed means; {m:.3} ± {sd:.3} per seed",
        both.len()
    );
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    for (rank, &i) in order.iter().enumerate() {
        ranks[i] = rank as f64;
    }
    ranks
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let (ma, mb) = (mean_sd(&ra).0, mean_sd(&rb).0);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}
