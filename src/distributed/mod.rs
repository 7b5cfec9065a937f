//! Data-parallel training across processes: each rank trains on a disjoint share of every
//! micro-batch, the ranks sum their gradients and the step's statistics (`Collective`), and
//! every rank then takes the same optimizer step and the same mixer update, so the model and
//! the mixture stay identical everywhere without broadcasting them. Rank 0 alone writes the
//! run directory. `mixtrain launch` starts the ranks of one machine (`launch`).

mod collective;
mod config;
mod connect;
mod grads;
pub mod launch;
mod wire;

pub(crate) use collective::{Collective, Payload};
pub use config::DistributedConfig;
pub(crate) use grads::{flatten_grads, unflatten_grads};

use std::ops::Range;

/// The sequences of a micro-batch of `len` that `rank` of `world` trains on: contiguous,
/// sizes differing by at most one, covering `0..len` once over the ranks.
pub(crate) fn share(len: usize, rank: usize, world: usize) -> Range<usize> {
    (len * rank / world)..(len * (rank + 1) / world)
}

/// A hash of the step and the mixture in force, compared across ranks at every all-reduce.
pub(crate) fn mixture_check(weights: &[f64]) -> u64 {
    // FNV-1a over the weights' bits: exact equality is what is checked.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for w in weights {
        for byte in w.to_bits().to_le_bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_partition_the_micro_batch() {
        for len in 0..20 {
            for world in 1..6 {
                let mut covered = Vec::new();
                for rank in 0..world {
                    let r = share(len, rank, world);
                    assert!(r.len() <= len.div_ceil(world) && r.len() + 1 >= len / world);
                    covered.extend(r);
                }
                assert_eq!(covered, (0..len).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn mixture_check_sees_the_last_bit() {
        let a = [0.25, 0.75];
        let b = [0.25, f64::from_bits(0.75f64.to_bits() + 1)];
        assert_ne!(mixture_check(&a), mixture_check(&b));
        assert_eq!(mixture_check(&a), mixture_check(&[0.25, 0.75]));
    }
}
