//! `mixtrain prepare`: tokenise and cache sources ahead of a run, or train a BPE tokenizer.

use std::path::Path;

use crate::config::Config;
use crate::data::{
    for_each_document, is_validation, load_sources_checked, load_target_sets, overlaps,
    resolve_files, span_tokens, train_bpe, write_indexed, Overlap, Source, Tokenizer,
};
use crate::error::{IoContext, Result};

/// Tokenises every source and target set into the cache; one line each saying where its
/// shards are. The printed directory can be used as a source `path` (prepared shards). With
/// `verify`, every input file is hashed again and every shard token checked. With `megatron`,
/// every source's splits are also written there as Megatron-LM indexed datasets.
pub fn prepare_sources(
    config: &Config,
    verify: bool,
    megatron: Option<&Path>,
) -> Result<Vec<String>> {
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
    lines.extend(contamination_report(
        &sources,
        &sets,
        &tokenizer,
        &config.data.cache_dir,
    )?);
    if let Some(dir) = megatron {
        lines.extend(export_megatron(&sources, &tokenizer, dir)?);
    }
    Ok(lines)
}

/// Writes every source's training and validation split as Megatron-LM indexed datasets,
/// `DIR/NAME/train.{bin,idx}` and `DIR/NAME/val.{bin,idx}` (one sequence per document, its
/// end-of-document token included); one line each.
fn export_megatron(sources: &[Source], tokenizer: &Tokenizer, dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for source in sources {
        let out = dir.join(&source.name);
        std::fs::create_dir_all(&out).at(&out)?;
        for (split, stream) in [("train", &source.train), ("val", &source.val)] {
            let prefix = out.join(split);
            let written = write_indexed(stream, tokenizer.eod(), tokenizer.vocab_size(), &prefix)?;
            lines.push(format!(
                "{} {split}: {} documents, {} tokens in {}.bin/.idx (Megatron-LM indexed dataset)",
                source.name,
                written.documents,
                written.tokens,
                prefix.display()
            ));
        }
    }
    lines.push(format!(
        "train on them in Megatron-LM with --tokenizer-type NullTokenizer --vocab-size {} (the \
         end-of-document token is {}); `mixtrain mixture RUN --format megatron --data-prefix {}` \
         prints the blend over these prefixes",
        tokenizer.vocab_size(),
        tokenizer.eod(),
        dir.display()
    ));
    Ok(lines)
}

/// Held-out spans the overlap check keeps in its table (about 40 bytes each): above this, one
/// span in ⌈held-out tokens / this⌉ is kept. Checking every span of 20M held-out tokens took
/// 60 s and 861 MB (docs/results/data.md), every `prepare`.
const CONTAMINATION_SPAN_BUDGET: usize = 2_000_000;

/// Held-out documents that share a span with the training data: one line per validation
/// split and target set, a warning for any above 1%.
fn contamination_report(
    sources: &[Source],
    sets: &[Source],
    tokenizer: &Tokenizer,
    cache_dir: &Path,
) -> Result<Vec<String>> {
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
    let key = report_key(sources, sets, n, keep_one_in);
    let cached = cache_dir.join("contamination").join(format!("{key}.json"));
    let found = match read_report(&cached) {
        Some(found) => found,
        None => {
            let training: Vec<&crate::data::Shard> = sources.iter().map(|s| &s.train).collect();
            let found = overlaps(&held_out, &training, tokenizer.eod(), n, keep_one_in as u64);
            write_report(&cached, &found)?;
            found
        }
    };
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
    Ok(lines)
}

/// The overlap report is a property of the shards: it is cached under a key made of every
/// split's content-keyed cache directory, so a warm `prepare` does not scan the corpus again.
fn report_key(sources: &[Source], sets: &[Source], n: usize, keep_one_in: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(format!("v1 span {n} keep 1 in {keep_one_in}\n"));
    // The token counts too: a source given as prepared shards keeps its directory when the
    // shards in it are replaced.
    for (role, list) in [("source", sources), ("set", sets)] {
        for s in list {
            let (dir, train, val) = (s.dir.display(), s.train.len(), s.val.len());
            hasher.update(format!("{role} {dir} {train} {val}\n"));
        }
    }
    crate::fsutil::hex(&hasher.finalize()[..8])
}

fn read_report(path: &Path) -> Option<Vec<Overlap>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_report(path: &Path, found: &[Overlap]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let json = serde_json::to_vec_pretty(found).expect("overlaps serialise");
    crate::fsutil::write_atomic(path, &json)
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
