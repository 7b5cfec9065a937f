//! Cost of per-source influence statistics on one training step, on the quickstart model
//! (configs/quickstart.toml), measured in one run:
//!
//!     cargo bench --bench influence                                  # CPU (ndarray)
//!     CUBECL_WGPU_DEFAULT_DEVICE=Cpu cargo bench --features wgpu --bench influence -- wgpu
//!     cargo bench --features cuda --bench influence -- cuda
//!
//! Three steps are timed in turn, ROUNDS (default 5) times each, median ms/step:
//! - plain: no statistics (influence tracing off);
//! - single-pass: traced forward, the step's own backward, per-source ⟨g_val, g_k⟩ from the
//!   per-token output gradients (`segment_row_dot`, kernels on wgpu/cuda);
//! - per-source: domain-homogeneous micro-batches, each micro-batch's gradient dotted with
//!   g_val (accumulation differencing).
//!
//! g_val (the validation gradient both statistics need) is computed once, outside the timed
//! steps: it is the same work for both. Ratios: tracing on vs off = single-pass / plain, and
//! single-pass / per-source.

#[macro_use]
mod report;

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::Tensor;
use mixtrain::backend::{dispatch, BackendTask, TrainBackend};
use mixtrain::config::{BackendKind, Config, GradStats, MixerKind};
use mixtrain::mixer::GradScope;
use mixtrain::train::{GradProbe, Session};

struct Bench {
    config: Config,
    steps: usize,
    rounds: usize,
}

/// Median ms/step of (plain, single-pass, per-source).
impl BackendTask for Bench {
    type Output = [f64; 3];
    fn run<B: TrainBackend>(
        self,
        device: B::Device,
        _backend: &'static str,
    ) -> mixtrain::Result<[f64; 3]> {
        let mut session = Session::<B>::build(self.config, device)?;
        session.train_step()?; // warm-up
        let g_val = session.validation_gradient(2).expect("one process");
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..self.rounds {
            for (variant, stats) in [
                None,
                Some(GradStats::SinglePass),
                Some(GradStats::PerSource),
            ]
            .into_iter()
            .enumerate()
            {
                let start = Instant::now();
                for _ in 0..self.steps {
                    let probe = stats.map(|stats| {
                        session.config.mixer.fastmix.grad_stats = stats;
                        GradProbe {
                            g_val: clone_grads::<B>(&g_val, &session),
                            scope: GradScope::All,
                            precondition: true,
                        }
                    });
                    session.train_step_probed(probe)?;
                }
                samples[variant].push(start.elapsed().as_secs_f64() * 1e3 / self.steps as f64);
            }
        }
        Ok(samples.map(report::median))
    }
}

/// Copies every parameter's gradient (GradientsParams is not Clone, and a probe owns its g_val).
struct CopyGrads<'a> {
    from: &'a GradientsParams,
    to: GradientsParams,
}

impl<B: TrainBackend> ModuleVisitor<B> for CopyGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.from.get::<B::InnerBackend, D>(param.id) {
            self.to.register(param.id, grad);
        }
    }
}

fn clone_grads<B: TrainBackend>(grads: &GradientsParams, session: &Session<B>) -> GradientsParams {
    let mut copy = CopyGrads {
        from: grads,
        to: GradientsParams::new(),
    };
    session.model().visit(&mut copy);
    copy.to
}

fn main() -> mixtrain::Result<()> {
    let backend = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(name) if name == "wgpu" => BackendKind::Wgpu,
        Some(name) if name == "cuda" => BackendKind::Cuda,
        _ => BackendKind::Ndarray,
    };
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let mut config = Config::load(Path::new("configs/quickstart.toml"), &[])?;
    config.run.backend = backend;
    config.mixer.kind = MixerKind::Fastmix;
    let steps = env("STEPS", 3);
    let rounds = env("ROUNDS", 5);
    config.train.steps = 1 + 3 * steps * rounds + 10;
    let [plain, single, per_source] = dispatch(
        backend,
        Bench {
            config,
            steps,
            rounds,
        },
    )?;
    say!("influence/{backend:?}: median ms/step over {rounds} rounds of {steps} steps");
    say!("  plain (tracing off)   {plain:>9.1} ms  1.000");
    say!(
        "  single-pass           {single:>9.1} ms  {:.3}",
        single / plain
    );
    say!(
        "  per-source            {per_source:>9.1} ms  {:.3}",
        per_source / plain
    );
    say!("  tracing on vs off: {:.3}", single / plain);
    say!("  single-pass / per-source: {:.3}", single / per_source);
    report::finish(
        "influence",
        "influence",
        &["STEPS", "ROUNDS", "RAYON_NUM_THREADS"],
    );
    Ok(())
}
