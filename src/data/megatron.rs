//! Megatron-LM's indexed dataset (`PREFIX.bin` + `PREFIX.idx`, read by
//! `megatron.core.datasets.indexed_dataset.IndexedDataset`), written from a prepared token
//! stream so that the data a mixture was found on can be trained on by Megatron with the same
//! tokens. One sequence per document, its end-of-document token included (as
//! `preprocess_data.py --append-eod` writes it); the document index is [0, 1, …, documents].
//!
//! `.idx` layout (little-endian): magic `MMIDIDX\0\0`, version u64 = 1, dtype code u8 (8:
//! uint16 below 65500 tokens, 4: int32, Megatron's `DType.optimal_dtype`), sequence count
//! u64, document count u64 (sequences + 1), sequence lengths i32[n], sequence byte offsets
//! into `.bin` i64[n], document indices i64[n + 1]. `.bin`: the tokens, nothing else.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::shard::Shard;
use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";

/// What one indexed dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedWritten {
    pub documents: usize,
    pub tokens: usize,
}

/// Writes `stream` (documents ending with `eod`) as `prefix.bin` and `prefix.idx`; a trailing
/// document without its `eod` is written as it is.
pub fn write_indexed(
    stream: &Shard,
    eod: u32,
    vocab_size: usize,
    prefix: &Path,
) -> Result<IndexedWritten> {
    let bin_path = with_suffix(prefix, "bin");
    let (width, code) = if vocab_size < 65500 {
        (2, 8u8)
    } else {
        (4, 4u8)
    };
    let mut bin = BufWriter::new(std::fs::File::create(&bin_path).at(&bin_path)?);
    let mut lengths: Vec<usize> = Vec::new();
    let mut current = 0usize;
    let mut failed = None;
    stream.scan(|chunk| {
        if failed.is_some() {
            return;
        }
        for &token in chunk {
            let bytes = token.to_le_bytes();
            if let Err(e) = bin.write_all(&bytes[..width]) {
                failed = Some(e);
                return;
            }
            current += 1;
            if token == eod {
                lengths.push(current);
                current = 0;
            }
        }
    });
    if let Some(e) = failed {
        return Err(e).at(&bin_path);
    }
    if current > 0 {
        lengths.push(current);
    }
    bin.flush().at(&bin_path)?;
    let lengths: Vec<i32> = lengths
        .into_iter()
        .map(i32::try_from)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::value(
                "--megatron",
                format!(
                    "a document for {} holds 2^31 tokens or more",
                    prefix.display()
                ),
            )
        })?;
    write_index(&with_suffix(prefix, "idx"), code, width, &lengths)?;
    Ok(IndexedWritten {
        documents: lengths.len(),
        tokens: stream.len(),
    })
}

fn write_index(path: &Path, code: u8, width: usize, lengths: &[i32]) -> Result<()> {
    let mut idx = BufWriter::new(std::fs::File::create(path).at(path)?);
    let n = lengths.len() as u64;
    let mut header = Vec::with_capacity(34);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&1u64.to_le_bytes());
    header.push(code);
    header.extend_from_slice(&n.to_le_bytes());
    header.extend_from_slice(&(n + 1).to_le_bytes());
    idx.write_all(&header).at(path)?;
    for l in lengths {
        idx.write_all(&l.to_le_bytes()).at(path)?;
    }
    let mut offset = 0i64;
    for l in lengths {
        idx.write_all(&offset.to_le_bytes()).at(path)?;
        offset += *l as i64 * width as i64;
    }
    for d in 0..=n as i64 {
        idx.write_all(&d.to_le_bytes()).at(path)?;
    }
    idx.flush().at(path)
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_shard;

    /// The bytes Megatron's reader expects, by hand: three documents (the last without its
    /// end-of-document token), uint16.
    #[test]
    fn index_and_data_bytes_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("s.bin"), &[5, 6, 99, 7, 99, 8], 100).unwrap();
        let shard = Shard::open(&dir.path().join("s.bin"), 100).unwrap();
        let prefix = dir.path().join("out");
        let written = write_indexed(&shard, 99, 100, &prefix).unwrap();
        assert_eq!(
            written,
            IndexedWritten {
                documents: 3,
                tokens: 6
            }
        );
        let bin = std::fs::read(dir.path().join("out.bin")).unwrap();
        assert_eq!(bin, [5, 0, 6, 0, 99, 0, 7, 0, 99, 0, 8, 0]);
        let idx = std::fs::read(dir.path().join("out.idx")).unwrap();
        let mut want = b"MMIDIDX\x00\x00".to_vec();
        want.extend(1u64.to_le_bytes());
        want.push(8);
        want.extend(3u64.to_le_bytes());
        want.extend(4u64.to_le_bytes());
        for l in [3i32, 2, 1] {
            want.extend(l.to_le_bytes());
        }
        for p in [0i64, 6, 10] {
            want.extend(p.to_le_bytes());
        }
        for d in [0i64, 1, 2, 3] {
            want.extend(d.to_le_bytes());
        }
        assert_eq!(idx, want);
    }
}
