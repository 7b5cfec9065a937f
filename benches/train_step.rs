//! Training-step throughput of the quickstart model (configs/quickstart.toml) on each CPU
//! backend, measured in one run so the ratio is meaningful on a shared machine.
//!
//!     cargo bench --bench train_step            # 20 timed steps per backend
//!     STEPS=50 cargo bench --bench train_step
//!
//! Prints tokens/s per backend and the ndarray/flex ratio.

#[macro_use]
mod report;

use std::path::Path;
use std::time::Instant;

use mixtrain::backend::{dispatch, BackendTask, TrainBackend};
use mixtrain::config::{BackendKind, Config, MixerKind};
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
        backend: &'static str,
    ) -> mixtrain::Result<f64> {
        let mut session = Session::<B>::build(self.config, device)?;
        // Warm-up: first steps allocate and (on ndarray) spin up the thread pool.
        for _ in 0..3 {
            session.train_step()?;
        }
        let start = Instant::now();
        let mut tokens = 0;
        for _ in 0..self.steps {
            tokens += session.train_step()?.tokens;
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = tokens as f64 / seconds;
        say!(
            "train_step/{backend:<8} {:>8.1} ms/step {rate:>10.0} tokens/s ({} steps of {} tokens)",
            seconds * 1e3 / self.steps as f64,
            self.steps,
            tokens / self.steps
        );
        Ok(rate)
    }
}

fn main() -> mixtrain::Result<()> {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut base = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    // The plain training step: no mixer work.
    base.mixer.kind = MixerKind::Static;
    let mut rates = Vec::new();
    for kind in [BackendKind::Flex, BackendKind::Ndarray] {
        let mut config = base.clone();
        config.run.backend = kind;
        rates.push(dispatch(kind, Bench { config, steps })?);
    }
    say!("train_step ratio ndarray/flex = {:.2}", rates[1] / rates[0]);
    report::finish("train_step", "throughput", &["STEPS", "RAYON_NUM_THREADS"]);
    Ok(())
}
