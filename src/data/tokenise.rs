//! Tokenising one input file into a part of its source's shards, in bounded memory, on every
//! core: documents are read in file order into batches of about `BATCH_BYTES`, each batch is
//! encoded in parallel (the results kept in document order, so the shards are the same bytes
//! whatever the thread count) and appended to the part's train and validation shard writers.
//! Progress (per source, across its files) goes to stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::config::{BadRecordPolicy, DataConfig, SourceConfig};
use super::readers::for_each_record_counted;
use super::shard::{FileStamp, ShardWriter};
use super::source::is_validation;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};

/// Text bytes read before a batch is encoded: bounds the memory of a prepare (the batch and
/// its tokens) whatever the source's size.
const BATCH_BYTES: usize = 2 << 20;

/// Documents, tokens and bad records of a stretch of a source: a shard, a part (one input
/// file), a whole source.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counts {
    pub(crate) train_docs: usize,
    pub(crate) val_docs: usize,
    pub(crate) train_tokens: u64,
    pub(crate) val_tokens: u64,
    /// Records skipped as unreadable (`data.on_bad_record = "skip"`), and the first of them.
    pub(crate) bad_records: usize,
    pub(crate) first_bad: Option<String>,
}

impl Counts {
    /// Adds the counts of the stretch that follows this one.
    pub(crate) fn add(&mut self, next: &Counts) {
        self.train_docs += next.train_docs;
        self.val_docs += next.val_docs;
        self.train_tokens += next.train_tokens;
        self.val_tokens += next.val_tokens;
        self.bad_records += next.bad_records;
        if self.first_bad.is_none() {
            self.first_bad.clone_from(&next.first_bad);
        }
    }

    pub(crate) fn docs(&self) -> usize {
        self.train_docs + self.val_docs
    }
}

/// One input file tokenised: a part of its source's token streams (`part.json` beside them),
/// as one or more shards of `data.shard_mb` of its documents each.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PartMeta {
    #[serde(flatten)]
    pub(crate) counts: Counts,
    /// Parts written before shards existed: their `train.bin` and `val.bin` lie in the part's
    /// directory, with these stamps, and `shards` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) train_stamp: Option<FileStamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) val_stamp: Option<FileStamp>,
    /// The shards, in file order (`shard-NNNNN/` directories).
    #[serde(default)]
    pub(crate) shards: Vec<FileShard>,
}

/// One shard of a part: the next `data.shard_mb` of a file's documents (the last one fewer);
/// finished when `shard.json` is written beside its `train.bin` and `val.bin`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileShard {
    /// Records of the file read through this shard's last one (bad and empty records
    /// included): where a prepare that was killed after this shard continues.
    pub(crate) records_through: u64,
    #[serde(flatten)]
    pub(crate) counts: Counts,
    pub(crate) train_stamp: Option<FileStamp>,
    pub(crate) val_stamp: Option<FileStamp>,
}

const SHARD_FILE: &str = "shard.json";

/// The directory of shard `index` of the part in `part_dir`.
pub(crate) fn shard_dir(part_dir: &Path, index: usize) -> PathBuf {
    part_dir.join(format!("shard-{index:05}"))
}

/// A source's input files: `train` split by `val_fraction`, or, with `val` (`val_path`),
/// all training while `val` is all validation.
pub(crate) struct SourceFiles {
    pub(crate) train: Vec<PathBuf>,
    pub(crate) val: Option<Vec<PathBuf>>,
}

impl SourceFiles {
    /// Each file with the split it goes to (None: by each document's hash).
    pub(crate) fn with_splits(&self) -> Vec<(&PathBuf, Option<bool>)> {
        let forced = self.val.is_some().then_some(false);
        let train = self.train.iter().map(|f| (f, forced));
        let val = self.val.iter().flatten().map(|f| (f, Some(true)));
        train.chain(val).collect()
    }
}

struct Writers {
    train: ShardWriter,
    val: ShardWriter,
}

/// The shard being written: its writers, its counts so far, and its documents' bytes.
struct OpenShard {
    dir: PathBuf,
    writers: Writers,
    meta: FileShard,
    doc_bytes: usize,
}

