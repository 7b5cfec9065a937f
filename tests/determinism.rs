//! The CPU backend uses both cores (matrix products split over output blocks, fused host ops
//! split over rows) yet must give the same bits for any thread count: bit-identical resume
//! and reproducible seeds depend on it.

mod common;

use common::{metrics_without_wall, mixtrain, run_ok, tiny_config};

/// A quickstart-sized model (large enough that the matrix products are split over threads),
/// GELU so the fused GELU runs too, a few steps.
fn run_with_threads(threads: &str) -> (Vec<u8>, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
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
    ] {
        cmd.arg("--set").arg(set);
    }
    run_ok(&mut cmd);
    let run = dir.path().join("run");
    (
        std::fs::read(run.join("model.safetensors")).unwrap(),
        metrics_without_wall(&run.join("metrics.jsonl")),
    )
}

#[test]
fn one_and_two_threads_train_the_same_bits() {
    let (model_1, metrics_1) = run_with_threads("1");
    let (model_2, metrics_2) = run_with_threads("2");
    assert_eq!(metrics_1, metrics_2);
    assert!(
        model_1 == model_2,
        "final parameters differ between 1 and 2 threads"
    );
}
