//! `mixtrain demix`: a seed mixture from merged per-source models (DeMix, arXiv 2602.00747).
//! Train a shared base on the initial mixture, one component per source from it, then score
//! weighted merges θ(w) = Σ_k w_k θ_k of the components on the `[target]` validation data
//! (forward passes only) in rounds, fit a gradient-boosted-tree regressor from w to the merged
//! proxy's target loss, and take the mean of the best predicted candidates of a large pool.
//!
//! Everything lands in `run.out_dir/demix/`: base.safetensors, components/<source>.safetensors
//! (each written atomically; a restarted demix reuses finished ones), proxies.csv,
//! predicted_vs_measured.svg, mixture.json, and with `--validate M` validation.csv.

mod config;
mod merge;
mod search;
mod validate;

pub(crate) use config::DemixConfig;
pub(crate) use merge::Components;
pub(crate) use search::{cross_validated, spearman, CandidateSampler};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use serde_json::json;

use crate::backend::{dispatch, BackendTask, TrainBackend};
use crate::config::{ApplyMode, Config, InitSpec, MixerKind, MixtureInit};
use crate::error::{IoContext, Result};
use crate::fsutil::write_atomic;
use crate::mixer::normalise;
use crate::mixture_file::{MixtureFile, MIXTURE_FILE};
use crate::params::{collect_params, load_params, NamedTensor};
use crate::rng::Rng;
use crate::tensor_file::{read_safetensors, write_safetensors};
use crate::train::Session;

pub(crate) const DEMIX_DIR: &str = "demix";

/// Random stream of the candidate draws.
const RNG_STREAM: u64 = 0xDE31;

#[derive(Debug, Clone, Default)]
pub struct DemixOptions {
    /// Real models to train briefly on scored mixtures, to check the proxies' ranking.
    pub validate: usize,
}

#[derive(Debug, Clone)]
pub struct DemixSummary {
    pub dir: PathBuf,
    pub sources: Vec<String>,
    pub mixture: Vec<f64>,
    pub scored: usize,
    /// Spearman of out-of-fold predicted vs measured proxy target loss.
    pub cv_spearman: f64,
    /// Spearman of proxy vs actually-trained target loss (`--validate`).
    pub validation_spearman: Option<f64>,
}

/// Runs (or continues) the demix search of `config` on its backend.
pub fn demix(config: Config, options: DemixOptions) -> Result<DemixSummary> {
    dispatch(config.run.backend, DemixTask { config, options })
}

/// For `mixer.init = "demix"`: runs the search into out_dir/demix unless its mixture.json
/// exists. Generic over the backend so `mixtrain run` calls it on its own.
pub(crate) fn ensure_seed<B: TrainBackend>(config: &Config, device: &B::Device) -> Result<()> {
    if matches!(config.mixture_init()?, MixtureInit::Demix(None))
        && !config
            .run
            .out_dir
            .join(DEMIX_DIR)
            .join(MIXTURE_FILE)
            .is_file()
    {
        tracing::info!("mixer.init = \"demix\": running the demix search first");
        demix_search::<B>(config.clone(), DemixOptions::default(), device.clone())?;
    }
    Ok(())
}

struct DemixTask {
    config: Config,
    options: DemixOptions,
}

impl BackendTask for DemixTask {
    type Output = DemixSummary;
    fn run<B: TrainBackend>(self, device: B::Device, _: &'static str) -> Result<DemixSummary> {
        demix_search::<B>(self.config, self.options, device)
    }
}

/// The config of the base model: static mixer on the initial mixture (the tempered token
/// prior when the run's own init is the demix seed).
fn base_config(config: &Config) -> Result<Config> {
    let mut base = config.clone();
    base.mixer.kind = MixerKind::Static;
    if matches!(config.mixture_init()?, MixtureInit::Demix(_)) {
        base.mixer.init = InitSpec::Named("temperature".into());
        base.mixer.temperature = config.demix.prior_temperature;
    }
    base.train.steps = config.demix.base_steps.max(1);
    base.train.warmup_steps = base.train.warmup_steps.min(base.train.steps);
    Ok(base)
}

