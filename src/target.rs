//! `[target]`: what the target-directed mixers (fastmix, tikmix, tikmix-m) and DeMix's proxy
//! scoring optimise, the mean validation loss over its members. A member is a training source
//! (its validation split) or a validation-only target set: data that is never trained on and
//! only stands for the downstream use (`[[target.sets]]`).
//!
//! ```toml
//! [target]
//! sources = ["qa"]            # default: every target set if there is one, else every source
//!
//! [[target.sets]]
//! name = "qa"
//! path = "heldout/*.jsonl"    # the formats of a source; tokenised and cached the same way
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::SourceConfig;
use crate::error::{Error, Result};
use crate::validate::check_name;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// Members of the target: names of training sources or of target sets, or "all" (every
    /// training source). Default: every target set when `[[target.sets]]` has any, else
    /// ["all"].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// Validation-only data sets: every document is validation data, none is ever trained on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<TargetSetConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSetConfig {
    /// Name in logs (`val_loss_by_target_set`) and in `target.sources`: letters, digits, '_'
    /// and '-', distinct from every source name.
    pub name: String,
    /// A file, a directory of files, or a glob (as a source's `path`: any format a source
    /// reads).
    pub path: String,
    /// The JSON field or Parquet column holding the text. Default "text".
    #[serde(default = "crate::data::default_text_field")]
    pub text_field: String,
}

impl TargetSetConfig {
    /// The set as a source whose documents all go to validation (cached apart from any
    /// training source with the same files, since the split fraction is part of the key).
    pub(crate) fn as_source(&self) -> SourceConfig {
        SourceConfig {
            name: self.name.clone(),
            path: self.path.clone(),
            val_fraction: 1.0,
            val_path: None,
            text_field: self.text_field.clone(),
        }
    }
}

/// The resolved target: indices of training sources and of target sets, each an equally
/// weighted member of the mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sources: Vec<usize>,
    pub sets: Vec<usize>,
}

impl Target {
    /// Members in the order probes take them in turn: training sources, then sets.
    pub(crate) fn len(&self) -> usize {
        self.sources.len() + self.sets.len()
    }

    /// The target loss: the mean of the members' losses.
    pub(crate) fn mean(&self, source_losses: &[f64], set_losses: &[f64]) -> f64 {
        let total: f64 = self.sources.iter().map(|&k| source_losses[k]).sum::<f64>()
            + self.sets.iter().map(|&j| set_losses[j]).sum::<f64>();
        total / self.len() as f64
    }
}

impl TargetConfig {
    /// Resolves the member names against the training sources (assumes `validate` passed).
    pub(crate) fn resolve(&self, sources: &[SourceConfig]) -> Target {
        let names = match &self.sources {
            Some(names) => names.clone(),
            None if !self.sets.is_empty() => self.sets.iter().map(|s| s.name.clone()).collect(),
            None => vec!["all".into()],
        };
        let mut target = Target {
            sources: Vec::new(),
            sets: Vec::new(),
        };
        for name in &names {
            if name == "all" {
                target.sources.extend(0..sources.len());
            } else if let Some(k) = sources.iter().position(|s| &s.name == name) {
                target.sources.push(k);
            } else if let Some(j) = self.sets.iter().position(|s| &s.name == name) {
                target.sets.push(j);
            }
        }
        target.sources.sort_unstable();
        target.sources.dedup();
        target.sets.sort_unstable();
        target.sets.dedup();
        target
    }