impl OpenShard {
    fn create(part_dir: &Path, index: usize, vocab: usize) -> Result<OpenShard> {
        let dir = shard_dir(part_dir, index);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).at(&dir)?; // unfinished: no shard.json
        }
        std::fs::create_dir_all(&dir).at(&dir)?;
        Ok(OpenShard {
            writers: Writers {
                train: ShardWriter::create(&dir.join("train.bin"), vocab)?,
                val: ShardWriter::create(&dir.join("val.bin"), vocab)?,
            },
            dir,
            meta: FileShard::default(),
            doc_bytes: 0,
        })
    }

    /// Closes the shard's files and writes `shard.json`: from now on a prepare resumes after it.
    fn finish(self, records_through: u64) -> Result<FileShard> {
        let mut meta = self.meta;
        meta.records_through = records_through;
        meta.counts.train_tokens = self.writers.train.len();
        meta.counts.val_tokens = self.writers.val.len();
        meta.train_stamp = Some(self.writers.train.finish()?);
        meta.val_stamp = Some(self.writers.val.finish()?);
        let text = serde_json::to_string_pretty(&meta).expect("a shard's metadata serialises");
        crate::fsutil::write_atomic(&self.dir.join(SHARD_FILE), text.as_bytes())?;
        crate::fault::shard_finished();
        Ok(meta)
    }
}

/// The finished shards of a part being built in `part_dir` (a killed prepare's), in order: up
/// to the first without its `shard.json`.
fn finished_shards(part_dir: &Path) -> Vec<FileShard> {
    (0..)
        .map_while(|i| {
            let text = std::fs::read_to_string(shard_dir(part_dir, i).join(SHARD_FILE)).ok()?;
            serde_json::from_str(&text).ok()
        })
        .collect()
}

/// The part made of `shards`, with their totals.
fn part_of(shards: Vec<FileShard>) -> PartMeta {
    let mut counts = Counts::default();
    shards.iter().for_each(|shard| counts.add(&shard.counts));
    PartMeta {
        counts,
        shards,
        ..PartMeta::default()
    }
}

/// Reads and tokenises every document of `file` into shards under `dir` (`shard-NNNNN/`
/// train.bin and val.bin; the split forced by `split`, else by each document's hash),
/// continuing after the shards a killed prepare finished there; bad records stop it or are
/// counted, as `data.on_bad_record` says.
pub(crate) fn tokenise_file(
    file: &Path,
    split: Option<bool>,
    source: &SourceConfig,
    data: &DataConfig,
    tokenizer: &Tokenizer,
    dir: &Path,
    progress: &mut Progress,
) -> Result<PartMeta> {
    let vocab = tokenizer.vocab_size();
    let mut shards = finished_shards(dir);
    // Records already in finished shards are read again (to find where to go on) but not
    // tokenised.
    let skip = shards.last().map_or(0, |s| s.records_through);
    if !shards.is_empty() {
        tracing::info!(
            file = %file.display(),
            shards = shards.len(),
            "continuing after the shards a previous prepare finished"
        );
    }
    let mut open = OpenShard::create(dir, shards.len(), vocab)?;
    let shard_bytes = data.shard_bytes();
    // Bytes of the file read so far (compressed bytes for a compressed file).
    let read = AtomicU64::new(0);
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0;
    let mut records = 0u64;
    for_each_record_counted(file, &source.text_field, &read, |record| {
        records += 1;
        if records <= skip {
            return Ok(());
        }
        let doc = match record.document {
            Ok(doc) => doc,
            Err(what) if data.on_bad_record == BadRecordPolicy::Skip => {
                let counts = &mut open.meta.counts;
                counts.bad_records += 1;
                counts
                    .first_bad
                    .get_or_insert_with(|| format!("{}, {}: {what}", file.display(), record.at));
                return Ok(());
            }
            Err(what) => return Err(Error::data(file, format!("{}: {what}", record.at))),
        };
        if doc.trim().is_empty() {
            return Ok(());
        }
        batch_bytes += doc.len();
        open.doc_bytes += doc.len();
        batch.push(doc);
        if batch_bytes >= BATCH_BYTES || open.doc_bytes >= shard_bytes {
            encode_batch(&mut batch, split, source, tokenizer, &mut open)?;
            batch_bytes = 0;
            let docs = shards.iter().chain([&open.meta]).map(|s| s.counts.docs());
            progress.show(read.load(Ordering::Relaxed), docs.sum(), false);
        }
        if open.doc_bytes >= shard_bytes {
            let next = OpenShard::create(dir, shards.len() + 1, vocab)?;
            shards.push(std::mem::replace(&mut open, next).finish(records)?);
        }
        Ok(())
    })?;
    encode_batch(&mut batch, split, source, tokenizer, &mut open)?;
    shards.push(open.finish(records)?);
    let part = part_of(shards);
    progress.file_done(read.load(Ordering::Relaxed), part.counts.docs());
    Ok(part)
}

