//! What the training loop calls to sum over ranks (`all_reduce`, `barrier`, `finish`), on one
//! of two transports: MPI (the `mpi` feature; `mpirun`, `srun`, or `mixtrain launch` in such a
//! build) or the TCP star (`tcp.rs`; builds without MPI). Both sum in rank order, so a run's
//! numbers do not depend on the transport or on arrival order: the same ranks give the same bits.

use std::time::Duration;

use super::tcp::TcpCollective;
use super::DistributedConfig;
use crate::error::{Error, Result};

/// Time and bytes spent in collective calls, for benches and the closing log line.
#[derive(Debug, Clone, Default)]
pub(crate) struct CollectiveStats {
    pub(crate) calls: u64,
    pub(crate) seconds: f64,
    /// Payload bytes this rank handed to the transport for other ranks.
    pub(crate) bytes_sent: u64,
}

/// What a rank contributes to an all-reduce, and what it gets back (element-wise sums over
/// ranks): `f32s` for gradients, `f64s` for statistics that need the precision.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Payload {
    pub(crate) f32s: Vec<f32>,
    pub(crate) f64s: Vec<f64>,
}

pub(crate) fn distributed(message: impl Into<String>) -> Error {
    Error::Distributed(message.into())
}

pub(crate) enum Collective {
    Tcp(TcpCollective),
    #[cfg(feature = "mpi")]
    Mpi(super::mpi::MpiCollective),
}

impl Collective {
    /// Joins the other ranks: over MPI when this process was started by an MPI launcher (and
    /// MPI is built in), else over TCP at `distributed.address`. `config_hash` must match rank
    /// 0's.
    pub(crate) fn join(config: &DistributedConfig, config_hash: &str) -> Result<Collective> {
        #[cfg(feature = "mpi")]
        if super::mpi::is_running() {
            return super::mpi::MpiCollective::join(config, config_hash).map(Collective::Mpi);
        }
        TcpCollective::join(config, config_hash).map(Collective::Tcp)
    }

    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Collective::Tcp(_) => "tcp",
            #[cfg(feature = "mpi")]
            Collective::Mpi(_) => "mpi",
        }
    }

    pub(crate) fn rank(&self) -> usize {
        match self {
            Collective::Tcp(c) => c.rank(),
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => c.rank(),
        }
    }

    pub(crate) fn world_size(&self) -> usize {
        match self {
            Collective::Tcp(c) => c.world_size(),
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => c.world_size(),
        }
    }

    pub(crate) fn stats(&self) -> &CollectiveStats {
        match self {
            Collective::Tcp(c) => &c.stats,
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => &c.stats,
        }
    }

    /// Element-wise sums of every rank's `payload` (the same lengths on every rank), summed in
    /// rank order. `step` and `check` (e.g. a hash of the mixture) must agree across ranks.
    pub(crate) fn all_reduce(
        &mut self,
        step: u64,
        check: u64,
        payload: Payload,
    ) -> Result<Payload> {
        match self {
            Collective::Tcp(c) => c.all_reduce(step, check, payload),
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => c.all_reduce(step, check, payload),
        }
    }

    /// Waits until every rank reached this point, up to `timeout`; `step` and `check` must
    /// agree across ranks as in `all_reduce`.
    pub(crate) fn barrier(&mut self, step: u64, check: u64, timeout: Duration) -> Result<()> {
        match self {
            Collective::Tcp(c) => c.barrier(step, check, timeout),
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => c.barrier(step, check, timeout),
        }
    }

    /// This rank is done with the collective (its run completed).
    pub(crate) fn finish(&mut self) {
        match self {
            Collective::Tcp(c) => c.finish(),
            #[cfg(feature = "mpi")]
            Collective::Mpi(c) => c.finish(),
        }
    }
}

/// The element-wise sum, in rank order, of `world` equal blocks laid end to end in `received`
/// (block r from rank r): what each rank computes for its chunk between the all-to-all and the
/// all-gather of the MPI all-reduce. Rank order makes the bits those of the TCP star's sum
/// ((r0 + r1) + r2 ...), whatever MPI's algorithms. (Tested in every build; used with `mpi`.)
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn sum_blocks_in_rank_order<T>(received: &[T], world: usize) -> Vec<T>
where
    T: Copy + std::ops::AddAssign,
{
    let len = received.len() / world;
    debug_assert_eq!(len * world, received.len());
    let mut sum = received[..len].to_vec();
    for block in received.chunks_exact(len.max(1)).skip(1).take(world - 1) {
        for (a, b) in sum.iter_mut().zip(block) {
            *a += *b;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_sum_in_rank_order() {
        // ((1e8 + -1e8) + 1) keeps the 1; any other order loses it to rounding.
        let received = [1e8f32, 2.0, -1e8, 3.0, 1.0, 4.0];
        assert_eq!(sum_blocks_in_rank_order(&received, 3), vec![1.0, 9.0]);
        assert_eq!(sum_blocks_in_rank_order::<f64>(&[], 3), Vec::<f64>::new());
        assert_eq!(sum_blocks_in_rank_order(&[5.0f64, 6.0], 1), vec![5.0, 6.0]);
    }
}
