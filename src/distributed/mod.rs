//! Data-parallel training across processes: each rank trains on a disjoint share of every
//! micro-batch, the ranks sum their gradients and the step's statistics (`Collective`), and
//! every rank then takes the same optimizer step and the same mixer update, so the model and
//! the mixture stay identical everywhere without broadcasting them. Rank 0 alone writes the
//! run directory. `mixtrain launch` starts the ranks of one machine (`launch`); MPI launchers start
//! them anywhere (`job`, the `mpi` feature).

mod collective;
mod config;
mod connect;
mod grads;
mod job;
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
mod mpirun;
mod probe;
mod tcp;
mod wire;

pub(crate) use collective::{Collective, Payload};
pub use config::DistributedConfig;
pub(crate) use grads::{flatten_grads, unflatten_grads};
pub use job::{abort_job_after_error, finish_job, join_launcher, rank_from_environment};
#[doc(hidden)]
pub use probe::{tcp_ranks, time_all_reduce, AllReduceTiming};

use std::ops::Range;

/// The sequences of a micro-batch of `len` that `rank` of `world` trains on: contiguous,
/// sizes differing by at most one, covering `0..len` once over the ranks.
pub(crate) fn share(len: usize, rank: usize, world: usize) -> Range<usize> {
    (len * rank / world)..(len * (rank + 1) / world)
}

/// A hash of the step and the mixture in force, compared across ranks at every all-reduce.
pub(crate) fn mixture_check(weights: &[f64]) -> u64 {
    // Over the weights' bits: exact equality is what is checked.
    let bytes: Vec<u8> = weights
        .iter()
        .flat_map(|w| w.to_bits().to_le_bytes())
        .collect();
    fnv1a(&bytes)
}

/// FNV-1a: a hash to compare values across ranks, not a cryptographic one.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
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
