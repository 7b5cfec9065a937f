//! The CLI end to end on small configs: --set keys, seeds, mixture application, BPE, eval, plot.

use crate::common::{metrics_without_wall, mixtrain, run_ok, tiny_config};
use mixtrain::config::Config;

#[test]
fn set_keys_reach_the_resolved_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let out = dir.path().join("elsewhere");
    let sets = [
        format!("run.out_dir={}", out.display()),
        "run.seed=11".into(),
        "data.seq_len=24".into(),
        "model.n_heads=4".into(),
        "train.steps=6".into(),
        "train.lr=2e-3".into(),
        "train.eval_every=3".into(),
        "train.checkpoint_every=2".into(),
        "mixer.kind=static".into(),
        "mixer.init={prose = 2, code = 1, legal = 1}".into(),
    ];
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&config);
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    run_ok(&mut cmd);
    let resolved = Config::load(&out.join("config.toml"), &[]).unwrap();
    assert_eq!(resolved.run.seed, 11);
    assert_eq!(resolved.data.seq_len, 24);
    assert_eq!(resolved.model.n_heads, 4);
    assert_eq!(resolved.train.steps, 6);
    assert_eq!(resolved.train.lr, 2e-3);
    assert_eq!(resolved.train.eval_every, 3);
    assert_eq!(resolved.train.checkpoint_every, 2);
    // Evaluations at 0, 3, 6; checkpoints at 2, 4, 6 with the newest 2 kept.
    let metrics = metrics_without_wall(&out.join("metrics.jsonl"));
    let evals: Vec<u64> = metrics
        .iter()
        .filter(|m| m.get("val_loss").is_some())
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![0, 3, 6]);
    let mut kept: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    kept.sort();
    assert_eq!(kept, vec!["step_00000004", "step_00000006"]);
    let ratios = std::fs::read_to_string(out.join("ratios.csv")).unwrap();
    assert_eq!(ratios, "step,prose,code,legal\n0,0.5,0.25,0.25\n");
    for file in [
        "DONE",
        "model.safetensors",
        "optimizer.safetensors",
        "mixing.safetensors",
        "state.json",
    ] {
        assert!(
            out.join("checkpoints/step_00000006").join(file).is_file(),
            "{file}"
        );
    }
}

/// Also the regression test for burn-ndarray's `simd` feature, which made two processes with
/// the same seed differ in the last bits (and so broke bit-identical resume).
#[test]
fn same_seed_same_numbers_other_seed_other_numbers() {
    let runs: Vec<Vec<serde_json::Value>> = [5, 5, 6]
        .iter()
        .map(|seed| {
            let dir = tempfile::tempdir().unwrap();
            let config = tiny_config(dir.path(), "");
            run_ok(mixtrain().arg("run").arg(&config).args([
                "--set",
                &format!("run.seed={seed}"),
                "--set",
                "train.steps=8",
            ]));
            metrics_without_wall(&dir.path().join("run/metrics.jsonl"))
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2]);
}

#[test]
fn sample_mode_draws_only_sources_with_weight() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.apply=sample",
        "--set",
        "mixer.init={prose = 1, code = 0, legal = 0}",
        "--set",
        "train.steps=6",
    ]));
    let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
    let train_lines: Vec<_> = metrics
        .iter()
        .filter(|m| m.get("train_loss").is_some())
        .collect();
    assert_eq!(train_lines.len(), 6);
    for m in train_lines {
        let by_source = &m["train_loss_by_source"];
        assert!(by_source["prose"].is_f64());
        assert!(
            by_source["code"].is_null() && by_source["legal"].is_null(),
            "{m}"
        );
        // Only prose sequences: the optimised loss is prose's loss.
        let diff = m["train_loss"].as_f64().unwrap() - by_source["prose"].as_f64().unwrap();
        assert!(diff.abs() < 1e-9, "{m}");
    }
}

#[test]
fn reweight_mode_weights_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.apply=reweight",
        "--set",
        "mixer.init={prose = 0, code = 1, legal = 0}",
        "--set",
        "train.steps=4",
    ]));
    let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
    for m in metrics.iter().filter(|m| m.get("train_loss").is_some()) {
        // Every source is drawn (balanced: 2 sequences each of the batch of 6) ...
        let by_source = &m["train_loss_by_source"];
        assert!(
            ["prose", "code", "legal"]
                .iter()
                .all(|s| by_source[*s].is_f64()),
            "{m}"
        );
        // ... but only code's loss is optimised.
        let diff = m["train_loss"].as_f64().unwrap() - by_source["code"].as_f64().unwrap();
        assert!(diff.abs() < 1e-9, "{m}");
    }
}

