//! The reducer part: sums over the ranks of a distributed run. Alone (no `[distributed]`) the
//! sums are the identity, so a one-process run computes exactly what it computed before
//! distributed training existed. A new transport is a new
//! variant of `distributed::Collective`.

use std::ops::Range;

use crate::distributed::{share, Collective, Payload};
use crate::error::Result;

pub(crate) enum Reducer {
    /// One process: every row is this rank's, every sum the identity.
    Alone,
    /// Ranks joined over MPI or TCP (`mixtrain launch`, `mpirun`, `[distributed]`).
    Ranks(Collective),
}

impl Reducer {
    pub(crate) fn is_alone(&self) -> bool {
        matches!(self, Reducer::Alone)
    }

    /// (rank, world size); (0, 1) alone.
    pub(crate) fn rank_and_world(&self) -> (usize, usize) {
        match self {
            Reducer::Alone => (0, 1),
            Reducer::Ranks(c) => (c.rank(), c.world_size()),
        }
    }

    /// The rows of a batch of `n` this rank computes.
    pub(crate) fn my_rows(&self, n: usize) -> Range<usize> {
        let (rank, world) = self.rank_and_world();
        share(n, rank, world)
    }

    /// Sums over ranks (in rank order) of `payload`, checking every rank is at `step` with the
    /// mixture whose digest is `check`; the payload itself alone.
    pub(crate) fn sum(&mut self, step: u64, check: u64, payload: Payload) -> Result<Payload> {
        match self {
            Reducer::Alone => Ok(payload),
            Reducer::Ranks(c) => c.all_reduce(step, check, payload),
        }
    }

    /// Ends the transport at the end of the run, logging what it moved.
    pub(crate) fn finish(&mut self) {
        if let Reducer::Ranks(collective) = self {
            collective.finish();
            let stats = collective.stats();
            tracing::info!(
                rank = collective.rank(),
                transport = collective.transport(),
                calls = stats.calls,
                seconds = format!("{:.2}", stats.seconds),
                mib_sent = format!("{:.1}", stats.bytes_sent as f64 / (1 << 20) as f64),
                "all-reduce"
            );
        }
    }
}