/// Trains `steps` steps on `mixture` (sampled, static) starting from `start`; returns the
/// parameters.
fn train_from<B: TrainBackend>(
    base: &Config,
    start: &BTreeMap<String, NamedTensor>,
    mixture: &[f64],
    steps: usize,
    device: &B::Device,
) -> Result<Vec<NamedTensor>> {
    let mut config = base.clone();
    config.mixer.init = InitSpec::Explicit(
        config
            .source_names()
            .into_iter()
            .zip(mixture.iter().copied())
            .collect(),
    );
    // Sampling: a one-source mixture under "reweight" would spend most of every batch on
    // sequences of weight 0.
    config.mixer.apply = ApplyMode::Sample;
    config.train.steps = steps;
    config.train.warmup_steps = config.train.warmup_steps.min(steps);
    let mut session = Session::<B>::build(config, device.clone())?;
    session.trainer.model = load_params(session.trainer.model, start, Path::new("demix base"))?;
    for _ in 0..steps {
        session.train_step()?;
    }
    Ok(collect_params(&session.trainer.model))
}

/// A merged candidate's validation loss per source and its target loss.
type Scored = (Vec<f64>, f64);

/// A model's parameters by name.
type NamedParams = BTreeMap<String, NamedTensor>;

fn by_name(tensors: Vec<NamedTensor>) -> NamedParams {
    tensors.into_iter().map(|t| (t.name.clone(), t)).collect()
}

/// Loads `path` if a finished run left it, else computes and saves it.
fn cached(
    path: &Path,
    compute: impl FnOnce() -> Result<Vec<NamedTensor>>,
) -> Result<BTreeMap<String, NamedTensor>> {
    if path.is_file() {
        tracing::info!(path = %path.display(), "reusing");
        return read_safetensors(path);
    }
    let tensors = compute()?;
    write_safetensors(path, &tensors, &[])?; // atomic: a killed run never leaves half a file
    Ok(by_name(tensors))
}

/// One scored proxy.
struct Proxy {
    round: usize,
    weights: Vec<f64>,
    losses: Vec<f64>,
    target_loss: f64,
    /// The regressor's prediction when the proxy was chosen (rounds after the first).
    predicted: Option<f64>,
}

fn demix_search<B: TrainBackend>(
    config: Config,
    options: DemixOptions,
    device: B::Device,
) -> Result<DemixSummary> {
    let dm = config.demix.clone();
    let dir = config.run.out_dir.join(DEMIX_DIR);
    // Two demix searches (or a search and a run) must not write the same directory: the lock
    // first, so that a refused search creates nothing.
    let out_dir = &config.run.out_dir;
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    let _lock = crate::run_lock::RunLock::acquire(out_dir)?;
    let base = base_config(&config)?;

    // The scorer holds the sources and their fixed validation windows; its model is the
    // seeded initial model, which the base (or, with base_steps = 0, the components) start from.
    let scorer = Session::<B>::build(base.clone(), device.clone())?;
    let names = scorer.source_names();
    let target = scorer.mixing.target.clone();
    let (start, components) = train_components::<B>(&base, &scorer, &dir, &device)?;

    // One model is mapped to each merge in turn.
    let template = scorer.trainer.model.valid();
    let score = |weights: &[f64]| -> Result<Scored> {
        let merged = components.merge_into(template.clone(), weights)?;
        let val = scorer.evaluate_model(&merged);
        let target_loss = val.target(&target);
        Ok((val.sources, target_loss))
    };
    let prior = normalise(
        &scorer
            .batches
            .sources
            .iter()
            .map(|s| (s.train.len() as f64).powf(dm.prior_temperature))
            .collect::<Vec<_>>(),
    );
    let mut sampler = CandidateSampler::new(prior.clone(), dm.concentrations.clone(), dm.max_ratio);
    let mut rng = Rng::new(config.run.seed, RNG_STREAM);
    let proxies = score_rounds(&dm, &mut sampler, &mut rng, &score)?;
    let (x, y) = training_rows(&proxies);
    let mixture = seed_mixture(&x, &y, &mut sampler, &mut rng, &dm, names.len());
    let seed = score(&mixture)?;
    let out_of_fold = cross_validated(&x, &y, 5);
    let cv_spearman = spearman(&out_of_fold, &y);
    write_diagnostics(&dir, &names, &proxies, &y, &out_of_fold)?;

    let validation_spearman = match options.validate {
        0 => None,
        n => Some(validate::validate::<B>(
            &base, &start, &proxies, n, &dir, &names, &scorer, &target, &device,
        )?),
    };
    let summary = DemixSummary {
        dir,
        sources: names,
        mixture,
        scored: proxies.len(),
        cv_spearman,
        validation_spearman,
    };
    write_seed(&summary, &scorer, &prior, &proxies, seed)?;
    Ok(summary)
}

