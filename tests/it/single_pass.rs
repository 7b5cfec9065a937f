//! Single-pass per-source statistics (traced forward, per-token output gradients from the
//! step's own backward) against the accumulation-differencing reference, on the quickstart
//! model, and the mixture trajectories of training runs with either.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use mixtrain::backend::TrainBackend;
use mixtrain::config::Config;
use mixtrain::train::Session;

type B = Autodiff<NdArray>;

/// s_k of the probed step (the 3rd, before the update at step 3) with `grad_stats`, on the
/// quickstart config and the CPU backend.
fn probed_dots(grad_stats: &str, extra: &[&str]) -> Vec<f64> {
    probed_dots_on::<B>(Default::default(), grad_stats, extra)
}

fn probed_dots_on<B: TrainBackend>(
    device: B::Device,
    grad_stats: &str,
    extra: &[&str],
) -> Vec<f64> {
    // Also keeps the working directory (set below, process-wide) while the config loads.
    let _training = crate::common::in_process_training();
    let dir = tempfile::tempdir().unwrap();
    let mut sets: Vec<String> = vec![
        "mixer.kind=fastmix".into(),
        "mixer.every=3".into(),
        format!("mixer.fastmix.grad_stats={grad_stats}"),
        format!("run.out_dir={}", dir.path().join("run").display()),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let repo = crate::common::repo();
    std::env::set_current_dir(&repo).unwrap();
    let config = Config::load(Path::new("configs/quickstart.toml"), &sets).unwrap();
    let mut session = Session::<B>::build(config, device).unwrap();
    // The step before the update at step 3 is probed.
    let mut last = None;
    for _ in 0..3 {
        last = Some(session.train_step().unwrap());
    }
    last.and_then(|report| report.grad_dot)
        .expect("step 3 is probed")
        .iter()
        .map(|d| d.expect("every source is in the step"))
        .collect()
}

fn assert_close(single: &[f64], reference: &[f64], what: &str) {
    let scale = reference.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: all-zero reference");
    for (k, (s, r)) in single.iter().zip(reference).enumerate() {
        let error = (s - r).abs() / r.abs().max(1e-3 * scale);
        assert!(
            error < 1e-3,
            "{what}: source {k}: single-pass {s} vs per-source {r} (relative error {error:.2e})"
        );
    }
}

#[test]
fn single_pass_equals_accumulation_differencing_on_every_source() {
    for (extra, what) in [
        (&[][..], "all parameters, preconditioned"),
        (
            &["mixer.fastmix.precondition=false"][..],
            "all parameters, raw",
        ),
        (&["mixer.fastmix.scope=\"head\""][..], "tied head"),
        (
            &["model.tie_embeddings=false", "model.mlp=\"gelu\""][..],
            "untied head, GELU MLP",
        ),
    ] {
        let reference = probed_dots("per-source", extra);
        let single = probed_dots("single-pass", extra);
        assert_eq!(reference.len(), 5);
        assert_close(&single, &reference, what);
    }
}

/// On wgpu (lavapipe in CI) the training path runs the CubeCL kernels: the fused
/// cross-entropy forward and backward for the loss, `segment_row_dot` and its gather form for
/// the single-pass statistics. Their s_k equal the accumulation-differencing values computed
/// on the same backend (which runs the fused cross-entropy too, but no row-dot kernel).
#[cfg(feature = "wgpu")]
#[test]
fn single_pass_on_wgpu_runs_the_kernels_and_equals_accumulation_differencing() {
    use mixtrain::backend::WgpuBackend;
    use mixtrain_kernels::{ExecPolicy, KernelImpl};
    type W = Autodiff<WgpuBackend>;
    assert_eq!(<W as ExecPolicy>::IMPL, KernelImpl::CubeCl);
    assert_eq!(<WgpuBackend as ExecPolicy>::IMPL, KernelImpl::CubeCl);
    for (extra, what) in [
        (&[][..], "wgpu: all parameters, preconditioned"),
        (&["model.tie_embeddings=false"][..], "wgpu: untied head"),
    ] {
        let device = burn::backend::wgpu::WgpuDevice::default();
        let reference = probed_dots_on::<W>(device.clone(), "per-source", extra);
        let single = probed_dots_on::<W>(device, "single-pass", extra);
        assert_eq!(reference.len(), 5);
        // Not compared with the CPU's numbers: parameter initialisation draws from the
        // backend's own generator, so the two backends train different models.
        assert_close(&single, &reference, what);
    }
}

#[test]
fn single_pass_run_follows_the_per_source_trajectory() {
    let ratios = |grad_stats: &str| -> Vec<Vec<f64>> {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::common::tiny_config(dir.path(), "");
        crate::common::run_ok(crate::common::mixtrain().args(["run"]).arg(&config).args([
            "--set",
            "mixer.kind=fastmix",
            "--set",
            "mixer.every=5",
            "--set",
            &format!("mixer.fastmix.grad_stats={grad_stats}"),
        ]));
        crate::common::ratio_rows(&dir.path().join("run/ratios.csv"))
    };
    let (reference, single) = (ratios("per-source"), ratios("single-pass"));
    assert_eq!(reference.len(), single.len());
    let (first, last) = (&reference[0], reference.last().unwrap());
    let moved = first
        .iter()
        .zip(last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 0.01, "the mixture moved: {first:?} → {last:?}");
    for (a, b) in reference.iter().zip(&single) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
        }
    }
}
