//! The shard cache: each input file is tokenised into a part (`data.cache_dir/parts/KEY/`:
//! `shard-NNNNN/{train,val}.bin` of `data.shard_mb` of its documents each, and `part.json`),
//! keyed by its content, tokenizer, split rule and text field; a source's entry
//! (`NAME-KEY/meta.json`) lists its parts in file order and is read as one stream per split. A
//! part appears only when complete: it is built in `.partial-KEY/` (locked while a process
//! builds it), then renamed. So a killed prepare continues from its finished files and, inside
//! a file, from its last finished shard; adding a file to a source tokenises only that file.

use std::path::Path;

use super::config::{DataConfig, SourceConfig};
use super::manifest::{PlannedPart, SourcePlan};
use super::shard::Shard;
use super::tokenise::{shard_dir, tokenise_file, Counts, PartMeta, Progress};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};

const PARTS_DIR: &str = "parts";
const PART_FILE: &str = "part.json";

/// Builds (or finds) every part of `plan` under `cache_dir`; returns the entry's part paths
/// relative to an entry directory, and the totals.
pub(crate) fn build_parts(
    plan: &SourcePlan,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
) -> Result<(Vec<String>, Counts)> {
    let parts_dir = data.cache_dir.join(PARTS_DIR);
    std::fs::create_dir_all(&parts_dir).at(&parts_dir)?;
    let files: Vec<&std::path::PathBuf> = plan.parts.iter().map(|p| &p.file).collect();
    let mut progress = Progress::new(&source.name, &files);
    let mut totals = Counts::default();
    let mut paths = Vec::with_capacity(plan.parts.len());
    for part in &plan.parts {
        let dir = parts_dir.join(&part.key);
        let meta = match read_part(&dir) {
            Some(meta) => {
                progress.skip(&part.file);
                meta
            }
            None => build_part(part, source, data, tokenizer, &dir, &mut progress)?,
        };
        totals.add(&meta.counts);
        paths.push(format!("../{PARTS_DIR}/{}", part.key));
    }
    progress.show(0, 0, true);
    Ok((paths, totals))
}

/// A finished part's metadata (None when the part is missing or was never finished).
fn read_part(dir: &Path) -> Option<PartMeta> {
    let text = std::fs::read_to_string(dir.join(PART_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where a part is built, and the lock that makes it this process's: `.partial-KEY/`, kept
/// across a kill so the next prepare continues it; while another process holds its lock, a
/// private `.tmp-KEY-PID/` from scratch (both processes write the same part: either one's
/// rename wins).
struct Building {
    dir: std::path::PathBuf,
    /// Held until the part is renamed; None for a private directory.
    _lock: Option<std::fs::File>,
}

fn building_dir(parent: &Path, key: &str) -> Result<Building> {
    let lock_path = parent.join(format!(".partial-{key}.lock"));
    let lock = std::fs::File::create(&lock_path).at(&lock_path)?;
    // SAFETY: flock on a file descriptor this function owns.
    let locked = unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
    };
    if locked {
        let dir = parent.join(format!(".partial-{key}"));
        std::fs::create_dir_all(&dir).at(&dir)?;
        return Ok(Building {
            dir,
            _lock: Some(lock),
        });
    }
    let dir = parent.join(format!(".tmp-{key}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at(&dir)?;
    }
    std::fs::create_dir_all(&dir).at(&dir)?;
    Ok(Building { dir, _lock: None })
}

/// Tokenises one file into `dir`, in a building directory renamed when complete.
fn build_part(
    part: &PlannedPart,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
    progress: &mut Progress,
) -> Result<PartMeta> {
    let parent = dir.parent().expect("a part lives in the parts directory");
    let building = building_dir(parent, &part.key)?;
    let tmp = &building.dir;
    let built = tokenise_file(
        &part.file, part.split, source, data, tokenizer, tmp, progress,
    );
    let meta = match built {
        Ok(meta) => meta,
        Err(e) => {
            if building._lock.is_none() {
                let _ = std::fs::remove_dir_all(tmp);
            }
            return Err(e);
        }
    };
    let text = serde_json::to_string_pretty(&meta).expect("a part's metadata serialises");
    crate::fsutil::write_atomic(&tmp.join(PART_FILE), text.as_bytes())?;
    if dir.exists() && read_part(dir).is_none() {
        std::fs::remove_dir_all(dir).at(dir)?; // an unfinished part of an older version
    }
    if let Err(e) = std::fs::rename(tmp, dir) {
        // Another process built the same part meanwhile: theirs is identical, use it.
        std::fs::remove_dir_all(tmp).at(tmp)?;
        if read_part(dir).is_none() {
            return Err(Error::io(dir, e));
        }
    }
    if building._lock.is_some() {
        let _ = std::fs::remove_file(parent.join(format!(".partial-{}.lock", part.key)));
    }
    Ok(meta)
}

/// The train and validation streams of an entry's `parts` (paths relative to `entry`); the
/// token scan of a shard is skipped where it is as written, unless `verify`.
pub(crate) fn open_parts(
    entry: &Path,
    parts: &[String],
    vocab: usize,
    verify: bool,
) -> Result<(Shard, Shard)> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for part in parts {
        let dir = entry.join(part);
        let meta = read_part(&dir).ok_or_else(|| {
            Error::data(
                dir.join(PART_FILE),
                "missing or damaged; delete the entry's meta.json to rebuild the source",
            )
        })?;
        let stamp = |s| if verify { None } else { s };
        // A part from before shards: its two files in its own directory.
        let legacy = [(dir.clone(), meta.train_stamp, meta.val_stamp)];
        let shards = meta.shards.iter().enumerate();
        let shards = shards.map(|(i, s)| (shard_dir(&dir, i), s.train_stamp, s.val_stamp));
        let files: Vec<_> = match meta.shards.is_empty() {
            true => legacy.to_vec(),
            false => shards.collect(),
        };
        for (files_dir, train_stamp, val_stamp) in files {
            let train_bin = files_dir.join("train.bin");
            train.push(Shard::open_stamped(&train_bin, vocab, stamp(train_stamp))?);
            let val_bin = files_dir.join("val.bin");
            val.push(Shard::open_stamped(&val_bin, vocab, stamp(val_stamp))?);
        }
    }
    Ok((Shard::concat(train), Shard::concat(val)))
}
