//! Tokenizers: byte-level (vocab 256 + end-of-document), any `tokenizer.json`, or OpenAI's
//! tiktoken encodings by name (bundled in the `tiktoken-rs` crate: nothing is downloaded).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::hex;

pub enum Tokenizer {
    /// Bytes 0..=255 are tokens; 256 ends a document.
    Bytes,
    /// A Hugging Face `tokenizer.json` (BPE, WordPiece, ...). `eod` is its end-of-text
    /// special token if it has one, else a new id one past the vocabulary.
    File {
        inner: Box<tokenizers::Tokenizer>,
        eod: u32,
        vocab_size: usize,
        /// "bpe:" + hash of the file's bytes: what the shard cache is keyed by.
        id: String,
    },
    /// A tiktoken encoding; special tokens in the text are encoded as ordinary text.
    Tiktoken {
        inner: Box<tiktoken_rs::CoreBPE>,
        eod: u32,
        vocab_size: usize,
        /// "tiktoken:NAME".
        id: String,
    },
}

/// The tiktoken encodings: name, constructor, `<|endoftext|>`, vocabulary size (one past the
/// largest id, special tokens included).
type TiktokenEncoding = (
    &'static str,
    fn() -> anyhow::Result<tiktoken_rs::CoreBPE>,
    u32,
    usize,
);
const TIKTOKEN_ENCODINGS: [TiktokenEncoding; 4] = [
    ("r50k_base", tiktoken_rs::r50k_base, 50256, 50257),
    ("p50k_base", tiktoken_rs::p50k_base, 50256, 50281),
    ("cl100k_base", tiktoken_rs::cl100k_base, 100257, 100277),
    ("o200k_base", tiktoken_rs::o200k_base, 199999, 200019),
];

fn tiktoken(spec: &str, name: &str, eos_token: Option<&str>) -> Result<Tokenizer> {
    let names: Vec<&str> = TIKTOKEN_ENCODINGS.iter().map(|e| e.0).collect();
    let Some(&(_, build, endoftext, vocab_size)) = TIKTOKEN_ENCODINGS.iter().find(|e| e.0 == name)
    else {
        let message = format!(
            "unknown tiktoken encoding {name:?}; expected one of {}",
            names.join(", ")
        );
        return Err(Error::value("data.tokenizer", message));
    };
    let fail = |message: String| Error::Tokenizer {
        spec: spec.to_string(),
        message,
    };
    let inner = build().map_err(|e| fail(e.to_string()))?;
    let eod = match eos_token {
        None => endoftext,
        Some(token) => match inner.encode_with_special_tokens(token).as_slice() {
            [id] if inner.special_tokens().contains(token) => *id,
            _ => {
                let message = format!("{token:?} is not a special token of {name}");
                return Err(Error::value("data.eos_token", message));
            }
        },
    };
    let mut id = format!("tiktoken:{name}");
    if eod != endoftext {
        id.push_str(&format!(":eod{eod}"));
    }
    Ok(Tokenizer::Tiktoken {
        inner: Box::new(inner),
        eod,
        vocab_size,
        id,
    })
}

/// End-of-document tokens looked for, in order, when `data.eos_token` is unset: GPT-2/NeoX,
/// Llama-3, Llama-2/Mistral, Gemma.
const EOD_NAMES: [&str; 4] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];

impl Tokenizer {
    /// Builds the tokenizer named by `data.tokenizer`, its end-of-document token
    /// `data.eos_token` when given.
    pub(crate) fn from_spec(spec: &str, eos_token: Option<&str>) -> Result<Tokenizer> {
        if spec == "bytes" {
            if let Some(name) = eos_token {
                return Err(Error::value(
                    "data.eos_token",
                    format!(
                        "{name:?}: the bytes tokenizer has its own end-of-document token (256)"
                    ),
                ));
            }
            return Ok(Tokenizer::Bytes);
        }
        if let Some(name) = spec.strip_prefix("tiktoken:") {
            return tiktoken(spec, name, eos_token);
        }
        let Some(path) = spec.strip_prefix("bpe:") else {
            return Err(Error::value(
                "data.tokenizer",
                format!(
                    "unknown tokenizer {spec:?}; expected \"bytes\", \"bpe:PATH/tokenizer.json\" \
                     or \"tiktoken:NAME\" (cl100k_base, o200k_base, p50k_base, r50k_base)"
                ),
            ));
        };
        let path = PathBuf::from(path);
        let bytes = std::fs::read(&path).at(&path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            spec: spec.to_string(),
            message: format!("not a valid tokenizer.json: {e}"),
        })?;
        let base_vocab = inner.get_vocab_size(true);
        let eod = match eos_token {
            Some(name) => inner.token_to_id(name).ok_or_else(|| {
                Error::value(
                    "data.eos_token",
                    format!("{name:?} is not a token of {}", path.display()),
                )
            })?,
            None => EOD_NAMES
                .iter()
                .find_map(|name| inner.token_to_id(name))
                .unwrap_or(base_vocab as u32),
        };
        let vocab_size = base_vocab.max(eod as usize + 1);
        let mut id = format!("bpe:{}", hex(&Sha256::digest(&bytes)[..8]));
        if Some(eod) != inner.token_to_id(EOD_NAMES[0]) && eod != base_vocab as u32 {
            // Another end-of-document token tokenises differently: cached shards must differ.
            // (Ids made before this existed stay as they were.)
            id.push_str(&format!(":eod{eod}"));
        }
        Ok(Tokenizer::File {
            inner: Box::new(inner),
            eod,
            vocab_size,
            id,
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 257,
            Tokenizer::File { vocab_size, .. } | Tokenizer::Tiktoken { vocab_size, .. } => {
                *vocab_size
            }
        }
    }

