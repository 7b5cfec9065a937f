//! `mixtrain demix` end to end on a tiny config: outputs, reuse of finished components after
//! an interruption, and runs seeded from the result.

use crate::common::{mixtrain, run_ok, tiny_config};

const TINY_DEMIX: &str = r#"
[demix]
base_steps = 4
component_steps = 4
first_round = 6
rounds = 2
pool = 300
top_k = 4
"#;

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn weights(value: &serde_json::Value) -> Vec<f64> {
    ["prose", "code", "legal"]
        .iter()
        .map(|s| value[s].as_f64().unwrap())
        .collect()
}

/// Spearman's ρ = 1 − 6 Σ d² / (n (n² − 1)) of (x, y) pairs with distinct values.
fn spearman_without_ties(pairs: &[(f64, f64)]) -> f64 {
    let rank = |values: Vec<f64>| -> Vec<f64> {
        values
            .iter()
            .map(|v| values.iter().filter(|w| *w < v).count() as f64)
            .collect()
    };
    let rx = rank(pairs.iter().map(|p| p.0).collect());
    let ry = rank(pairs.iter().map(|p| p.1).collect());
    let n = pairs.len() as f64;
    let d2: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - b).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn demix_writes_its_outputs_resumes_and_seeds_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), TINY_DEMIX);
    let demix_dir = dir.path().join("run/demix");
    let out = run_ok(
        mixtrain()
            .arg("demix")
            .arg(&config)
            .args(["--validate", "3"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The reported Spearman is the rank correlation of validation.csv's two loss columns.
    let printed: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("proxy vs trained target loss, Spearman over 3 models: "))
        .unwrap_or_else(|| panic!("no validation Spearman printed: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    let rows: Vec<(f64, f64)> = std::fs::read_to_string(demix_dir.join("validation.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
            (cols[cols.len() - 2], cols[cols.len() - 1])
        })
        .collect();
    let expected = spearman_without_ties(&rows);
    assert!(
        (printed - expected).abs() < 5e-4,
        "{printed} vs {expected}: {rows:?}"
    );

    let mixture = read_json(&demix_dir.join("mixture.json"));
    let seed = weights(&mixture["final"]);
    assert!((seed.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{seed:?}");
    assert!(seed.iter().all(|&w| w > 0.0));
    assert_eq!(mixture["scored"], 9, "6 + 3 proxies");
    let proxies = std::fs::read_to_string(demix_dir.join("proxies.csv")).unwrap();
    assert_eq!(proxies.lines().count(), 1 + 9);
    assert!(proxies.starts_with("round,w_prose,w_code,w_legal,loss_prose,"));
    assert_eq!(
        std::fs::read_to_string(demix_dir.join("validation.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 3
    );
    assert!(demix_dir.join("predicted_vs_measured.svg").is_file());
    for name in ["prose", "code", "legal"] {
        assert!(demix_dir
            .join(format!("components/{name}.safetensors"))
            .is_file());
    }

    // An interrupted demix: one component lost. The rerun trains only that one and, being
    // deterministic, finds the same mixture.
    let kept = demix_dir.join("components/prose.safetensors");
    let kept_before = std::fs::metadata(&kept).unwrap().modified().unwrap();
    std::fs::remove_file(demix_dir.join("components/legal.safetensors")).unwrap();
    run_ok(mixtrain().arg("demix").arg(&config));
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        kept_before,
        "a finished component was retrained"
    );
    let again = read_json(&demix_dir.join("mixture.json"));
    assert_eq!(weights(&again["final"]), seed);

    // A run seeded from it starts at exactly that mixture (static mixer: no floor).
    let seeded = dir.path().join("seeded");
    run_ok(mixtrain().args(["run"]).arg(&config).args([
        "--set",
        "train.steps=2",
        "--set",
        &format!("run.out_dir={}", seeded.display()),
        "--set",
        &format!("mixer.init=demix:{}", demix_dir.display()),
    ]));
    let row0 = crate::common::ratio_rows(&seeded.join("ratios.csv")).remove(0);
    for (a, b) in row0.iter().zip(&seed) {
        assert!((a - b).abs() < 1e-12, "{row0:?} vs {seed:?}");
    }
}

#[test]
fn init_demix_runs_the_search_first_then_trains() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), TINY_DEMIX);
    run_ok(mixtrain().args(["run"]).arg(&config).args([
        "--set",
        "train.steps=2",
        "--set",
        "mixer.init=demix",
        "--set",
        "mixer.kind=odm",
    ]));
    let run = dir.path().join("run");
    let seed = weights(&read_json(&run.join("demix/mixture.json"))["final"]);
    let mixture = read_json(&run.join("mixture.json"));
    assert_eq!(weights(&mixture["initial"]), seed);
    assert_eq!(mixture["init"], "demix");
}
