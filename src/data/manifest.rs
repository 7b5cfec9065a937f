//! The cache key of a source's shards, without re-reading the corpus at every start: a
//! manifest in `data.cache_dir` records each input file's length, modification time and
//! SHA-256; a file whose length and time are unchanged keeps its recorded digest. The key
//! hashes the digests (not the paths), so moving the data does not re-tokenise it.
//! `mixtrain prepare --verify` re-hashes every file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::SourceConfig;
use super::shard::FileStamp;
use super::tokenise::SourceFiles;
use super::tokenizer::Tokenizer;
use crate::error::{IoContext, Result};
use crate::fsutil::hex;

const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    stamp: FileStamp,
    sha256: String,
}

/// Input files by absolute path.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, Entry>,
}

/// One input file's part of a source's shards, and where it is cached.
pub(crate) struct PlannedPart {
    pub(crate) file: PathBuf,
    /// The split every document of the file goes to (None: by each document's hash).
    pub(crate) split: Option<bool>,
    /// Names the part's directory in `data.cache_dir/parts/`.
    pub(crate) key: String,
}

/// A source's cache entry: its key and its parts in file order.
pub(crate) struct SourcePlan {
    pub(crate) key: String,
    pub(crate) parts: Vec<PlannedPart>,
}

/// The cache plan of `source`: each file's part keyed by its content (SHA-256), the
/// tokenizer, its split rule and the text field; the entry keyed by its parts. With `verify`,
/// every file is re-hashed.
pub(crate) fn plan(
    files: &SourceFiles,
    source: &SourceConfig,
    tokenizer: &Tokenizer,
    cache_dir: &Path,
    verify: bool,
) -> Result<SourcePlan> {
    let with_splits = files.with_splits();
    let paths: Vec<PathBuf> = with_splits.iter().map(|(f, _)| f.to_path_buf()).collect();
    let digests = file_digests(&paths, cache_dir, verify)?;
    let mut entry = Sha256::new();
    entry.update(b"mixtrain-cache-v3\0");
    let mut parts = Vec::with_capacity(paths.len());
    for ((file, split), digest) in with_splits.into_iter().zip(digests) {
        let mut part = Sha256::new();
        part.update(b"mixtrain-part-v1\0");
        part.update(tokenizer.id().as_bytes());
        match split {
            None => part.update(source.val_fraction.to_le_bytes()),
            Some(true) => part.update(b"\0validation"),
            Some(false) => part.update(b"\0training"),
        }
        part.update(b"\0");
        part.update(source.text_field.as_bytes());
        part.update(b"\0");
        part.update(digest.as_bytes());
        let key = hex(&part.finalize()[..12]);
        entry.update(key.as_bytes());
        parts.push(PlannedPart {
            file: file.to_path_buf(),
            split,
            key,
        });
    }
    Ok(SourcePlan {
        key: hex(&entry.finalize()[..8]),
        parts,
    })
}

/// Each file's SHA-256 (hex), from the manifest where its stamp is unchanged.
fn file_digests(files: &[PathBuf], cache_dir: &Path, verify: bool) -> Result<Vec<String>> {
    let path = cache_dir.join(MANIFEST_FILE);
    // An unreadable manifest is only a lost cache: every file is hashed again.
    let mut manifest: Manifest = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut digests = Vec::with_capacity(files.len());
    for file in files {
        let key = std::fs::canonicalize(file).at(file)?.display().to_string();
        let stamp = FileStamp::of(file)?;
        let known = manifest
            .files
            .get(&key)
            .filter(|e| e.stamp == stamp && !verify);
        let digest = match known {
            Some(entry) => entry.sha256.clone(),
            None => {
                let sha256 = hash_file(file)?;
                if verify
                    && manifest
                        .files
                        .get(&key)
                        .is_some_and(|e| e.stamp == stamp && e.sha256 != sha256)
                {
                    tracing::warn!(file = %file.display(), "changed without a new modification time; its shards are rebuilt");
                }
                manifest.files.insert(
                    key,
                    Entry {
                        stamp,
                        sha256: sha256.clone(),
                    },
                );
                changed = true;
                sha256
            }
        };
        digests.push(digest);
    }
    if changed {
        std::fs::create_dir_all(cache_dir).at(cache_dir)?;
        let text = serde_json::to_string_pretty(&manifest).expect("the manifest serialises");
        crate::fsutil::write_atomic(&path, text.as_bytes())?;
    }
    Ok(digests)
}

/// SHA-256 of a file, read in 1 MiB blocks.
fn hash_file(file: &Path) -> Result<String> {
    let mut reader = std::fs::File::open(file).at(file)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut block).at(file)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is hashed once; a changed file (new stamp) is hashed again; the key does not
    /// depend on where the file lives.
    #[test]
    fn digests_come_from_the_manifest_until_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "hello").unwrap();
        let first = file_digests(std::slice::from_ref(&a), &cache, false).unwrap();
        // Poison the recorded digest: an unchanged file must be taken from the manifest.
        let manifest_path = cache.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).unwrap();
        std::fs::write(&manifest_path, text.replace(&first[0], "recorded")).unwrap();
        assert_eq!(
            file_digests(std::slice::from_ref(&a), &cache, false).unwrap(),
            ["recorded"]
        );
        assert_eq!(
            file_digests(std::slice::from_ref(&a), &cache, true).unwrap(),
            first
        );
        std::fs::write(&a, "hello, world").unwrap();
        let changed = file_digests(std::slice::from_ref(&a), &cache, false).unwrap();
        assert_ne!(changed, first);
        let moved = dir.path().join("b.txt");
        std::fs::rename(&a, &moved).unwrap();
        assert_eq!(file_digests(&[moved], &cache, false).unwrap(), changed);
    }
}
