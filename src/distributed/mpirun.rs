//! `mixtrain launch` over MPI: runs `mpirun -np N mixtrain run CONFIG ...` with the flags this
//! machine needs, passes the ranks' output through, and names the rank that failed from what
//! the ranks and mpirun print.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::launch::{LaunchOptions, LaunchOutcome};
use crate::error::{Error, Result};

/// Starts the ranks under `mpirun` (or `$MPIRUN`) and waits for them.
pub(super) fn launch_mpirun(
    config_path: &Path,
    sets: &[String],
    options: &LaunchOptions,
    threads: &str,
) -> Result<LaunchOutcome> {
    let mpirun = std::env::var("MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let exe = std::env::current_exe()
        .map_err(|e| Error::Training(format!("cannot find the mixtrain executable: {e}")))?;
    let mut command = Command::new(&mpirun);
    command.arg("-np").arg(options.procs.to_string());
    if is_open_mpi(&mpirun) {
        open_mpi_flags(&mut command, options.procs);
    }
    command.arg(&exe).arg("run").arg(config_path);
    for set in sets {
        command.arg("--set").arg(set);
    }
    if options.resume {
        command.arg("--resume");
    }
    // Each rank gets its share of the cores unless the user chose (local ranks inherit
    // mpirun's environment).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        command.env("RAYON_NUM_THREADS", threads);
    }
    let mut child = command.stderr(Stdio::piped()).spawn().map_err(|e| {
        Error::Training(format!(
            "cannot start {mpirun} ({e}): install an MPI (e.g. Debian's openmpi-bin) or set \
             MPIRUN, or launch with --transport tcp"
        ))
    })?;
    tracing::info!(ranks = options.procs, threads_per_rank = %threads, "launched with {mpirun}");
    let stderr = child.stderr.take().expect("piped");
    let mut first_failure = None;
    for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
        let _ = writeln!(std::io::stderr(), "{line}");
        if first_failure.is_none() {
            first_failure = failure_in(&line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::Training(format!("waiting for {mpirun}: {e}")))?;
    if status.success() {
        return Ok(LaunchOutcome { failed: None });
    }
    let code = status.code().unwrap_or(1);
    let what = first_failure.unwrap_or_else(|| format!("{mpirun} exited with status {code}"));
    Ok(LaunchOutcome {
        failed: Some((code, what)),
    })
}

fn is_open_mpi(mpirun: &str) -> bool {
    Command::new(mpirun)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("Open MPI"))
}

/// Open MPI refuses root and more ranks than cores unless told; both are fine here (a
/// container's root; ranks sharing the cores of a test machine).
fn open_mpi_flags(command: &mut Command, procs: usize) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if procs > cores {
        command.arg("--oversubscribe");
    }
}

/// What failed, from one line of the job's stderr: a rank that stopped the job after its
/// error (`mpi::abort`), or one that Open MPI saw die.
fn failure_in(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("error: rank ") {
        let (rank, why) = rest.split_once(" stopped the MPI job: ")?;
        return Some(format!("rank {rank} stopped the job ({why})"));
    }
    // "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed)."
    let rest = line.split_once("noticed that process rank ")?.1;
    let rank = rest.split_whitespace().next()?;
    if let Some(signal) = rest.split_once("exited on signal ") {
        let signal = signal.1.split_whitespace().next()?;
        return Some(format!("rank {rank} was killed by signal {signal}"));
    }
    Some(format!("rank {rank} failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_their_rank() {
        let killed = "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal \
                      9 (Killed).";
        assert_eq!(
            failure_in(killed).as_deref(),
            Some("rank 1 was killed by signal 9")
        );
        let stopped = "error: rank 2 stopped the MPI job: its error is above";
        assert_eq!(
            failure_in(stopped).as_deref(),
            Some("rank 2 stopped the job (its error is above)")
        );
        assert_eq!(failure_in("error: rank 1 did not answer"), None);
        assert_eq!(failure_in("INFO train step=3"), None);
    }
}
