use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::super::evaluator::batch_tensors;
use super::super::micro::StepSums;
use super::*;
use crate::config::Config;
use crate::data::Batch;
use crate::model::token_losses;

/// The tests that train hold this: burn's autodiff graph is behind one process-wide mutex,
/// and a backward on a test's own thread that holds it while waiting for rayon (its matmul)
/// deadlocks with another test's passes running backward inside rayon's workers.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn training() -> std::sync::MutexGuard<'static, ()> {
    TRAINING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Each parameter's number of values, in module order.
struct Sizes(Vec<usize>);

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Sizes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        self.0.push(param.val().dims().iter().product());
    }
}

/// Per source: G_k of the step (None where it drew none), G_k of separate passes (the
/// sources it drew), and each parameter's size in the flat layout.
type Compared = (Vec<Option<Vec<f32>>>, Vec<Vec<f32>>, Vec<usize>);

/// G_k of a probed step on the quickstart model (`extra` settings), and G_k of the same
/// sequences of each source from a backward of their mean token loss alone, both flat.
fn step_and_separate<B: TrainBackend>(device: B::Device, extra: &[&str]) -> Compared {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = vec![
        "mixer.kind=tikmix-m".to_string(),
        "train.grad_accum=2".into(),
        format!("run.out_dir={}", dir.path().join("run").display()),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::load(Path::new("configs/quickstart.toml"), &sets).unwrap();
    let mut session = Session::<B>::build(config, device.clone()).unwrap();
    session.train_step().unwrap(); // a model that has moved from its initialisation
    let plan = session.plan_step(false, true);
    let mut sums = StepSums::new(plan.weights.len());
    let passes = session.draw_passes(&plan, true, &mut sums);
    let k = plan.weights.len();
    let mut by_source: Vec<Batch> = (0..k)
        .map(|_| Batch {
            tokens: Vec::new(),
            sources: Vec::new(),
            seq_len: passes[0].batch.seq_len,
        })
        .collect();
    for pass in &passes {
        let row = pass.batch.tokens.len() / pass.batch.len();
        for (i, &s) in pass.sources.iter().enumerate() {
            by_source[s]
                .tokens
                .extend(&pass.batch.tokens[i * row..(i + 1) * row]);
            by_source[s].sources.push(s);
        }
    }
    let _ = session.run_passes(&plan, passes, None, false, &mut sums);
    let raw = sums.source_grads.take().expect("the step measured G_k");
    let total = plan.weight_total;
    session.mixing.probe.gradients = None; // the first step's, in the same window
    session
        .add_step_source_grads(raw, &sums.dots, total)
        .unwrap();
    let window = session.mixing.probe.gradients.take().unwrap();
    let model = &session.trainer.model;
    let step = flatten_by_source(model, &window.sums, k)
        .into_iter()
        .zip(&window.steps)
        .map(|(g, &steps)| (steps > 0).then_some(g))
        .collect();
    let separate = by_source
        .iter()
        .filter(|batch| !batch.is_empty())
        .map(|batch| {
            let (inputs, targets) = batch_tensors::<B>(batch, &device);
            let loss = token_losses(model.forward(inputs), targets).mean();
            let grads = GradientsParams::from_grads(loss.backward(), model);
            flatten_grads(model, &grads)
        })
        .collect();
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    (step, separate, sizes.0)
}

/// Per parameter, max |step − separate| / max |separate| ≤ 1e-4, for every source.
fn assert_agree(step: &[Option<Vec<f32>>], separate: &[Vec<f32>], sizes: &[usize], what: &str) {
    let step: Vec<&Vec<f32>> = step.iter().flatten().collect();
    assert_eq!(step.len(), separate.len(), "{what}: sources drawn");
    assert!(
        step.len() >= 3,
        "{what}: the step drew {} sources",
        step.len()
    );
    for (k, (a, b)) in step.iter().zip(separate).enumerate() {
        let mut at = 0;
        for (p, &n) in sizes.iter().enumerate() {
            let (a, b) = (&a[at..at + n], &b[at..at + n]);
            at += n;
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let error = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                scale > 0.0,
                "{what}: source {k} parameter {p}: zero gradient"
            );
            assert!(
                error <= 1e-4 * scale,
                "{what}: source {k} parameter {p} ({n} values): relative error {:.2e}",
                error / scale
            );
        }
        assert_eq!(at, a.len());
    }
}

