//! A mixture found on a short run, used for a longer one, repeats the small sources it favours
//! more: weight w on a source of n tokens is w·T/n epochs over T training tokens. This caps
//! each weight at the one that reaches `max_epochs` (OLMo-core's `max_repetition_ratio`) and
//! gives what it takes off to the other sources in proportion to their weights.

use std::path::Path;

use crate::error::{Error, Result};
use crate::rundir::read_metrics;

/// How many tokens the run the mixture is exported for trains on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlannedTokens {
    /// A number of tokens, counted as the exported run counts them (its tokenizer).
    Tokens(f64),
    /// A multiple of the tokens the exported run trained on (`2x`).
    TimesRun(f64),
}

impl std::str::FromStr for PlannedTokens {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (number, make): (&str, fn(f64) -> PlannedTokens) = match text.strip_suffix('x') {
            Some(times) => (times, PlannedTokens::TimesRun),
            None => (text, PlannedTokens::Tokens),
        };
        match number.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(make(v)),
            _ => Err(format!(
                "expected a positive number of tokens (1e9) or a multiple of the run's (2x), got {text:?}"
            )),
        }
    }
}

/// The limit on repetition an export applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepetitionCap {
    pub max_epochs: f64,
    pub tokens: PlannedTokens,
}

/// Each source's training size and the tokens of the run, as the run measured them.
pub(crate) struct RunSizes {
    /// Per source, tokens in one pass over its training windows; None if it was never drawn.
    pub(crate) source_tokens: Vec<Option<f64>>,
    /// Tokens the run trained on.
    pub(crate) run_tokens: f64,
}

/// Sizes from the last record of `run_dir`/metrics.jsonl that has `tokens_by_source` and
/// `epochs_by_source`: tokens drawn over passes made is one pass's tokens.
pub(crate) fn run_sizes(run_dir: &Path, names: &[String]) -> Result<RunSizes> {
    let path = run_dir.join(crate::rundir::METRICS_FILE);
    let records = read_metrics(&path)?;
    let last = records
        .iter()
        .rev()
        .find(|r| r.get("epochs_by_source").is_some() && r.get("tokens_by_source").is_some())
        .ok_or_else(|| {
            Error::data(
                &path,
                "no record with tokens_by_source and epochs_by_source",
            )
        })?;
    let field = |key: &str, name: &str| last[key][name].as_f64();
    let mut source_tokens = Vec::with_capacity(names.len());
    for name in names {
        let (Some(tokens), Some(epochs)) = (
            field("tokens_by_source", name),
            field("epochs_by_source", name),
        ) else {
            return Err(Error::data(
                &path,
                format!("its last record has no source {name}"),
            ));
        };
        source_tokens.push((epochs > 0.0).then(|| tokens / epochs));
    }
    let run_tokens = last["tokens"]
        .as_f64()
        .ok_or_else(|| Error::data(&path, "its last record has no tokens"))?;
    Ok(RunSizes {
        source_tokens,
        run_tokens,
    })
}

/// Caps `weights`, a mixture of the run at `run` (its directory or a file in it), in place;
/// returns what to add to the export's header line: the limit and what moved.
pub(crate) fn cap_run_mixture(
    run: &Path,
    names: &[String],
    weights: &mut Vec<f64>,
    cap: RepetitionCap,
) -> Result<String> {
    let run_dir = crate::trajectory::run_dir_of(run);
    let (capped, which) = cap_weights(weights, names, &run_sizes(&run_dir, names)?, cap)?;
    let moved: Vec<String> = which
        .iter()
        .map(|&k| format!("{} {:?} -> {:?}", names[k], weights[k], capped[k]))
        .collect();
    *weights = capped;
    let limit = format!("at most {} epochs per source", cap.max_epochs);
    Ok(match moved.is_empty() {
        true => format!("; {limit}: no weight moved"),
        false => format!("; {limit}, at that limit: {}", moved.join(", ")),
    })
}

