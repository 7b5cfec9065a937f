//! Wall-clock overhead of each mixer against the static mixer, on the quickstart model
//! (configs/quickstart.toml, ndarray backend), measured in one run:
//!
//!     cargo bench --bench mixer_overhead            # 50 timed steps per mixer (5 updates)
//!     STEPS=100 ROUNDS=5 cargo bench --bench mixer_overhead
//!     VARIANTS=fastmix,fastmix/window cargo bench --bench mixer_overhead   # static + these
//!
//! The mixers run in turn, ROUNDS (default 3) times; each reports its median ms/step, so a
//! burst of load from other jobs on the machine hits one sample, not one mixer.
//!
//! Each timed step includes the mixer's share of the work: fastmix's validation gradient and
//! probed step (per-source: domain-homogeneous micro-batches each dotted with g_val;
//! single-pass: traced forward and per-token output gradients), tikmix's probed window steps
//! (or with `influence = "extra-passes"` its per-source passes at updates), tikmix-m's traced
//! step before each update (or window, or its per-source passes) and its candidates' forward
//! passes at updates, odm's and ado's bookkeeping, doremi's forward passes
//! (both models on fresh samples, or with `excess_from = "step"` the reference on the step's
//! batch).

#[macro_use]
mod report;

use std::path::Path;
use std::time::Instant;

use mixtrain::backend::{dispatch, BackendTask, TrainBackend};
use mixtrain::config::{
    BackendKind, Config, ExcessFrom, GradStats, GuardKind, InfluenceFrom, MixerKind, ProbeSteps,
};
use mixtrain::train::Session;

struct Bench {
    config: Config,
    steps: usize,
}

impl BackendTask for Bench {
    type Output = f64;
    fn run<B: TrainBackend>(
        self,
        device: B::Device,
        _backend: &'static str,
    ) -> mixtrain::Result<f64> {
        let every = self.config.mixer.every;
        let mut session = Session::<B>::build(self.config, device)?;
        // DoReMi's reference: the initial model (the cost is the same as a trained one's).
        session.set_reference(burn::module::AutodiffModule::valid(session.model()));
        // DoReMi's fixed pool is built (the reference's losses on it computed) once per run,
        // at the first update: in the warm-up, as the reference itself is.
        let doremi = session.config.mixer.doremi.clone();
        if session.config.mixer.kind == MixerKind::Doremi && doremi.excess_from == ExcessFrom::Pool
        {
            session.pool_excess_losses(doremi.samples_per_source)?;
        }
        for _ in 0..3 {
            session.train_step()?;
        }
        let start = Instant::now();
        let mut lr = 0.0;
        let mut excess = None;
        let (mut update_ms, mut probed_ms, mut plain_ms, mut probed) = (0.0, 0.0, 0.0, 0);
        for _ in 0..self.steps {
            if session.step() % every == 0 {
                let t = Instant::now();
                session.mixer_update(lr, excess.take())?;
                update_ms += t.elapsed().as_secs_f64() * 1e3;
            }
            let t = Instant::now();
            let report = session.train_step()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if report.grad_dot.is_some() || report.measured_gradients {
                probed_ms += ms;
                probed += 1;
            } else {
                plain_ms += ms;
            }
            lr = report.lr;
            excess = report.excess_loss;
        }
        let total = start.elapsed().as_secs_f64() * 1e3;
        // Where the time went (stderr): the updates' own work, probed and plain steps.
        eprintln!(
            "  {:?}: updates {:.1} ms/step, probed steps {probed} at {:.1} ms, plain steps {:.1} ms",
            session.config.mixer.kind,
            update_ms / self.steps as f64,
            probed_ms / probed.max(1) as f64,
            plain_ms / (self.steps - probed).max(1) as f64
        );
        Ok(total / self.steps as f64)
    }
}

