//! Sources: named collections of documents, split into train and validation by a hash of each
//! document's text, tokenised once and cached as shards keyed by content hash and tokenizer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{DataConfig, SourceConfig};
use super::manifest::cache_key;
use super::readers::{resolve_files, resolve_val_files};
use super::shard::{FileStamp, Shard};
use super::tokenise::{tokenise_into, SourceFiles, Tokenised};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::target::TargetConfig;

/// One source, tokenised: the train and validation token streams (documents joined by the
/// end-of-document token).
pub struct Source {
    pub(crate) name: String,
    pub(crate) train: Shard,
    pub(crate) val: Shard,
    /// The directory holding `train.bin`, `val.bin`, `meta.json`.
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
    /// The shards as written: while they are unchanged, an open skips the token scan.
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
    let dir = if path.join("train.bin").is_file() && !is_target_set(source) {
        path.to_path_buf()
    } else {
        let files = SourceFiles {
            train: resolve_files(key, source)?,
            val: resolve_val_files(key, source)?,
        };
        let key = cache_key(&files, source, tokenizer, &data.cache_dir, verify)?;
        let dir = data.cache_dir.join(format!("{}-{key}", source.name));
        if !dir.join("meta.json").is_file() {
            tracing::info!(source = %source.name, files = files.train.len(), "tokenising");
            build_cache_entry(&files, source, data, tokenizer, &dir)?;
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
    let stamp = |s: Option<FileStamp>| if verify { None } else { s };
    let train = Shard::open_stamped(&dir.join("train.bin"), vocab, stamp(meta.train_stamp))?;
    let val = Shard::open_stamped(&dir.join("val.bin"), vocab, stamp(meta.val_stamp))?;
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
pub(crate) fn check_tokenised(
    out: &Tokenised,
    source: &SourceConfig,
    data: &DataConfig,
    first_bad: Option<String>,
) -> Result<()> {
    let good = out.train_docs + out.val_docs;
    if let Some(first) = first_bad {
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

/// Tokenises a source into the cache entry `dir`: into a temporary directory first, renamed
/// when complete, so a half-built entry is never used.
fn build_cache_entry(
    files: &SourceFiles,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<()> {
    let parent = dir
        .parent()
        .expect("cache entries live inside data.cache_dir");
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("source"),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    let tokenised = match tokenise_into(files, source, data, tokenizer, &tmp) {
        Ok(tokenised) => tokenised,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let meta = ShardMeta {
        tokenizer: tokenizer.id(),
        vocab_size: tokenizer.vocab_size(),
        train_documents: tokenised.train_docs,
        val_documents: tokenised.val_docs,
        train_tokens: tokenised.train_tokens as usize,
        val_tokens: tokenised.val_tokens as usize,
        bad_records: tokenised.bad_records,
        train_stamp: tokenised.train_stamp,
        val_stamp: tokenised.val_stamp,
    };
    let meta_path = tmp.join("meta.json");
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).expect("ShardMeta serialises"),
    )
    .at(&meta_path)?;
    if dir.exists() && !dir.join("meta.json").is_file() {
        // A stale entry without meta.json (an interrupted older build): replace it.
        std::fs::remove_dir_all(dir).at(dir)?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        // Another process built the same entry meanwhile: theirs is identical, use it.
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
        if !dir.join("meta.json").is_file() {
            return Err(Error::io(dir, e));
        }
    }
    Ok(())
}
