//! Wall-clock overhead of each mixer against the static mixer, on the quickstart model
//! (configs/quickstart.toml, ndarray backend), measured in one run:
//!
//!     cargo bench --bench mixer_overhead            # 30 timed steps per mixer (3 updates)
//!     STEPS=60 ROUNDS=5 cargo bench --bench mixer_overhead
//!
//! The mixers run in turn, ROUNDS (default 3) times; each reports its median ms/step, so a
//! burst of load from other jobs on the machine hits one sample, not one mixer.
//!
//! Each timed step includes the mixer's share of the work: fastmix's validation gradient and
//! probed step, tikmix's per-source passes at its updates, odm's bookkeeping.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use mixtrain::backend::{dispatch, BackendTask};
use mixtrain::config::{BackendKind, Config, MixerKind};
use mixtrain::train::Session;

struct Bench {
    config: Config,
    steps: usize,
}

impl BackendTask for Bench {
    type Output = f64;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        _backend: &'static str,
    ) -> mixtrain::Result<f64> {
        let every = self.config.mixer.every;
        let mut session = Session::<B>::build(self.config, device)?;
        // DoReMi's reference: the initial model (the cost is the same as a trained one's).
        session.reference = Some(burn::module::AutodiffModule::valid(&session.model));
        for _ in 0..3 {
            session.train_step()?;
        }
        let start = Instant::now();
        let mut lr = 0.0;
        for _ in 0..self.steps {
            if session.step % every == 0 {
                session.mixer_update(lr, None)?;
            }
            lr = session.train_step()?.lr;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3 / self.steps as f64)
    }
}

fn main() -> mixtrain::Result<()> {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    base.run.backend = BackendKind::Ndarray;
    base.train.steps = steps + 10;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let kinds = [
        MixerKind::Static,
        MixerKind::Fastmix,
        MixerKind::Tikmix,
        MixerKind::TikmixM,
        MixerKind::Odm,
        MixerKind::Doremi,
    ];
    let mut samples = vec![Vec::new(); kinds.len()];
    for _ in 0..rounds {
        for (i, kind) in kinds.iter().enumerate() {
            let mut config = base.clone();
            config.mixer.kind = *kind;
            samples[i].push(dispatch(config.run.backend, Bench { config, steps })?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    for (kind, ms) in kinds.iter().zip(&medians) {
        println!(
            "mixer_overhead/{:<9} {ms:>8.1} ms/step (median of {rounds})  ratio vs static {:.3}",
            serde_json::to_value(kind)
                .expect("kind serialises")
                .as_str()
                .unwrap_or("?"),
            ms / medians[0]
        );
    }
    Ok(())
}
