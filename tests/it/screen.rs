//! `mixtrain screen`: static tilts trained, ranked and reused; bad options refused before
//! anything trains.

use std::path::Path;

use crate::common::{mixtrain, run_ok, tiny_config};

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read JSON");
    serde_json::from_str(&text).expect("valid JSON")
}

/// The last target_val_loss in a run's metrics.jsonl.
fn final_target_loss(run_dir: &Path) -> f64 {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics");
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|r| r.get("target_val_loss")?.as_f64())
        .expect("a target loss")
}

#[test]
fn screen_ranks_tilts_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "[target]\nsources = [\"legal\"]\n");
    let screen = |cmd: &mut std::process::Command| {
        run_ok(
            cmd.arg("screen")
                .arg(&config)
                .args(["--weight", "0.6", "--seeds", "1,2"]),
        )
    };
    let first = screen(&mut mixtrain());
    let report = read_json(&dir.path().join("run/screen/screen.json"));
    let rows = report["candidates"].as_array().expect("candidates");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "uniform and one tilt per source: {names:?}");
    // Three times as much of the target's own source wins on the target.
    assert_eq!(report["best"], "tilt-legal", "{report:#}");
    let mut previous = f64::NEG_INFINITY;
    for row in rows {
        let finals: Vec<f64> = serde_json::from_value(row["final_target_loss"].clone()).unwrap();
        let dirs: Vec<String> = serde_json::from_value(row["run_dirs"].clone()).unwrap();
        for (loss, run_dir) in finals.iter().zip(&dirs) {
            assert_eq!(*loss, final_target_loss(Path::new(run_dir)), "{run_dir}");
            let mixture = read_json(&Path::new(run_dir).join("mixture.json"));
            for (name, weight) in row["weights"].as_object().unwrap() {
                let trained = mixture["final"][name].as_f64().unwrap();
                assert!(
                    (trained - weight.as_f64().unwrap()).abs() < 1e-9,
                    "{run_dir} {name}"
                );
            }
        }
        let mean = finals.iter().sum::<f64>() / finals.len() as f64;
        assert!(mean >= previous, "rows sorted by mean final target loss");
        previous = mean;
    }
    let legal = &rows[0]["weights"];
    assert_eq!(
        (legal["legal"].as_f64(), legal["code"].as_f64()),
        (Some(0.6), Some(0.2))
    );

    // A second screen trains nothing: every run's metrics stay as they were.
    let metrics = dir.path().join("run/screen/tilt-code-seed2/metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    let second = screen(&mut mixtrain());
    assert_eq!(std::fs::read(&metrics).unwrap(), before);
    assert_eq!(
        first.stdout, second.stdout,
        "the same table from the same runs"
    );

    // A screen of another config in the same directory is refused, not served stale runs.
    let out = mixtrain()
        .arg("screen")
        .arg(&config)
        .args([
            "--weight",
            "0.6",
            "--seeds",
            "1,2",
            "--set",
            "train.steps=20",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a changed config reused the old runs"
    );
    assert!(stderr.contains("train.steps"), "{stderr}");
    assert_eq!(std::fs::read(&metrics).unwrap(), before);
}

#[test]
fn screen_refuses_bad_options_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    for weight in ["1.5", "0", "0.3333333333333333", "nan"] {
        let out = mixtrain()
            .arg("screen")
            .arg(&config)
            .args(["--weight", weight])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--weight {weight} accepted");
        assert!(stderr.contains("--weight"), "--weight {weight}: {stderr}");
        assert!(!dir.path().join("run").exists(), "nothing created");
    }
    let out = mixtrain()
        .arg("screen")
        .arg(&config)
        .args(["--seeds", "1,1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a repeated seed accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds"));
}
