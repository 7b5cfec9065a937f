//! The TCP transport (`mixtrain launch --transport tcp`, or `[distributed]` set by hand): a star. Every rank sends its vectors to rank 0, which sums
//! them in rank order (so the result does not depend on arrival order, for any number of
//! ranks) and sends the sum back. Each message also carries the sender's step and a hash of
//! its mixture, which rank 0 compares: ranks that drifted apart stop instead of training on.
//!
//! Why not `burn-collective`: its multi-node all-reduce (0.21.0, the release we pin) hangs on
//! its first or second call between two processes (reproduced with a 40-line program for the
//! ring and centralized strategies; `SyncService::sync` clears a copy of its list of synced
//! peers, not the list), and it sums in the order nodes registered, which varies run to run.
//! This module is what the training loop calls (`all_reduce`, `barrier`, `abort`); it can be
//! swapped for burn's once that works.
//!
//! Faults: a rank whose process died closes its socket, which its peer notices at once; a
//! rank that hangs is noticed after `distributed.timeout_s`. Either way rank 0 tells every
//! other rank which rank failed, and every rank returns an error naming it.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::collective::{distributed, CollectiveStats, Payload};
use super::connect::{accept_ranks, connect_to_rank0, link_failure};
use super::wire::{decode_reduce, encode_reduce, read_frame, write_frame, ABORT, REDUCE, RESULT};
use super::DistributedConfig;
use crate::error::Result;

/// How much longer than `timeout_s` a rank other than 0 waits for rank 0's answer: rank 0
/// itself waits `timeout_s` for a slow rank before it tells the others which one it was.
const FOLLOWER_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the link to rank r at index r - 1. Other ranks: the link to rank 0.
    links: Vec<TcpStream>,
    timeout: Duration,
    /// Set by `finish`; dropped unfinished (an error or a panic unwound this rank), the
    /// collective tells the other ranks that this one stopped.
    finished: bool,
    pub(crate) stats: CollectiveStats,
}

impl Drop for TcpCollective {
    fn drop(&mut self) {
        if !self.finished {
            self.abort("its run ended with an error (see its output)");
        }
    }
}

impl TcpCollective {
    /// Connects the ranks: rank 0 listens on `distributed.address` and waits for every other
    /// rank; the others connect (retrying until `join_timeout_s`). Each rank presents its rank,
    /// the world size and `config_hash`, which must match rank 0's.
    pub(crate) fn join(config: &DistributedConfig, config_hash: &str) -> Result<TcpCollective> {
        let deadline = Instant::now() + config.join_timeout();
        let links = if config.rank == 0 {
            accept_ranks(config, config_hash, deadline)?
        } else {
            vec![connect_to_rank0(config, config_hash, deadline)?]
        };
        Ok(TcpCollective {
            rank: config.rank,
            world: config.world_size,
            links,
            timeout: config.timeout(),
            finished: false,
            stats: CollectiveStats::default(),
        })
    }

    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn world_size(&self) -> usize {
        self.world
    }

    /// Element-wise sums of every rank's `payload` (the same lengths on every rank), summed in
    /// rank order. `step` and `check` (e.g. a hash of the mixture) must agree across ranks.
    pub(crate) fn all_reduce(
        &mut self,
        step: u64,
        check: u64,
        payload: Payload,
    ) -> Result<Payload> {
        let started = Instant::now();
        let timeout = self.timeout;
        let result = self.all_reduce_within(step, check, payload, timeout);
        self.stats.calls += 1;
        self.stats.seconds += started.elapsed().as_secs_f64();
        result
    }

    /// Waits until every rank reached this point, up to `timeout`; `step` and `check` must
    /// agree across ranks as in `all_reduce`.
    pub(crate) fn barrier(&mut self, step: u64, check: u64, timeout: Duration) -> Result<()> {
        // Not timed in `stats`: a barrier's wait is another rank's setup, not communication.
        self.all_reduce_within(step, check, Payload::default(), timeout)
            .map(|_| ())
    }

    /// This rank is done with the collective (its run completed).
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// Tells the other ranks that this one stops with `message` (best effort: the links may
    /// already be gone).
    pub(crate) fn abort(&mut self, message: &str) {
        self.finished = true;
        let text = format!("rank {} stopped: {message}", self.rank);
        for link in &mut self.links {
            let _ = write_frame(link, ABORT, text.as_bytes());
        }
    }

