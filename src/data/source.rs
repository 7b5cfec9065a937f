//! Sources: named collections of documents, split into train and validation by a hash of each
//! document's text (or by `val_path`), tokenised once and cached as shards keyed by content
//! hash and tokenizer (`cache.rs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::{build_parts, open_parts};
use super::config::{BadRecordPolicy, DataConfig, SourceConfig};
use super::manifest::plan;
use super::readers::{resolve_files, resolve_val_files};
use super::shard::{FileStamp, Shard};
use super::tokenise::Counts;
use super::tokenise::SourceFiles;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::target::TargetConfig;

/// One source, tokenised: the train and validation token streams (documents joined by the
/// end-of-document token).
pub struct Source {
    pub(crate) name: String,
    pub(crate) train: Shard,
    pub(crate) val: Shard,
    /// The directory holding `meta.json` (and the shards, or the list of its parts).
    pub(crate) dir: PathBuf,
}

/// Written beside the shards; checked when shards are used as a prepared source.
#[derive(Debug, Serialize, Deserialize)]
struct ShardMeta {
    tokenizer: String,
    vocab_size: usize,
    train_documents: usize,
    val_documents: usize,
    train_tokens: usize,
    val_tokens: usize,
    /// Records skipped as unreadable (absent before `data.on_bad_record`: 0).
    #[serde(default)]
    bad_records: usize,
    /// The parts (one per input file, relative to this directory), read in order as one
    /// stream; empty when `train.bin` and `val.bin` sit beside this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<String>,
    /// Shards beside this file as written: while they are unchanged, an open skips the token
    /// scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_stamp: Option<FileStamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val_stamp: Option<FileStamp>,
}

/// Loads (tokenising and caching where needed) every source of `data`.
pub fn load_sources(data: &DataConfig, tokenizer: &Tokenizer) -> Result<Vec<Source>> {
    load_sources_checked(data, tokenizer, false)
}

/// `load_sources`; with `verify`, every input file is hashed again (not taken from the
/// manifest) and every shard token is checked.
pub fn load_sources_checked(
    data: &DataConfig,
    tokenizer: &Tokenizer,
    verify: bool,
) -> Result<Vec<Source>> {
    data.sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            load_source(
                &format!("data.sources[{i}]"),
                source,
                data,
                tokenizer,
                verify,
            )
        })
        .collect()
}

/// Loads the validation-only target sets of `[[target.sets]]`: every document goes to `val`,
/// `train` is empty (the sampler never sees these).
pub fn load_target_sets(
    target: &TargetConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    verify: bool,
) -> Result<Vec<Source>> {
    target
        .sets
        .iter()
        .enumerate()
        .map(|(i, set)| {
            load_source(
                &format!("target.sets[{i}]"),
                &set.as_source(),
                data,
                tokenizer,
                verify,
            )
        })
        .collect()
}

/// A validation-only set is a source config with `val_fraction` 1.
fn is_target_set(source: &SourceConfig) -> bool {
    source.val_fraction >= 1.0
}

/// What errors call the entry, and how to give it more validation data.
fn describe(source: &SourceConfig) -> (&'static str, &'static str) {
    if is_target_set(source) {
        ("target set", "add documents")
    } else if source.val_path.is_some() {
        ("source", "add documents to its val_path")
    } else {
        ("source", "raise its val_fraction or add documents")
    }
}

/// `key` names the config entry (`data.sources[2]`, `target.sets[0]`) in errors.
fn load_source(
    key: &str,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    verify: bool,
) -> Result<Source> {
    let path = Path::new(&source.path);
    let prepared = path.join("train.bin").is_file() || path.join("meta.json").is_file();
    let dir = if prepared && !is_target_set(source) {
        path.to_path_buf()
    } else {
        let files = SourceFiles {
            train: resolve_files(key, source)?,
            val: resolve_val_files(key, source)?,
        };
        let plan = plan(&files, source, tokenizer, &data.cache_dir, verify)?;
        let dir = data.cache_dir.join(format!("{}-{}", source.name, plan.key));
        if !dir.join("meta.json").is_file() {
            tracing::info!(source = %source.name, files = plan.parts.len(), "tokenising");
            let (parts, totals) = build_parts(&plan, source, data, tokenizer)?;
            check_tokenised(&totals, source, data)?;
            write_entry(&dir, parts, &totals, tokenizer)?;
        }
        dir
    };
    open_prepared(source, &dir, tokenizer, data.seq_len, verify)
}