    pub(crate) fn eod(&self) -> u32 {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::File { eod, .. } | Tokenizer::Tiktoken { eod, .. } => *eod,
        }
    }

    /// Identifies the tokenizer in cache keys and shard metadata.
    pub(crate) fn id(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".into(),
            Tokenizer::File { id, .. } | Tokenizer::Tiktoken { id, .. } => id.clone(),
        }
    }

    /// Token ids of `text`, without the end-of-document token.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::File { inner, id, .. } => inner
                .encode(text, false)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer {
                    spec: id.clone(),
                    message: e.to_string(),
                }),
            Tokenizer::Tiktoken { inner, .. } => Ok(inner.encode_ordinary(text)),
        }
    }
}

/// Trains a byte-level BPE with `vocab_size` tokens (including `<|endoftext|>`) on `texts` and
/// writes it as a tokenizer.json to `out`.
pub(crate) fn train_bpe<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
    out: &Path,
) -> Result<()> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{
        AddedToken, NormalizerWrapper, PostProcessorWrapper, TokenizerBuilder, TokenizerImpl,
    };

    let spec = format!("bpe:{}", out.display());
    let fail = |message: String| Error::Tokenizer {
        spec: spec.clone(),
        message,
    };
    if vocab_size < 257 + 1 {
        return Err(Error::value(
            "--train-bpe",
            format!("vocabulary must exceed 257 (256 bytes + end-of-text) (got {vocab_size})"),
        ));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build();
    let mut tokenizer: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        ByteLevel,
        PostProcessorWrapper,
        ByteLevel,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::default()))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(parent) = out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
    }
    tokenizer
        .save(out, false)
        .map_err(|e| fail(format!("could not write: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cl100k_base as OpenAI's tiktoken encodes it; `<|endoftext|>` in text is ordinary text.
    #[test]
    fn tiktoken_encodings_by_name() {
        let t = Tokenizer::from_spec("tiktoken:cl100k_base", None).unwrap();
        assert_eq!(t.encode("hello world").unwrap(), vec![15339, 1917]);
        assert_eq!(
            (t.eod(), t.vocab_size(), t.id()),
            (100257, 100277, "tiktoken:cl100k_base".into())
        );
        assert!(!t.encode("<|endoftext|>").unwrap().contains(&100257));
        let o = Tokenizer::from_spec("tiktoken:o200k_base", Some("<|endofprompt|>")).unwrap();
        assert_eq!(o.eod(), 200018);
        assert_eq!(o.id(), "tiktoken:o200k_base:eod200018");
        let error = Tokenizer::from_spec("tiktoken:gpt5", None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("data.tokenizer") && error.contains("cl100k_base"),
            "{error}"
        );
        let error = Tokenizer::from_spec("tiktoken:r50k_base", Some("</s>"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("data.eos_token"), "{error}");
    }

    #[test]
    fn bytes_round_numbers() {
        let t = Tokenizer::Bytes;
        assert_eq!(t.encode("hé").unwrap(), vec![104, 195, 169]);
        assert_eq!(t.vocab_size(), 257);
        assert_eq!(t.eod(), 256);
    }

    #[test]
    fn trained_bpe_loads_and_compresses() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tok.json");
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(200);
        let texts = vec![text.as_str(); 4];
        train_bpe(texts.into_iter(), 300, &out).unwrap();
        let tok = Tokenizer::from_spec(&format!("bpe:{}", out.display()), None).unwrap();
        let ids = tok.encode("the quick brown fox").unwrap();
        assert!(ids.len() < "the quick brown fox".len(), "{ids:?}");
        assert!(tok.vocab_size() <= 300);
        assert!((tok.eod() as usize) < tok.vocab_size());
    }

    /// A Llama-3-style vocabulary: `<|end_of_text|>` ends documents unless `data.eos_token`
    /// names another token; a name it lacks is an error naming the key.
    #[test]
    fn llama3_end_of_text_is_found_and_eos_token_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(4, "<|end_of_text|>"), special(5, "<|eot_id|>")],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": {
                "[UNK]": 0, "the": 1, "quick": 2, "fox": 3, "<|end_of_text|>": 4, "<|eot_id|>": 5}}
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let spec = format!("bpe:{}", path.display());
        let found = Tokenizer::from_spec(&spec, None).unwrap();
        assert_eq!(found.eod(), 4);
        assert_eq!(found.encode("the quick fox").unwrap(), vec![1, 2, 3]);
        let chosen = Tokenizer::from_spec(&spec, Some("<|eot_id|>")).unwrap();
        assert_eq!(chosen.eod(), 5);
        assert_ne!(found.id(), chosen.id(), "shards of either are cached apart");
        let err = Tokenizer::from_spec(&spec, Some("<eos>"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("data.eos_token") && err.contains("<eos>"),
            "{err}"
        );
        let err = Tokenizer::from_spec("bytes", Some("<eos>"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("data.eos_token"), "{err}");
    }
}
