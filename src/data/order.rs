//! The order a source's training windows are visited in one epoch: a shuffled table of window
//! indices (4 bytes per window) for sources up to `TABLE_MAX_WINDOWS`, and above that a keyed
//! bijection over [0, n) that costs no memory: a 4-round Feistel network on the smallest
//! even-bit domain ≥ n, walking cycles until the image falls inside [0, n).

use crate::rng::Rng;

/// Windows up to which an epoch's order is a shuffled table (16 MB at this size); every
/// source of the bundled corpora is far below it, so their orders are the Fisher–Yates ones.
pub(crate) const TABLE_MAX_WINDOWS: u64 = 1 << 22;

pub(crate) enum Order {
    Table(Vec<u32>),
    Keyed(KeyedPermutation),
}

impl Order {
    /// The order of `n` windows for `rng`'s stream (one per source and epoch).
    pub(crate) fn new(n: u64, mut rng: Rng, table_max: u64) -> Order {
        if n <= table_max {
            let mut order: Vec<u32> = (0..n as u32).collect();
            rng.shuffle(&mut order);
            Order::Table(order)
        } else {
            Order::Keyed(KeyedPermutation::new(n, &mut rng))
        }
    }

    /// The window visited at `position` of the epoch.
    pub(crate) fn at(&self, position: u64) -> u32 {
        match self {
            Order::Table(order) => order[position as usize],
            Order::Keyed(permutation) => permutation.apply(position) as u32,
        }
    }
}

/// A bijection of [0, n) from four random round keys.
pub(crate) struct KeyedPermutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl KeyedPermutation {
    pub(crate) fn new(n: u64, rng: &mut Rng) -> KeyedPermutation {
        assert!(n > 0, "a permutation of at least one element");
        let bits = 64 - (n - 1).leading_zeros();
        KeyedPermutation {
            n,
            half_bits: bits.div_ceil(2).max(1),
            keys: [
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
            ],
        }
    }

    pub(crate) fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.n);
        // The Feistel network permutes [0, 4^half_bits) ⊇ [0, n); repeating it from an image
        // outside [0, n) ends inside (cycle walking), at most a few times on average.
        let mut y = self.feistel(x);
        while y >= self.n {
            y = self.feistel(y);
        }
        y
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            let mixed = splitmix(right ^ key) & mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed round function.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size, powers of two and odd ones: each window exactly once.
    #[test]
    fn keyed_permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 64, 100, 1000, 4097, 65_537] {
            let p = KeyedPermutation::new(n, &mut Rng::new(9, n));
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = p.apply(x);
                assert!(y < n && !seen[y as usize], "n = {n}: {x} → {y}");
                seen[y as usize] = true;
            }
        }
    }

    /// Other keys, another order; and it is not close to the identity.
    #[test]
    fn keyed_orders_differ_by_stream_and_are_shuffled() {
        let n = 10_000;
        let a = Order::new(n, Rng::new(1, 1), 0);
        let b = Order::new(n, Rng::new(1, 2), 0);
        let same = (0..n).filter(|&i| a.at(i) == b.at(i)).count();
        let fixed = (0..n).filter(|&i| a.at(i) as u64 == i).count();
        assert!(same < 20 && fixed < 20, "same {same}, fixed points {fixed}");
        assert!(matches!(Order::new(n, Rng::new(1, 1), n), Order::Table(_)));
    }
}