/// A schedule is not capped: its repetition depends on every stage at once.
pub(crate) fn schedule_refused() -> Error {
    Error::value(
        "--max-epochs",
        "caps a static mixture only (--use final or average)",
    )
}

/// `weights` (on the simplex) capped so that no source goes past `cap.max_epochs` over the
/// planned tokens, and which sources were capped. Errors if the sources cannot hold the
/// planned tokens at that repetition, or a weighted source's size is unknown.
pub(crate) fn cap_weights(
    weights: &[f64],
    names: &[String],
    sizes: &RunSizes,
    cap: RepetitionCap,
) -> Result<(Vec<f64>, Vec<usize>)> {
    const KEY: &str = "--max-epochs";
    if !(cap.max_epochs.is_finite() && cap.max_epochs > 0.0) {
        return Err(Error::value(
            KEY,
            format!("must be positive (got {})", cap.max_epochs),
        ));
    }
    let planned = match cap.tokens {
        PlannedTokens::Tokens(t) => t,
        PlannedTokens::TimesRun(times) => times * sizes.run_tokens,
    };
    let mut limits = Vec::with_capacity(weights.len());
    for ((name, &w), size) in names.iter().zip(weights).zip(&sizes.source_tokens) {
        match size {
            Some(n) => limits.push(cap.max_epochs * n / planned),
            None if w > 0.0 => {
                let message = format!("source {name} was never drawn, so its size is unknown");
                return Err(Error::value(KEY, message));
            }
            None => limits.push(0.0),
        }
    }
    if limits.iter().sum::<f64>() < 1.0 - 1e-12 {
        let message = format!(
            "the sources hold {:.0} tokens at {} epochs each, fewer than the {planned:.0} planned",
            limits.iter().sum::<f64>() * planned,
            cap.max_epochs
        );
        return Err(Error::value(KEY, message));
    }
    Ok(water_fill(weights, &limits))
}

/// Clamps `weights` to `limits` (Σ limits ≥ 1), scaling the unclamped ones by one common
/// factor so the sum stays 1; if they all weigh 0, the rest goes by headroom instead.
fn water_fill(weights: &[f64], limits: &[f64]) -> (Vec<f64>, Vec<usize>) {
    if weights.iter().zip(limits).all(|(w, l)| w <= l) {
        return (weights.to_vec(), Vec::new());
    }
    let mut capped = vec![false; weights.len()];
    let mut out = weights.to_vec();
    loop {
        let fixed: f64 = (0..out.len())
            .filter(|&k| capped[k])
            .map(|k| limits[k])
            .sum();
        let free: f64 = (0..out.len())
            .filter(|&k| !capped[k])
            .map(|k| weights[k])
            .sum();
        for k in (0..out.len()).filter(|&k| !capped[k]) {
            out[k] = if free > 0.0 {
                weights[k] * (1.0 - fixed) / free
            } else {
                out[k]
            };
        }
        let over: Vec<usize> = (0..out.len())
            .filter(|&k| !capped[k] && out[k] > limits[k])
            .collect();
        if over.is_empty() {
            for k in (0..out.len()).filter(|&k| capped[k]) {
                out[k] = limits[k];
            }
            if free <= 0.0 {
                spread_by_headroom(&mut out, limits, &capped, 1.0 - fixed);
            }
            let which = (0..out.len()).filter(|&k| capped[k]).collect();
            return (out, which);
        }
        for k in over {
            capped[k] = true;
        }
    }
}

