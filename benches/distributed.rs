//! Data-parallel throughput on this machine: the quickstart model trained by 2 ranks × 1 core
//! (`mixtrain launch --procs 2`) against 1 rank × 2 cores (`mixtrain run`), with the static
//! mixer and with fastmix, interleaved, median of ROUNDS rounds; and the share of a step rank 0
//! spends in all-reduces (sending its vectors, waiting for the other rank, receiving the sum;
//! the barriers at the start are not counted).
//!
//!     cargo bench --bench distributed             # 40 steps per run, 2 rounds
//!     STEPS=60 ROUNDS=3 cargo bench --bench distributed
//!
//! ms/step is timed between the metrics lines of steps 10 and STEPS − 5 (no evaluation in
//! between: evaluations run at step 0 and at the end only).

#[macro_use]
mod report;

use std::path::Path;
use std::process::Command;

/// elapsed_s of the metrics line of `step`.
fn elapsed_at(metrics: &Path, step: u64) -> f64 {
    let text = std::fs::read_to_string(metrics).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["step"].as_u64() == Some(step))
        .and_then(|v| v["wall"]["elapsed_s"].as_f64())
        .unwrap_or_else(|| panic!("no wall time at step {step} in {}", metrics.display()))
}

/// Seconds rank 0 spent in all-reduce calls and how many it made, from its closing log line.
fn all_reduce_seconds(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("all-reduce") && l.contains("rank=0"))?;
    let value = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        let end = rest.find(' ').unwrap_or(rest.len());
        rest[..end].trim_matches('"').parse().ok()
    };
    Some((value("seconds=")?, value("calls=")?))
}

struct Timing {
    ms_per_step: f64,
    all_reduce_s: Option<(f64, f64)>,
}

fn train(ranks: usize, mixer: &str, steps: u64, dir: &Path) -> Timing {
    let out_dir = dir.join(format!("{mixer}-{ranks}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixtrain"));
    if ranks == 1 {
        cmd.arg("run");
        // One rank gets both cores, as `launch` gives each of 2 ranks one.
        cmd.env("RAYON_NUM_THREADS", "2");
    } else {
        cmd.arg("launch").arg("--procs").arg(ranks.to_string());
        cmd.env_remove("RAYON_NUM_THREADS");
    }
    cmd.arg("configs/quickstart.toml").env("RUST_LOG", "info");
    for set in [
        format!("run.out_dir=\"{}\"", out_dir.display()),
        format!("mixer.kind={mixer}"),
        format!("train.steps={steps}"),
        "train.eval_every=100000".into(),
        "train.log_every=5".into(),
        "train.checkpoint_every=0".into(),
    ] {
        cmd.arg("--set").arg(set);
    }
    let out = cmd.output().expect("run mixtrain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mixtrain failed:\n{stderr}");
    let metrics = out_dir.join("metrics.jsonl");
    let (from, to) = (10, steps - 5);
    let seconds = elapsed_at(&metrics, to) - elapsed_at(&metrics, from);
    Timing {
        ms_per_step: seconds * 1e3 / (to - from) as f64,
        all_reduce_s: all_reduce_seconds(&stderr),
    }
}

fn main() {
    let steps: u64 = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    assert!(steps >= 20, "STEPS must be at least 20");
    let dir = tempfile::tempdir().expect("temporary directory");
    for mixer in ["static", "fastmix"] {
        let mut one = Vec::new();
        let mut two = Vec::new();
        let mut share = Vec::new();
        for _ in 0..rounds {
            one.push(train(1, mixer, steps, dir.path()).ms_per_step);
            let t = train(2, mixer, steps, dir.path());
            two.push(t.ms_per_step);
            if let Some((seconds, _calls)) = t.all_reduce_s {
                // All of rank 0's time in all-reduces (one per step, plus fastmix's g_val
                // before each update) over the run's steps, against a step's time.
                share.push(seconds * 1e3 / steps as f64 / t.ms_per_step);
            }
        }
        let (one, two) = (report::median(one), report::median(two));
        say!(
            "distributed/{mixer:<8} 1 rank x 2 cores {one:>7.1} ms/step   2 ranks x 1 core \
             {two:>7.1} ms/step   speed-up {:.2}   all-reduce share of a 2-rank step {:.1}%",
            one / two,
            100.0 * report::median(share)
        );
    }
    report::finish(
        "distributed",
        "distributed",
        &["STEPS", "ROUNDS", "RAYON_NUM_THREADS"],
    );
}
