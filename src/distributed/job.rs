//! Which job this process belongs to: started alone, by `mixtrain launch`'s TCP star (rank and
//! world size in `[distributed]`), or by an MPI launcher (`mpirun`, `srun --mpi=pmix`), which
//! says so in the environment; then MPI gives the rank and the world size.

use super::DistributedConfig;
use crate::error::{Error, Result};

/// Environment variables an MPI launcher sets in every rank: Open MPI's mpirun, MPICH's Hydra
/// and Slurm's PMI-2 (both PMI_SIZE), PMIx (Slurm `--mpi=pmix`, prterun).
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];
const LAUNCHER_RANK_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
];

/// The launcher variable that says this process is one rank of an MPI job, and its value.
fn mpi_launcher() -> Option<(&'static str, String)> {
    LAUNCHER_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().map(|value| (*var, value)))
}

/// This process's rank as its launcher's environment gives it (before MPI starts), for the
/// log level: the other ranks log warnings only unless RUST_LOG says otherwise.
pub fn rank_from_environment() -> Option<usize> {
    LAUNCHER_RANK_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
}

/// Joins the MPI job this process was started in, if any: sets `rank` and `world_size` from
/// MPI. Started by an MPI launcher without the `mpi` feature,
/// it is an error (N copies of the run would each train alone and write the same directory).
pub fn join_launcher(distributed: &mut DistributedConfig) -> Result<()> {
    if mpi_launcher().is_none() {
        return Ok(());
    }
    #[cfg(feature = "mpi")]
    {
        let (rank, world) = super::mpi::initialize()?;
        check_slurm_tasks(world)?;
        distributed.rank = rank;
        distributed.world_size = world;
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = distributed;
        refuse_without_mpi()
    }
}

/// Without MPI built in, a job of one rank trains alone; a larger one is refused.
#[cfg(not(feature = "mpi"))]
fn refuse_without_mpi() -> Result<()> {
    let (var, value) = mpi_launcher().expect("called under a launcher");
    let size = match var {
        "PMIX_RANK" => std::env::var("SLURM_NTASKS").ok(),
        _ => Some(value.clone()),
    };
    if size.and_then(|n| n.parse::<usize>().ok()) == Some(1) {
        return Ok(());
    }
    Err(Error::Distributed(format!(
        "started by an MPI launcher ({var}={value}) but this mixtrain was built without MPI: \
         build it with `cargo build --release --features mpi`, or start the ranks with \
         `mixtrain launch --procs N`"
    )))
}

/// Slurm started N tasks but MPI sees fewer: srun without a PMI plugin starts N singletons,
/// each of which would train alone.
#[cfg(feature = "mpi")]
fn check_slurm_tasks(world: usize) -> Result<()> {
    let tasks = std::env::var("SLURM_NTASKS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    match tasks {
        Some(tasks) if tasks > world => Err(Error::Distributed(format!(
            "Slurm started {tasks} tasks but MPI sees {world}: start them with `srun \
             --mpi=pmix` (or the PMI plugin your MPI was built with)"
        ))),
        _ => Ok(()),
    }
}

/// Ends the MPI job of a run that completed; nothing when MPI does not run here.
pub fn finish_job() {
    #[cfg(feature = "mpi")]
    super::mpi::finalize();
}

/// After an error this rank printed: stops every rank of the MPI job (which would otherwise
/// wait for this one until their timeout); nothing when MPI does not run here.
pub fn abort_job_after_error() {
    #[cfg(feature = "mpi")]
    super::mpi::abort("its error is above", 1);
}
