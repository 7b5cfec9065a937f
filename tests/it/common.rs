//! Helpers for the integration tests: they run the real `mixtrain` binary in temporary
//! directories, on the bundled quickstart corpus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Held by every test that trains in this process (`Session::train_step`). A backward on a
/// test's own thread holds burn's process-wide autodiff mutex while it waits for rayon (its
/// matmuls); another test's passes running backward inside both rayon workers would wait for
/// that mutex, and neither could go on (the lib tests deadlocked so once). Tests that run the
/// binary need no lock.
pub fn in_process_training() -> std::sync::MutexGuard<'static, ()> {
    static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TRAINING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mixtrain() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixtrain"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// `tests/configs/tiny.toml` written into `dir` as `config.toml`, with `dir/run` as its
/// out_dir, `dir/cache` as its cache, absolute data paths, and `extra` (TOML) merged over it
/// table by table. Seconds per run on 2 cores.
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("tests/configs/tiny.toml")).expect("tiny.toml");
    let mut config: toml::Table = toml::from_str(&text).expect("tiny.toml parses");
    let table = |config: &toml::Table, key: &str| -> toml::Table {
        config[key].as_table().expect("a table").clone()
    };
    let mut run = table(&config, "run");
    run.insert("out_dir".into(), path_value(&dir.join("run")));
    config.insert("run".into(), run.into());
    let mut data = table(&config, "data");
    data.insert("cache_dir".into(), path_value(&dir.join("cache")));
    for source in data["sources"].as_array_mut().expect("sources").iter_mut() {
        let source = source.as_table_mut().expect("a source table");
        let path = source["path"].as_str().expect("a path").to_string();
        source.insert("path".into(), path_value(&repo().join(path)));
    }
    config.insert("data".into(), data.into());
    let extra: toml::Table = toml::from_str(extra).expect("the test's extra TOML parses");
    merge(&mut config, extra);
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&config).expect("serialises")).expect("write config");
    path
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.display().to_string())
}

/// `extra` over `base`: tables merged key by key, anything else replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
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

/// `mixtrain run --resume` printed that it continued from checkpoint `step` (a restart from
/// step 0 would produce the same files, so the files alone cannot tell).
pub fn assert_resumed_from(out: &Output, step: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("(resumed from step {step})")),
        "expected a resume from step {step}, got:\n{stdout}"
    );
}

/// The step of the newest checkpoint directory that has its `DONE` marker.
pub fn newest_complete_checkpoint(dir: &Path) -> Option<usize> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("DONE").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step_")?.parse().ok())
        .max()
}

/// `mixtrain run --resume` printed that it found no complete checkpoint and began again.
pub fn assert_restarted(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(restarted from step 0"), "{stdout}");
}

/// The Python packages the golden and export checks import, pinned.
const PYTHON_PACKAGES: [&str; 3] = ["numpy==2.4.6", "safetensors==0.8.0", "pyyaml==6.0.3"];

/// A python3 that can import [`PYTHON_PACKAGES`]: a venv under target/ made on first use
/// (`python3 -m venv`, then `pip install` of the pinned versions; a stamp file records a
/// finished install). Panics with what to do when the registry cannot be reached.
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_python_venv).clone()
}

fn make_python_venv() -> PathBuf {
    let venv = repo().join("target/test-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("mixtrain-packages.txt");
    let wanted = PYTHON_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .expect("python3 runs (the export and golden tests need it)");
    assert!(
        made.status.success(),
        "python3 -m venv {} failed:\n{}",
        venv.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES)
        .output()
        .expect("the venv's python runs");
    assert!(
        pip.status.success(),
        "pip could not install {PYTHON_PACKAGES:?} into {} (is PyPI reachable?):\n{}",
        venv.display(),
        String::from_utf8_lossy(&pip.stderr)
    );
    std::fs::write(&stamp, wanted).expect("write the venv's stamp");
    python
}

/// The train and validation tokens (header-less shard bytes) of a prepared source entry, read
/// across its parts (`meta.json` lists them) or from shards beside its meta.json.
pub fn entry_tokens(entry: &Path) -> (Vec<u8>, Vec<u8>) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("meta.json")).unwrap()).unwrap();
    let dirs: Vec<PathBuf> = match meta["parts"].as_array() {
        Some(parts) => parts
            .iter()
            .map(|p| entry.join(p.as_str().unwrap()))
            .collect(),
        None => vec![entry.to_path_buf()],
    };
    let read = |name: &str| -> Vec<u8> {
        dirs.iter()
            .flat_map(|d| shard_files(d, name))
            .flat_map(|f| std::fs::read(f).unwrap()[mixtrain::data::SHARD_HEADER_BYTES..].to_vec())
            .collect()
    };
    (read("train.bin"), read("val.bin"))
}

/// A part's files called `name` (`train.bin`, `val.bin`) in stream order: one per shard
/// (`shard-NNNNN/`), or the one in the part's directory (parts from before shards).
pub fn shard_files(part: &Path, name: &str) -> Vec<PathBuf> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shard-")
        })
        .map(|p| p.join(name))
        .collect();
    shards.sort();
    if shards.is_empty() {
        shards.push(part.join(name));
    }
    shards
}

/// The shard files (`train.bin`, `val.bin`) of every part in a cache directory.
pub fn part_shards(cache: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .flat_map(|p| shard_files(&p, name))
        .filter(|p| p.is_file())
        .collect()
}
