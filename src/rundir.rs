//! The run directory: config.toml (resolved, with a provenance header), metrics.jsonl,
//! ratios.csv, mixture.json, checkpoints/, model.safetensors.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::run_lock::RunLock;

pub(crate) const CONFIG_FILE: &str = "config.toml";
pub(crate) const METRICS_FILE: &str = "metrics.jsonl";
pub(crate) const RATIOS_FILE: &str = "ratios.csv";
pub(crate) const MODEL_FILE: &str = "model.safetensors";
pub(crate) const CHECKPOINTS_DIR: &str = "checkpoints";

pub(crate) struct RunDir {
    pub(crate) path: PathBuf,
    metrics: BufWriter<File>,
    ratios: BufWriter<File>,
    /// Held until the run ends: no second process writes into this directory meanwhile.
    _lock: RunLock,
}

/// True when `dir` already holds (part of) a run.
pub(crate) fn holds_run(dir: &Path) -> bool {
    [CONFIG_FILE, METRICS_FILE, RATIOS_FILE, CHECKPOINTS_DIR]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// The records of a metrics.jsonl in order; a line that is not JSON is an error naming it.
pub(crate) fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).at(path)?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::data(path, format!("line {}: invalid JSON: {e}", i + 1)))
        })
        .collect()
}

fn open_append(path: &Path) -> Result<BufWriter<File>> {
    let file = OpenOptions::new().append(true).open(path).at(path)?;
    Ok(BufWriter::new(file))
}