#[test]
fn trained_bpe_tokenizer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let tokenizer = dir.path().join("tok.json");
    run_ok(mixtrain().arg("prepare").arg(&config).args([
        "--train-bpe",
        "512",
        "--tokenizer-out",
        tokenizer.to_str().unwrap(),
    ]));
    let spec = format!("data.tokenizer=bpe:{}", tokenizer.display());
    let out = run_ok(
        mixtrain()
            .arg("prepare")
            .arg(&config)
            .args(["--set", &spec]),
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains("prose:") && listing.contains("train tokens"),
        "{listing}"
    );
    run_ok(
        mixtrain()
            .arg("run")
            .arg(&config)
            .args(["--set", &spec, "--set", "train.steps=3"]),
    );
    let model =
        mixtrain::export::read_safetensors(&dir.path().join("run/model.safetensors")).unwrap();
    // The BPE vocabulary (512 including <|endoftext|>) sizes the embedding.
    assert_eq!(model["tok_emb.weight"].shape, vec![512, 32]);
}

/// A tiktoken encoding by name trains a model whose embedding has its vocabulary, and its
/// shards are 4 bytes a token (the vocabulary is over 2^16).
#[test]
fn tiktoken_encoding_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "[data]\ntokenizer = \"tiktoken:cl100k_base\"\n");
    run_ok(
        mixtrain()
            .arg("run")
            .arg(&config)
            .args(["--set", "train.steps=2"]),
    );
    let model =
        mixtrain::export::read_safetensors(&dir.path().join("run/model.safetensors")).unwrap();
    assert_eq!(model["tok_emb.weight"].shape, vec![100277, 32]);
    let shard = crate::common::part_shards(&dir.path().join("cache"), "train.bin")[0].clone();
    let header = std::fs::read(&shard).unwrap();
    assert_eq!(
        u32::from_le_bytes(header[12..16].try_into().unwrap()),
        4,
        "token width"
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = crate::common::repo().join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "quickstart + one per online mixer");
}

/// Regression: burn initialises parameters lazily, so training DoReMi's reference model before
/// the main model's first forward pass changed the main model's initial weights.
#[test]
fn initial_model_does_not_depend_on_reference_training() {
    let step0 = |sets: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), "");
        let mut cmd = mixtrain();
        cmd.arg("run").arg(&config).args(["--set", "train.steps=1"]);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        run_ok(&mut cmd);
        metrics_without_wall(&dir.path().join("run/metrics.jsonl"))[0].clone()
    };
    let plain = step0(&[]);
    let doremi = step0(&["mixer.kind=doremi", "mixer.doremi.reference_steps=3"]);
    assert_eq!(plain["val_loss_by_source"], doremi["val_loss_by_source"]);
}

/// `excess_from = "pool"` measures the same sequences at every update: with a model that
/// does not move (lr 1e-12) against a reference trained for 5 steps, every update's λ is the
/// same, while fresh samples give a different λ at each update.
#[test]
fn doremi_pool_measures_the_same_sequences_at_every_update() {
    let reference_dir = tempfile::tempdir().unwrap();
    let reference_config = tiny_config(reference_dir.path(), "");
    run_ok(
        mixtrain()
            .arg("run")
            .arg(&reference_config)
            .args(["--set", "train.steps=5"]),
    );
    let reference = format!(
        "mixer.doremi.reference={}",
        reference_dir.path().join("run").display()
    );
    let excess_by_update = |excess_from: &str| -> Vec<Vec<f64>> {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), "");
        let mut cmd = mixtrain();
        cmd.arg("run").arg(&config);
        for s in [
            "train.steps=9",
            "train.lr=1e-12",
            "mixer.kind=doremi",
            "mixer.every=3",
            &reference,
            &format!("mixer.doremi.excess_from={excess_from}"),
        ] {
            cmd.arg("--set").arg(s);
        }
        run_ok(&mut cmd);
        metrics_without_wall(&dir.path().join("run/metrics.jsonl"))
            .iter()
            .filter_map(|m| m.get("mixer").map(|mixer| mixer["excess_loss"].clone()))
            .map(|excess| {
                ["prose", "code", "legal"]
                    .map(|name| excess[name].as_f64().unwrap())
                    .to_vec()
            })
            .collect()
    };
    let pool = excess_by_update("pool");
    assert_eq!(pool.len(), 2, "updates at steps 3 and 6");
    assert!(pool[0].iter().all(|&e| e > 0.0), "{pool:?}");
    for (a, b) in pool[0].iter().zip(&pool[1]) {
        assert!((a - b).abs() < 1e-6 * a, "the same pool: {pool:?}");
    }
    let samples = excess_by_update("samples");
    assert!(
        samples[0]
            .iter()
            .zip(&samples[1])
            .any(|(a, b)| (a - b).abs() > 1e-3 * a),
        "fresh samples differ: {samples:?}"
    );
}

