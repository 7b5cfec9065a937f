//! `mixtrain eval`: per-source validation loss of a checkpoint, on the run's fixed
//! validation windows.

use std::path::{Path, PathBuf};

use crate::backend::{dispatch, BackendTask, TrainBackend};
use crate::checkpoint;
use crate::config::Config;
use crate::data::{load_sources, load_target_sets, Source, Tokenizer};
use crate::error::{Error, Result};
use crate::params::load_params;
use crate::rundir::CONFIG_FILE;
use crate::train::Evaluator;

#[derive(Debug, Clone)]
pub struct EvalReport {
    pub(crate) checkpoint: PathBuf,
    pub(crate) step: usize,
    pub(crate) sources: Vec<String>,
    pub(crate) val_loss: Vec<f64>,
    /// Validation-only target sets and their losses.
    pub(crate) target_sets: Vec<String>,
    pub(crate) target_set_loss: Vec<f64>,
    /// Mean loss over the target's members.
    pub(crate) target_loss: f64,
}

impl EvalReport {
    pub(crate) fn mean(&self) -> f64 {
        self.val_loss.iter().sum::<f64>() / self.val_loss.len() as f64
    }

    pub fn to_table(&self) -> String {
        let mut out = format!(
            "checkpoint {} (step {})\n{:<16} {:>10}\n",
            self.checkpoint.display(),
            self.step,
            "source",
            "val_loss"
        );
        for (name, loss) in self.sources.iter().zip(&self.val_loss) {
            out += &format!("{name:<16} {loss:>10.4}\n");
        }
        out += &format!("{:<16} {:>10.4}\n", "mean", self.mean());
        for (name, loss) in self.target_sets.iter().zip(&self.target_set_loss) {
            out += &format!("{:<16} {loss:>10.4}\n", format!("{name} (target set)"));
        }
        out += &format!("{:<16} {:>10.4}\n", "target", self.target_loss);
        out
    }

    pub fn to_json(&self) -> String {
        let by_source: serde_json::Map<String, serde_json::Value> = self
            .sources
            .iter()
            .cloned()
            .zip(self.val_loss.iter().map(|&v| v.into()))
            .collect();
        let by_set: serde_json::Map<String, serde_json::Value> = self
            .target_sets
            .iter()
            .cloned()
            .zip(self.target_set_loss.iter().map(|&v| v.into()))
            .collect();
        serde_json::json!({
            "checkpoint": self.checkpoint,
            "step": self.step,
            "val_loss": self.mean(),
            "val_loss_by_source": by_source,
            "val_loss_by_target_set": by_set,
            "target_val_loss": self.target_loss,
        })
        .to_string()
    }
}

/// `path` is a run directory (its newest complete checkpoint is used) or a checkpoint
/// directory inside one.
pub fn evaluate_path(path: &Path) -> Result<EvalReport> {
    let (run_dir, checkpoint_dir) = if path.join(CONFIG_FILE).is_file() {
        let newest = checkpoint::newest_intact(&path.join("checkpoints"), false)?;
        let (_, newest) = newest.ok_or_else(|| Error::RunDir {
            path: path.to_path_buf(),
            message: "has no complete checkpoint to evaluate".into(),
        })?;
        (path.to_path_buf(), newest)
    } else {
        let run_dir = path
            .parent()
            .and_then(Path::parent)
            .filter(|run| run.join(CONFIG_FILE).is_file())
            .ok_or_else(|| Error::RunDir {
                path: path.to_path_buf(),
                message:
                    "is neither a run directory (with config.toml) nor a checkpoint inside one"
                        .into(),
            })?;
        (run_dir.to_path_buf(), path.to_path_buf())
    };
    let config = Config::load(&run_dir.join(CONFIG_FILE), &[])?;
    let state = checkpoint::read_state(&checkpoint_dir)?;
    checkpoint::verify(&checkpoint_dir)?;
    if state.config_hash != config.hash() {
        return Err(Error::checkpoint(
            &checkpoint_dir,
            "was written with a different config than the run's config.toml",
        ));
    }
    dispatch(
        config.run.backend,
        EvalTask {
            config,
            checkpoint_dir,
            step: state.step,
        },
    )
}

struct EvalTask {
    config: Config,
    checkpoint_dir: PathBuf,
    step: usize,
}

impl BackendTask for EvalTask {
    type Output = EvalReport;
    fn run<B: TrainBackend>(self, device: B::Device, _backend: &'static str) -> Result<EvalReport> {
        // Only the data, the validation windows and the model: no optimizer, no mixer.
        let config = &self.config;
        let tokenizer =
            Tokenizer::from_spec(&config.data.tokenizer, config.data.eos_token.as_deref())?;
        let sources = load_sources(&config.data, &tokenizer)?;
        let target_sets = load_target_sets(&config.target, &config.data, &tokenizer, false)?;
        let evaluator = Evaluator::new(config, &sources, &target_sets);
        let (path, tensors) = checkpoint::read_model(&self.checkpoint_dir)?;
        let model = config
            .model
            .init::<B::InnerBackend>(tokenizer.vocab_size(), &device);
        let model = load_params(model, &tensors, &path)?;
        let val = evaluator.evaluate(&model, &sources, &target_sets, &device);
        let names = |data: &[Source]| data.iter().map(|s| s.name.clone()).collect();
        Ok(EvalReport {
            checkpoint: self.checkpoint_dir,
            step: self.step,
            sources: names(&sources),
            target_sets: names(&target_sets),
            target_loss: val.target(&config.target()),
            val_loss: val.sources,
            target_set_loss: val.sets,
        })
    }
}
