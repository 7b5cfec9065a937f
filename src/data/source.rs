//! Sources: named collections of documents, split into train and validation by a hash of each
//! document's text, tokenised once and cached as shards keyed by content hash and tokenizer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{BadRecordPolicy, DataConfig, SourceConfig};
use super::readers::{for_each_record, resolve_files};
use super::shard::{write_shard, Shard};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::hex;
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
}

/// Loads (tokenising and caching where needed) every source of `data`.
pub fn load_sources(data: &DataConfig, tokenizer: &Tokenizer) -> Result<Vec<Source>> {
    data.sources
        .iter()
        .enumerate()
        .map(|(i, source)| load_source(&format!("data.sources[{i}]"), source, data, tokenizer))
        .collect()
}

/// Loads the validation-only target sets of `[[target.sets]]`: every document goes to `val`,
/// `train` is empty (the sampler never sees these).
pub fn load_target_sets(
    target: &TargetConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
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
) -> Result<Source> {
    let path = Path::new(&source.path);
    let dir = if path.join("train.bin").is_file() && !is_target_set(source) {
        path.to_path_buf()
    } else {
        let files = resolve_files(key, source)?;
        let key = cache_key(&files, source, tokenizer)?;
        let dir = data.cache_dir.join(format!("{}-{key}", source.name));
        if !dir.join("meta.json").is_file() {
            tracing::info!(source = %source.name, files = files.len(), "tokenising");
            let tokenised = tokenise(&files, source, data, tokenizer)?;
            write_cache_entry(&tokenised, tokenizer, &dir)?;
        }
        dir
    };
    open_prepared(source, &dir, tokenizer, data.seq_len)
}

fn open_prepared(
    source: &SourceConfig,
    dir: &Path,
    tokenizer: &Tokenizer,
    seq_len: usize,
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
    let train = Shard::open(&dir.join("train.bin"), vocab)?;
    let val = Shard::open(&dir.join("val.bin"), vocab)?;
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

fn cache_key(files: &[PathBuf], source: &SourceConfig, tokenizer: &Tokenizer) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"mixtrain-cache-v1\0");
    hasher.update(tokenizer.id().as_bytes());
    hasher.update(source.val_fraction.to_le_bytes());
    if source.text_field != super::config::default_text_field() {
        // Only when set: caches made before the key existed stay valid.
        hasher.update(b"text_field\0");
        hasher.update(source.text_field.as_bytes());
    }
    for file in files {
        let bytes = std::fs::read(file).at(file)?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(Sha256::digest(&bytes));
    }
    Ok(hex(&hasher.finalize()[..8]))
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

/// A source's documents as token streams (each document followed by the end-of-document
/// token), split into train and validation.
struct Tokenised {
    train: Vec<u32>,
    val: Vec<u32>,
    train_docs: usize,
    val_docs: usize,
    /// Records skipped as unreadable (`data.on_bad_record = "skip"`).
    bad_records: usize,
}

/// Reads and tokenises every document of `files`; bad records stop it or are counted, as
/// `data.on_bad_record` says.
fn tokenise(
    files: &[PathBuf],
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
) -> Result<Tokenised> {
    let eod = tokenizer.eod();
    let mut out = Tokenised {
        train: Vec::new(),
        val: Vec::new(),
        train_docs: 0,
        val_docs: 0,
        bad_records: 0,
    };
    let mut first_bad: Option<String> = None;
    for file in files {
        for_each_record(file, &source.text_field, |record| {
            let doc = match record.document {
                Ok(doc) => doc,
                Err(what) if data.on_bad_record == BadRecordPolicy::Skip => {
                    out.bad_records += 1;
                    first_bad.get_or_insert_with(|| {
                        format!("{}, {}: {what}", file.display(), record.at)
                    });
                    return Ok(());
                }
                Err(what) => return Err(Error::data(file, format!("{}: {what}", record.at))),
            };
            if doc.trim().is_empty() {
                return Ok(());
            }
            let tokens = tokenizer.encode(&doc)?;
            let (stream, count) = if is_validation(&doc, source.val_fraction) {
                (&mut out.val, &mut out.val_docs)
            } else {
                (&mut out.train, &mut out.train_docs)
            };
            stream.extend_from_slice(&tokens);
            stream.push(eod);
            *count += 1;
            Ok(())
        })?;
    }
    check_tokenised(&out, source, data, first_bad)?;
    Ok(out)
}

/// Refuses an empty source, and one with more bad records than `data.max_bad_fraction`;
/// reports the bad records it skipped.
fn check_tokenised(
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

/// Writes a source's shards and meta.json as the cache entry `dir`.
fn write_cache_entry(tokenised: &Tokenised, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    // Write into a temporary directory and rename, so a half-built cache entry is never used.
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
    let vocab = tokenizer.vocab_size();
    write_shard(&tmp.join("train.bin"), &tokenised.train, vocab)?;
    write_shard(&tmp.join("val.bin"), &tokenised.val, vocab)?;
    let meta = ShardMeta {
        tokenizer: tokenizer.id(),
        vocab_size: vocab,
        train_documents: tokenised.train_docs,
        val_documents: tokenised.val_docs,
        train_tokens: tokenised.train.len(),
        val_tokens: tokenised.val.len(),
        bad_records: tokenised.bad_records,
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
