//! The CPU backend uses both cores (matrix products split over output blocks, fused host ops
//! split over rows) yet must give the same bits for any thread count: bit-identical resume
//! and reproducible seeds depend on it.

use crate::common::{metrics_without_wall, mixtrain, run_ok, tiny_config};

/// A quickstart-sized model (large enough that the matrix products are split over threads),
/// GELU so the fused GELU runs too, a few steps; `extra` config (TOML appended) and
/// `--set`s on top.
fn run_with_threads(
    threads: &str,
    extra: &str,
    sets: &[&str],
) -> (Vec<u8>, Vec<serde_json::Value>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), extra);
    let mut cmd = mixtrain();
    cmd.env("RAYON_NUM_THREADS", threads)
        .arg("run")
        .arg(&config);
    for set in [
        "data.seq_len=128",
        "model.d_model=128",
        "model.n_heads=4",
        "model.d_ff=512",
        "model.mlp=gelu",
        "train.batch_size=16",
        "train.steps=4",
        "train.eval_every=2",
        "train.checkpoint_every=0",
    ]
    .iter()
    .chain(sets)
    {
        cmd.arg("--set").arg(set);
    }
    run_ok(&mut cmd);
    let run = dir.path().join("run");
    (
        std::fs::read(run.join("model.safetensors")).unwrap(),
        metrics_without_wall(&run.join("metrics.jsonl")),
        std::fs::read(run.join("ratios.csv")).unwrap_or_default(),
    )
}

#[test]
fn one_and_two_threads_train_the_same_bits() {
    let (model_1, metrics_1, _) = run_with_threads("1", "", &[]);
    let (model_2, metrics_2, _) = run_with_threads("2", "", &[]);
    assert_eq!(metrics_1, metrics_2);
    assert!(
        model_1 == model_2,
        "final parameters differ between 1 and 2 threads"
    );
}

/// With two threads a step's micro-batches run side by side, each on a replica of the model
/// (`kernels::concurrent`); with one they run one after the other on the model itself. Both
/// must give the same bits: plain steps of four micro-batches, and fastmix's probed steps
/// (domain-homogeneous micro-batches, each dotted with g_val, whose validation batches also
/// run side by side).
#[test]
fn side_by_side_passes_train_the_same_bits_as_one_after_another() {
    let mixer = "[mixer]\nkind = \"fastmix\"\nevery = 2\n[mixer.fastmix]\nlr = 1.0\n";
    let sets = ["train.batch_size=4", "train.grad_accum=4", "train.steps=6"];
    let (model_1, metrics_1, mixture_1) = run_with_threads("1", mixer, &sets);
    let (model_2, metrics_2, mixture_2) = run_with_threads("2", mixer, &sets);
    assert!(!mixture_1.is_empty(), "the fastmix run wrote no ratios.csv");
    assert_eq!(
        String::from_utf8_lossy(&mixture_1),
        String::from_utf8_lossy(&mixture_2)
    );
    assert_eq!(metrics_1, metrics_2);
    assert!(
        model_1 == model_2,
        "final parameters differ between passes one after another and side by side"
    );
}
