//! A problem whose best mixture is known: the validation target is one source only. FastMix
//! and TiKMiX must move the largest share of weight, well above uniform, onto that source
//! within 150 steps. (Prose and legal text help each other, so 'legal' is the harder target.)

mod common;

use common::{mixtrain, run_ok, tiny_config};

/// Mean weight of each source over the second half of ratios.csv's rows.
fn late_weights(ratios: &str) -> (Vec<String>, Vec<f64>) {
    let mut lines = ratios.lines();
    let names: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .skip(1)
        .map(String::from)
        .collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').skip(1).map(|x| x.parse().unwrap()).collect())
        .collect();
    let late = &rows[rows.len() / 2..];
    let means = (0..names.len())
        .map(|k| late.iter().map(|r| r[k]).sum::<f64>() / late.len() as f64)
        .collect();
    (names, means)
}

fn moves_weight_to_target(kind: &str, target: &str) {
    moves_weight_to_target_with(kind, target, &[]);
}

fn moves_weight_to_target_with(kind: &str, target: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(
        mixtrain()
            .arg("run")
            .arg(&config)
            .args([
                "--set",
                &format!("mixer.kind={kind}"),
                "--set",
                "mixer.every=5",
                "--set",
                "train.steps=150",
                "--set",
                "train.checkpoint_every=0",
                "--set",
                &format!("target.sources=[\"{target}\"]"),
                "--set",
                "mixer.tikmix.val_batches=4",
            ])
            .args(sets.iter().flat_map(|set| ["--set", set])),
    );
    let ratios = std::fs::read_to_string(dir.path().join("run/ratios.csv")).unwrap();
    let (names, late) = late_weights(&ratios);
    let t = names.iter().position(|n| n == target).unwrap();
    eprintln!("{kind} -> {target}: late weights {late:?}");
    // Uniform is 1/3; the floor is 0.2/3.
    assert!(late[t] > 0.45, "{kind} -> {target}: late weights {late:?}");
    for (k, w) in late.iter().enumerate() {
        if k != t {
            assert!(
                late[t] > 1.4 * w,
                "{kind} -> {target}: late weights {late:?}"
            );
        }
    }
}

#[test]
fn fastmix_moves_weight_to_the_validation_source_code() {
    moves_weight_to_target("fastmix", "code");
}

#[test]
fn fastmix_moves_weight_to_the_validation_source_legal() {
    moves_weight_to_target("fastmix", "legal");
}

#[test]
fn tikmix_moves_weight_to_the_validation_source_code() {
    moves_weight_to_target("tikmix", "code");
}

#[test]
fn tikmix_moves_weight_to_the_validation_source_legal() {
    moves_weight_to_target("tikmix", "legal");
}

/// tikmix with G_k from the probed training step (2 sequences of each source here) instead of
/// extra passes. With "legal" as the target it did not pass (late weight 0.444 < 0.45, prose
/// 0.346): the probe's G_k is noisier, which is why "extra-passes" stays the default.
#[test]
fn tikmix_with_probe_moves_weight_to_the_validation_source_code() {
    moves_weight_to_target_with("tikmix", "code", &["mixer.tikmix.influence=probe"]);
}
