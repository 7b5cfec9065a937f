//! Document readers, chosen by file extension: plain text (`.txt`, `.md`, `.text`: the file is
//! one document), JSON lines (`.jsonl`, `.json`: one document per line, in a chosen string
//! field), each optionally compressed (`.gz`, `.zst`), and Parquet (`.parquet`: one document per
//! row of a string column). Records stream: a file is never held whole in memory except a
//! plain-text document, which is one document by definition.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::SourceConfig;
use crate::error::{Error, IoContext, Result};

/// What `kind_of` takes, for messages.
const READABLE: &str =
    ".txt, .md, .text, .jsonl or .json (each optionally .gz or .zst), or .parquet";

/// How a file's documents are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The whole file is one document.
    Text,
    /// One JSON object per line; the document is one of its string fields.
    JsonLines,
    /// One document per row, in a string column.
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The format and compression of `path`, from its extensions (`a.jsonl.zst`); None for a file
/// no reader takes.
pub(crate) fn kind_of(path: &Path) -> Option<(Format, Compression)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Compression::Gzip)
    } else if let Some(stem) = name.strip_suffix(".zst") {
        (stem, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let format = match stem.rsplit_once('.')?.1 {
        "txt" | "md" | "text" => Format::Text,
        "jsonl" | "json" => Format::JsonLines,
        "parquet" if compression == Compression::None => Format::Parquet,
        _ => return None,
    };
    Some((format, compression))
}

/// The files of a source that a reader takes: a file, a directory (recursively), or a glob;
/// sorted, so the order never depends on the filesystem. Files no reader takes are named in a
/// warning; a source left with none is an error.
pub fn resolve_files(entry: &str, source: &SourceConfig) -> Result<Vec<PathBuf>> {
    resolve_at(&format!("{entry}.path"), &source.path, &source.name)
}

/// The files of a source's `val_path`, when it has one.
pub(crate) fn resolve_val_files(
    entry: &str,
    source: &SourceConfig,
) -> Result<Option<Vec<PathBuf>>> {
    let Some(val_path) = &source.val_path else {
        return Ok(None);
    };
    resolve_at(&format!("{entry}.val_path"), val_path, &source.name).map(Some)
}

/// The readable files at `spec` (a file, a directory searched recursively, or a glob) of
/// source `name`, sorted; `key` names the config key in errors.
fn resolve_at(key: &str, spec: &str, name: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(spec);
    let mut files = Vec::new();
    if spec.contains(['*', '?', '[']) {
        let entries =
            glob::glob(spec).map_err(|e| Error::value(key, format!("bad glob {spec:?}: {e}")))?;
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
        if kind_of(path).is_none() {
            return Err(Error::data(
                path,
                format!("{key}: no reader takes this file; expected {READABLE}"),
            ));
        }
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        walk(path, &mut files)?;
    } else {
        return Err(Error::data(
            path,
            format!("{key}: no such file or directory (source {:?})", name),
        ));
    }
    files.sort();
    let (files, skipped): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| kind_of(f).is_some());
    warn_skipped(name, &skipped);
    if files.is_empty() {
        return Err(Error::data(
            path,
            format!("{key}: no {READABLE} files found (source {:?})", name),
        ));
    }
    Ok(files)
}

