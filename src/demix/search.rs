//! The mixture search of DeMix: candidates sampled from Dirichlets around a prior, a
//! gradient-boosted-tree regressor from mixture to proxy loss, rank statistics.

use std::collections::HashSet;

use crate::gbt::{Gbt, GbtParams};
use crate::rng::Rng;

/// Draws candidate mixtures w ~ Dir(c · K · prior), c taken in turn from `concentrations`,
/// keeping only those with every w_k <= max_ratio · prior_k and not yet in `seen` (mixtures
/// compared at three decimals). Returns at most `n` (fewer when the constraints reject too
/// many draws).
pub(crate) struct CandidateSampler {
    pub(crate) prior: Vec<f64>,
    pub(crate) concentrations: Vec<f64>,
    pub(crate) max_ratio: f64,
    pub(crate) seen: HashSet<Vec<i64>>,
    draws: usize,
}

impl CandidateSampler {
    pub(crate) fn new(prior: Vec<f64>, concentrations: Vec<f64>, max_ratio: f64) -> Self {
        CandidateSampler {
            prior,
            concentrations,
            max_ratio,
            seen: HashSet::new(),
            draws: 0,
        }
    }

    fn key(w: &[f64]) -> Vec<i64> {
        w.iter().map(|x| (x * 1000.0).round() as i64).collect()
    }

    /// Marks `w` as taken (so later draws skip it).
    pub(crate) fn mark(&mut self, w: &[f64]) {
        self.seen.insert(Self::key(w));
    }

    pub(crate) fn draw(&mut self, rng: &mut Rng, n: usize) -> Vec<Vec<f64>> {
        let k = self.prior.len() as f64;
        let mut out = Vec::with_capacity(n);
        let mut local = HashSet::new();
        let mut attempts = 0;
        while out.len() < n && attempts < n * 50 {
            attempts += 1;
            let c = self.concentrations[self.draws % self.concentrations.len()];
            self.draws += 1;
            let alpha: Vec<f64> = self.prior.iter().map(|p| c * k * p.max(1e-9)).collect();
            let w = rng.dirichlet(&alpha);
            if w.iter()
                .zip(&self.prior)
                .any(|(x, p)| *x > self.max_ratio * p)
            {
                continue;
            }
            let key = Self::key(&w);
            if self.seen.contains(&key) || !local.insert(key) {
                continue;
            }
            out.push(w);
        }
        out
    }
}

/// The regressor of the search (the same trees as TiKMiX-M's).
pub(crate) fn fit(x: &[Vec<f64>], y: &[f64]) -> Gbt {
    Gbt::fit(x, y, GbtParams::default())
}

/// Indices of the `n` lowest `scores` (ties: the lower index).
pub(crate) fn lowest(scores: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

/// Out-of-fold predictions: row i is predicted by a regressor fitted without the rows j with
/// j % folds == i % folds.
pub(crate) fn cross_validated(x: &[Vec<f64>], y: &[f64], folds: usize) -> Vec<f64> {
    let folds = folds.min(x.len()).max(1);
    let mut out = vec![f64::NAN; x.len()];
    for fold in 0..folds {
        let (train_x, train_y): (Vec<Vec<f64>>, Vec<f64>) = x
            .iter()
            .zip(y)
            .enumerate()
            .filter(|(i, _)| folds == 1 || i % folds != fold)
            .map(|(_, (r, t))| (r.clone(), *t))
            .unzip();
        let model = fit(&train_x, &train_y);
        for i in (fold..x.len()).step_by(folds) {
            out[i] = model.predict(&x[i]);
        }
    }
    out
}

/// Ranks 1..n with ties given their average rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &at in &order[i..=j] {
            out[at] = average;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation (Pearson correlation of the average ranks); NaN when either
/// side is constant or there are fewer than 2 pairs.
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    if a.len() < 2 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
    /// (ties: ranks 1, 2, 3.5, 5, 3.5).
    #[test]
    fn spearman_matches_scipy_with_ties() {
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn candidates_respect_the_cap_and_are_distinct() {
        let prior = vec![0.5, 0.3, 0.2];
        let mut sampler = CandidateSampler::new(prior.clone(), vec![1.0, 10.0], 1.5);
        let mut rng = Rng::new(1, 0);
        let first = sampler.draw(&mut rng, 200);
        assert_eq!(first.len(), 200);
        let mut keys = HashSet::new();
        for w in &first {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(w.iter().zip(&prior).all(|(x, p)| *x <= 1.5 * p));
            assert!(keys.insert(CandidateSampler::key(w)));
            sampler.mark(w);
        }
        for w in sampler.draw(&mut rng, 200) {
            assert!(!keys.contains(&CandidateSampler::key(&w)), "drawn twice");
        }
    }

    #[test]
    fn cross_validation_predicts_held_out_rows_of_a_smooth_function() {
        let mut rng = Rng::new(2, 0);
        let x: Vec<Vec<f64>> = (0..120).map(|_| rng.dirichlet(&[2.0, 2.0, 2.0])).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|w| (w[0] - 0.5).powi(2) + 0.3 * w[1])
            .collect();
        let predicted = cross_validated(&x, &y, 5);
        assert!(spearman(&predicted, &y) > 0.8);
        assert_eq!(lowest(&[3.0, 1.0, 2.0, 1.0], 2), vec![1, 3]);
    }
}
