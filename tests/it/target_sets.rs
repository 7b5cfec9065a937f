//! Validation-only target sets (`[[target.sets]]`), the hybrid apply, the mixer's warmup and
//! trust region, on the real binary.

use std::path::Path;

use crate::common::{metrics_without_wall, mixtrain, ratio_rows, repo, run_ok, tiny_config};

/// `[[target.sets]]` with one set "heldout" at `path`.
fn target_set(path: &Path) -> String {
    format!(
        "\n[target]\n[[target.sets]]\nname = \"heldout\"\npath = \"{}\"\n",
        path.display()
    )
}

#[test]
fn a_target_set_is_logged_and_never_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let man = repo().join("data/quickstart/man.jsonl");
    let config = tiny_config(dir.path(), &target_set(&man));
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.kind=fastmix",
        "--set",
        "mixer.every=5",
        "--set",
        "train.steps=20",
    ]));
    let run = dir.path().join("run");
    let metrics = metrics_without_wall(&run.join("metrics.jsonl"));
    let evals: Vec<_> = metrics
        .iter()
        .filter(|m| m.get("val_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 3, "evaluations at steps 0, 10, 20");
    for m in &evals {
        // The default target is the set, and only the set.
        let set_loss = m["val_loss_by_target_set"]["heldout"].as_f64().unwrap();
        assert_eq!(m["target_val_loss"].as_f64().unwrap(), set_loss, "{m}");
        assert!(m["val_loss_by_source"].get("heldout").is_none(), "{m}");
    }
    let first = evals[0]["target_val_loss"].as_f64().unwrap();
    let last = evals[2]["target_val_loss"].as_f64().unwrap();
    assert!(last < first, "the target loss fell: {first} -> {last}");

    // Every training token is counted against a training source; the set has no counter.
    let mut steps_seen = 0;
    for m in metrics.iter().filter(|m| m.get("train_loss").is_some()) {
        let by_source = m["tokens_by_source"].as_object().unwrap();
        let names: Vec<&str> = by_source.keys().map(String::as_str).collect();
        assert_eq!(names, ["prose", "code", "legal"], "{m}");
        let sum: u64 = by_source.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, m["tokens"].as_u64().unwrap(), "{m}");
        steps_seen += 1;
    }
    assert_eq!(steps_seen, 20);
    let mixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("mixture.json")).unwrap()).unwrap();
    assert!(mixture["tokens_by_source"].get("heldout").is_none());
    let header = std::fs::read_to_string(run.join("ratios.csv")).unwrap();
    assert!(header.starts_with("step,prose,code,legal\n"), "{header}");

    // eval and plot know the set.
    let out = run_ok(mixtrain().args(["eval", "--json"]).arg(&run));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let set_loss = report["val_loss_by_target_set"]["heldout"]
        .as_f64()
        .unwrap();
    assert_eq!(report["target_val_loss"].as_f64().unwrap(), set_loss);
    assert!((set_loss - last).abs() < 1e-6, "{set_loss} vs {last}");
    run_ok(mixtrain().arg("plot").arg(&run));
    let svg = std::fs::read_to_string(run.join("val_loss.svg")).unwrap();
    assert!(svg.contains("heldout (target set)"));
}

/// A target set drawn from one training source's documents: fastmix must move weight onto
/// that source.
#[test]
fn fastmix_moves_weight_to_the_source_like_the_target_set() {
    let dir = tempfile::tempdir().unwrap();
    let code = std::fs::read_to_string(repo().join("data/quickstart/code.jsonl")).unwrap();
    let heldout = dir.path().join("heldout.jsonl");
    std::fs::write(
        &heldout,
        code.lines().step_by(3).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let config = tiny_config(dir.path(), &target_set(&heldout));
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.kind=fastmix",
        "--set",
        "mixer.every=5",
        "--set",
        "train.steps=150",
        "--set",
        "train.checkpoint_every=0",
    ]));
    let rows = ratio_rows(&dir.path().join("run/ratios.csv"));
    let late = &rows[rows.len() / 2..];
    let mean = |k: usize| late.iter().map(|r| r[k]).sum::<f64>() / late.len() as f64;
    let (prose, code, legal) = (mean(0), mean(1), mean(2));
    eprintln!("late weights: prose {prose:.3}, code {code:.3}, legal {legal:.3}");
    assert!(code > 0.45 && code > 1.4 * prose && code > 1.4 * legal);
}

