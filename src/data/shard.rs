//! Token shards: a 32-byte header (magic, version, token width, vocab size, count), then the
//! tokens little-endian. Read with mmap; an open checks the header and the file size, and that
//! every token is inside the vocabulary unless the file is exactly as its writer left it (same
//! length and modification time as recorded), so a truncated or corrupt shard is an error, not
//! a panic, and a warm start does not scan every token. Written by `ShardWriter` in chunks.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"MIXTSHRD";
const VERSION: u32 = 1;
pub const SHARD_HEADER_BYTES: usize = 32;
/// Tokens per chunk of `Shard::scan` (4 MB of u32).
const SCAN_CHUNK_TOKENS: usize = 1 << 20;

/// A read-only token stream: one memory-mapped shard file, or several read as one
/// (`Shard::concat`: a source tokenised file by file).
pub struct Shard {
    parts: Vec<Part>,
    /// Where each part starts in the stream.
    starts: Vec<usize>,
    len: usize,
}

/// One shard file.
struct Part {
    map: Option<Mmap>,
    token_bytes: usize,
    len: usize,
}

impl Part {
    fn token(&self, i: usize) -> u32 {
        let map = self
            .map
            .as_ref()
            .expect("token() is only called on a non-empty part");
        let at = SHARD_HEADER_BYTES + i * self.token_bytes;
        match self.token_bytes {
            2 => u16::from_le_bytes([map[at], map[at + 1]]) as u32,
            _ => u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes")),
        }
    }
}

/// A file's length and modification time (ns since the epoch): what `ShardWriter` records and
/// `Shard::open_stamped` compares, to skip the token scan of an unchanged shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileStamp {
    pub(crate) len: u64,
    pub(crate) modified_ns: u128,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Result<FileStamp> {
        let meta = std::fs::metadata(path).at(path)?;
        let modified = meta.modified().at(path)?;
        let modified_ns = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(FileStamp {
            len: meta.len(),
            modified_ns,
        })
    }
}

impl Shard {
    /// Opens and checks a shard, every token included.
    pub fn open(path: &Path, vocab_size: usize) -> Result<Shard> {
        Self::open_stamped(path, vocab_size, None)
    }

    /// Opens a shard; the token scan is skipped when the file still has `stamp` (as written).
    pub(crate) fn open_stamped(
        path: &Path,
        vocab_size: usize,
        stamp: Option<FileStamp>,
    ) -> Result<Shard> {
        let bad = |message: String| Error::Shard {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len() as usize;
        if file_len < SHARD_HEADER_BYTES {
            return Err(bad(format!(
                "truncated: {file_len} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header"
            )));
        }
        // SAFETY: the shard is opened read-only and mixtrain never writes a shard in place
        // (shards are written to a temporary name and renamed).
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let header = &map[..SHARD_HEADER_BYTES];
        if &header[..8] != MAGIC {
            return Err(bad("not a mixtrain shard (bad magic)".into()));
        }
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let version = word(8);
        if version != VERSION {
            return Err(bad(format!(
                "version {version}, this mixtrain reads version {VERSION}"
            )));
        }
        let token_bytes = word(12) as usize;
        if token_bytes != 2 && token_bytes != 4 {
            return Err(bad(format!(
                "token width {token_bytes} bytes (expected 2 or 4)"
            )));
        }
        let shard_vocab = word(16) as usize;
        if shard_vocab != vocab_size {
            return Err(bad(format!(
                "written for a vocabulary of {shard_vocab} tokens, the tokenizer has {vocab_size}"
            )));
        }
        let len = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes")) as usize;
        let expected = SHARD_HEADER_BYTES + len * token_bytes;
        if file_len != expected {
            return Err(bad(format!(
                "truncated or corrupt: header says {len} tokens ({expected} bytes), file has {file_len} bytes"
            )));
        }
        let shard = Shard::from_parts(vec![Part {
            map: (len > 0).then_some(map),
            token_bytes,
            len,
        }]);
        let unchanged = stamp.is_some() && stamp == FileStamp::of(path).ok();
        if unchanged {
            return Ok(shard);
        }
        if let Some(pos) = (0..len).find(|&i| shard.token(i) as usize >= vocab_size) {
            return Err(bad(format!(
                "corrupt: token {} at position {pos} is outside the vocabulary of {vocab_size}",
                shard.token(pos)
            )));
        }
        Ok(shard)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shards one after another, as one stream.
    pub(crate) fn concat(shards: Vec<Shard>) -> Shard {
        Shard::from_parts(shards.into_iter().flat_map(|s| s.parts).collect())
    }

    fn from_parts(parts: Vec<Part>) -> Shard {
        let parts: Vec<Part> = parts.into_iter().filter(|p| p.len > 0).collect();
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for part in &parts {
            starts.push(len);
            len += part.len;
        }
        Shard { parts, starts, len }
    }

    /// (part, index in it) of stream position `i`.
    fn locate(&self, i: usize) -> (usize, usize) {
        if self.parts.len() == 1 {
            return (0, i);
        }
        let part = self.starts.partition_point(|&s| s <= i) - 1;
        (part, i - self.starts[part])
    }

    pub(crate) fn token(&self, i: usize) -> u32 {
        let (part, j) = self.locate(i);
        self.parts[part].token(j)
    }

    /// Calls `each` with the stream's tokens in order, at most `SCAN_CHUNK_TOKENS` at a time,
    /// and drops each chunk's pages from this process once read, so a pass over a whole corpus
    /// keeps one chunk resident, not the corpus (the pages stay in the page cache; the map is
    /// read-only, so a later read faults them back in unchanged).
    pub(crate) fn scan(&self, mut each: impl FnMut(&[u32])) {
        let mut chunk = Vec::with_capacity(SCAN_CHUNK_TOKENS);
        for part in &self.parts {
            let Some(map) = &part.map else { continue };
            let width = part.token_bytes;
            for start in (0..part.len).step_by(SCAN_CHUNK_TOKENS) {
                let end = (start + SCAN_CHUNK_TOKENS).min(part.len);
                let bytes =
                    &map[SHARD_HEADER_BYTES + start * width..SHARD_HEADER_BYTES + end * width];
                chunk.clear();
                match width {
                    2 => chunk.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
                    ),
                    _ => chunk.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                }
                each(&chunk);
                // SAFETY: a read-only shared file map: dropped pages are read again from the
                // file on the next access, with the same bytes. Failing to drop them only
                // costs memory.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        UncheckedAdvice::DontNeed,
                        SHARD_HEADER_BYTES + start * width,
                        (end - start) * width,
                    )
                };
            }
        }
    }

    /// Appends tokens [start, start + len) to `out` as i32 (the dtype of token tensors).
    pub(crate) fn extend_window(&self, start: usize, len: usize, out: &mut Vec<i32>) {
        let (mut at, end) = (start, start + len);
        while at < end {
            let (part, j) = self.locate(at);
            let take = (end - at).min(self.parts[part].len - j);
            out.extend((j..j + take).map(|k| self.parts[part].token(k) as i32));
            at += take;
        }
    }
}

