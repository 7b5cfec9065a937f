//! The run configuration: TOML on disk, `--set key=value` overrides, then validation.
//!
//! Each section is declared, documented (every field with its default) and validated beside
//! the code that owns it: `[run]`/`[train]` in `train::config`, `[data]` in `data::config`,
//! `[model]` in `model`, `[mixer]` in `mixer::config` with each mixer's own section in the
//! mixer's file, `[target]` in `target`, `[demix]` in `demix::config`. `Config` composes them;
//! errors name the offending key (`train.lr: must be > 0 (got -1)`). Unknown keys are errors.

mod overrides;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use overrides::apply_override;

pub use crate::backend::BackendKind;
pub use crate::data::{DataConfig, SourceConfig};
pub(crate) use crate::demix::DemixConfig;
pub use crate::distributed::DistributedConfig;
pub use crate::mixer::Interpolate;
pub use crate::mixer::{
    AdoConfig, ApplyMode, DoremiConfig, ExcessFrom, FastMixConfig, GradScope, GradStats,
    GuardConfig, GuardKind, InfluenceFrom, InfluenceNorm, InitSpec, MixerConfig, MixerKind,
    MixtureInit, OdmConfig, ProbeSteps, ScheduleConfig, SignalNorm, StageConfig, TikMixConfig,
    TikMixMConfig, VirtualFrom,
};
pub use crate::model::{MlpKind, ModelConfig};
pub use crate::target::{Target, TargetConfig, TargetSetConfig};
pub use crate::train::{NonFinitePolicy, RunConfig, TrainConfig};

/// The whole, resolved configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub run: RunConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub mixer: MixerConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub(crate) demix: DemixConfig,
    /// Not part of the hash: ranks differ in it, and a run may resume on another world size.
    #[serde(default)]
    pub distributed: DistributedConfig,
}

impl Config {
    /// Reads `path`, applies `--set` overrides (`key=value`, value in TOML syntax or a bare
    /// string), deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_toml_str(&text, &path.display().to_string(), overrides)
    }

    pub fn from_toml_str(text: &str, file: &str, overrides: &[String]) -> Result<Config> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::ConfigParse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        refuse_moved_keys(&table, file)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // toml's value deserialiser appends "in `key`": the key is already in front.
                let message = e.into_inner().to_string();
                let message = message
                    .lines()
                    .filter(|l| !l.starts_with("in `"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let message = message.trim_end();
                Error::ConfigParse {
                    file: file.to_string(),
                    message: if key == "." {
                        message.to_string()
                    } else {
                        format!("{key}: {message}")
                    },
                }
            })?;
        // A value error names its key; from a file it names the file too.
        config.validate().map_err(|e| match e {
            Error::ConfigValue { key, message } => Error::ConfigParse {
                file: file.to_string(),
                message: format!("{key}: {message}"),
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The resolved config as TOML, as written to `out_dir/config.toml`.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serialises to TOML")
    }

    /// Hash of everything that determines the run's numbers: the whole config except
    /// `run.out_dir` (a run directory may be moved and resumed) and `[distributed]` (each rank
    /// has its own rank; a run may resume with another world size).
    pub(crate) fn hash(&self) -> String {
        let mut hashed = self.clone();
        hashed.run.out_dir = PathBuf::new();
        hashed.distributed = DistributedConfig::default();
        let json = serde_json::to_string(&hashed).expect("a Config always serialises to JSON");
        let digest = Sha256::digest(json.as_bytes());
        crate::fsutil::hex(&digest[..16])
    }

    pub fn source_names(&self) -> Vec<String> {
        self.data.source_names()
    }

    /// The resolved `[target]`: training sources and target sets whose mean validation loss
    /// the target-directed mixers optimise.
    pub fn target(&self) -> Target {
        self.target.resolve(&self.data.sources)
    }

    /// Parses `mixer.init`.
    pub(crate) fn mixture_init(&self) -> Result<MixtureInit> {
        self.mixer.mixture_init()
    }

    /// Range and consistency checks, section by section; each error names its key.
    pub(crate) fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.model.validate()?;
        self.train.validate()?;
        self.mixer.validate(&self.source_names())?;
        self.demix.validate()?;
        self.distributed.validate()?;
        self.target.validate(&self.data.sources)
    }
}

/// Keys that moved out of `[mixer]` into the probing mixers' sections, or were renamed
/// (`mixer.tikmix-m.val_batches`): an error that says where they went (serde's would only
/// list the keys the section accepts now).
fn refuse_moved_keys(table: &toml::Table, file: &str) -> Result<()> {
    let Some(mixer) = table.get("mixer").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    let tikmix_m = mixer.get("tikmix-m").and_then(toml::Value::as_table);
    if tikmix_m.is_some_and(|t| t.contains_key("val_batches")) {
        return Err(Error::ConfigParse {
            file: file.to_string(),
            message: "mixer.tikmix-m.val_batches: replaced by mixer.tikmix-m.val_sequences, the \
                      target windows each candidate is measured on (val_batches = 1 was 16 of \
                      them at the quickstart's batch size)"
                .into(),
        });
    }
    match crate::mixer::MOVED_TO_MIXER_SECTIONS
        .iter()
        .find(|key| mixer.contains_key(**key))
    {
        None => Ok(()),
        Some(key) => Err(Error::ConfigParse {
            file: file.to_string(),
            message: format!(
                "mixer.{key}: moved into the section of the mixer it configures: write \
                 `{key}` under [mixer.fastmix] or [mixer.tikmix] (--set mixer.fastmix.{key}=...)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[data]
[[data.sources]]
name = "a"
path = "x"
[[data.sources]]
name = "b"
path = "y"
"#;

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_toml_str(MINIMAL, "t.toml", &[]).unwrap();
        assert_eq!(c.train.steps, 300);
        assert_eq!(c.data.sources[0].val_fraction, 0.05);
        assert_eq!(c.mixture_init().unwrap(), MixtureInit::Uniform);
        assert!((c.mixer.min_weight(c.data.sources.len()) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn overrides_apply() {
        let sets = [
            "train.steps=40".to_string(),
            "train.lr=1e-3".into(),
            "run.out_dir=runs/x".into(),
            "mixer.init={a = 3, b = 1}".into(),
            "data.sources.1.val_fraction=0.2".into(),
        ];
        let c = Config::from_toml_str(MINIMAL, "t.toml", &sets).unwrap();
        assert_eq!(c.train.steps, 40);
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.run.out_dir, PathBuf::from("runs/x"));
        assert_eq!(c.data.sources[1].val_fraction, 0.2);
        match c.mixture_init().unwrap() {
            MixtureInit::Explicit(w) => assert_eq!(w["a"], 3.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = Config::from_toml_str(MINIMAL, "t.toml", &["train.stepz=3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("train") && err.contains("stepz"), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = Config::from_toml_str(MINIMAL, "t.toml", &["train.lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "t.toml: train.lr: must be > 0 (got -1)");
    }

    #[test]
    fn resolved_config_round_trips() {
        let sets = ["mixer.init={a = 3, b = 1}".to_string()];
        let c = Config::from_toml_str(MINIMAL, "t.toml", &sets).unwrap();
        let again = Config::from_toml_str(&c.to_toml(), "resolved.toml", &[]).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.hash(), again.hash());
    }
}
