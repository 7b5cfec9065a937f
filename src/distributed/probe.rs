//! The all-reduce alone, timed, for `benches/distributed.rs`: each rank of a job (started by an
//! MPI launcher, or by the bench over TCP) sums the same vector a number of times and reports
//! its time and the bytes it sent per call. Not part of the command line.

use super::collective::{Collective, Payload};
use super::DistributedConfig;
use crate::error::Result;

/// One rank's measurements.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct AllReduceTiming {
    pub rank: usize,
    pub world: usize,
    pub transport: &'static str,
    pub ms_per_call: f64,
    /// Payload bytes this rank handed to the transport for other ranks, per call.
    pub bytes_sent_per_call: f64,
}

/// The TCP settings of rank `rank` of `world` with rank 0 at `address`.
#[doc(hidden)]
pub fn tcp_ranks(rank: usize, world: usize, address: &str) -> DistributedConfig {
    DistributedConfig {
        world_size: world,
        rank,
        address: address.into(),
        ..DistributedConfig::default()
    }
}

/// Joins the ranks (MPI when this process was started by an MPI launcher and MPI is built in),
/// then times `calls` all-reduces of `len` f32s after one untimed call.
#[doc(hidden)]
pub fn time_all_reduce(
    distributed: &DistributedConfig,
    len: usize,
    calls: usize,
) -> Result<AllReduceTiming> {
    let mut collective = Collective::join(distributed, "all-reduce probe")?;
    let payload = Payload {
        f32s: (0..len).map(|i| (i % 7) as f32).collect(),
        f64s: Vec::new(),
    };
    collective.all_reduce(0, 0, payload.clone())?;
    let before = collective.stats().clone();
    for step in 1..=calls {
        collective.all_reduce(step as u64, 0, payload.clone())?;
    }
    let after = collective.stats().clone();
    collective.finish();
    let calls = calls.max(1) as f64;
    Ok(AllReduceTiming {
        rank: collective.rank(),
        world: collective.world_size(),
        transport: collective.transport(),
        ms_per_call: (after.seconds - before.seconds) * 1e3 / calls,
        bytes_sent_per_call: (after.bytes_sent - before.bytes_sent) as f64 / calls,
    })
}
