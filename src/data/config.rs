//! `[data]`: the tokenizer, the sequence length, the cache and the training sources.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate::{at_least_one, check_name, positive};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// "bytes" (byte-level, vocab 256 + end-of-document) or "bpe:PATH" (a tokenizer.json, e.g.
    /// from `mixtrain prepare --train-bpe`). Default "bytes".
    #[serde(default = "default_tokenizer")]
    pub(crate) tokenizer: String,
    /// The end-of-document token of a `bpe:` tokenizer, by name (e.g. "<|eot_id|>"). Unset:
    /// the first of `<|endoftext|>`, `<|end_of_text|>` (Llama-3), `</s>`, `<eos>` it has, else
    /// a new id one past its vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
    /// Tokens per training sequence. Default 128.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Where tokenised sources are cached, keyed by content hash and tokenizer.
    /// Default ".mixtrain-cache".
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// What tokenising does with a record it cannot read (a line that is not JSON, lacks the
    /// text field or is not UTF-8; a null Parquet cell): "error" (stop, naming file and line
    /// or row) or "skip" (count it, report the count per source). Default "error".
    #[serde(default)]
    pub on_bad_record: BadRecordPolicy,
    /// With `on_bad_record = "skip"`: the largest fraction of a source's records that may be
    /// bad before tokenising stops anyway (a corrupt or misconfigured source). Default 0.01.
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    /// Passes over a source's training windows after which the run warns (once per source)
    /// that the source is being repeated. Default 4 (about where repeated data stops being
    /// nearly as good as fresh, Muennighoff et al. 2023).
    #[serde(default = "default_max_epochs")]
    pub max_epochs: f64,
    /// Megabytes of a file's documents per cached shard: a killed `prepare` continues a large
    /// file from its last finished shard. The token stream does not depend on it. Default 256.
    #[serde(
        default = "default_shard_mb",
        skip_serializing_if = "is_default_shard_mb"
    )]
    pub shard_mb: f64,
    /// The data sources; at least one. Each is `{ name, path, val_fraction, text_field }`.
    pub sources: Vec<SourceConfig>,
}

fn default_shard_mb() -> f64 {
    256.0
}

/// At its default, `shard_mb` is left out of the serialised config, so the config hashes of
/// runs started before it existed stay the same (and those runs can be resumed).
fn is_default_shard_mb(mb: &f64) -> bool {
    *mb == default_shard_mb()
}

/// `data.on_bad_record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRecordPolicy {
    #[default]
    Error,
    Skip,
}

fn default_max_epochs() -> f64 {
    4.0
}

fn default_max_bad_fraction() -> f64 {
    0.01
}

fn default_tokenizer() -> String {
    "bytes".into()
}
fn default_seq_len() -> usize {
    128
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from(".mixtrain-cache")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name used in logs, ratios.csv and mixture.json: letters, digits, '_' and '-'.
    pub name: String,
    /// A text file (`.txt`, `.md`, `.text`: one document), a JSON-lines file (`.jsonl`,
    /// `.json`: one document per line, in its `text_field`), either compressed (`.gz`,
    /// `.zst`), a Parquet file (one document per row of column `text_field`), a directory of
    /// them (searched recursively), a glob, or a directory of prepared shards (`train.bin`,
    /// `val.bin`, `meta.json`, as `mixtrain prepare` writes).
    pub path: String,
    /// Fraction of documents held out for validation, chosen by a hash of each document's
    /// text (deterministic, independent of file order). Default 0.05.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Validation documents of their own (a file, directory or glob, read like `path`): every
    /// document there is validation, every document of `path` training, and `val_fraction`
    /// is not used. Unset: split `path` by `val_fraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_path: Option<String>,
    /// The JSON field or Parquet column holding a document's text (e.g. "content" for The
    /// Stack). Default "text".
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

pub(crate) fn default_text_field() -> String {
    "text".into()
}

fn default_val_fraction() -> f64 {
    0.05
}

impl DataConfig {
    pub(crate) fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// Bytes of documents per shard (`shard_mb`).
    pub(crate) fn shard_bytes(&self) -> usize {
        (self.shard_mb * 1e6).max(1.0) as usize
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("data.seq_len", self.seq_len)?;
        positive("data.max_epochs", self.max_epochs)?;
        positive("data.shard_mb", self.shard_mb)?;
        if !(0.0..1.0).contains(&self.max_bad_fraction) {
            return Err(Error::value(
                "data.max_bad_fraction",
                format!("must be in [0, 1) (got {})", self.max_bad_fraction),
            ));
        }
        if self.sources.is_empty() {
            return Err(Error::value(
                "data.sources",
                "at least one source is needed ([[data.sources]] with name and path)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let key = format!("data.sources[{i}]");
            check_name(&format!("{key}.name"), &source.name)?;
            if !seen.insert(source.name.clone()) {
                return Err(Error::value(
                    format!("{key}.name"),
                    format!("duplicate source name {:?}", source.name),
                ));
            }
            if source.path.is_empty() {
                return Err(Error::value(format!("{key}.path"), "must not be empty"));
            }
            if source.text_field.is_empty() {
                return Err(Error::value(
                    format!("{key}.text_field"),
                    "must not be empty",
                ));
            }
            if !(source.val_fraction > 0.0 && source.val_fraction < 1.0) {
                return Err(Error::value(
                    format!("{key}.val_fraction"),
                    format!("must be in (0, 1) (got {})", source.val_fraction),
                ));
            }
        }
        Ok(())
    }
}
