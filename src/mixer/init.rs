//! Initial mixtures and the weight floor.

use std::path::Path;

use super::MixtureInit;
use crate::error::{Error, Result};
use crate::mixture_file::MixtureFile;

/// Weights for `init` over sources `names` with `train_tokens[k]` training tokens (and, for
/// `init = "entropy:..."`, `entropy[k]` nats); sums to 1.
pub fn resolve_init(
    init: &MixtureInit,
    names: &[String],
    train_tokens: &[usize],
    entropy: Option<&[f64]>,
) -> Result<Vec<f64>> {
    let k = names.len();
    let raw: Vec<f64> = match init {
        MixtureInit::Uniform => vec![1.0; k],
        MixtureInit::Proportional => train_tokens.iter().map(|&n| n as f64).collect(),
        MixtureInit::Temperature(tau) => train_tokens
            .iter()
            .map(|&n| (n as f64).powf(*tau))
            .collect(),
        MixtureInit::Explicit(weights) => names
            .iter()
            .map(|n| weights.get(n).copied().unwrap_or(0.0))
            .collect(),
        MixtureInit::File(path) => MixtureFile::read_final(path, names)?,
        MixtureInit::Demix(Some(path)) => {
            MixtureFile::read_final(&demix_mixture_file(path), names)?
        }
        MixtureInit::Demix(None) => {
            return Err(Error::value(
                "mixer.init",
                "\"demix\" resolves to the run's own out_dir/demix; call initial_mixture",
            ))
        }
        MixtureInit::Entropy(_) => entropy
            .expect("entropies are computed for an entropy init")
            .to_vec(),
    };
    let total: f64 = raw.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return Err(Error::value(
            "mixer.init",
            format!("every source has weight 0 under {init:?}: nothing to train on"),
        ));
    }
    Ok(normalise(&raw))
}

/// A demix seed given as its directory or as the mixture.json inside it.
pub fn demix_mixture_file(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.join(crate::mixture_file::MIXTURE_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Scales non-negative weights to sum to 1.
pub fn normalise(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// base ← (1 − β) base + β target; returns the floored weights (TiKMiX's blend).
pub(crate) fn blend_and_floor(base: &mut [f64], target: &[f64], beta: f64, floor: f64) -> Vec<f64> {
    for (b, t) in base.iter_mut().zip(target) {
        *b = (1.0 - beta) * *b + beta * t;
    }
    apply_floor(base, floor)
}

/// p ← (1 − Kε) p + ε: every source keeps at least ε.
pub fn apply_floor(weights: &[f64], eps: f64) -> Vec<f64> {
    let k = weights.len() as f64;
    weights.iter().map(|p| (1.0 - k * eps) * p + eps).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn temperature_interpolates_uniform_and_proportional() {
        let tokens = [100, 400];
        let p = resolve_init(&MixtureInit::Proportional, &names(), &tokens, None).unwrap();
        assert_eq!(p, vec![0.2, 0.8]);
        // τ = 0.5: √100 : √400 = 10 : 20.
        let t = resolve_init(&MixtureInit::Temperature(0.5), &names(), &tokens, None).unwrap();
        assert!((t[0] - 1.0 / 3.0).abs() < 1e-12);
        let u = resolve_init(&MixtureInit::Uniform, &names(), &tokens, None).unwrap();
        assert_eq!(u, vec![0.5, 0.5]);
    }

    #[test]
    fn floor_keeps_simplex() {
        let p = apply_floor(&[1.0, 0.0, 0.0, 0.0], 0.05);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.iter().all(|&x| x >= 0.05 - 1e-15));
        assert!((p[0] - 0.85).abs() < 1e-12);
    }
}