/// Writes `tokens` as a shard at `path` (atomically: a reader never sees half a shard).
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let mut writer = ShardWriter::create(path, vocab_size)?;
    writer.push(tokens)?;
    writer.finish().map(|_| ())
}

/// Writes a shard chunk by chunk into `PATH.partial`, then fills in the count and renames it:
/// memory stays at one chunk whatever the shard's size.
pub(crate) struct ShardWriter {
    out: BufWriter<File>,
    partial: PathBuf,
    path: PathBuf,
    token_bytes: u32,
    count: u64,
}

impl ShardWriter {
    pub(crate) fn create(path: &Path, vocab_size: usize) -> Result<ShardWriter> {
        let token_bytes: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
        let partial = path.with_extension("bin.partial");
        let file = File::create(&partial).at(&partial)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(SHARD_HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&token_bytes.to_le_bytes());
        header.extend_from_slice(&(vocab_size as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // the count, filled in by `finish`
        out.write_all(&header).at(&partial)?;
        Ok(ShardWriter {
            out,
            partial,
            path: path.to_path_buf(),
            token_bytes,
            count: 0,
        })
    }

    pub(crate) fn push(&mut self, tokens: &[u32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(tokens.len() * self.token_bytes as usize);
        for &t in tokens {
            if self.token_bytes == 2 {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.out.write_all(&bytes).at(&self.partial)?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Fills in the count, syncs and renames; returns the finished file's stamp.
    pub(crate) fn finish(self) -> Result<FileStamp> {
        let partial = self.partial;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&partial, e.into_error()))?;
        file.seek(SeekFrom::Start(24)).at(&partial)?;
        file.write_all(&self.count.to_le_bytes()).at(&partial)?;
        file.sync_all().at(&partial)?;
        drop(file);
        std::fs::rename(&partial, &self.path).at(&self.path)?;
        FileStamp::of(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        let tokens: Vec<u32> = (0..1000).map(|i| i % 257).collect();
        write_shard(&path, &tokens, 257).unwrap();
        let shard = Shard::open(&path, 257).unwrap();
        assert_eq!(shard.len(), 1000);
        let mut window = Vec::new();
        shard.extend_window(255, 4, &mut window);
        assert_eq!(window, vec![255, 256, 0, 1]);

        // Wrong vocabulary.
        assert!(Shard::open(&path, 300).is_err());
        // Truncated.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = Shard::open(&path, 257).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        // Token out of range.
        let mut bad = bytes.clone();
        bad[SHARD_HEADER_BYTES] = 0xff;
        bad[SHARD_HEADER_BYTES + 1] = 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = Shard::open(&path, 257).err().unwrap().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
        // Bad magic.
        std::fs::write(&path, vec![0u8; 64]).unwrap();
        assert!(Shard::open(&path, 257).is_err());
    }

    /// Shards read as one stream: positions and windows across the boundaries, empty parts
    /// skipped.
    #[test]
    fn concatenated_shards_read_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let pieces: [&[u32]; 4] = [&[0, 1, 2], &[], &[3], &[4, 5, 6, 7]];
        let shards = pieces.iter().enumerate().map(|(i, tokens)| {
            let path = dir.path().join(format!("{i}.bin"));
            write_shard(&path, tokens, 257).unwrap();
            Shard::open(&path, 257).unwrap()
        });
        let stream = Shard::concat(shards.collect());
        assert_eq!(stream.len(), 8);
        assert_eq!(
            (0..8).map(|i| stream.token(i)).collect::<Vec<_>>(),
            (0..8).collect::<Vec<u32>>()
        );
        let mut window = Vec::new();
        stream.extend_window(1, 6, &mut window);
        assert_eq!(window, vec![1, 2, 3, 4, 5, 6]);
    }
}