fn main() -> mixtrain::Result<()> {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        // 5 updates: one g_val at `mixer.fastmix.gval_every = 5`, its long-run share.
        .unwrap_or(50);
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    base.run.backend = BackendKind::Ndarray;
    base.train.steps = steps + 10;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // (label, how it differs from the static mixer's config)
    type Variant = (&'static str, fn(&mut Config));
    let all_variants: [Variant; 25] = [
        ("static", |_| {}),
        // What a probed step's domain-homogeneous micro-batches cost by themselves: 16
        // sequences as ~5 micro-batches of 3 (gradient accumulation, no probe).
        ("static/micro-batches-of-3", |c| {
            c.train.batch_size = 3;
            c.train.grad_accum = 6;
        }),
        ("static/micro-batches-of-8", |c| {
            c.train.batch_size = 8;
            c.train.grad_accum = 2;
        }),
        ("static/micro-batches-of-4", |c| {
            c.train.batch_size = 4;
            c.train.grad_accum = 4;
        }),
        ("static/micro-batches-of-2", |c| {
            c.train.batch_size = 2;
            c.train.grad_accum = 8;
        }),
        ("fastmix", |c| c.mixer.kind = MixerKind::Fastmix),
        // With the guard (its check: a forward of `mixer.guard.windows` target windows at
        // every update).
        ("fastmix/guarded", |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        }),
        // An update every 5 steps (the "only the target matters" settings): twice the probed
        // steps and validation gradients.
        ("fastmix/every5", |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.every = 5;
        }),
        ("fastmix/single-pass", |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.grad_stats = GradStats::SinglePass;
        }),
        ("fastmix/window", |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.probe_steps = ProbeSteps::Window;
        }),
        // A fresh g_val for every update (the default reuses one for `gval_every = 5`).
        ("fastmix/gval1", |c| {
            c.mixer.kind = MixerKind::Fastmix;
            c.mixer.fastmix.gval_every = 1;
        }),
        // The default: I_k from every probed step of the update's window.
        ("tikmix", |c| c.mixer.kind = MixerKind::Tikmix),
        ("tikmix/guarded", |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.guard.kind = GuardKind::TrustRegion;
        }),
        // I_k from the update's last step only.
        ("tikmix/probe-last", |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.probe_steps = ProbeSteps::Last;
        }),
        // 32 extra sequences of each source at every update (the default before 2026-11-25).
        ("tikmix/extra-passes", |c| {
            c.mixer.kind = MixerKind::Tikmix;
            c.mixer.tikmix.influence = InfluenceFrom::ExtraPasses;
        }),
        // The default: G_k from the traced step before each update (other sources by extra
        // passes).
        ("tikmix-m", |c| c.mixer.kind = MixerKind::TikmixM),
        // The earlier defaults: 12 candidates measured on 16 windows.
        ("tikmix-m/wide", |c| {
            c.mixer.kind = MixerKind::TikmixM;
            c.mixer.tikmix_m.val_sequences = 16;
            c.mixer.tikmix_m.candidates = 12;
        }),
        // G_k from every traced step of the update's window.
        ("tikmix-m/probe-window", |c| {
            c.mixer.kind = MixerKind::TikmixM;
            c.mixer.tikmix_m.probe_steps = ProbeSteps::Window;
        }),
        // 16 extra sequences of each source at every update (the default before 2026-12-06).
        ("tikmix-m/extra-passes", |c| {
            c.mixer.kind = MixerKind::TikmixM;
            c.mixer.tikmix_m.gradients = InfluenceFrom::ExtraPasses;
        }),
        ("odm", |c| c.mixer.kind = MixerKind::Odm),
        ("ado", |c| c.mixer.kind = MixerKind::Ado),
        ("doremi", |c| c.mixer.kind = MixerKind::Doremi),
        ("doremi/pool8", |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.samples_per_source = 8;
        }),
        ("doremi/excess-from-samples", |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.excess_from = ExcessFrom::Samples;
        }),
        ("doremi/excess-from-step", |c| {
            c.mixer.kind = MixerKind::Doremi;
            c.mixer.doremi.excess_from = ExcessFrom::Step;
        }),
    ];
    // VARIANTS=fastmix,fastmix/window times only those (static always runs: the ratios' base).
    let wanted: Option<Vec<String>> = std::env::var("VARIANTS")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect());
    let variants: Vec<Variant> = all_variants
        .into_iter()
        .filter(|(label, _)| {
            *label == "static" || wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == label))
        })
        .collect();
    let mut samples = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, differs)) in variants.iter().enumerate() {
            let mut config = base.clone();
            config.mixer.kind = MixerKind::Static;
            differs(&mut config);
            samples[i].push(dispatch(config.run.backend, Bench { config, steps })?);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(report::median).collect();
    for ((label, ..), ms) in variants.iter().zip(&medians) {
        say!(
            "mixer_overhead/{label:<20} {ms:>8.1} ms/step (median of {rounds})  ratio vs static {:.3}",
            ms / medians[0]
        );
    }
    let ms_of = |label: &str| {
        variants
            .iter()
            .position(|(l, _)| *l == label)
            .map(|i| medians[i])
    };
    if let (Some(single), Some(per_source)) = (ms_of("fastmix/single-pass"), ms_of("fastmix")) {
        say!(
            "single-pass vs per-source statistics (fastmix): {:.3}",
            single / per_source
        );
    }
    report::finish(
        "mixer_overhead",
        "mixer_overhead",
        &["STEPS", "ROUNDS", "VARIANTS", "RAYON_NUM_THREADS"],
    );
    Ok(())
}