impl RunDir {
    /// Errors if `path` already holds a run (a new run must not overwrite it).
    pub(crate) fn check_free(path: &Path) -> Result<()> {
        if path.is_dir() {
            // A directory another process is training in: name that process.
            RunLock::acquire(path)?;
        }
        if holds_run(path) {
            return Err(Error::RunDir {
                path: path.to_path_buf(),
                message: "already holds a run; pass --resume to continue it, or set another \
                          run.out_dir (e.g. --set run.out_dir=runs/new)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Starts a new run in `config.run.out_dir`; refuses a directory that already holds one.
    pub(crate) fn create(config: &Config, provenance: &str) -> Result<RunDir> {
        let path = config.run.out_dir.clone();
        Self::check_free(&path)?;
        std::fs::create_dir_all(&path).at(&path)?;
        let lock = RunLock::acquire(&path)?;
        // Checked again under the lock: another run may have started here meanwhile.
        Self::check_free(&path)?;
        let config_path = path.join(CONFIG_FILE);
        let text = format!("{provenance}\n{}", config.to_toml());
        crate::fsutil::write_atomic(&config_path, text.as_bytes())?;
        Self::reset_logs(&path, config)?;
        Self::open(path, lock)
    }

    /// Opens the run in `config.run.out_dir` for `--resume`; its config.toml must describe the
    /// same run (same hash) as `config`.
    pub(crate) fn open_for_resume(config: &Config) -> Result<RunDir> {
        let path = config.run.out_dir.clone();
        let config_path = path.join(CONFIG_FILE);
        let lock = if path.is_dir() {
            Some(RunLock::acquire(&path)?)
        } else {
            None
        };
        if !config_path.is_file() {
            return Err(Error::RunDir {
                path,
                message:
                    "holds no run to resume (no config.toml); run without --resume to start one"
                        .into(),
            });
        }
        let saved = Config::load(&config_path, &[])?;
        if saved.hash() != config.hash() {
            return Err(Error::RunDir {
                path,
                message: format!(
                    "its config.toml differs from the given config: {}; resume with the same \
                     config and --set overrides, or start a new run.out_dir",
                    describe_differences(&saved, config)
                ),
            });
        }
        let lock = lock.expect("a directory holding config.toml exists");
        Self::open(path, lock)
    }

    /// Whether the run in `config.run.out_dir` is the one `config` describes (its config.toml
    /// has the same hash); the error names the keys that differ. For reusing a finished run.
    pub(crate) fn check_same_config(config: &Config) -> Result<()> {
        let path = config.run.out_dir.clone();
        let saved = Config::load(&path.join(CONFIG_FILE), &[])?;
        if saved.hash() == config.hash() {
            return Ok(());
        }
        Err(Error::RunDir {
            message: format!(
                "holds a finished run of another config: {}; use another run.out_dir",
                describe_differences(&saved, config)
            ),
            path,
        })
    }

    fn open(path: PathBuf, lock: RunLock) -> Result<RunDir> {
        let metrics = open_append(&path.join(METRICS_FILE))?;
        let ratios = open_append(&path.join(RATIOS_FILE))?;
        Ok(RunDir {
            path,
            metrics,
            ratios,
            _lock: lock,
        })
    }

    /// Empty metrics.jsonl and a ratios.csv with only its header.
    fn reset_logs(path: &Path, config: &Config) -> Result<()> {
        let metrics = path.join(METRICS_FILE);
        std::fs::write(&metrics, "").at(&metrics)?;
        let ratios = path.join(RATIOS_FILE);
        std::fs::write(
            &ratios,
            format!("step,{}\n", config.source_names().join(",")),
        )
        .at(&ratios)?;
        Ok(())
    }

    /// Back to the state of a fresh start (resume with no complete checkpoint).
    pub(crate) fn restart(&mut self, config: &Config) -> Result<()> {
        self.flush()?;
        Self::reset_logs(&self.path, config)?;
        *self = Self::open(self.path.clone(), self._lock.clone())?;
        Ok(())
    }

    /// Cuts metrics.jsonl and ratios.csv back to their lengths at a checkpoint, dropping lines
    /// written after it by the interrupted run.
    pub(crate) fn truncate_logs(&mut self, metrics_bytes: u64, ratios_bytes: u64) -> Result<()> {
        self.flush()?;
        for (name, len) in [(METRICS_FILE, metrics_bytes), (RATIOS_FILE, ratios_bytes)] {
            let path = self.path.join(name);
            let file = OpenOptions::new().write(true).open(&path).at(&path)?;
            let current = file.metadata().at(&path)?.len();
            if current < len {
                return Err(Error::RunDir {
                    path: path.clone(),
                    message: format!(
                        "is {current} bytes, shorter than the {len} bytes the checkpoint recorded; \
                         the run directory was modified"
                    ),
                });
            }
            file.set_len(len).at(&path)?;
        }
        *self = Self::open(self.path.clone(), self._lock.clone())?;
        Ok(())
    }

    pub(crate) fn write_metrics(&mut self, record: &serde_json::Value) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        writeln!(self.metrics, "{record}").at(path)
    }

    /// A ratios.csv row: the step and the weights, summing to 1.
    pub(crate) fn write_ratios(&mut self, step: usize, weights: &[f64]) -> Result<()> {
        let path = self.path.join(RATIOS_FILE);
        let row: Vec<String> = weights.iter().map(|w| format!("{w}")).collect();
        writeln!(self.ratios, "{step},{}", row.join(",")).at(path)
    }

    /// Flushes and fsyncs both logs; returns their lengths (what a checkpoint records).
    pub(crate) fn flush(&mut self) -> Result<(u64, u64)> {
        let mut lens = [0u64; 2];
        for (i, (writer, name)) in [
            (&mut self.metrics, METRICS_FILE),
            (&mut self.ratios, RATIOS_FILE),
        ]
        .into_iter()
        .enumerate()
        {
            let path = self.path.join(name);
            writer.flush().at(&path)?;
            writer.get_ref().sync_all().at(&path)?;
            lens[i] = writer.get_ref().metadata().at(&path)?.len();
        }
        Ok((lens[0], lens[1]))
    }

    pub(crate) fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINTS_DIR)
    }
}

/// The keys whose values differ between a run's saved config and the given one, as
/// "key = saved there, given here" (at most 5 listed). `train.steps` gets a note: a run cannot
/// be extended or shortened, since the learning-rate schedule was laid out for its length.
fn describe_differences(saved: &Config, given: &Config) -> String {
    let flatten = |config: &Config| {
        let mut out = Vec::new();
        let value = serde_json::to_value(config).expect("a Config serialises");
        flatten_json("", &value, &mut out);
        out
    };
    let (a, b) = (flatten(saved), flatten(given));
    let b_map: std::collections::BTreeMap<_, _> = b.iter().cloned().collect();
    let a_map: std::collections::BTreeMap<_, _> = a.iter().cloned().collect();
    let mut keys: Vec<&String> = a_map.keys().chain(b_map.keys()).collect();
    keys.sort();
    keys.dedup();
    let missing = "(unset)".to_string();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| k.as_str() != "run.out_dir" && a_map.get(*k) != b_map.get(*k))
        .map(|k| {
            let note = if k == "train.steps" {
                " (a run cannot be extended or shortened: its learning-rate schedule decays \
                 over train.steps)"
            } else {
                ""
            };
            format!(
                "{k} = {} there, {} here{note}",
                a_map.get(k).unwrap_or(&missing),
                b_map.get(k).unwrap_or(&missing)
            )
        })
        .collect();
    if differing.is_empty() {
        return format!("hash {} vs {}", saved.hash(), given.hash());
    }
    let shown = differing.len().min(5);
    let more = differing.len() - shown;
    let mut text = differing[..shown].join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
