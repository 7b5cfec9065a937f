//! Overlap between held-out text and training data, as GPT-3's decontamination measured it:
//! a held-out document is contaminated when it shares a span of n tokens with any training
//! stream (n = 13 for subword tokenizers, as GPT-3's 13-grams of words; 64 for bytes, about
//! 13 words of English). Spans never cross a document boundary. Held-out spans are kept as
//! 64-bit rolling hashes (16 bytes each in the table), then every training token is one
//! lookup. Above a budget of held-out spans only one span in `keep_one_in` is kept, chosen by
//! its hash, so the same spans are kept on both sides: the table stays bounded and most
//! training tokens skip the lookup. A document is then missed only when none of the spans it
//! shares is kept: a copied paragraph of s spans escapes with probability (1 − 1/k)^s.

use std::collections::HashMap;

use rayon::prelude::*;

use super::shard::Shard;

/// Span length in tokens for a tokenizer with `vocab_size` tokens.
pub(crate) fn span_tokens(vocab_size: usize) -> usize {
    if vocab_size <= 257 {
        64
    } else {
        13
    }
}

/// A held-out split and how much of it the training data contains.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Overlap {
    pub(crate) name: String,
    pub(crate) documents: usize,
    pub(crate) contaminated: usize,
}

const BASE: u64 = 0x100000001b3;

/// Calls `each(doc, hash)` for every span of `n` tokens inside a document of `stream`
/// (documents end with `eod`), reading the stream once in chunks (`Shard::scan`); returns the
/// number of documents.
fn for_each_span(stream: &Shard, eod: u32, n: usize, mut each: impl FnMut(usize, u64)) -> usize {
    let top = BASE.wrapping_pow(n as u32 - 1);
    // The document's last n tokens, oldest at `ring[at]` once full.
    let mut ring = vec![0u32; n];
    let (mut doc, mut len, mut hash, mut at) = (0usize, 0usize, 0u64, 0usize);
    stream.scan(|chunk| {
        for &token in chunk {
            if token == eod {
                (doc, len, hash) = (doc + 1, 0, 0);
                continue;
            }
            if len == n {
                hash = hash.wrapping_sub((ring[at] as u64 + 1).wrapping_mul(top));
            } else {
                len += 1;
            }
            ring[at] = token;
            at = (at + 1) % n;
            hash = hash.wrapping_mul(BASE).wrapping_add(token as u64 + 1);
            if len == n {
                each(doc, hash);
            }
        }
    });
    doc
}

/// Whether a span with this rolling hash is one of the kept 1 in `keep_one_in`. The rolling
/// hash's low bits depend only on the tokens' low bits: mix before taking the remainder.
fn kept(hash: u64, keep_one_in: u64) -> bool {
    keep_one_in <= 1 || (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).is_multiple_of(keep_one_in)
}

/// For each held-out `(name, stream)`, the documents sharing a kept span of `n` tokens with
/// any of `training` (every span when `keep_one_in` is 1).
pub(crate) fn overlaps(
    held_out: &[(String, &Shard)],
    training: &[&Shard],
    eod: u32,
    n: usize,
    keep_one_in: u64,
) -> Vec<Overlap> {
    // Span hash → (held-out split, document) of its first occurrence.
    let mut spans: HashMap<u64, (u32, u32)> = HashMap::new();
    let mut documents = vec![0usize; held_out.len()];
    for (split, (_, stream)) in held_out.iter().enumerate() {
        documents[split] = for_each_span(stream, eod, n, |doc, hash| {
            if kept(hash, keep_one_in) {
                spans.entry(hash).or_insert((split as u32, doc as u32));
            }
        });
    }
    // One training stream per thread; each returns the (split, document) pairs it hit.
    let hits: Vec<Vec<(u32, u32)>> = training
        .par_iter()
        .map(|stream| {
            let mut found = Vec::new();
            for_each_span(stream, eod, n, |_, hash| {
                if kept(hash, keep_one_in) {
                    found.extend(spans.get(&hash).copied());
                }
            });
            found
        })
        .collect();
    let mut hit: Vec<Vec<bool>> = documents.iter().map(|&d| vec![false; d + 1]).collect();
    for (split, doc) in hits.into_iter().flatten() {
        hit[split as usize][doc as usize] = true;
    }
    held_out
        .iter()
        .zip(hit)
        .zip(documents)
        .map(|(((name, _), hit), documents)| Overlap {
            name: name.clone(),
            documents,
            contaminated: hit.iter().take(documents).filter(|h| **h).count(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_shard;

    fn shard(dir: &std::path::Path, name: &str, tokens: &[u32]) -> Shard {
        let path = dir.join(name);
        write_shard(&path, tokens, 100).unwrap();
        Shard::open(&path, 100).unwrap()
    }

    /// Document 1 of the held-out split shares 4 tokens with training; a span across a
    /// document boundary does not count.
    #[test]
    fn shared_spans_mark_their_documents() {
        let dir = tempfile::tempdir().unwrap();
        let eod = 99;
        let held = shard(
            dir.path(),
            "val.bin",
            &[1, 2, 3, 4, 99, 5, 6, 7, 8, 9, 99, 10, 11, 99],
        );
        let train = shard(
            dir.path(),
            "train.bin",
            &[20, 6, 7, 8, 9, 21, 99, 3, 4, 99, 10, 11, 22, 99],
        );
        let found = overlaps(&[("val".into(), &held)], &[&train], eod, 4, 1);
        assert_eq!(
            found[0],
            Overlap {
                name: "val".into(),
                documents: 3,
                contaminated: 1
            }
        );
        // Two tokens of document 2 are in training, but fewer than the span.
        let found = overlaps(&[("val".into(), &held)], &[&train], eod, 2, 1);
        assert_eq!(found[0].contaminated, 3);
    }

    /// With one span in 8 kept, a document copied whole into training (hundreds of shared
    /// spans) is still found, a document sharing nothing is not, and the same spans are kept
    /// on both sides (a copy of every held-out document is found in all of them).
    #[test]
    fn kept_spans_still_find_copied_documents() {
        let dir = tempfile::tempdir().unwrap();
        let eod = 99;
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as u32 % 90
        };
        let docs: Vec<Vec<u32>> = (0..20)
            .map(|_| (0..300).map(|_| next()).collect())
            .collect();
        let mut held = Vec::new();
        for doc in &docs {
            held.extend(doc);
            held.push(eod);
        }
        // Training holds documents 0..10 verbatim, amid fresh random text.
        let mut train: Vec<u32> = (0..500).map(|_| next()).collect();
        for doc in &docs[..10] {
            train.extend(doc);
            train.extend((0..50).map(|_| next()));
        }
        train.push(eod);
        let held = shard(dir.path(), "val.bin", &held);
        let train = shard(dir.path(), "train.bin", &train);
        for keep_one_in in [1, 8] {
            let found = overlaps(&[("val".into(), &held)], &[&train], eod, 16, keep_one_in);
            assert_eq!(
                (found[0].documents, found[0].contaminated),
                (20, 10),
                "1 in {keep_one_in}"
            );
        }
        let all = overlaps(&[("val".into(), &held)], &[&held], eod, 16, 8);
        assert_eq!(all[0].contaminated, 20);
    }
}
