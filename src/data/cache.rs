//! The shard cache: each input file is tokenised into a part (`data.cache_dir/parts/KEY/`:
//! `train.bin`, `val.bin`, `part.json`), keyed by its content, tokenizer, split rule and text
//! field; a source's entry (`NAME-KEY/meta.json`) lists its parts in file order and is read as
//! one stream per split. A part appears only when complete (built in a temporary directory,
//! then renamed), so a killed prepare continues from its finished files, and adding a file to
//! a source tokenises only that file.

use std::path::Path;

use super::config::{DataConfig, SourceConfig};
use super::manifest::{PlannedPart, SourcePlan};
use super::shard::Shard;
use super::tokenise::{tokenise_file, PartMeta, Progress};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};

const PARTS_DIR: &str = "parts";
const PART_FILE: &str = "part.json";

/// Totals over a source's parts.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) train_docs: usize,
    pub(crate) val_docs: usize,
    pub(crate) train_tokens: usize,
    pub(crate) val_tokens: usize,
    pub(crate) bad_records: usize,
    pub(crate) first_bad: Option<String>,
}

/// Builds (or finds) every part of `plan` under `cache_dir`; returns the entry's part paths
/// relative to an entry directory, and the totals.
pub(crate) fn build_parts(
    plan: &SourcePlan,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
) -> Result<(Vec<String>, Totals)> {
    let parts_dir = data.cache_dir.join(PARTS_DIR);
    std::fs::create_dir_all(&parts_dir).at(&parts_dir)?;
    let files: Vec<&std::path::PathBuf> = plan.parts.iter().map(|p| &p.file).collect();
    let mut progress = Progress::new(&source.name, &files);
    let mut totals = Totals::default();
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
        totals.train_docs += meta.train_docs;
        totals.val_docs += meta.val_docs;
        totals.train_tokens += meta.train_tokens as usize;
        totals.val_tokens += meta.val_tokens as usize;
        totals.bad_records += meta.bad_records;
        if totals.first_bad.is_none() {
            totals.first_bad = meta.first_bad;
        }
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

/// Tokenises one file into `dir`, through a temporary directory renamed when complete.
fn build_part(
    part: &PlannedPart,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
    progress: &mut Progress,
) -> Result<PartMeta> {
    let parent = dir.parent().expect("a part lives in the parts directory");
    let tmp = parent.join(format!(".tmp-{}-{}", part.key, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    let built = tokenise_file(
        &part.file, part.split, source, data, tokenizer, &tmp, progress,
    );
    let meta = match built {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let text = serde_json::to_string_pretty(&meta).expect("a part's metadata serialises");
    crate::fsutil::write_atomic(&tmp.join(PART_FILE), text.as_bytes())?;
    if dir.exists() && read_part(dir).is_none() {
        std::fs::remove_dir_all(dir).at(dir)?; // an unfinished part of an older version
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        // Another process built the same part meanwhile: theirs is identical, use it.
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
        if read_part(dir).is_none() {
            return Err(Error::io(dir, e));
        }
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
        train.push(Shard::open_stamped(
            &dir.join("train.bin"),
            vocab,
            stamp(meta.train_stamp),
        )?);
        val.push(Shard::open_stamped(
            &dir.join("val.bin"),
            vocab,
            stamp(meta.val_stamp),
        )?);
    }
    Ok((Shard::concat(train), Shard::concat(val)))
}
