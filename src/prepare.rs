//! `mixtrain prepare`: tokenise and cache sources ahead of a run, or train a BPE tokenizer.

use std::path::Path;

use crate::config::Config;
use crate::data::{
    is_validation, load_sources_checked, load_target_sets, read_documents, resolve_files,
    train_bpe, Tokenizer,
};
use crate::error::Result;

/// Tokenises every source and target set into the cache; one line each saying where its
/// shards are. The printed directory can be used as a source `path` (prepared shards). With
/// `verify`, every input file is hashed again and every shard token checked.
pub fn prepare_sources(config: &Config, verify: bool) -> Result<Vec<String>> {
    let tokenizer = Tokenizer::from_spec(&config.data.tokenizer, config.data.eos_token.as_deref())?;
    let sources = load_sources_checked(&config.data, &tokenizer, verify)?;
    let sets = load_target_sets(&config.target, &config.data, &tokenizer, verify)?;
    let mut lines: Vec<String> = sources
        .iter()
        .map(|s| {
            format!(
                "{}: {} train tokens, {} validation tokens in {}",
                s.name,
                s.train.len(),
                s.val.len(),
                s.dir.display()
            )
        })
        .collect();
    lines.extend(sets.iter().map(|s| {
        format!(
            "{} (target set, validation only): {} tokens in {}",
            s.name,
            s.val.len(),
            s.dir.display()
        )
    }));
    Ok(lines)
}

/// Trains a byte-level BPE of `vocab` tokens on every source's training documents (validation
/// documents are left out, so validation loss stays honest) and writes it to `out`.
pub fn train_tokenizer(config: &Config, vocab: usize, out: &Path) -> Result<()> {
    let mut texts = Vec::new();
    for (i, source) in config.data.sources.iter().enumerate() {
        for file in resolve_files(&format!("data.sources[{i}]"), source)? {
            texts.extend(
                read_documents(&file, &source.text_field)?
                    .into_iter()
                    // With val_path, every document of `path` is training.
                    .filter(|doc| {
                        source.val_path.is_some() || !is_validation(doc, source.val_fraction)
                    }),
            );
        }
    }
    tracing::info!(documents = texts.len(), vocab, "training BPE");
    train_bpe(texts.iter().map(String::as_str), vocab, out)
}
