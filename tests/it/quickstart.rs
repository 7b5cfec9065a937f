//! The quickstart as a user runs it: `mixtrain run configs/quickstart.toml` (out_dir and cache
//! moved into a temp dir), then `eval`, `plot`, and the exported model. Takes ~4 minutes on
//! 2 cores: it is the check that the README's first command does what the README says.

use crate::common::{metrics_without_wall, mixtrain, repo, run_ok};

#[test]
fn quickstart_trains_and_every_output_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = run_ok(
        mixtrain()
            .current_dir(repo())
            .args(["run", "configs/quickstart.toml", "--set"])
            .arg(format!("run.out_dir={}", run.display()))
            .arg("--set")
            .arg(format!(
                "data.cache_dir={}",
                dir.path().join("cache").display()
            )),
    );
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(summary.contains("run finished: 300 steps"), "{summary}");

    // Per-source validation loss falls well below its step-0 value.
    let metrics = metrics_without_wall(&run.join("metrics.jsonl"));
    let evals: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m.get("val_loss").is_some())
        .collect();
    let (first, last) = (evals[0], evals[evals.len() - 1]);
    assert_eq!(first["step"], 0);
    assert_eq!(last["step"], 300);
    let names = ["prose", "code", "docs", "legal", "man"];
    for name in names {
        let before = first["val_loss_by_source"][name].as_f64().unwrap();
        let after = last["val_loss_by_source"][name].as_f64().unwrap();
        assert!(after < before - 2.0, "{name}: {before} -> {after}");
    }

    // ratios.csv: header and rows on the simplex.
    let ratios = std::fs::read_to_string(run.join("ratios.csv")).unwrap();
    let mut lines = ratios.lines();
    assert_eq!(lines.next().unwrap(), "step,prose,code,docs,legal,man");
    for line in lines {
        let sum: f64 = line
            .split(',')
            .skip(1)
            .map(|x| x.parse::<f64>().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6, "{line}");
    }

    // The DoReMi mixer moved the mixture away from uniform (its start) and back into
    // mixture.json: final and time-averaged weights by name, on the simplex.
    assert!(ratios.lines().count() > 20, "a row per update");
    let mixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("mixture.json")).unwrap()).unwrap();
    let mut moved = 0.0f64;
    for key in ["final", "time_averaged"] {
        let weights: Vec<f64> = names
            .iter()
            .map(|n| mixture[key][n].as_f64().unwrap())
            .collect();
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{key}");
        moved = moved.max(weights.iter().map(|w| (w - 0.2).abs()).fold(0.0, f64::max));
    }
    assert!(moved > 0.01, "the mixture stayed uniform: {mixture}");
    assert!(run.join("reference.safetensors").is_file());

    // The exported model: readable names, PyTorch layout ([out, in]).
    let model = mixtrain::export::read_safetensors(&run.join("model.safetensors")).unwrap();
    assert_eq!(model["tok_emb.weight"].shape, vec![257, 128]);
    assert_eq!(model["blocks.3.mlp.gate_proj.weight"].shape, vec![384, 128]);
    assert_eq!(model["blocks.3.mlp.down_proj.weight"].shape, vec![128, 384]);
    assert_eq!(model["norm_f.weight"].shape, vec![128]);
    assert!(
        !model.contains_key("lm_head.weight"),
        "tied embeddings export no separate head"
    );

    // eval reproduces the final evaluation on the same fixed validation windows.
    let out = run_ok(
        mixtrain()
            .current_dir(repo())
            .arg("eval")
            .arg(&run)
            .arg("--json"),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["step"], 300);
    for name in names {
        let eval = report["val_loss_by_source"][name].as_f64().unwrap();
        let logged = last["val_loss_by_source"][name].as_f64().unwrap();
        assert!(
            (eval - logged).abs() < 1e-9,
            "{name}: eval {eval} vs logged {logged}"
        );
    }

    // plot writes both SVGs with every source in the legend.
    run_ok(mixtrain().arg("plot").arg(&run));
    for svg in ["ratios.svg", "val_loss.svg"] {
        let text = std::fs::read_to_string(run.join(svg)).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        for name in names {
            assert!(text.contains(name), "{svg} lacks {name}");
        }
    }
}
