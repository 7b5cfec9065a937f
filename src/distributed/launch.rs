//! `mixtrain launch --procs N CONFIG`: starts N ranks of `mixtrain run` on this machine, splits
//! the cores between them, and exits with the status of the first rank that failed. Over MPI
//! (the default in a build with the `mpi` feature) it runs mpirun (`mpirun.rs`); over TCP it
//! starts the ranks itself, each with `--set distributed.rank=R --set
//! distributed.world_size=N` and rank 0's address.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};

/// How the ranks talk: MPI (started by mpirun) or the TCP star (started by `launch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mpi,
    Tcp,
}

impl Transport {
    /// MPI when it is built in (the `mpi` feature), else TCP.
    pub fn default_for_build() -> Transport {
        if cfg!(feature = "mpi") {
            Transport::Mpi
        } else {
            Transport::Tcp
        }
    }

    pub fn parse(name: &str) -> Result<Transport> {
        match name {
            "mpi" => Ok(Transport::Mpi),
            "tcp" => Ok(Transport::Tcp),
            other => Err(Error::value(
                "--transport",
                format!("expected \"mpi\" or \"tcp\", got {other:?}"),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Ranks to start.
    pub procs: usize,
    /// Pass `--resume` to every rank.
    pub resume: bool,
    /// Port rank 0 listens on (127.0.0.1) over TCP; None picks a free one.
    pub port: Option<u16>,
    pub transport: Transport,
}

/// How the ranks ended: the first failure (the exit status to return, and which rank failed
/// how, e.g. "rank 1 was killed by signal 9"), if any.
#[derive(Debug)]
pub struct LaunchOutcome {
    pub failed: Option<(i32, String)>,
}

/// Starts the ranks and waits for them. When one fails, the others get `distributed.timeout_s`
/// plus a few seconds to notice and stop on their own (they name the failed rank), then are
/// killed.
pub fn launch(
    config_path: &Path,
    sets: &[String],
    options: &LaunchOptions,
) -> Result<LaunchOutcome> {
    if options.procs == 0 {
        return Err(Error::value("--procs", "must be at least 1"));
    }
    if options.transport == Transport::Mpi && !cfg!(feature = "mpi") {
        return Err(Error::value(
            "--transport",
            "mpi needs a mixtrain built with the `mpi` feature (cargo build --release --features \
             mpi); --transport tcp works in every build",
        ));
    }
    // Validate before starting anything: a bad config fails once, not N times.
    let config = Config::load(config_path, sets)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / options.procs).max(1).to_string();
    if options.transport == Transport::Mpi {
        return super::mpirun::launch_mpirun(config_path, sets, options, &threads);
    }
    let port = match options.port {
        Some(port) => port,
        None => free_port()?,
    };
    let mut children = Vec::new();
    for rank in 0..options.procs {
        let rank_options = RankOptions {
            rank,
            port,
            threads: &threads,
        };
        children.push(Some(spawn_rank(config_path, sets, options, &rank_options)?));
    }
    tracing::info!(
        ranks = options.procs,
        threads_per_rank = %threads,
        address = %format!("127.0.0.1:{port}"),
        "launched"
    );
    let grace = config.distributed.timeout() + Duration::from_secs(10);
    wait_for_ranks(children, grace)
}

/// What differs between the ranks' command lines.
struct RankOptions<'a> {
    rank: usize,
    port: u16,
    /// RAYON_NUM_THREADS for each rank: its share of the cores.
    threads: &'a str,
}

/// Starts `mixtrain run` as one rank of the run.
fn spawn_rank(
    config_path: &Path,
    sets: &[String],
    options: &LaunchOptions,
    rank_options: &RankOptions,
) -> Result<Child> {
    let RankOptions {
        rank,
        port,
        threads,
    } = *rank_options;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Training(format!("cannot find the mixtrain executable: {e}")))?;
    let mut command = Command::new(&exe);
    command.arg("run").arg(config_path);
    for set in sets {
        command.arg("--set").arg(set);
    }
    command
        .arg("--set")
        .arg(format!("distributed.world_size={}", options.procs))
        .arg("--set")
        .arg(format!("distributed.rank={rank}"))
        .arg("--set")
        .arg(format!("distributed.address=\"127.0.0.1:{port}\""));
    if options.resume {
        command.arg("--resume");
    }
    // Each rank gets its share of the cores unless the user chose the thread count (rayon's
    // pool runs all of a CPU step's parallel work).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        command.env("RAYON_NUM_THREADS", threads);
    }
    if rank > 0 {
        // Rank 0 reports the run; the others only their warnings and errors.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        command.stdout(Stdio::null());
    }
    command
        .spawn()
        .map_err(|e| Error::Training(format!("cannot start rank {rank} ({}): {e}", exe.display())))
}

/// Waits for every rank; after the first failure the others get `grace` to stop on their
/// own, then are killed.
fn wait_for_ranks(mut children: Vec<Option<Child>>, grace: Duration) -> Result<LaunchOutcome> {
    let mut failed: Option<(i32, String)> = None;
    let mut kill_at: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        let failed_now = reap_finished(&mut children)?;
        if failed.is_none() && !failed_now.is_empty() {
            // Ranks that failed between two polls: a killed one is the cause, the others
            // stopped because of it (and said so).
            let (rank, status) = failed_now
                .into_iter()
                .min_by_key(|(rank, status)| (status.code().is_some(), *rank))
                .expect("not empty");
            failed = Some((
                exit_code(status),
                format!("rank {rank} {}", describe(status)),
            ));
            kill_at = Some(Instant::now() + grace);
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    tracing::warn!(rank, "still running after another rank failed: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    *slot = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(LaunchOutcome { failed })
}

/// Collects the ranks that ended since the last poll; returns those that failed.
fn reap_finished(children: &mut [Option<Child>]) -> Result<Vec<(usize, ExitStatus)>> {
    let mut failed_now = Vec::new();
    for (rank, slot) in children.iter_mut().enumerate() {
        let Some(child) = slot else { continue };
        let status = child
            .try_wait()
            .map_err(|e| Error::Training(format!("waiting for rank {rank}: {e}")))?;
        if let Some(status) = status {
            *slot = None;
            if !status.success() {
                failed_now.push((rank, status));
            }
        }
    }
    Ok(failed_now)
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub(crate) fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Training(format!("cannot find a free port for rank 0: {e}")))
}

fn exit_code(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    1
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended abnormally".into(),
    }
}
