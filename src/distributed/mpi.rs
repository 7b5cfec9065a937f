//! The MPI transport (the `mpi` feature): ranks started by `mpirun`, `srun --mpi=pmix` or
//! `mixtrain launch`, rank and world size from MPI.
//!
//! The all-reduce sums in rank order, so a run is reproducible bit for bit for any world size
//! and MPI algorithm (MPI_Allreduce is not: its order depends on the algorithm and the rank
//! count): an all-to-all hands rank r the r-th chunk of every rank's vector, rank r sums those
//! in rank order, and an all-gather hands every rank every summed chunk. Each rank sends about
//! twice its vector whatever the world size (the star's rank 0 sends N − 1 times it).
//!
//! Before the data moves, the ranks agree: every rank sends (step, check) to rank 0, which
//! polls for them until `distributed.timeout_s` (so a rank that hangs is named), compares them
//! (a rank that drifted is named) and answers every rank. MPI has no timeouts of its own: a
//! watchdog thread aborts the job if a collective outlives its deadline. A rank that fails
//! (an error or a panic) aborts the whole job (`MPI_Abort`) after printing why, since MPI
//! cannot tell the other ranks anything softer; a rank that dies is reported by the launcher.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Threading;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use mpi::Count;

use super::collective::{distributed, sum_blocks_in_rank_order, CollectiveStats, Payload};
use super::{share, DistributedConfig};
use crate::error::Result;

/// How much longer than `timeout_s` a rank other than 0 waits for rank 0's answer: rank 0
/// itself waits `timeout_s` for a slow rank before it names it.
const FOLLOWER_GRACE: Duration = Duration::from_secs(5);
const HEADER_TAG: i32 = 17;
const VERDICT_TAG: i32 = 18;

/// MPI is initialised and not yet finalised in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);
static RANK: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn is_running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// Initialises MPI (with threads: the watchdog aborts from its own thread); (rank, world size).
/// A panic from then on aborts the job after the usual message.
pub(super) fn initialize() -> Result<(usize, usize)> {
    let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
        .ok_or_else(|| distributed("MPI was already initialised in this process"))?;
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    // The universe would finalise MPI when dropped; `finalize` (after a run) or `abort` (after
    // an error) end it instead, whichever comes.
    std::mem::forget(universe);
    RANK.store(rank, Ordering::SeqCst);
    RUNNING.store(true, Ordering::SeqCst);
    if threading < Threading::Multiple {
        tracing::warn!(
            ?threading,
            "this MPI library gives no MPI_THREAD_MULTIPLE: no watchdog over the data \
             collectives (a rank that hangs inside one blocks the job)"
        );
    }
    WATCHDOG_WORKS.store(threading >= Threading::Multiple, Ordering::SeqCst);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        abort("it panicked (see above)", 101);
    }));
    Ok((rank, size))
}

/// Ends MPI after a run that completed on every rank; nothing if MPI is not running.
pub(super) fn finalize() {
    if RUNNING.swap(false, Ordering::SeqCst) {
        // SAFETY: MPI was initialised by `initialize` and no MPI call is in flight.
        unsafe {
            mpi::ffi::MPI_Finalize();
        }
    }
}

/// Stops every rank of the job, naming this one and `why`; nothing if MPI is not running.
pub(super) fn abort(why: &str, code: i32) {
    if RUNNING.swap(false, Ordering::SeqCst) {
        let rank = RANK.load(Ordering::SeqCst);
        eprintln!("error: rank {rank} stopped the MPI job: {why}");
        SimpleCommunicator::world().abort(code);
    }
}

static WATCHDOG_WORKS: AtomicBool = AtomicBool::new(false);

/// Aborts the job when a collective outlives its deadline (MPI calls block without one).
#[derive(Clone, Default)]
struct Watchdog {
    /// The armed deadline and what to say when it passes.
    armed: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let watchdog = Watchdog::default();
        if WATCHDOG_WORKS.load(Ordering::SeqCst) {
            let armed = watchdog.armed.clone();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                let expired = armed
                    .lock()
                    .expect("watchdog lock")
                    .as_ref()
                    .filter(|(at, _)| Instant::now() >= *at)
                    .map(|(_, what)| what.clone());
                if let Some(what) = expired {
                    abort(&what, 1);
                    return;
                }
            });
        }
        watchdog
    }

    fn arm(&self, within: Duration, what: String) {
        *self.armed.lock().expect("watchdog lock") = Some((Instant::now() + within, what));
    }

    fn disarm(&self) {
        *self.armed.lock().expect("watchdog lock") = None;
    }
}

