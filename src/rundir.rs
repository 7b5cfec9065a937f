//! The run directory: config.toml (resolved, with a provenance header), metrics.jsonl,
//! ratios.csv, mixture.json, checkpoints/, model.safetensors.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const RATIOS_FILE: &str = "ratios.csv";
pub const MIXTURE_FILE: &str = "mixture.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const CHECKPOINTS_DIR: &str = "checkpoints";

pub struct RunDir {
    pub path: PathBuf,
    metrics: BufWriter<File>,
    ratios: BufWriter<File>,
}

/// True when `dir` already holds (part of) a run.
pub fn holds_run(dir: &Path) -> bool {
    [CONFIG_FILE, METRICS_FILE, RATIOS_FILE, CHECKPOINTS_DIR]
        .iter()
        .any(|f| dir.join(f).exists())
}

fn open_append(path: &Path) -> Result<BufWriter<File>> {
    let file = OpenOptions::new().append(true).open(path).at(path)?;
    Ok(BufWriter::new(file))
}

impl RunDir {
    /// Errors if `path` already holds a run (a new run must not overwrite it).
    pub fn check_free(path: &Path) -> Result<()> {
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
    pub fn create(config: &Config, provenance: &str) -> Result<RunDir> {
        let path = config.run.out_dir.clone();
        Self::check_free(&path)?;
        std::fs::create_dir_all(&path).at(&path)?;
        let config_path = path.join(CONFIG_FILE);
        std::fs::write(&config_path, format!("{provenance}\n{}", config.to_toml()))
            .at(&config_path)?;
        Self::reset_logs(&path, config)?;
        Self::open(path)
    }

    /// Opens the run in `config.run.out_dir` for `--resume`; its config.toml must describe the
    /// same run (same hash) as `config`.
    pub fn open_for_resume(config: &Config) -> Result<RunDir> {
        let path = config.run.out_dir.clone();
        let config_path = path.join(CONFIG_FILE);
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
                    "its config.toml differs from the given config (hash {} vs {}); resume with \
                     the same config and --set overrides, or start a new run.out_dir",
                    saved.hash(),
                    config.hash()
                ),
            });
        }
        Self::open(path)
    }

    fn open(path: PathBuf) -> Result<RunDir> {
        let metrics = open_append(&path.join(METRICS_FILE))?;
        let ratios = open_append(&path.join(RATIOS_FILE))?;
        Ok(RunDir {
            path,
            metrics,
            ratios,
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
    pub fn restart(&mut self, config: &Config) -> Result<()> {
        self.flush()?;
        Self::reset_logs(&self.path, config)?;
        *self = Self::open(self.path.clone())?;
        Ok(())
    }

    /// Cuts metrics.jsonl and ratios.csv back to their lengths at a checkpoint, dropping lines
    /// written after it by the interrupted run.
    pub fn truncate_logs(&mut self, metrics_bytes: u64, ratios_bytes: u64) -> Result<()> {
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
        *self = Self::open(self.path.clone())?;
        Ok(())
    }

    pub fn write_metrics(&mut self, record: &serde_json::Value) -> Result<()> {
        let path = self.path.join(METRICS_FILE);
        writeln!(self.metrics, "{record}").at(path)
    }

    /// A ratios.csv row: the step and the weights, summing to 1.
    pub fn write_ratios(&mut self, step: usize, weights: &[f64]) -> Result<()> {
        let path = self.path.join(RATIOS_FILE);
        let row: Vec<String> = weights.iter().map(|w| format!("{w}")).collect();
        writeln!(self.ratios, "{step},{}", row.join(",")).at(path)
    }

    /// Flushes and fsyncs both logs; returns their lengths (what a checkpoint records).
    pub fn flush(&mut self) -> Result<(u64, u64)> {
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

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINTS_DIR)
    }
}