/// Gives `rest` to the uncapped sources in proportion to their room below their limits.
fn spread_by_headroom(out: &mut [f64], limits: &[f64], capped: &[bool], rest: f64) {
    let room: f64 = (0..out.len())
        .filter(|&k| !capped[k])
        .map(|k| limits[k])
        .sum();
    for k in (0..out.len()).filter(|&k| !capped[k]) {
        out[k] = rest * limits[k] / room;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn a_small_source_is_capped_and_the_rest_scaled_together() {
        // 1000 planned tokens, 2 epochs: limits 0.2, 2.0, 2.0.
        let sizes = RunSizes {
            source_tokens: vec![Some(100.0), Some(1000.0), Some(1000.0)],
            run_tokens: 500.0,
        };
        let cap = RepetitionCap {
            max_epochs: 2.0,
            tokens: PlannedTokens::TimesRun(2.0),
        };
        let (w, which) = cap_weights(&[0.5, 0.3, 0.2], &names(3), &sizes, cap).unwrap();
        assert_eq!(which, vec![0]);
        assert!((w[0] - 0.2).abs() < 1e-12);
        assert!((w[1] - 0.48).abs() < 1e-12 && (w[2] - 0.32).abs() < 1e-12);
    }

    #[test]
    fn too_little_data_and_unknown_sizes_are_refused() {
        let sizes = RunSizes {
            source_tokens: vec![Some(100.0), None],
            run_tokens: 100.0,
        };
        let cap = |epochs, tokens| RepetitionCap {
            max_epochs: epochs,
            tokens: PlannedTokens::Tokens(tokens),
        };
        let err = cap_weights(&[1.0, 0.0], &names(2), &sizes, cap(1.0, 1000.0)).unwrap_err();
        assert!(
            err.to_string().contains("fewer than the 1000 planned"),
            "{err}"
        );
        let err = cap_weights(&[0.5, 0.5], &names(2), &sizes, cap(20.0, 1000.0)).unwrap_err();
        assert!(err.to_string().contains("s1 was never drawn"), "{err}");
        let err = cap_weights(&[1.0, 0.0], &names(2), &sizes, cap(0.0, 10.0)).unwrap_err();
        assert!(err.to_string().contains("--max-epochs"), "{err}");
    }

    #[test]
    fn planned_tokens_parse() {
        assert_eq!("2x".parse(), Ok(PlannedTokens::TimesRun(2.0)));
        assert_eq!("1e9".parse(), Ok(PlannedTokens::Tokens(1e9)));
        assert!("0x".parse::<PlannedTokens>().is_err());
        assert!("lots".parse::<PlannedTokens>().is_err());
    }

    /// On the simplex, no source past its limit, capped ones exactly at it, the uncapped ones
    /// in their old proportions, and nothing moves when no limit binds: over 2000 random
    /// mixtures (Dirichlet, some weights 0) and limits (Σ ≥ 1).
    #[test]
    fn capped_weights_stay_on_the_simplex_below_their_limits() {
        let mut rng = crate::rng::Rng::new(7, 0);
        for case in 0..2000 {
            let k = 2 + (case % 7);
            let mut weights = rng.dirichlet(&vec![0.5; k]);
            if case % 5 == 0 {
                weights[0] = 0.0;
                let sum: f64 = weights.iter().sum();
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            let mut limits: Vec<f64> = (0..k).map(|_| 0.05 + rng.next_f64()).collect();
            let sum: f64 = limits.iter().sum();
            if sum < 1.0 {
                limits.iter_mut().for_each(|l| *l /= sum);
            }
            let (out, which) = water_fill(&weights, &limits);
            assert!(
                (out.iter().sum::<f64>() - 1.0).abs() < 1e-9,
                "case {case}: {out:?}"
            );
            for j in 0..k {
                assert!(out[j] >= 0.0 && out[j] <= limits[j] + 1e-9, "case {case}");
            }
            for &j in &which {
                assert!((out[j] - limits[j]).abs() < 1e-12, "case {case}");
            }
            let free: Vec<usize> = (0..k).filter(|j| !which.contains(j)).collect();
            if let Some(&first) = free.iter().find(|&&j| weights[j] > 0.0) {
                let scale = out[first] / weights[first];
                assert!(scale >= 1.0 - 1e-12, "case {case}: the free ones only gain");
                for &j in &free {
                    assert!((out[j] - scale * weights[j]).abs() < 1e-9, "case {case}");
                }
            }
            if weights.iter().zip(&limits).all(|(w, l)| w <= l) {
                assert!(which.is_empty() && out == weights, "case {case}");
            }
        }
    }
}