pub(crate) struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    join_timeout: Duration,
    watchdog: Watchdog,
    pub(crate) stats: CollectiveStats,
}

/// What rank 0 answers after comparing every rank's (step, check): all agree, or the first
/// rank that differs with its values and rank 0's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Agreed,
    Differs {
        rank: usize,
        theirs: [u64; 2],
        rank0: [u64; 2],
    },
}

impl Verdict {
    fn encode(self) -> [u64; 6] {
        match self {
            Verdict::Agreed => [0; 6],
            Verdict::Differs {
                rank,
                theirs,
                rank0,
            } => [1, rank as u64, theirs[0], theirs[1], rank0[0], rank0[1]],
        }
    }

    fn decode(v: [u64; 6]) -> Verdict {
        match v[0] {
            0 => Verdict::Agreed,
            _ => Verdict::Differs {
                rank: v[1] as usize,
                theirs: [v[2], v[3]],
                rank0: [v[4], v[5]],
            },
        }
    }
}

/// Spins briefly, then sleeps between polls: a step's all-reduce usually completes within
/// microseconds of the last rank's arrival, a join can take minutes.
fn pause(polls: u32) {
    if polls < 1000 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl MpiCollective {
    /// The ranks MPI started, checked to run the same config (`config_hash`).
    pub(crate) fn join(config: &DistributedConfig, config_hash: &str) -> Result<MpiCollective> {
        let world = SimpleCommunicator::world();
        let mut collective = MpiCollective {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            timeout: config.timeout(),
            join_timeout: config.join_timeout(),
            watchdog: Watchdog::start(),
            stats: CollectiveStats::default(),
        };
        let hash = super::fnv1a(config_hash.as_bytes());
        collective.agree([0, hash], config.join_timeout(), |rank, _, _| {
            format!(
                "rank {rank}'s config differs from rank 0's: every rank must run the same config"
            )
        })?;
        Ok(collective)
    }

    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn world_size(&self) -> usize {
        self.size
    }

    pub(crate) fn all_reduce(
        &mut self,
        step: u64,
        check: u64,
        payload: Payload,
    ) -> Result<Payload> {
        let started = Instant::now();
        self.agree([step, check], self.timeout, diverged)?;
        crate::fault::inside_reduce(self.rank);
        self.watchdog.arm(
            self.timeout + FOLLOWER_GRACE,
            format!(
                "the all-reduce of step {step} did not complete within distributed.timeout_s \
                 = {} s (+{} s): a rank hung inside MPI",
                self.timeout.as_secs_f64(),
                FOLLOWER_GRACE.as_secs()
            ),
        );
        let sum = Payload {
            f32s: self.sum_in_rank_order(&payload.f32s),
            f64s: self.sum_in_rank_order(&payload.f64s),
        };
        self.watchdog.disarm();
        self.stats.calls += 1;
        self.stats.seconds += started.elapsed().as_secs_f64();
        Ok(sum)
    }

    pub(crate) fn barrier(&mut self, step: u64, check: u64, timeout: Duration) -> Result<()> {
        self.agree([step, check], timeout, diverged)
    }

    pub(crate) fn finish(&mut self) {
        self.watchdog.disarm();
    }

    /// all-to-all, sum of this rank's chunk in rank order, all-gather (see the module doc).
    fn sum_in_rank_order<T>(&mut self, values: &[T]) -> Vec<T>
    where
        T: mpi::datatype::Equivalence + Copy + Default + std::ops::AddAssign,
    {
        let (n, world, me) = (values.len(), self.size, self.rank);
        let chunks: Vec<_> = (0..world).map(|r| share(n, r, world)).collect();
        let counts: Vec<Count> = chunks.iter().map(|c| c.len() as Count).collect();
        let starts: Vec<Count> = chunks.iter().map(|c| c.start as Count).collect();
        let mine = chunks[me].len();
        let mut received = vec![T::default(); mine * world];
        let received_counts = vec![mine as Count; world];
        let received_starts: Vec<Count> = (0..world).map(|r| (r * mine) as Count).collect();
        self.world.all_to_all_varcount_into(
            &Partition::new(values, &counts[..], &starts[..]),
            &mut PartitionMut::new(
                &mut received[..],
                &received_counts[..],
                &received_starts[..],
            ),
        );
        let summed = sum_blocks_in_rank_order(&received, world);
        let mut out = vec![T::default(); n];
        self.world.all_gather_varcount_into(
            &summed[..],
            &mut PartitionMut::new(&mut out[..], &counts[..], &starts[..]),
        );
        let bytes = std::mem::size_of::<T>() as u64;
        self.stats.bytes_sent += ((n - mine) + mine * (world - 1)) as u64 * bytes;
        out
    }

    /// Every rank presents `header` (step, check); rank 0 compares them and answers. A rank
    /// that does not present within `timeout` is named (by rank 0; rank 0 by the others).
    fn agree(
        &mut self,
        header: [u64; 2],
        timeout: Duration,
        describe: impl Fn(usize, [u64; 2], [u64; 2]) -> String,
    ) -> Result<()> {
        let verdict = if self.rank == 0 {
            let verdict = self.compare_headers(header, timeout)?;
            for r in 1..self.size {
                let process = self.world.process_at_rank(r as i32);
                process.send_with_tag(&verdict.encode()[..], VERDICT_TAG);
            }
            verdict
        } else {
            let root = self.world.process_at_rank(0);
            root.send_with_tag(&header[..], HEADER_TAG);
            let mut answer = [0u64; 6];
            let deadline = Instant::now() + timeout + FOLLOWER_GRACE;
            self.wait_for(0, VERDICT_TAG, deadline, (timeout, header))?;
            root.receive_into_with_tag(&mut answer[..], VERDICT_TAG);
            Verdict::decode(answer)
        };
        match verdict {
            Verdict::Agreed => Ok(()),
            Verdict::Differs {
                rank,
                theirs,
                rank0,
            } => Err(distributed(describe(rank, theirs, rank0))),
        }
    }

    /// Rank 0: every other rank's header, compared with its own.
    fn compare_headers(&mut self, header: [u64; 2], timeout: Duration) -> Result<Verdict> {
        let deadline = Instant::now() + timeout;
        let mut verdict = Verdict::Agreed;
        for r in 1..self.size {
            self.wait_for(r, HEADER_TAG, deadline, (timeout, header))?;
            let mut theirs = [0u64; 2];
            let process = self.world.process_at_rank(r as i32);
            process.receive_into_with_tag(&mut theirs[..], HEADER_TAG);
            if theirs != header && verdict == Verdict::Agreed {
                verdict = Verdict::Differs {
                    rank: r,
                    theirs,
                    rank0: header,
                };
            }
        }
        Ok(verdict)
    }

    /// Polls until rank `from` has sent a message tagged `tag`; after `deadline` an error
    /// naming it, the limit it exceeded and the step (`header`'s) the ranks were at.
    fn wait_for(
        &self,
        from: usize,
        tag: i32,
        deadline: Instant,
        (limit, header): (Duration, [u64; 2]),
    ) -> Result<()> {
        let process = self.world.process_at_rank(from as i32);
        let mut polls = 0;
        while process.immediate_probe_with_tag(tag).is_none() {
            if Instant::now() >= deadline {
                let key = if limit == self.join_timeout {
                    "distributed.join_timeout_s"
                } else {
                    "distributed.timeout_s"
                };
                return Err(distributed(format!(
                    "rank {from} did not answer within {key} = {} s at step {}",
                    limit.as_secs_f64(),
                    header[0]
                )));
            }
            pause(polls);
            polls += 1;
        }
        Ok(())
    }
}

fn diverged(rank: usize, theirs: [u64; 2], rank0: [u64; 2]) -> String {
    format!(
        "rank {rank} diverged from rank 0: it is at step {} with mixture hash {:016x}, rank 0 \
         at step {} with {:016x} (different checkpoints or configs?)",
        theirs[0], theirs[1], rank0[0], rank0[1]
    )
}