/// The goal of the per-source gradients: every parameter's G_k from the step's traced
/// backward (segment_accumulate, the embedding scatter, the tied head's two uses, norm
/// gains) equals a separate backward of that source's sequences, to 1e-4 relative.
#[test]
fn step_gradients_equal_separate_backward_passes_per_source() {
    let _training = training();
    type B = Autodiff<NdArray>;
    for (extra, what) in [
        (&[][..], "tied head, SwiGLU"),
        (
            &["model.tie_embeddings=false", "model.mlp=\"gelu\""][..],
            "untied head, GELU",
        ),
        (&["mixer.apply=\"sample\""][..], "sampled, unweighted"),
    ] {
        let (step, separate, sizes) = step_and_separate::<B>(Default::default(), extra);
        assert_agree(&step, &separate, &sizes, what);
    }
}

/// A tikmix-m session on the quickstart updating after its first step, with `extra`.
fn updating_session(dir: &Path, extra: &str) -> Session<Autodiff<NdArray>> {
    let sets = [
        "mixer.kind=tikmix-m".to_string(),
        "mixer.every=1".into(),
        "mixer.warmup_steps=0".into(),
        extra.to_string(),
        format!("run.out_dir={}", dir.join("run").display()),
    ];
    let config = Config::load(Path::new("configs/quickstart.toml"), &sets).unwrap();
    Session::build(config, Default::default()).unwrap()
}

/// With `virtual_from = "probed"` the update measures ΔL_val from the parameters before
/// the probed step's optimizer step: exactly what the default measures when the model is
/// put back to them after the step; and not what the default measures as it is.
#[test]
fn virtual_step_from_probed_parameters() {
    let _training = training();
    let dir = tempfile::tempdir().unwrap();
    let probed = "mixer.tikmix-m.virtual_from=\"probed\"";
    let mut from_probed = updating_session(dir.path(), probed);
    let mut put_back = updating_session(dir.path(), "mixer.tikmix-m.virtual_from=\"updated\"");
    let mut from_updated = updating_session(dir.path(), "mixer.tikmix-m.virtual_from=\"updated\"");
    let before = put_back.trainer.model.clone();
    for session in [&mut from_probed, &mut put_back, &mut from_updated] {
        let report = session.train_step().unwrap();
        assert!(report.measured_gradients);
    }
    assert!(from_probed.mixing.probe.before_probed_step.is_some());
    assert!(put_back.mixing.probe.before_probed_step.is_none());
    put_back.trainer.model = before;
    let signal = |session: &mut Session<Autodiff<NdArray>>| {
        let update = session
            .mixer_update(1e-3, None)
            .unwrap()
            .expect("an update");
        update.signal.expect("ΔL of the one-source mixtures").1
    };
    let (a, b, c) = (
        signal(&mut from_probed),
        signal(&mut put_back),
        signal(&mut from_updated),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(
        from_probed.mixing.probe.before_probed_step.is_none(),
        "taken by the update"
    );
}

/// `virtual_from = "probed"` needs probed G_k.
#[test]
fn virtual_from_probed_refused_with_extra_passes() {
    let sets = [
        "mixer.kind=tikmix-m".to_string(),
        "mixer.tikmix-m.gradients=\"extra-passes\"".into(),
        "mixer.tikmix-m.virtual_from=\"probed\"".into(),
    ];
    let error = Config::load(Path::new("configs/quickstart.toml"), &sets).unwrap_err();
    assert!(
        error.to_string().contains("mixer.tikmix-m.virtual_from"),
        "{error}"
    );
}

/// The same on wgpu (lavapipe in CI): the CubeCL `segment_accumulate` and the device
/// scatter for the embedding.
#[cfg(feature = "wgpu")]
#[test]
fn step_gradients_equal_separate_backward_passes_on_wgpu() {
    let _training = training();
    type W = Autodiff<crate::backend::WgpuBackend>;
    let device = burn::backend::wgpu::WgpuDevice::default();
    // Two layers and 8 sequences a step: lavapipe runs every kernel on the CPU.
    let smaller = ["model.n_layers=2", "train.batch_size=8"];
    let (step, separate, sizes) = step_and_separate::<W>(device, &smaller);
    assert_agree(&step, &separate, &sizes, "wgpu");
}
