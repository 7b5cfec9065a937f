//! Fault injection for the reliability tests (`tests/it/faults.rs`): the environment variable
//! `MIXTRAIN_FAULT` makes a run fail in one chosen, reproducible way, so a test can place a kill
//! or an error exactly where a real fault could strike. Unset (always, outside tests) it costs
//! one lookup per checkpoint phase and per step.
//!
//! Forms (one per run):
//! - `checkpoint-kill=PHASE:N`: SIGKILL this process at PHASE of its N-th checkpoint save
//!   (counted from 1 in this process). PHASE: `partial` (model written, nothing else),
//!   `before-rename` (DONE written, directory still temporary), `after-rename` (complete, older
//!   checkpoints not yet pruned), `pruning` (an older checkpoint half deleted).
//! - `checkpoint-write-error=N`: the N-th save fails with "no space left on device" while
//!   writing its optimizer file, after its model file is on disk (part of it written).
//! - `nonfinite-loss=STEP`: the loss of the first sequence of step STEP (counted from 1) is NaN.
//! - `nonfinite-grad=STEP`: one element of a parameter's gradient in step STEP is NaN (after
//!   the sums over ranks, before the gradient norm), the losses stay finite.
//! - `rank-kill=R:STEP`: in a distributed run, rank R SIGKILLs itself as step STEP begins.
//! - `rank-stop=R:STEP`: rank R SIGSTOPs itself as step STEP begins (a hung rank).
//! - `rank-hang-in-reduce=R:N`: rank R SIGSTOPs itself inside its N-th all-reduce over MPI,
//!   after every rank agreed on the step and before the data moves (the watchdog's case).
//! - `prepare-kill=N`: SIGKILL this process when tokenising has finished its N-th shard
//!   (counted from 1 in this process; `data.shard_mb` of a file's documents each).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

pub(crate) const ENV: &str = "MIXTRAIN_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckpointPhase {
    Partial,
    BeforeRename,
    AfterRename,
    Pruning,
}

impl CheckpointPhase {
    const ALL: [(&'static str, CheckpointPhase); 4] = [
        ("partial", CheckpointPhase::Partial),
        ("before-rename", CheckpointPhase::BeforeRename),
        ("after-rename", CheckpointPhase::AfterRename),
        ("pruning", CheckpointPhase::Pruning),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    CheckpointKill { phase: CheckpointPhase, save: usize },
    CheckpointWriteError { save: usize },
    NonfiniteLoss { step: usize },
    NonfiniteGrad { step: usize },
    RankKill { rank: usize, step: usize },
    RankStop { rank: usize, step: usize },
    PrepareKill { shard: usize },
    RankHangInReduce { rank: usize, call: usize },
}

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
/// Checkpoint saves begun by this process.
static SAVES: AtomicUsize = AtomicUsize::new(0);
/// Shards finished by tokenising in this process.
static SHARDS: AtomicUsize = AtomicUsize::new(0);
/// All-reduces over MPI begun by this process.
#[cfg(feature = "mpi")]
static REDUCES: AtomicUsize = AtomicUsize::new(0);

fn parse(spec: &str) -> std::result::Result<Fault, String> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {spec:?}"))?;
    let number = |s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{s:?} is not a positive integer"))
    };
    match name {
        "checkpoint-kill" => {
            let (phase, save) = value
                .split_once(':')
                .ok_or_else(|| format!("checkpoint-kill expects PHASE:N, got {value:?}"))?;
            let phase = CheckpointPhase::ALL
                .iter()
                .find(|(n, _)| *n == phase)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    let names: Vec<&str> = CheckpointPhase::ALL.iter().map(|(n, _)| *n).collect();
                    format!("unknown phase {phase:?} (one of {})", names.join(", "))
                })?;
            Ok(Fault::CheckpointKill {
                phase,
                save: number(save)?,
            })
        }
        "checkpoint-write-error" => Ok(Fault::CheckpointWriteError {
            save: number(value)?,
        }),
        "nonfinite-loss" => Ok(Fault::NonfiniteLoss {
            step: number(value)?,
        }),
        "nonfinite-grad" => Ok(Fault::NonfiniteGrad {
            step: number(value)?,
        }),
        "prepare-kill" => Ok(Fault::PrepareKill {
            shard: number(value)?,
        }),
        "rank-kill" | "rank-stop" | "rank-hang-in-reduce" => {
            let (rank, step) = value
                .split_once(':')
                .ok_or_else(|| format!("{name} expects RANK:N, got {value:?}"))?;
            let rank = rank
                .parse::<usize>()
                .map_err(|_| format!("{rank:?} is not a rank"))?;
            let step = number(step)?;
            Ok(match name {
                "rank-kill" => Fault::RankKill { rank, step },
                "rank-stop" => Fault::RankStop { rank, step },
                _ => Fault::RankHangInReduce { rank, call: step },
            })
        }
        other => Err(format!(
            "unknown fault {other:?} (checkpoint-kill, checkpoint-write-error, nonfinite-loss, \
             nonfinite-grad, rank-kill, rank-stop, rank-hang-in-reduce, prepare-kill)"
        )),
    }
}