/// The base model (trained on the initial mixture, or the seeded initial model with
/// `base_steps = 0`) and one component per source trained from it, each reused from
/// `dir` when a previous search finished it.
fn train_components<B: TrainBackend>(
    base: &Config,
    scorer: &Session<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<(NamedParams, Components<B::InnerBackend>)> {
    let dm = &base.demix;
    let initial = &scorer.mixing.initial.weights;
    let k = initial.len();
    let components_dir = dir.join("components");
    std::fs::create_dir_all(&components_dir).at(&components_dir)?;
    let start = if dm.base_steps > 0 {
        cached(&dir.join("base.safetensors"), || {
            tracing::info!(steps = dm.base_steps, "training the demix base model");
            let fresh = by_name(collect_params(&scorer.trainer.model));
            train_from::<B>(base, &fresh, initial, dm.base_steps, device)
        })?
    } else {
        by_name(collect_params(&scorer.trainer.model))
    };
    let mut components = Vec::with_capacity(k);
    for (i, name) in scorer.source_names().iter().enumerate() {
        let path = components_dir.join(format!("{name}.safetensors"));
        let component = cached(&path, || {
            tracing::info!(source = %name, steps = dm.component_steps, "training a demix component");
            let mixture: Vec<f64> = (0..k)
                .map(|j| {
                    (1.0 - dm.general_fraction) * f64::from(i == j)
                        + dm.general_fraction * initial[j]
                })
                .collect();
            train_from::<B>(base, &start, &mixture, dm.component_steps, device)
        })?;
        components.push(component.into_values().collect::<Vec<_>>());
    }
    let components = Components::<B::InnerBackend>::new(&components, device)?;
    Ok((start, components))
}

/// The scoring rounds: random candidates first, then in each round the regressor's best
/// predicted of a fresh pool, each merged and scored.
fn score_rounds(
    dm: &DemixConfig,
    sampler: &mut CandidateSampler,
    rng: &mut Rng,
    score: &dyn Fn(&[f64]) -> Result<Scored>,
) -> Result<Vec<Proxy>> {
    let mut proxies: Vec<Proxy> = Vec::new();
    for round in 0..dm.rounds {
        let n = (dm.first_round >> round).max(1);
        let chosen: Vec<(Vec<f64>, Option<f64>)> = if round == 0 {
            sampler
                .draw(rng, n)
                .into_iter()
                .map(|w| (w, None))
                .collect()
        } else {
            let (x, y) = training_rows(&proxies);
            let model = search::fit(&x, &y);
            let pool = sampler.draw(rng, dm.pool);
            let predicted: Vec<f64> = pool.iter().map(|w| model.predict(w)).collect();
            search::lowest(&predicted, n)
                .into_iter()
                .map(|i| (pool[i].clone(), Some(predicted[i])))
                .collect()
        };
        tracing::info!(round, proxies = chosen.len(), "scoring merged proxies");
        for (weights, predicted) in chosen {
            sampler.mark(&weights);
            let (losses, target_loss) = score(&weights)?;
            proxies.push(Proxy {
                round,
                weights,
                losses,
                target_loss,
                predicted,
            });
        }
    }
    Ok(proxies)
}

/// The seed: the mean of the `top_k` best predicted candidates of a final pool, by a
/// regressor fitted on every scored proxy (rows `x`, target losses `y`).
fn seed_mixture(
    x: &[Vec<f64>],
    y: &[f64],
    sampler: &mut CandidateSampler,
    rng: &mut Rng,
    dm: &DemixConfig,
    k: usize,
) -> Vec<f64> {
    let model = search::fit(x, y);
    let pool = sampler.draw(rng, dm.pool);
    let predicted: Vec<f64> = pool.iter().map(|w| model.predict(w)).collect();
    let best = search::lowest(&predicted, dm.top_k);
    let mut mixture = vec![0.0; k];
    for &i in &best {
        for (m, w) in mixture.iter_mut().zip(&pool[i]) {
            *m += w / best.len() as f64;
        }
    }
    mixture
}

/// proxies.csv and the scatter of out-of-fold predicted against measured target loss.
fn write_diagnostics(
    dir: &Path,
    names: &[String],
    proxies: &[Proxy],
    y: &[f64],
    out_of_fold: &[f64],
) -> Result<()> {
    write_proxies(&dir.join("proxies.csv"), names, proxies, out_of_fold)?;
    crate::plot::scatter(
        &dir.join("predicted_vs_measured.svg"),
        "DeMix: regressor (out-of-fold) vs merged-proxy target loss",
        "measured target loss",
        "predicted target loss",
        &y.iter()
            .copied()
            .zip(out_of_fold.iter().copied())
            .collect::<Vec<_>>(),
    )
}

/// demix/mixture.json: the seed in "final", with what it was found from.
fn write_seed<B: TrainBackend>(
    summary: &DemixSummary,
    scorer: &Session<B>,
    prior: &[f64],
    proxies: &[Proxy],
    (seed_losses, seed_target_loss): Scored,
) -> Result<()> {
    let names = &summary.sources;
    let named = |v: &[f64]| -> serde_json::Value {
        names
            .iter()
            .cloned()
            .zip(v.iter().map(|x| json!(x)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let best_scored = proxies
        .iter()
        .min_by(|a, b| a.target_loss.total_cmp(&b.target_loss))
        .expect("at least one proxy");
    let target = &scorer.mixing.target;
    let extra = json!({
        "merged_seed_target_loss": seed_target_loss,
        "merged_seed_losses": named(&seed_losses),
        "prior": named(prior),
        "base_mixture": named(&scorer.mixing.initial.weights),
        "scored": proxies.len(),
        "cv_spearman": summary.cv_spearman,
        "validation_spearman": summary.validation_spearman,
        "best_scored": { "weights": named(&best_scored.weights), "target_loss": best_scored.target_loss },
        "target": target
            .sources
            .iter()
            .map(|&t| names[t].clone())
            .chain(target.sets.iter().map(|&j| scorer.batches.target_sets[j].name.clone()))
            .collect::<Vec<_>>(),
    });
    let mut file = MixtureFile::new(names, &summary.mixture);
    if let serde_json::Value::Object(fields) = extra {
        for (key, value) in fields {
            file = file.with(&key, value);
        }
    }
    file.write(&summary.dir.join(MIXTURE_FILE))
}

fn training_rows(proxies: &[Proxy]) -> (Vec<Vec<f64>>, Vec<f64>) {
    proxies
        .iter()
        .map(|p| (p.weights.clone(), p.target_loss))
        .unzip()
}

fn write_proxies(
    path: &Path,
    names: &[String],
    proxies: &[Proxy],
    out_of_fold: &[f64],
) -> Result<()> {
    let mut text = String::from("round");
    for name in names {
        write!(text, ",w_{name}").expect("String");
    }
    for name in names {
        write!(text, ",loss_{name}").expect("String");
    }
    text.push_str(",target_loss,predicted_when_chosen,predicted_out_of_fold\n");
    for (p, oof) in proxies.iter().zip(out_of_fold) {
        write!(text, "{}", p.round).expect("String");
        for v in p.weights.iter().chain(&p.losses) {
            write!(text, ",{v}").expect("String");
        }
        let chosen = p.predicted.map_or(String::new(), |v| v.to_string());
        writeln!(text, ",{},{chosen},{oof}", p.target_loss).expect("String");
    }
    write_atomic(path, text.as_bytes())
}