    /// Names, paths and members; each error names its key.
    pub(crate) fn validate(&self, sources: &[SourceConfig]) -> Result<()> {
        let source_names: BTreeSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let mut set_names = BTreeSet::new();
        for (i, set) in self.sets.iter().enumerate() {
            let key = format!("target.sets[{i}]");
            check_name(&format!("{key}.name"), &set.name)?;
            if source_names.contains(set.name.as_str()) {
                return Err(Error::value(
                    format!("{key}.name"),
                    format!(
                        "{:?} is also a training source's name; a target set needs its own",
                        set.name
                    ),
                ));
            }
            if !set_names.insert(set.name.as_str()) {
                return Err(Error::value(
                    format!("{key}.name"),
                    format!("duplicate target set name {:?}", set.name),
                ));
            }
            if set.path.is_empty() {
                return Err(Error::value(format!("{key}.path"), "must not be empty"));
            }
            if set.text_field.is_empty() {
                return Err(Error::value(
                    format!("{key}.text_field"),
                    "must not be empty",
                ));
            }
            if let Some(source) = sources.iter().find(|s| same_path(&s.path, &set.path)) {
                return Err(Error::value(
                    format!("{key}.path"),
                    format!(
                        "{:?} is also the path of training source {:?}: a target set must \
                         never be trained on (remove it from [[data.sources]], or name the \
                         source in target.sources instead)",
                        set.path, source.name
                    ),
                ));
            }
        }
        if let Some(names) = &self.sources {
            if names.is_empty() {
                return Err(Error::value(
                    "target.sources",
                    "must name at least one source or target set, or [\"all\"]",
                ));
            }
            for name in names {
                if name != "all"
                    && !source_names.contains(name.as_str())
                    && !set_names.contains(name.as_str())
                {
                    let sets: Vec<&str> = set_names.iter().copied().collect();
                    return Err(Error::value(
                        "target.sources",
                        format!(
                            "no source or target set named {name:?} (sources: {}; target sets: {})",
                            source_names.iter().copied().collect::<Vec<_>>().join(", "),
                            if sets.is_empty() {
                                "none".to_string()
                            } else {
                                sets.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The same file or directory: equal as written, or equal once both exist and are resolved.
fn same_path(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        Path::new(a).canonicalize().ok(),
        Path::new(b).canonicalize().ok(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(names: &[&str]) -> Vec<SourceConfig> {
        names
            .iter()
            .map(|n| SourceConfig {
                name: n.to_string(),
                path: format!("data/{n}.jsonl"),
                val_fraction: 0.05,
                val_path: None,
                text_field: "text".into(),
            })
            .collect()
    }

    fn set(name: &str, path: &str) -> TargetSetConfig {
        TargetSetConfig {
            name: name.into(),
            path: path.into(),
            text_field: "text".into(),
        }
    }

    #[test]
    fn default_target_is_the_sets_when_there_are_any() {
        let srcs = sources(&["a", "b", "c"]);
        let none = TargetConfig::default();
        assert_eq!(
            none.resolve(&srcs),
            Target {
                sources: vec![0, 1, 2],
                sets: vec![]
            }
        );
        let with_sets = TargetConfig {
            sources: None,
            sets: vec![set("x", "x.jsonl"), set("y", "y.jsonl")],
        };
        assert_eq!(
            with_sets.resolve(&srcs),
            Target {
                sources: vec![],
                sets: vec![0, 1]
            }
        );
        let both = TargetConfig {
            sources: Some(vec!["y".into(), "b".into()]),
            sets: vec![set("x", "x.jsonl"), set("y", "y.jsonl")],
        };
        let target = both.resolve(&srcs);
        assert_eq!(
            target,
            Target {
                sources: vec![1],
                sets: vec![1]
            }
        );
        assert_eq!(target.mean(&[9.0, 2.0, 9.0], &[9.0, 4.0]), 3.0);
    }

    #[test]
    fn errors_name_the_key() {
        let srcs = sources(&["a", "b"]);
        let check = |target: TargetConfig, key: &str, words: &str| {
            let err = target.validate(&srcs).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(words), "{err}");
        };
        check(
            TargetConfig {
                sources: Some(vec!["zz".into()]),
                sets: vec![set("x", "x.jsonl")],
            },
            "target.sources",
            "no source or target set named \"zz\"",
        );
        check(
            TargetConfig {
                sources: None,
                sets: vec![set("a", "x.jsonl")],
            },
            "target.sets[0].name",
            "also a training source's name",
        );
        check(
            TargetConfig {
                sources: None,
                sets: vec![set("x", "data/b.jsonl")],
            },
            "target.sets[0].path",
            "training source \"b\"",
        );
        check(
            TargetConfig {
                sources: None,
                sets: vec![set("x", "x.jsonl"), set("x", "y.jsonl")],
            },
            "target.sets[1].name",
            "duplicate",
        );
        check(
            TargetConfig {
                sources: Some(vec![]),
                sets: vec![],
            },
            "target.sources",
            "at least one",
        );
    }
}