/// Reads `MIXTRAIN_FAULT` once; a malformed value is an error naming the variable.
pub(crate) fn init() -> Result<()> {
    let parsed = match std::env::var(ENV) {
        Ok(spec) if !spec.trim().is_empty() => {
            Some(parse(spec.trim()).map_err(|message| Error::value(ENV, message))?)
        }
        _ => None,
    };
    FAULT.get_or_init(|| parsed);
    Ok(())
}

fn fault() -> Option<Fault> {
    *FAULT.get_or_init(|| None)
}

/// Counts a checkpoint save; returns its number (from 1) for the hooks below.
pub(crate) fn begin_save() -> usize {
    SAVES.fetch_add(1, Ordering::SeqCst) + 1
}

/// Kills the process (SIGKILL: no destructors, no flushes) when the fault names this phase of
/// this save.
pub(crate) fn checkpoint_phase(save: usize, phase: CheckpointPhase) {
    if fault() == Some(Fault::CheckpointKill { phase, save }) {
        // SAFETY: sending a signal to our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The error a full disk would give while writing this save's optimizer file, if injected.
pub(crate) fn checkpoint_write_error(save: usize) -> Option<std::io::Error> {
    (fault() == Some(Fault::CheckpointWriteError { save }))
        .then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
}

/// Kills or stops this process (rank `rank`) as step `step` (from 1) begins, if injected.
pub(crate) fn before_step(rank: usize, step: usize) {
    let signal = match fault() {
        Some(Fault::RankKill { rank: r, step: s }) if (r, s) == (rank, step) => libc::SIGKILL,
        Some(Fault::RankStop { rank: r, step: s }) if (r, s) == (rank, step) => libc::SIGSTOP,
        _ => return,
    };
    // SAFETY: sending a signal to our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

/// Counts a finished shard of a prepare; kills the process (SIGKILL) at the one injected.
pub(crate) fn shard_finished() {
    let shard = SHARDS.fetch_add(1, Ordering::SeqCst) + 1;
    if fault() == Some(Fault::PrepareKill { shard }) {
        // SAFETY: sending a signal to our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Counts an all-reduce of rank `rank` over MPI; stops the process (SIGSTOP) inside the one
/// injected.
#[cfg(feature = "mpi")]
pub(crate) fn inside_reduce(rank: usize) {
    let call = REDUCES.fetch_add(1, Ordering::SeqCst) + 1;
    if fault() == Some(Fault::RankHangInReduce { rank, call }) {
        // SAFETY: sending a signal to our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
    }
}

/// True when a gradient of step `step` (from 1) is to be poisoned.
pub(crate) fn nonfinite_grad(step: usize) -> bool {
    fault() == Some(Fault::NonfiniteGrad { step })
}

/// True when the loss of step `step` (from 1) is to be poisoned.
pub(crate) fn nonfinite_loss(step: usize) -> bool {
    fault() == Some(Fault::NonfiniteLoss { step })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_malformed_ones() {
        assert_eq!(
            parse("checkpoint-kill=pruning:3"),
            Ok(Fault::CheckpointKill {
                phase: CheckpointPhase::Pruning,
                save: 3
            })
        );
        assert_eq!(
            parse("checkpoint-write-error=2"),
            Ok(Fault::CheckpointWriteError { save: 2 })
        );
        assert_eq!(
            parse("nonfinite-loss=7"),
            Ok(Fault::NonfiniteLoss { step: 7 })
        );
        assert_eq!(
            parse("nonfinite-grad=4"),
            Ok(Fault::NonfiniteGrad { step: 4 })
        );
        assert_eq!(
            parse("rank-kill=1:13"),
            Ok(Fault::RankKill { rank: 1, step: 13 })
        );
        assert_eq!(
            parse("rank-stop=0:2"),
            Ok(Fault::RankStop { rank: 0, step: 2 })
        );
        for bad in [
            "checkpoint-kill=sideways:1",
            "checkpoint-kill=partial",
            "nonfinite-loss=0",
            "nonfinite-loss=x",
            "nonfinite-grad=-1",
            "rank-kill=1",
            "rank-stop=a:2",
            "explode",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