/// Encodes `batch` in parallel and appends each document, in order, with its end-of-document
/// token to its split's shard.
fn encode_batch(
    batch: &mut Vec<String>,
    split: Option<bool>,
    source: &SourceConfig,
    tokenizer: &Tokenizer,
    shard: &mut OpenShard,
) -> Result<()> {
    let (writers, out) = (&mut shard.writers, &mut shard.meta.counts);
    let encoded: Vec<Result<(bool, Vec<u32>)>> = batch
        .par_iter()
        .map(|doc| {
            let validation = split.unwrap_or_else(|| is_validation(doc, source.val_fraction));
            Ok((validation, tokenizer.encode(doc)?))
        })
        .collect();
    batch.clear();
    let eod = tokenizer.eod();
    for result in encoded {
        let (validation, mut tokens) = result?;
        tokens.push(eod);
        if validation {
            writers.val.push(&tokens)?;
            out.val_docs += 1;
        } else {
            writers.train.push(&tokens)?;
            out.train_docs += 1;
        }
    }
    Ok(())
}

/// A progress line per source: bytes read of its files' total, documents per second, MB/s
/// and the time left; redrawn in place on a terminal, a log line every 10 s otherwise.
pub(crate) struct Progress {
    name: String,
    total: u64,
    /// Bytes and documents of the files finished (or reused) so far.
    done_bytes: u64,
    done_docs: usize,
    started: Instant,
    shown: Instant,
    terminal: bool,
}

impl Progress {
    pub(crate) fn new(name: &str, files: &[&PathBuf]) -> Progress {
        let total = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let now = Instant::now();
        Progress {
            name: name.to_string(),
            total,
            done_bytes: 0,
            done_docs: 0,
            started: now,
            shown: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// A file taken from the cache: its bytes count as read, not as throughput.
    pub(crate) fn skip(&mut self, file: &Path) {
        let size = std::fs::metadata(file).map_or(0, |m| m.len());
        self.total = self.total.saturating_sub(size);
    }

    fn file_done(&mut self, bytes: u64, docs: usize) {
        self.done_bytes += bytes;
        self.done_docs += docs;
    }

    /// Shows the line (at most every second on a terminal, every 10 s in a log, and `done`).
    pub(crate) fn show(&mut self, file_bytes: u64, file_docs: usize, done: bool) {
        let every = Duration::from_secs(if self.terminal { 1 } else { 10 });
        if !done && self.shown.elapsed() < every {
            return;
        }
        self.shown = Instant::now();
        let read = (self.done_bytes + file_bytes).min(self.total);
        let docs = self.done_docs + file_docs;
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = read as f64 / seconds;
        let fraction = read as f64 / self.total.max(1) as f64;
        let eta = (self.total - read) as f64 / rate.max(1.0);
        let filled = (fraction * 30.0).round() as usize;
        let line =
            format!(
            "tokenising {}: [{}{}] {:.0}% of {:.1} MB, {docs} documents ({:.0}/s), {:.1} MB/s, {}",
            self.name,
            "=".repeat(filled),
            " ".repeat(30 - filled),
            100.0 * fraction,
            self.total as f64 / 1e6,
            docs as f64 / seconds,
            rate / 1e6,
            if done { format!("done in {seconds:.1} s") } else { format!("ETA {eta:.0} s") },
        );
        if self.terminal {
            eprint!("\r{line}{}", if done { "\n" } else { "" });
        } else {
            tracing::info!("{line}");
        }
    }
}
