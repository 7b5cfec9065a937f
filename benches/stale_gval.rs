//! How much a stale validation gradient changes the mixer's signal (`mixer.probe_steps =
//! "window"` reuses one g_val for the `every` steps of a window). On the quickstart model
//! trained with the uniform mixture, at several steps t:
//!
//! - g_old = g_val at step t, then AGE (default 9, `every − 1`) training steps;
//! - g_new and g_new' = two g_val from independent fresh validation batches at t + AGE;
//! - I_k = ⟨g, G_k⟩ for all three against the same per-source gradients G_k (32 sequences
//!   of each source), standardised across sources as fastmix does.
//!
//! Prints, per t, the distance of the standardised I from g_old to g_new (staleness plus
//! validation noise) beside the distance from g_new' to g_new (validation noise alone), and
//! whether the top-ranked source agrees. Staleness is acceptable where the first is not
//! larger than the second.
//!
//!     cargo bench --bench stale_gval
//!     TARGET=man AGE=9 AT=30,100,200 cargo bench --bench stale_gval

#[macro_use]
mod report;

use std::path::Path;

use mixtrain::backend::{dispatch, BackendTask, TrainBackend};
use mixtrain::config::{BackendKind, Config, MixerKind};
use mixtrain::train::Session;

struct Bench {
    config: Config,
    at: Vec<usize>,
    age: usize,
}

/// (s − mean) / sd over sources.
fn standardised(s: &[f64]) -> Vec<f64> {
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let sd = (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    s.iter().map(|x| (x - mean) / sd.max(1e-30)).collect()
}

/// RMS difference of two standardised vectors (0 = same, √2 ≈ 1.41 = uncorrelated).
fn distance(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (standardised(a), standardised(b));
    (a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

fn argmax(s: &[f64]) -> usize {
    (0..s.len())
        .max_by(|&i, &j| s[i].total_cmp(&s[j]))
        .unwrap_or(0)
}

impl BackendTask for Bench {
    type Output = Vec<(usize, f64, f64, bool, bool)>;
    fn run<B: TrainBackend>(
        self,
        device: B::Device,
        _backend: &'static str,
    ) -> mixtrain::Result<Self::Output> {
        let mut session = Session::<B>::build(self.config, device)?;
        let mut rows = Vec::new();
        for &t in &self.at {
            while session.step() < t {
                session.train_step()?;
            }
            let g_old = session.validation_gradient(2)?;
            for _ in 0..self.age {
                session.train_step()?;
            }
            let g_new = session.validation_gradient(2)?;
            let g_again = session.validation_gradient(2)?;
            let i = session.group_influences(&[&g_old, &g_new, &g_again], 32);
            rows.push((
                t,
                distance(&i[0], &i[1]),
                distance(&i[2], &i[1]),
                argmax(&i[0]) == argmax(&i[1]),
                argmax(&i[2]) == argmax(&i[1]),
            ));
        }
        Ok(rows)
    }
}

fn main() -> mixtrain::Result<()> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let at: Vec<usize> = env("AT", "30,100,200")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let age: usize = env("AGE", "9").parse().unwrap_or(9);
    let mut config = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    config.run.backend = BackendKind::Ndarray;
    config.mixer.kind = MixerKind::Static;
    config.train.steps = at.iter().max().copied().unwrap_or(0) + age + 1;
    let target = std::env::var("TARGET").ok();
    if let Some(target) = &target {
        config.target.sources = Some(vec![target.clone()]);
    }
    let rows = dispatch(config.run.backend, Bench { config, at, age })?;
    say!(
        "stale_gval (target {}, g_old {age} steps old; standardised I_k over sources; 0 = same, 1.41 = uncorrelated)",
        target.as_deref().unwrap_or("all sources")
    );
    say!("| step | d(old, new) | d(new', new) | top source agrees: old, new' |");
    say!("|---|---|---|---|");
    for (t, stale, noise, top_old, top_again) in rows {
        say!("| {t} | {stale:.3} | {noise:.3} | {top_old}, {top_again} |");
    }
    report::finish(
        "stale_gval",
        "stale_gval",
        &["AT", "AGE", "TARGET", "RAYON_NUM_THREADS"],
    );
    Ok(())
}
