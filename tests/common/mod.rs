//! Helpers for the integration tests: they run the real `mixtrain` binary in temporary
//! directories, on the bundled quickstart corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mixtrain() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixtrain"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// A small, fast config over three quickstart sources: seconds per run on 2 cores.
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let data = repo().join("data/quickstart");
    let text = format!(
        r#"
[run]
out_dir = "{out}"
seed = 7

[data]
seq_len = 32
cache_dir = "{cache}"
[[data.sources]]
name = "prose"
path = "{data}/prose.jsonl"
[[data.sources]]
name = "code"
path = "{data}/code.jsonl"
[[data.sources]]
name = "legal"
path = "{data}/legal.jsonl"

[model]
d_model = 32
n_layers = 2
n_heads = 2
d_ff = 64

[train]
steps = 40
batch_size = 6
lr = 3e-3
warmup_steps = 5
eval_every = 10
eval_batches = 1
checkpoint_every = 5
log_every = 1
{extra}
"#,
        out = dir.join("run").display(),
        cache = dir.join("cache").display(),
        data = data.display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn mixtrain");
    assert!(
        out.status.success(),
        "mixtrain failed: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// metrics.jsonl as JSON values with the wall-clock fields ("wall") removed.
pub fn metrics_without_wall(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read metrics.jsonl")
        .lines()
        .map(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(line).expect("metrics line is JSON");
            v.as_object_mut().expect("object").remove("wall");
            v
        })
        .collect()
}

/// The weight rows of a run's ratios.csv (step column dropped).
pub fn ratio_rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .expect("read ratios.csv")
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|x| x.parse().unwrap()).collect())
        .collect()
}
