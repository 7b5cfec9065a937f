//! A small, serialisable PRNG (xoshiro256**, seeded through SplitMix64). The sampler's whole
//! random state is these four words, so a checkpoint restores it exactly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rng {
    state: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed`, decorrelated from other streams by `stream`.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let state = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { state }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n). `n` must be > 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the tiny bias (< n / 2^64) does not matter here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Index drawn with probability proportional to `weights` (non-negative, positive sum).
    pub(crate) fn categorical(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut u = self.next_f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                return i;
            }
            u -= w;
        }
        // Rounding left u just above the last bucket: take the last source with weight.
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }

    /// Standard normal (Box-Muller; one of the pair is discarded to keep the state simple).
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 − u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.next_f64();
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) for shape > 0 (Marsaglia & Tsang; shape < 1 by the boost
    /// Gamma(shape + 1) · U^(1/shape)).
    pub(crate) fn gamma(&mut self, shape: f64) -> f64 {
        debug_assert!(shape > 0.0);
        if shape < 1.0 {
            let u = 1.0 - self.next_f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.next_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A draw from Dirichlet(alpha), every alpha_k > 0.
    pub(crate) fn dirichlet(&mut self, alpha: &[f64]) -> Vec<f64> {
        let mut draw: Vec<f64> = alpha.iter().map(|&a| self.gamma(a)).collect();
        let total: f64 = draw.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            // Every gamma underflowed (tiny alphas): fall back to the mean.
            let sum: f64 = alpha.iter().sum();
            return alpha.iter().map(|a| a / sum).collect();
        }
        draw.iter_mut().for_each(|d| *d /= total);
        draw
    }

    /// Fisher-Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(7, 1);
        let mut b = Rng::new(7, 1);
        let mut c = Rng::new(7, 2);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn categorical_follows_weights() {
        let mut rng = Rng::new(1, 0);
        let weights = [0.1, 0.0, 0.6, 0.3];
        let mut counts = [0usize; 4];
        for _ in 0..100_000 {
            counts[rng.categorical(&weights)] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, w) in counts.iter().zip(weights) {
            assert!((*c as f64 / 100_000.0 - w).abs() < 0.01, "{counts:?}");
        }
    }

    /// Dirichlet(α) has mean α/α₀ and variance α_k(α₀ − α_k)/(α₀²(α₀ + 1)).
    #[test]
    fn dirichlet_matches_its_first_two_moments() {
        let mut rng = Rng::new(5, 0);
        let alpha = [0.5, 2.0, 7.5];
        let a0: f64 = alpha.iter().sum();
        let n = 40_000;
        let mut sum = [0.0; 3];
        let mut sum_sq = [0.0; 3];
        for _ in 0..n {
            let w = rng.dirichlet(&alpha);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(w.iter().all(|&x| x >= 0.0));
            for k in 0..3 {
                sum[k] += w[k];
                sum_sq[k] += w[k] * w[k];
            }
        }
        for k in 0..3 {
            let mean = sum[k] / n as f64;
            let var = sum_sq[k] / n as f64 - mean * mean;
            let want_mean = alpha[k] / a0;
            let want_var = alpha[k] * (a0 - alpha[k]) / (a0 * a0 * (a0 + 1.0));
            assert!((mean - want_mean).abs() < 0.005, "mean {k}: {mean}");
            assert!((var / want_var - 1.0).abs() < 0.05, "var {k}: {var}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = Rng::new(3, 0);
        let mut v: Vec<usize> = (0..1000).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