    fn all_reduce_within(
        &mut self,
        step: u64,
        check: u64,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload> {
        let result = if self.rank == 0 {
            self.reduce_at_root(step, check, payload, timeout)
        } else {
            let message = encode_reduce(step, check, &payload);
            self.stats.bytes_sent += message.len() as u64;
            self.reduce_at_follower(&message, timeout)
        };
        if result.is_err() {
            // Every rank already knows (rank 0 told them) or the link is gone: nothing more
            // to say when this collective is dropped.
            self.finished = true;
        }
        result
    }

    fn reduce_at_root(
        &mut self,
        step: u64,
        check: u64,
        mut sum: Payload,
        timeout: Duration,
    ) -> Result<Payload> {
        let deadline = Instant::now() + timeout;
        for r in 1..self.world {
            let outcome = read_frame(&mut self.links[r - 1], deadline)
                .map_err(|e| link_failure(r, e, timeout))
                .and_then(|(kind, body)| match kind {
                    REDUCE => decode_reduce(&body)
                        .ok_or_else(|| format!("rank {r} sent a malformed message")),
                    ABORT => Err(String::from_utf8_lossy(&body).into_owned()),
                    other => Err(format!("rank {r} sent message kind {other}, not a reduce")),
                })
                .and_then(|(their_step, their_check, theirs)| {
                    if their_step != step || their_check != check {
                        return Err(format!(
                            "rank {r} diverged from rank 0: it is at step {their_step} with \
                             mixture hash {their_check:016x}, rank 0 at step {step} with \
                             {check:016x} (different checkpoints or configs?)"
                        ));
                    }
                    if theirs.f32s.len() != sum.f32s.len() || theirs.f64s.len() != sum.f64s.len() {
                        return Err(format!(
                            "rank {r} sent {} + {} values, rank 0 has {} + {}",
                            theirs.f32s.len(),
                            theirs.f64s.len(),
                            sum.f32s.len(),
                            sum.f64s.len()
                        ));
                    }
                    Ok(theirs)
                });
            match outcome {
                Ok(theirs) => {
                    for (a, b) in sum.f32s.iter_mut().zip(&theirs.f32s) {
                        *a += b;
                    }
                    for (a, b) in sum.f64s.iter_mut().zip(&theirs.f64s) {
                        *a += b;
                    }
                }
                Err(message) => {
                    self.tell_others(&message);
                    return Err(distributed(message));
                }
            }
        }
        let reply = encode_reduce(step, check, &sum);
        self.stats.bytes_sent += (reply.len() * (self.world - 1)) as u64;
        for r in 1..self.world {
            if let Err(e) = write_frame(&mut self.links[r - 1], RESULT, &reply) {
                let message = link_failure(r, e, timeout);
                self.tell_others(&message);
                return Err(distributed(message));
            }
        }
        Ok(sum)
    }

    /// Rank 0 tells every other rank why the run stops (the failed one too, if it is still
    /// there to hear it: e.g. a rank that diverged).
    fn tell_others(&mut self, message: &str) {
        for link in &mut self.links {
            let _ = write_frame(link, ABORT, message.as_bytes());
        }
    }

    fn reduce_at_follower(&mut self, message: &[u8], timeout: Duration) -> Result<Payload> {
        let link = &mut self.links[0];
        if let Err(e) = write_frame(link, REDUCE, message) {
            // Rank 0 may have closed the link right after telling this rank why: read that.
            return match read_frame(link, Instant::now() + Duration::from_secs(1)) {
                Ok((ABORT, body)) => Err(distributed(String::from_utf8_lossy(&body).into_owned())),
                _ => Err(distributed(link_failure(0, e, timeout))),
            };
        }
        let deadline = Instant::now() + timeout + FOLLOWER_GRACE;
        let (kind, body) =
            read_frame(link, deadline).map_err(|e| distributed(link_failure(0, e, timeout)))?;
        match kind {
            RESULT => decode_reduce(&body)
                .map(|(_, _, sum)| sum)
                .ok_or_else(|| distributed("rank 0 sent a malformed result")),
            ABORT => Err(distributed(String::from_utf8_lossy(&body).into_owned())),
            other => Err(distributed(format!(
                "rank 0 sent message kind {other}, not a result"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rank: usize, world: usize, port: u16) -> DistributedConfig {
        DistributedConfig {
            world_size: world,
            rank,
            address: format!("127.0.0.1:{port}"),
            timeout_s: 2.0,
            join_timeout_s: 10.0,
        }
    }

    /// A port nothing listens on now (the tests run in parallel: no fixed ports).
    fn free_port() -> u16 {
        crate::distributed::launch::free_port().expect("a free port")
    }

    /// Runs `body(rank, collective)` on `world` threads joined through `port`.
    fn with_ranks<T: Send + 'static>(
        world: usize,
        port: u16,
        body: impl Fn(usize, &mut TcpCollective) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let mut c = TcpCollective::join(&config(rank, world, port), "h").unwrap();
                    body(rank, &mut c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_in_rank_order_on_every_rank() {
        // Values whose float sum depends on the order: ((r0 + r1) + r2) keeps the 1, every
        // other grouping loses it to rounding.
        let f32s = [1e8f32, -1e8, 1.0];
        let f64s = [1e17f64, -1e17, 1.0];
        assert_eq!((f32s[0] + f32s[1]) + f32s[2], 1.0);
        assert_eq!((f32s[0] + f32s[2]) + f32s[1], 0.0);
        assert_eq!((f32s[1] + f32s[2]) + f32s[0], 0.0);
        assert_eq!((f64s[0] + f64s[2]) + f64s[1], 0.0);
        assert_eq!((f64s[1] + f64s[2]) + f64s[0], 0.0);
        let out = with_ranks(3, free_port(), move |rank, c| {
            let payload = Payload {
                f32s: vec![f32s[rank], 1.0],
                f64s: vec![f64s[rank]],
            };
            (0..3)
                .map(|step| c.all_reduce(step, 7, payload.clone()).unwrap())
                .collect::<Vec<_>>()
        });
        for per_rank in &out {
            for sum in per_rank {
                assert_eq!(sum.f32s, vec![1.0, 3.0]);
                assert_eq!(sum.f64s, vec![1.0]);
            }
        }
    }

    #[test]
    fn a_diverged_rank_stops_every_rank_with_its_name() {
        let out = with_ranks(3, free_port(), |rank, c| {
            let check = if rank == 2 { 9 } else { 7 };
            c.all_reduce(4, check, Payload::default())
                .unwrap_err()
                .to_string()
        });
        for message in out {
            assert!(message.contains("rank 2 diverged"), "{message}");
        }
    }

    #[test]
    fn a_dead_rank_is_named_by_the_others_before_the_timeout() {
        let started = Instant::now();
        let out = with_ranks(3, free_port(), |rank, c| {
            if rank == 1 {
                // Closes its link without a word: as if its process died.
                c.finish();
                return String::new();
            }
            c.all_reduce(0, 0, Payload::default())
                .unwrap_err()
                .to_string()
        });
        assert!(out[0].contains("rank 1 disconnected"), "{}", out[0]);
        assert!(out[2].contains("rank 1 disconnected"), "{}", out[2]);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hung_rank_is_named_after_the_timeout() {
        let out = with_ranks(2, free_port(), |rank, c| {
            if rank == 1 {
                std::thread::sleep(Duration::from_secs(4));
                return String::new();
            }
            let started = Instant::now();
            let e = c.all_reduce(0, 0, Payload::default()).unwrap_err();
            assert!(started.elapsed() >= Duration::from_secs(2));
            e.to_string()
        });
        assert!(
            out[0].contains("rank 1 did not answer within"),
            "{}",
            out[0]
        );
    }

    #[test]
    fn a_rank_with_another_config_is_refused() {
        let world = 2;
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let hash = if rank == 0 { "a" } else { "b" };
                    TcpCollective::join(&config(rank, world, port), hash)
                        .err()
                        .map(|e| e.to_string())
                })
            })
            .collect();
        for h in handles {
            let message = h.join().unwrap().expect("both ranks refuse");
            assert!(message.contains("rank 1's config differs"), "{message}");
        }
    }
}