#[test]
fn doremi_uses_a_given_reference_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(
        mixtrain()
            .arg("run")
            .arg(&config)
            .args(["--set", "train.steps=5"]),
    );
    let reference = format!(
        "mixer.doremi.reference={}",
        dir.path().join("run").display()
    );
    let out_dir = format!("run.out_dir={}", dir.path().join("doremi").display());
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.kind=doremi",
        "--set",
        "mixer.every=2",
        "--set",
        &reference,
        "--set",
        &out_dir,
        "--set",
        "train.steps=8",
    ]));
    let doremi = dir.path().join("doremi");
    // The given reference is used as is: nothing is trained or saved.
    assert!(!doremi.join("reference.safetensors").exists());
    let metrics = metrics_without_wall(&doremi.join("metrics.jsonl"));
    let updates: Vec<_> = metrics
        .iter()
        .filter(|m| m.get("mixer").is_some())
        .collect();
    assert_eq!(updates.len(), 3, "updates at steps 2, 4, 6");
    // The model trains from scratch against a reference 5 steps ahead: its excess loss
    // (clamped at 0 per token) is positive for the sources, not the clamp's 0 everywhere.
    for m in updates {
        let excess = &m["mixer"]["excess_loss"];
        let values: Vec<f64> = ["prose", "code", "legal"]
            .iter()
            .map(|name| excess[*name].as_f64().unwrap())
            .collect();
        assert!(
            values.iter().all(|e| e.is_finite()) && values.iter().any(|&e| e > 0.0),
            "{m}"
        );
    }
}

#[test]
fn entropy_seed_starts_from_weights_proportional_to_token_entropy() {
    let dir = tempfile::tempdir().unwrap();
    // A source whose every byte fixes the next (conditional entropy ~0 but for document
    // boundaries) beside real prose.
    let repetitive = dir.path().join("abc.jsonl");
    // Distinct documents (the train/validation split hashes each one).
    let lines: String = (0..60)
        .map(|i| serde_json::json!({ "text": "abc".repeat(300 + i) }).to_string() + "\n")
        .collect();
    std::fs::write(&repetitive, lines).unwrap();
    let config = crate::common::tiny_config(dir.path(), "");
    let out = dir.path().join("run");
    crate::common::run_ok(crate::common::mixtrain().args(["run"]).arg(&config).args([
        "--set",
        "train.steps=2",
        "--set",
        "mixer.init=entropy:conditional",
        "--set",
        &format!("data.sources.1.path={}", repetitive.display()),
    ]));
    let mixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mixture.json")).unwrap()).unwrap();
    assert_eq!(mixture["init"], "entropy:conditional");
    let entropy: Vec<f64> = ["prose", "code", "legal"]
        .iter()
        .map(|s| mixture["entropy_nats"][s].as_f64().unwrap())
        .collect();
    let total: f64 = entropy.iter().sum();
    let row0 = crate::common::ratio_rows(&out.join("ratios.csv")).remove(0);
    for (w, h) in row0.iter().zip(&entropy) {
        assert!((w - h / total).abs() < 1e-12, "{row0:?} vs {entropy:?}");
    }
    assert!(
        entropy[1] < 0.05 && entropy[0] > 1.5 && entropy[2] > 1.5,
        "{entropy:?}"
    );
}

/// `epochs_by_source` counts passes over each source's training windows: epochs × windows ×
/// seq_len is exactly the tokens drawn from it; past `data.max_epochs` the run warns once.
#[test]
fn epochs_by_source_counts_passes_and_warns_past_max_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let out = run_ok(
        mixtrain()
            .arg("run")
            .arg(&config)
            .args(["--set", "data.max_epochs=0.003"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("source repeated more than data.max_epochs")
            .count(),
        3,
        "one warning per source: {stderr}"
    );
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v.get("epochs_by_source").is_some())
        .expect("a line with epochs_by_source");
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        let entry = entry.unwrap().path();
        if !entry.join("meta.json").is_file() {
            continue; // manifest.json, parts/
        }
        let name = entry.file_name().unwrap().to_str().unwrap();
        let source = name.split('-').next().unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.join("meta.json")).unwrap())
                .unwrap();
        let windows = (meta["train_tokens"].as_u64().unwrap() - 1) / 32;
        let epochs = last["epochs_by_source"][source].as_f64().unwrap();
        let tokens = last["tokens_by_source"][source].as_f64().unwrap();
        assert!(epochs > 0.003, "{source}: {epochs}");
        assert!(
            (epochs * windows as f64 * 32.0 - tokens).abs() < 1e-6 * tokens,
            "{source}: {epochs} epochs of {windows} windows vs {tokens} tokens"
        );
    }
}
