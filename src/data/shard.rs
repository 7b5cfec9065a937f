//! Token shards: a 32-byte header (magic, version, token width, vocab size, count), then the
//! tokens little-endian. Read with mmap; every open checks the header, the file size, and that
//! every token is inside the vocabulary, so a truncated or corrupt shard is an error, not a panic.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"MIXTSHRD";
const VERSION: u32 = 1;
pub const SHARD_HEADER_BYTES: usize = 32;

/// A read-only, memory-mapped token shard.
pub struct Shard {
    map: Option<Mmap>,
    token_bytes: usize,
    len: usize,
}

impl Shard {
    pub fn open(path: &Path, vocab_size: usize) -> Result<Shard> {
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
        let shard = Shard {
            map: (len > 0).then_some(map),
            token_bytes,
            len,
        };
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

    pub(crate) fn token(&self, i: usize) -> u32 {
        let map = self
            .map
            .as_ref()
            .expect("token() is only called on a non-empty shard");
        let at = SHARD_HEADER_BYTES + i * self.token_bytes;
        match self.token_bytes {
            2 => u16::from_le_bytes([map[at], map[at + 1]]) as u32,
            _ => u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes")),
        }
    }

    /// Appends tokens [start, start + len) to `out` as i32 (the dtype of token tensors).
    pub(crate) fn extend_window(&self, start: usize, len: usize, out: &mut Vec<i32>) {
        out.extend((start..start + len).map(|i| self.token(i) as i32));
    }
}

/// Writes `tokens` as a shard at `path` (atomically: a reader never sees half a shard).
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let token_bytes: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let mut bytes = Vec::with_capacity(SHARD_HEADER_BYTES + tokens.len() * token_bytes as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&token_bytes.to_le_bytes());
    bytes.extend_from_slice(&(vocab_size as u32).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for &t in tokens {
        if token_bytes == 2 {
            bytes.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
    }
    crate::fsutil::write_atomic(path, &bytes)
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
}