/// Names (the first few of) the files of a source that no reader takes.
fn warn_skipped(source: &str, skipped: &[PathBuf]) {
    if skipped.is_empty() {
        return;
    }
    let shown: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|f| f.display().to_string())
        .collect();
    let more = skipped.len().saturating_sub(shown.len());
    tracing::warn!(
        source,
        skipped = skipped.len(),
        "files no reader takes (by extension) are left out: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
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

/// Every document of one file, in order (`field`: the JSON field or Parquet column); the first
/// bad record is an error naming the file and its line or row.
pub fn read_documents(file: &Path, field: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for_each_document(file, field, |doc| docs.push(doc))?;
    Ok(docs)
}

/// Calls `each` with every document of `file` in order; a bad record is an error naming it.
pub(crate) fn for_each_document(
    file: &Path,
    field: &str,
    mut each: impl FnMut(String),
) -> Result<()> {
    for_each_record(file, field, |record| match record.document {
        Ok(doc) => {
            each(doc);
            Ok(())
        }
        Err(what) => Err(Error::data(file, format!("{}: {what}", record.at))),
    })
}

/// One record of a file: its document, or what is wrong with it; `at` locates it ("line 12",
/// "row 7") for errors.
pub(crate) struct Record {
    pub(crate) at: String,
    pub(crate) document: std::result::Result<String, String>,
}

/// Calls `each` with every record of `path` in file order; `field` is the JSON field or Parquet
/// column holding the text. Errors are about the file as a whole (unreadable, not the format
/// its name says); a bad record is handed to `each`, which decides.
pub(crate) fn for_each_record(
    path: &Path,
    field: &str,
    each: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    for_each_record_counted(path, field, &AtomicU64::new(0), each)
}

/// `for_each_record`, adding the bytes read from the file (before decompression) to `read`
/// as it goes (Parquet: the whole file once read).
pub(crate) fn for_each_record_counted(
    path: &Path,
    field: &str,
    read: &AtomicU64,
    mut each: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    let Some((format, compression)) = kind_of(path) else {
        return Err(Error::data(
            path,
            "no reader takes this file (by its extension)",
        ));
    };
    if format == Format::Parquet {
        super::parquet::for_each_row(path, field, each)?;
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        read.fetch_add(size, Ordering::Relaxed);
        return Ok(());
    }
    let reader = open_decompressed(path, compression, read)?;
    match format {
        Format::Text => each(read_whole(path, reader)?),
        Format::JsonLines => for_each_line(path, reader, field, each),
        Format::Parquet => unreachable!("handled above"),
    }
}

/// A reader that adds the bytes it reads to a counter (the progress of a prepare).
struct Counting<'a, R> {
    inner: R,
    read: &'a AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn open_decompressed<'a>(
    path: &Path,
    compression: Compression,
    read: &'a AtomicU64,
) -> Result<Box<dyn BufRead + 'a>> {
    let file = Counting {
        inner: File::open(path).at(path)?,
        read,
    };
    Ok(match compression {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file))),
        Compression::Zstd => Box::new(BufReader::new(
            zstd::stream::read::Decoder::new(file).at(path)?,
        )),
    })
}

/// A plain-text file as one record (not UTF-8: a bad record).
fn read_whole(path: &Path, mut reader: Box<dyn BufRead + '_>) -> Result<Record> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::data(path, format!("cannot read or decompress: {e}")))?;
    Ok(Record {
        at: "the file".into(),
        document: String::from_utf8(bytes).map_err(|_| "not valid UTF-8 text".to_string()),
    })
}

fn for_each_line(
    path: &Path,
    mut reader: Box<dyn BufRead + '_>,
    field: &str,
    mut each: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(|e| {
            Error::data(
                path,
                format!("line {number}: cannot read or decompress: {e}"),
            )
        })?;
        if read == 0 {
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        each(Record {
            at: format!("line {number}"),
            document: json_document(&line, field),
        })?;
    }
    Ok(())
}

/// The string `field` of one JSON object line, or what is wrong with the line.
fn json_document(line: &[u8], field: &str) -> std::result::Result<String, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(format!("expected an object with a string field {field:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_compressions_come_from_the_extensions() {
        let kind = |name: &str| kind_of(Path::new(name));
        assert_eq!(kind("a.txt"), Some((Format::Text, Compression::None)));
        assert_eq!(kind("dir/a.MD"), Some((Format::Text, Compression::None)));
        assert_eq!(
            kind("a.jsonl.gz"),
            Some((Format::JsonLines, Compression::Gzip))
        );
        assert_eq!(
            kind("a.json.zst"),
            Some((Format::JsonLines, Compression::Zstd))
        );
        assert_eq!(kind("a.text.zst"), Some((Format::Text, Compression::Zstd)));
        assert_eq!(
            kind("train-0001.parquet"),
            Some((Format::Parquet, Compression::None))
        );
        for skipped in ["a.csv", "a.gz", "README", "a.parquet.gz", "a.bin"] {
            assert_eq!(kind(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn a_bad_line_is_a_bad_record_not_a_failed_file() {
        let bad = json_document(b"{\"text\": 3}", "text").unwrap_err();
        assert!(bad.contains("string field \"text\""), "{bad}");
        assert!(json_document(b"{\"text\": \"a\"", "text")
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(json_document(b"{\"text\": \"\xff\"}", "text")
            .unwrap_err()
            .contains("UTF-8"));
        assert_eq!(
            json_document(b"{\"content\": \"fn main() {}\"}", "content").unwrap(),
            "fn main() {}"
        );
    }
}
