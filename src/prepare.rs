//! `mixtrain prepare`: tokenise and cache sources ahead of a run, or train a BPE tokenizer.

use std::path::Path;

use crate::config::Config;
use crate::data::{
    for_each_document, is_validation, load_sources_checked, load_target_sets, overlaps,
    resolve_files, span_tokens, train_bpe, Overlap, Source, Tokenizer,
};
use crate::error::Result;

/// Tokenises every source and target set into the cache; one line each saying where its
/// shards are. The printed directory can be used as a source `path` (prepared shards). With
/// `verify`, every input file is hashed again and every shard token checked.
pub fn prepare_sources(config: &Config, verify: bool) -> Result<Vec<String>> {
    crate::fault::init()?;
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
    lines.extend(contamination_report(&sources, &sets, &tokenizer));
    Ok(lines)
}

/// Held-out spans the overlap check keeps in its table (about 40 bytes each): above this, one
/// span in ⌈held-out tokens / this⌉ is kept. Checking every span of 20M held-out tokens took
/// 60 s and 861 MB (docs/results/data.md), every `prepare`.
const CONTAMINATION_SPAN_BUDGET: usize = 2_000_000;

/// Held-out documents that share a span with the training data: one line per validation
/// split and target set, a warning for any above 1%.
fn contamination_report(sources: &[Source], sets: &[Source], tokenizer: &Tokenizer) -> Vec<String> {
    let mut held_out: Vec<(String, &crate::data::Shard)> = sources
        .iter()
        .map(|s| (format!("{} validation", s.name), &s.val))
        .collect();
    held_out.extend(
        sets.iter()
            .map(|s| (format!("{} target set", s.name), &s.val)),
    );
    let held_tokens: usize = held_out.iter().map(|(_, s)| s.len()).sum();
    let n = span_tokens(tokenizer.vocab_size());
    let keep_one_in = held_tokens.div_ceil(CONTAMINATION_SPAN_BUDGET).max(1);
    let training: Vec<&crate::data::Shard> = sources.iter().map(|s| &s.train).collect();
    let found = overlaps(&held_out, &training, tokenizer.eod(), n, keep_one_in as u64);
    let sampled = if keep_one_in > 1 {
        format!(
            "; {held_tokens} held-out tokens: 1 in {keep_one_in} spans checked, a document \
             sharing few spans can be missed"
        )
    } else {
        String::new()
    };
    let mut lines = vec![format!(
        "contamination (documents sharing a span of {n} tokens with the training data{sampled}):"
    )];
    for Overlap {
        name,
        documents,
        contaminated,
    } in found
    {
        let share = contaminated as f64 / documents.max(1) as f64;
        lines.push(format!(
            "  {name}: {contaminated} of {documents} documents ({:.1}%)",
            100.0 * share
        ));
        // Validation splits of sources share boilerplate with their own training half (licence
        // headers, imports); a target set stands for text never trained on: warn for those.
        if share > 0.01 && name.ends_with("target set") {
            tracing::warn!(split = %name, contaminated, documents, "held-out documents overlap the training data");
        }
    }
    lines
}

/// Trains a byte-level BPE of `vocab` tokens on every source's training documents (validation
/// documents are left out, so validation loss stays honest) and writes it to `out`. The
/// documents stream from a reader thread through a bounded queue: memory holds the trainer's
/// word counts, not the corpus.
pub fn train_tokenizer(config: &Config, vocab: usize, out: &Path) -> Result<()> {
    let (send, receive) = std::sync::mpsc::sync_channel::<String>(1024);
    let sources = config.data.sources.clone();
    let reader = std::thread::spawn(move || -> Result<usize> {
        let mut documents = 0;
        for (i, source) in sources.iter().enumerate() {
            for file in resolve_files(&format!("data.sources[{i}]"), source)? {
                for_each_training_document(&file, source, |doc| {
                    documents += 1;
                    // A closed queue means the trainer failed: it reports why.
                    send.send(doc).is_ok()
                })?;
            }
        }
        Ok(documents)
    });
    tracing::info!(vocab, "training BPE (streaming the training documents)");
    let trained = train_bpe(receive.into_iter(), vocab, out);
    let documents = reader.join().expect("the document reader does not panic")?;
    trained?;
    tracing::info!(documents, vocab, "trained BPE");
    Ok(())
}

/// Calls `each` with every training document of `file` (of `source`) until it returns false;
/// with `val_path`, every document of `path` is training.
fn for_each_training_document(
    file: &Path,
    source: &crate::data::SourceConfig,
    mut each: impl FnMut(String) -> bool,
) -> Result<()> {
    let mut open = true;
    for_each_document(file, &source.text_field, |doc| {
        let training = source.val_path.is_some() || !is_validation(&doc, source.val_fraction);
        if open && training {
            open = each(doc);
        }
    })
}
