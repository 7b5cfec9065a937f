//! Sources: named collections of documents, split into train and validation by a hash of each
//! document's text, tokenised once and cached as shards keyed by content hash and tokenizer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{DataConfig, SourceConfig};
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
        let key = cache_key(&files, source.val_fraction, tokenizer)?;
        let dir = data.cache_dir.join(format!("{}-{key}", source.name));
        if !dir.join("meta.json").is_file() {
            tracing::info!(source = %source.name, files = files.len(), "tokenising");
            build_shards(&files, source, tokenizer, &dir)?;
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

/// The text files of a source: a file, a directory (recursively, `.txt` and `.jsonl`), or a
/// glob; sorted, so the order never depends on the filesystem.
pub fn resolve_files(entry: &str, source: &SourceConfig) -> Result<Vec<PathBuf>> {
    let key = format!("{entry}.path");
    let path = Path::new(&source.path);
    let mut files = Vec::new();
    if source.path.contains(['*', '?', '[']) {
        let entries = glob::glob(&source.path)
            .map_err(|e| Error::value(&key, format!("bad glob {:?}: {e}", source.path)))?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                let path = e.path().to_path_buf();
                Error::io(path, e.into())
            })?;
            if entry.is_file() {
                files.push(entry);
            }
        }
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        walk(path, &mut files)?;
    } else {
        return Err(Error::data(
            path,
            format!(
                "{key}: no such file or directory (source {:?})",
                source.name
            ),
        ));
    }
    files.retain(|f| is_text_file(f));
    files.sort();
    if files.is_empty() {
        return Err(Error::data(
            path,
            format!(
                "{key}: no .txt or .jsonl files found (source {:?})",
                source.name
            ),
        ));
    }
    Ok(files)
}

fn is_text_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("txt" | "jsonl" | "text" | "md")
    )
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

fn cache_key(files: &[PathBuf], val_fraction: f64, tokenizer: &Tokenizer) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"mixtrain-cache-v1\0");
    hasher.update(tokenizer.id().as_bytes());
    hasher.update(val_fraction.to_le_bytes());
    for file in files {
        let bytes = std::fs::read(file).at(file)?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(Sha256::digest(&bytes));
    }
    Ok(hex(&hasher.finalize()[..8]))
}

/// The documents of one file: a `.jsonl` file gives one per line (its "text" field), any other
/// file is one document. Errors name the file and line.
pub fn read_documents(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::data(file, "not valid UTF-8 text")
        } else {
            Error::io(file, e)
        }
    })?;
    if file.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        return Ok(vec![text]);
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(file, format!("line {}: invalid JSON: {e}", i + 1)))?;
        match value.get("text") {
            Some(serde_json::Value::String(s)) => docs.push(s.clone()),
            _ => {
                return Err(Error::data(
                    file,
                    format!(
                        "line {}: expected an object with a string field \"text\"",
                        i + 1
                    ),
                ))
            }
        }
    }
    Ok(docs)
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

fn build_shards(
    files: &[PathBuf],
    source: &SourceConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<()> {
    let eod = tokenizer.eod();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let (mut train_docs, mut val_docs) = (0usize, 0usize);
    for file in files {
        for doc in read_documents(file)? {
            if doc.trim().is_empty() {
                continue;
            }
            let tokens = tokenizer.encode(&doc)?;
            let (out, count) = if is_validation(&doc, source.val_fraction) {
                (&mut val, &mut val_docs)
            } else {
                (&mut train, &mut train_docs)
            };
            out.extend_from_slice(&tokens);
            out.push(eod);
            *count += 1;
        }
    }
    if train_docs + val_docs == 0 {
        return Err(Error::data(
            &source.path,
            format!(
                "{} {:?} is empty: no non-blank documents",
                describe(source).0,
                source.name
            ),
        ));
    }
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
    write_shard(&tmp.join("train.bin"), &train, vocab)?;
    write_shard(&tmp.join("val.bin"), &val, vocab)?;
    let meta = ShardMeta {
        tokenizer: tokenizer.id(),
        vocab_size: vocab,
        train_documents: train_docs,
        val_documents: val_docs,
        train_tokens: train.len(),
        val_tokens: val.len(),
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