fn open_prepared(
    source: &SourceConfig,
    dir: &Path,
    tokenizer: &Tokenizer,
    seq_len: usize,
    verify: bool,
) -> Result<Source> {
    let meta_path = dir.join("meta.json");
    let meta_text = std::fs::read_to_string(&meta_path).at(&meta_path)?;
    let meta: ShardMeta = serde_json::from_str(&meta_text)
        .map_err(|e| Error::data(&meta_path, format!("corrupt shard metadata: {e}")))?;
    if meta.tokenizer != tokenizer.id() {
        return Err(Error::data(
            dir,
            format!(
                "prepared with tokenizer {:?}, but data.tokenizer is {:?}",
                meta.tokenizer,
                tokenizer.id()
            ),
        ));
    }
    let vocab = tokenizer.vocab_size();
    let (train, val) = if meta.parts.is_empty() {
        let stamp = |s: Option<FileStamp>| if verify { None } else { s };
        let train = Shard::open_stamped(&dir.join("train.bin"), vocab, stamp(meta.train_stamp))?;
        let val = Shard::open_stamped(&dir.join("val.bin"), vocab, stamp(meta.val_stamp))?;
        (train, val)
    } else {
        open_parts(dir, &meta.parts, vocab, verify)?
    };
    let need = seq_len + 1;
    let (kind, remedy) = describe(source);
    if train.len() < need && !is_target_set(source) {
        return Err(Error::data(
            &source.path,
            format!(
                "source {:?} has {} training tokens, fewer than data.seq_len + 1 = {need}",
                source.name,
                train.len()
            ),
        ));
    }
    if val.len() < need {
        return Err(Error::data(
            &source.path,
            format!(
                "{kind} {:?} has {} validation tokens ({} documents), fewer than data.seq_len + 1 = {need}; \
                 {remedy}",
                source.name,
                val.len(),
                meta.val_documents
            ),
        ));
    }
    Ok(Source {
        name: source.name.clone(),
        train,
        val,
        dir: dir.to_path_buf(),
    })
}

/// True when a document goes to validation: the first 8 bytes of its text's SHA-256, read as a
/// fraction of 2^64, fall below `val_fraction`.
pub(crate) fn is_validation(doc: &str, val_fraction: f64) -> bool {
    if val_fraction >= 1.0 {
        return true;
    }
    let digest = Sha256::digest(doc.as_bytes());
    let x = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (x as f64 / 2f64.powi(64)) < val_fraction
}

/// Refuses an empty source, and one with more bad records than `data.max_bad_fraction`;
/// reports the bad records it skipped.
fn check_tokenised(out: &Counts, source: &SourceConfig, data: &DataConfig) -> Result<()> {
    let good = out.train_docs + out.val_docs;
    if let (BadRecordPolicy::Error, Some(first)) = (data.on_bad_record, &out.first_bad) {
        // A part tokenised earlier with "skip" holds skipped records.
        return Err(Error::data(&source.path, format!("bad record: {first}")));
    }
    if let Some(first) = &out.first_bad {
        let fraction = out.bad_records as f64 / (good + out.bad_records) as f64;
        if fraction > data.max_bad_fraction {
            return Err(Error::data(
                &source.path,
                format!(
                    "{} {:?}: {} of {} records are bad ({:.2}%, more than data.max_bad_fraction \
                     = {}); the first: {first}",
                    describe(source).0,
                    source.name,
                    out.bad_records,
                    good + out.bad_records,
                    100.0 * fraction,
                    data.max_bad_fraction
                ),
            ));
        }
        tracing::warn!(
            source = %source.name,
            skipped = out.bad_records,
            first = %first,
            "bad records skipped (data.on_bad_record = \"skip\")"
        );
    }
    if good == 0 {
        return Err(Error::data(
            &source.path,
            format!(
                "{} {:?} is empty: no non-blank documents",
                describe(source).0,
                source.name
            ),
        ));
    }
    Ok(())
}

/// Writes a source's entry `dir`/meta.json: its parts and totals.
fn write_entry(
    dir: &Path,
    parts: Vec<String>,
    totals: &Counts,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let meta = ShardMeta {
        tokenizer: tokenizer.id(),
        vocab_size: tokenizer.vocab_size(),
        train_documents: totals.train_docs,
        val_documents: totals.val_docs,
        train_tokens: totals.train_tokens as usize,
        val_tokens: totals.val_tokens as usize,
        bad_records: totals.bad_records,
        parts,
        train_stamp: None,
        val_stamp: None,
    };
    std::fs::create_dir_all(dir).at(dir)?;
    let text = serde_json::to_string_pretty(&meta).expect("ShardMeta serialises");
    crate::fsutil::write_atomic(&dir.join("meta.json"), text.as_bytes())
}
