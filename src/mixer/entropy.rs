//! BiMix's training-free mixture seeds: weights proportional to an entropy of each source's
//! token stream (arXiv 2405.14908; the conditional entropy of a token given the previous one
//! is the paper's best proxy). One pass over the cached training shard, in nats.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Which entropy of the token stream x_1 .. x_n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntropyKind {
    /// H(X): the unigram distribution of all n tokens.
    Shannon,
    /// H(X_{t−1}, X_t): the distribution of the n − 1 adjacent pairs.
    Joint,
    /// H(X_t | X_{t−1}) = H(X_{t−1}, X_t) − H(X_{t−1}), X_{t−1} over the pairs' first tokens.
    Conditional,
}

impl EntropyKind {
    pub(crate) fn parse(name: &str) -> Option<EntropyKind> {
        match name {
            "shannon" => Some(EntropyKind::Shannon),
            "joint" => Some(EntropyKind::Joint),
            "conditional" => Some(EntropyKind::Conditional),
            _ => None,
        }
    }
}

/// −Σ (c/n) ln(c/n) over counts c with n = Σ c.
fn entropy_of_counts(counts: impl Iterator<Item = u64>) -> f64 {
    let counts: Vec<u64> = counts.filter(|&c| c > 0).collect();
    let n = counts.iter().sum::<u64>() as f64;
    if n == 0.0 {
        return 0.0;
    }
    -counts
        .iter()
        .map(|&c| {
            let p = c as f64 / n;
            p * p.ln()
        })
        .sum::<f64>()
}

/// The `kind` entropy of `tokens` (each < `vocab_size`), in nats. Streams too short for a
/// pair have joint and conditional entropy 0.
pub(crate) fn token_entropy(
    tokens: impl Iterator<Item = u32>,
    vocab_size: usize,
    kind: EntropyKind,
) -> f64 {
    let mut unigram = vec![0u64; vocab_size];
    // Counts of the pairs' first tokens (every token but the last).
    let mut first = vec![0u64; vocab_size];
    // Pairs keyed by prev · V + next: dense for small vocabularies, sparse otherwise.
    let dense_pairs = vocab_size <= 4096;
    let mut pairs_dense = vec![
        0u64;
        if dense_pairs {
            vocab_size * vocab_size
        } else {
            0
        }
    ];
    let mut pairs_sparse: HashMap<u64, u64> = HashMap::new();
    let mut previous: Option<u32> = None;
    for token in tokens {
        unigram[token as usize] += 1;
        if let Some(prev) = previous {
            first[prev as usize] += 1;
            let key = prev as u64 * vocab_size as u64 + token as u64;
            if dense_pairs {
                pairs_dense[key as usize] += 1;
            } else {
                *pairs_sparse.entry(key).or_default() += 1;
            }
        }
        previous = Some(token);
    }
    let joint = || {
        if dense_pairs {
            entropy_of_counts(pairs_dense.iter().copied())
        } else {
            entropy_of_counts(pairs_sparse.values().copied())
        }
    };
    match kind {
        EntropyKind::Shannon => entropy_of_counts(unigram.into_iter()),
        EntropyKind::Joint => joint(),
        EntropyKind::Conditional => (joint() - entropy_of_counts(first.into_iter())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(tokens: &[u32], kind: EntropyKind) -> f64 {
        token_entropy(tokens.iter().copied(), 8, kind)
    }

    /// Hand computation for x = 0 0 1 1: unigrams {0: 2, 1: 2} → ln 2; pairs (0,0), (0,1),
    /// (1,1) → ln 3; first tokens {0: 2, 1: 1} → −(2/3) ln(2/3) − (1/3) ln(1/3)
    /// = 0.6365141682948128; conditional = ln 3 − that = 0.462098120373297 (Python's math).
    #[test]
    fn entropies_of_a_tiny_stream_match_hand_computation() {
        let x = [0, 0, 1, 1];
        assert!((of(&x, EntropyKind::Shannon) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((of(&x, EntropyKind::Joint) - 3f64.ln()).abs() < 1e-12);
        assert!((of(&x, EntropyKind::Conditional) - 0.462098120373297).abs() < 1e-12);
    }

    #[test]
    fn a_deterministic_successor_has_zero_conditional_entropy() {
        // 0 1 2 0 1 2 ...: every token fixes the next.
        let x: Vec<u32> = (0..300).map(|i| i % 3).collect();
        assert!((of(&x, EntropyKind::Shannon) - 3f64.ln()).abs() < 1e-12);
        assert!(of(&x, EntropyKind::Conditional).abs() < 1e-12);
        assert_eq!(of(&[], EntropyKind::Joint), 0.0);
        assert_eq!(of(&[5], EntropyKind::Conditional), 0.0);
        // The sparse pair table (large vocabularies) gives the same numbers.
        let big = |kind| token_entropy(x.iter().map(|t| t * 1000), 5000, kind);
        assert!((big(EntropyKind::Joint) - of(&x, EntropyKind::Joint)).abs() < 1e-12);
    }
}
