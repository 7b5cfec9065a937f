//! mixture.json, the one file a user reads for "which mixture did this run find": written by
//! `mixtrain run` and `mixtrain demix`, read by `mixer.init = "file:…"` and `"demix:…"`. Its
//! fixed part is `sources` (names, in order) and `final` (weights by name); each writer adds
//! its own fields after them.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

pub(crate) const MIXTURE_FILE: &str = "mixture.json";

/// One value per source as an object keyed by source name.
pub(crate) fn by_name<V: Into<Value>>(
    names: &[String],
    values: impl IntoIterator<Item = V>,
) -> Value {
    Value::Object(
        names
            .iter()
            .cloned()
            .zip(values.into_iter().map(Into::into))
            .collect(),
    )
}

pub(crate) struct MixtureFile {
    fields: Map<String, Value>,
}

impl MixtureFile {
    /// `sources` in order with their `final` weights.
    pub(crate) fn new(sources: &[String], final_weights: &[f64]) -> Self {
        let mut file = MixtureFile { fields: Map::new() };
        file.fields
            .insert("sources".into(), Value::from(sources.to_vec()));
        file.fields.insert(
            "final".into(),
            by_name(sources, final_weights.iter().copied()),
        );
        file
    }

    /// Adds a field after the ones already there.
    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.into(), value);
        self
    }

    /// Writes the file atomically (pretty JSON, newline-terminated).
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.fields).expect("JSON serialises") + "\n";
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    pub(crate) fn read_final(path: &Path, names: &[String]) -> Result<Vec<f64>> {
        let text = std::fs::read_to_string(path).at(path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("mixer.init: not valid JSON: {e}")))?;
        let weights = value
            .get("final")
            .and_then(|v| v.as_object())
            .ok_or_else(|| {
                Error::data(
                    path,
                    "mixer.init: expected an object with a \"final\" table of weights",
                )
            })?;
        names
            .iter()
            .map(|name| {
                weights
                    .get(name)
                    .and_then(|w| w.as_f64())
                    .filter(|w| w.is_finite() && *w >= 0.0)
                    .ok_or_else(|| {
                        Error::data(
                            path,
                            format!(
                                "mixer.init: no non-negative weight for source {name:?} in \"final\""
                            ),
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_final_weights_read_back_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MIXTURE_FILE);
        let names = vec!["code".to_string(), "prose".to_string()];
        MixtureFile::new(&names, &[0.25, 0.75])
            .with("steps", Value::from(10))
            .write(&path)
            .unwrap();
        let reordered = vec!["prose".to_string(), "code".to_string()];
        assert_eq!(
            MixtureFile::read_final(&path, &reordered).unwrap(),
            vec![0.75, 0.25]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"sources\""), "{text}");
        let missing = vec!["legal".to_string()];
        assert!(MixtureFile::read_final(&path, &missing).is_err());
    }
}
