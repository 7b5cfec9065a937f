//! The exported model.safetensors is what the README says: an independent NumPy forward pass
//! (tests/golden/reference_forward.py, PyTorch layout) reproduces mixtrain's logits. Needs python3
//! with numpy and safetensors (.ci/run installs them).

use std::process::Command;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use mixtrain::config::Config;
use mixtrain::export::export_model;
use mixtrain::train::Session;

use crate::common::{in_process_training, repo, tiny_config};

type B = Autodiff<NdArray>;

fn check_against_numpy(model_keys: &str) {
    let _training = in_process_training();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[data]\nseq_len = 24\n[model]\nn_heads = 4\nd_ff = 48\n{model_keys}\n\
         [train]\nbatch_size = 4\nwarmup_steps = 1\n"
    );
    let config = Config::load(&tiny_config(dir.path(), &extra), &[]).unwrap();
    let mut session = Session::<B>::build(config, Default::default()).unwrap();
    // A few steps so the weights are trained, not just initialised.
    for _ in 0..3 {
        session.train_step().unwrap();
    }
    let model_path = dir.path().join("model.safetensors");
    export_model(
        &model_path,
        session.model(),
        &session.config.model,
        session.vocab_size(),
    )
    .unwrap();

    let tokens: Vec<i32> = "fn main() { println!(\"hi\"); }\nTo be, or not"
        .bytes()
        .map(i32::from)
        .collect();
    let [batch, seq] = [2, tokens.len() / 2];
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(tokens[..batch * seq].to_vec(), [batch, seq]),
        &Default::default(),
    );
    let logits: Vec<f32> = session.model().forward(input).into_data().to_vec().unwrap(); // [batch · seq, vocab]
    let vocab = logits.len() / (batch * seq);
    let case = serde_json::json!({
        "tokens": tokens[..batch * seq].chunks(seq).collect::<Vec<_>>(),
        "logits": logits.chunks(vocab).collect::<Vec<_>>(),
    });
    let case_path = dir.path().join("case.json");
    std::fs::write(&case_path, case.to_string()).unwrap();

    let out = Command::new(crate::common::python())
        .arg(repo().join("tests/golden/reference_forward.py"))
        .arg(&model_path)
        .arg(&case_path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "NumPy reference disagrees or could not run:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exported_swiglu_tied_model_matches_numpy_reference() {
    check_against_numpy("");
}

#[test]
fn exported_gelu_untied_model_matches_numpy_reference() {
    check_against_numpy("mlp = \"gelu\"\ntie_embeddings = false");
}
