//! `[distributed]`: how many ranks train together, which one this process is, and where rank 0
//! listens. Usually filled in by `mixtrain launch`, which passes `--set distributed.rank=R
//! --set distributed.world_size=N` to each process it starts.

use std::net::ToSocketAddrs;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate::{at_least_one, positive};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Processes (ranks) training together; 1 trains alone. Default 1.
    pub(crate) world_size: usize,
    /// This process's rank, 0..world_size; rank 0 writes the run directory. Default 0.
    pub rank: usize,
    /// host:port where rank 0 listens and the other ranks connect. Default "127.0.0.1:29500".
    pub(crate) address: String,
    /// Seconds a rank waits for the others at a step's all-reduce before it stops with an
    /// error naming the rank it waited for (a dead rank is reported at once). Default 120.
    pub(crate) timeout_s: f64,
    /// Seconds the ranks wait to find each other at the start, and for rank 0 to prepare the
    /// data, seed mixture and run directory before they follow. Default 1800.
    pub(crate) join_timeout_s: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig {
            world_size: 1,
            rank: 0,
            address: "127.0.0.1:29500".into(),
            timeout_s: 120.0,
            join_timeout_s: 1800.0,
        }
    }
}

impl DistributedConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("distributed.world_size", self.world_size)?;
        if self.rank >= self.world_size {
            return Err(Error::value(
                "distributed.rank",
                format!(
                    "must be below distributed.world_size = {} (got {})",
                    self.world_size, self.rank
                ),
            ));
        }
        positive("distributed.timeout_s", self.timeout_s)?;
        positive("distributed.join_timeout_s", self.join_timeout_s)?;
        if self.world_size > 1 {
            let resolved = self.address.to_socket_addrs().map_err(|e| {
                Error::value(
                    "distributed.address",
                    format!(
                        "expected host:port, e.g. \"127.0.0.1:29500\" (got {:?}: {e})",
                        self.address
                    ),
                )
            })?;
            if resolved.count() == 0 {
                return Err(Error::value(
                    "distributed.address",
                    format!("{:?} resolves to no address", self.address),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    pub(crate) fn join_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.join_timeout_s)
    }
}