/// fastmix with a step large enough to leave uniform at once (`lr = 5`): unguarded its first
/// update moves the mixture further than the guard's initial radius; guarded it stays within
/// the radius the guard logs, and every update logs the test (target loss, radius, distance).
#[test]
fn the_guard_bounds_the_mixture_and_logs_its_test() {
    let distances = |guard: &str| -> Vec<(f64, Option<serde_json::Value>)> {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), "");
        run_ok(mixtrain().arg("run").arg(&config).args([
            "--set",
            "mixer.kind=fastmix",
            "--set",
            "mixer.every=5",
            "--set",
            "mixer.fastmix.lr=5.0",
            "--set",
            &format!("mixer.guard.kind={guard}"),
            "--set",
            "train.steps=40",
        ]));
        let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
        metrics
            .iter()
            .filter_map(|m| m.get("mixer"))
            .map(|mixer| {
                let w = &mixer["weights"];
                let tv = 0.5
                    * ["prose", "code", "legal"]
                        .iter()
                        .map(|k| (w[k].as_f64().unwrap() - 1.0 / 3.0).abs())
                        .sum::<f64>();
                (tv, mixer.get("guard").cloned())
            })
            .collect()
    };
    let unguarded = distances("off");
    assert!(unguarded[0].0 > 0.15, "{unguarded:?}");
    assert!(unguarded.iter().all(|(_, g)| g.is_none()));
    let guarded = distances("trust-region");
    assert_eq!(guarded.len(), 7, "{guarded:?}");
    assert!((guarded[0].0 - 0.1).abs() < 1e-9, "{guarded:?}");
    for (tv, guard) in &guarded {
        let guard = guard.as_ref().expect("every guarded update logs its test");
        let radius = guard["radius"].as_f64().unwrap();
        assert!(
            (guard["distance"].as_f64().unwrap() - tv).abs() < 1e-9,
            "{guard}"
        );
        assert!(
            *tv <= radius + 1e-9 && (0.025..=1.0).contains(&radius),
            "{guard}"
        );
        assert!(
            guard["target_loss"].as_f64().unwrap().is_finite(),
            "{guard}"
        );
    }
    assert!(guarded[1].1.as_ref().unwrap()["measured"].is_number());
    // The evidence guard: the first update has no evidence yet (radius `min_radius`); every update logs
    // a t statistic per source and stays within the radius it logs.
    let evidence = distances("evidence");
    assert_eq!(evidence.len(), 7, "{evidence:?}");
    assert!((evidence[0].0 - 0.025).abs() < 1e-9, "{evidence:?}");
    for (tv, guard) in &evidence {
        let guard = guard.as_ref().expect("every update logs the evidence");
        let radius = guard["radius"].as_f64().unwrap();
        assert!(
            *tv <= radius + 1e-9 && (0.025..=1.0).contains(&radius),
            "{guard}"
        );
        let t = guard["evidence"].as_object().map_or(0, |t| t.len());
        assert_eq!(t, 3, "{guard}");
    }
}

#[test]
fn hybrid_draws_follow_the_mixture_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    // Batch 6, p = (4, 1, 1)/6: every step draws 4, 1 and 1 sequences of 32 tokens.
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.apply=hybrid",
        "--set",
        "mixer.init={prose = 4, code = 1, legal = 1}",
        "--set",
        "train.steps=5",
    ]));
    let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
    for m in metrics.iter().filter(|m| m.get("train_loss").is_some()) {
        let step = m["step"].as_u64().unwrap();
        let tokens = &m["tokens_by_source"];
        assert_eq!(tokens["prose"].as_u64().unwrap(), step * 4 * 32, "{m}");
        assert_eq!(tokens["code"].as_u64().unwrap(), step * 32, "{m}");
        assert_eq!(tokens["legal"].as_u64().unwrap(), step * 32, "{m}");
    }
}

#[test]
fn warmup_delays_updates_and_the_trust_region_bounds_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.kind=odm",
        "--set",
        "mixer.every=5",
        "--set",
        "mixer.warmup_steps=12",
        "--set",
        "mixer.max_change=0.02",
        "--set",
        "train.steps=40",
    ]));
    let ratios = std::fs::read_to_string(dir.path().join("run/ratios.csv")).unwrap();
    let steps: Vec<u64> = ratios
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, [0, 15, 20, 25, 30, 35]);
    let rows = ratio_rows(&dir.path().join("run/ratios.csv"));
    for pair in rows.windows(2) {
        let tv: f64 = 0.5
            * pair[0]
                .iter()
                .zip(&pair[1])
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>();
        assert!(tv <= 0.02 + 1e-9, "moved {tv}: {pair:?}");
    }
    // ODM's own first updates stay uniform; the bound must not freeze the mixture.
    assert_ne!(rows.first(), rows.last());
}

/// The target-set example resolves its target to the set alone (tests/cli.rs checks that
/// every example config is valid).
#[test]
fn the_target_set_example_targets_its_set() {
    let example =
        mixtrain::config::Config::load(&repo().join("configs/target-set.toml"), &[]).unwrap();
    let target = example.target();
    assert!(target.sources.is_empty() && target.sets == [0]);
}
