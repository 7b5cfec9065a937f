//! Data-parallel transports on this machine.
//!
//! 1. The all-reduce alone: a vector of LEN f32s (default the quickstart model's 886,016
//!    gradients) summed CALLS times by 2, 4 and 8 ranks (oversubscribed on a small machine),
//!    over the TCP star and over MPI: ms per call (the slowest rank's) and the bytes the busiest
//!    rank sends per call, which for the star grow with the ranks and for MPI do not.
//! 2. Training: the quickstart model trained by 2 ranks × 1 core (`mixtrain launch --procs 2`,
//!    over TCP and over MPI) against 1 rank × 2 cores (`mixtrain run`), with the static mixer and
//!    with fastmix, interleaved, median of ROUNDS rounds; and the share of a step rank 0 spends
//!    in all-reduces (sending its vectors, waiting for the other rank, receiving the sum; the
//!    barriers at the start are not counted).
//!
//! ```text
//!     cargo bench --bench distributed --features mpi      # both transports
//!     STEPS=60 ROUNDS=3 cargo bench --bench distributed   # TCP only (no MPI built in)
//! ```
//!
//! ms/step is timed between the metrics lines of steps 10 and STEPS − 5 (no evaluation in
//! between: evaluations run at step 0 and at the end only).

#[macro_use]
mod report;

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Set in the processes this bench starts as ranks of an all-reduce job:
/// `LEN,CALLS,mpi` or `LEN,CALLS,tcp:RANK:WORLD:PORT`.
const WORKER_ENV: &str = "MIXTRAIN_ALLREDUCE_WORKER";
const TRANSPORTS: [&str; 2] = ["tcp", "mpi"];

/// elapsed_s of the metrics line of `step`.
fn elapsed_at(metrics: &Path, step: u64) -> f64 {
    let text = std::fs::read_to_string(metrics).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["step"].as_u64() == Some(step))
        .and_then(|v| v["wall"]["elapsed_s"].as_f64())
        .unwrap_or_else(|| panic!("no wall time at step {step} in {}", metrics.display()))
}

/// Seconds rank 0 spent in all-reduce calls and how many it made, from its closing log line.
fn all_reduce_seconds(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("all-reduce") && l.contains("rank=0"))?;
    let value = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        let end = rest.find(' ').unwrap_or(rest.len());
        rest[..end].trim_matches('"').parse().ok()
    };
    Some((value("seconds=")?, value("calls=")?))
}

struct Timing {
    ms_per_step: f64,
    all_reduce_s: Option<(f64, f64)>,
}

fn train(ranks: usize, transport: &str, mixer: &str, steps: u64, dir: &Path) -> Timing {
    let out_dir = dir.join(format!("{mixer}-{ranks}-{transport}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixtrain"));
    if ranks == 1 {
        cmd.arg("run");
        // One rank gets both cores, as `launch` gives each of 2 ranks one.
        cmd.env("RAYON_NUM_THREADS", "2");
    } else {
        cmd.arg("launch").arg("--procs").arg(ranks.to_string());
        cmd.arg("--transport").arg(transport);
        cmd.env_remove("RAYON_NUM_THREADS");
    }
    cmd.arg("configs/quickstart.toml").env("RUST_LOG", "info");
    for set in [
        format!("run.out_dir=\"{}\"", out_dir.display()),
        format!("mixer.kind={mixer}"),
        format!("train.steps={steps}"),
        "train.eval_every=100000".into(),
        "train.log_every=5".into(),
        "train.checkpoint_every=0".into(),
    ] {
        cmd.arg("--set").arg(set);
    }
    let out = cmd.output().expect("run mixtrain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mixtrain failed:\n{stderr}");
    let metrics = out_dir.join("metrics.jsonl");
    let (from, to) = (10, steps - 5);
    let seconds = elapsed_at(&metrics, to) - elapsed_at(&metrics, from);
    Timing {
        ms_per_step: seconds * 1e3 / (to - from) as f64,
        all_reduce_s: all_reduce_seconds(&stderr),
    }
}

/// One rank of an all-reduce job (this bench binary, started by `all_reduce_ranks`): prints
/// `ALLREDUCE rank ms_per_call bytes_per_call`.
fn all_reduce_worker(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let (len, calls): (usize, usize) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    let mut config = match parts[2].split(':').collect::<Vec<_>>()[..] {
        ["tcp", rank, world, port] => mixtrain::distributed::tcp_ranks(
            rank.parse().unwrap(),
            world.parse().unwrap(),
            &format!("127.0.0.1:{port}"),
        ),
        _ => Default::default(),
    };
    mixtrain::distributed::join_launcher(&mut config).expect("MPI job");
    let t = mixtrain::distributed::time_all_reduce(&config, len, calls).expect("all-reduce");
    println!(
        "ALLREDUCE {} {} {}",
        t.rank, t.ms_per_call, t.bytes_sent_per_call
    );
    mixtrain::distributed::finish_job();
}

/// Starts `ranks` workers over `transport`; per rank (ms per call, bytes sent per call).
fn all_reduce_ranks(transport: &str, ranks: usize, len: usize, calls: usize) -> Vec<(f64, f64)> {
    let exe = std::env::current_exe().expect("bench executable");
    let spawn = |mut cmd: Command| -> Child {
        cmd.env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a rank")
    };
    let children: Vec<Child> = if transport == "mpi" {
        let mut cmd = Command::new("mpirun");
        cmd.args(["-np", &ranks.to_string(), "--oversubscribe"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env(WORKER_ENV, format!("{len},{calls},mpi"))
            .arg(&exe);
        vec![spawn(cmd)]
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        (0..ranks)
            .map(|rank| {
                let mut cmd = Command::new(&exe);
                cmd.env(
                    WORKER_ENV,
                    format!("{len},{calls},tcp:{rank}:{ranks}:{port}"),
                );
                spawn(cmd)
            })
            .collect()
    };
    let mut per_rank = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("a rank");
        assert!(out.status.success(), "an all-reduce rank failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<f64> = line
                .strip_prefix("ALLREDUCE ")
                .map(|rest| rest.split(' ').map(|v| v.parse().unwrap()).collect())
                .unwrap_or_default();
            if let [_rank, ms, bytes] = fields[..] {
                per_rank.push((ms, bytes));
            }
        }
    }
    assert_eq!(per_rank.len(), ranks, "every rank reported");
    per_rank
}

/// Section 1: the all-reduce alone at 2, 4 and 8 ranks.
fn all_reduce_section() {
    let len: usize = knob("LEN", 886_016);
    let calls: usize = knob("CALLS", 20);
    let vector_mib = (len * 4) as f64 / (1 << 20) as f64;
    for transport in TRANSPORTS {
        if transport == "mpi" && !cfg!(feature = "mpi") {
            say!("allreduce/mpi  not built in (cargo bench --bench distributed --features mpi)");
            continue;
        }
        for ranks in [2, 4, 8] {
            let per_rank = all_reduce_ranks(transport, ranks, len, calls);
            let slowest = per_rank.iter().map(|r| r.0).fold(0.0, f64::max);
            let busiest = per_rank.iter().map(|r| r.1).fold(0.0, f64::max);
            let busiest_mib = busiest / (1 << 20) as f64;
            say!(
                "allreduce/{transport} {ranks} ranks  {vector_mib:.2} MiB vector  {slowest:>7.2} \
                 ms/call  busiest rank sends {busiest_mib:>6.2} MiB/call ({:.2}x the vector)",
                busiest_mib / vector_mib
            );
        }
    }
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return all_reduce_worker(&spec);
    }
    let built = if cfg!(feature = "mpi") {
        "tcp, mpi (--features mpi)"
    } else {
        "tcp"
    };
    say!("transports built in: {built}");
    all_reduce_section();
    training_section();
    report::finish(
        "distributed",
        "distributed",
        &["LEN", "CALLS", "STEPS", "ROUNDS", "RAYON_NUM_THREADS"],
    );
}

/// Section 2: training steps, 1 rank against 2 ranks over each transport built in.
fn training_section() {
    let steps: u64 = knob("STEPS", 40);
    let rounds: usize = knob("ROUNDS", 2);
    assert!(steps >= 20, "STEPS must be at least 20");
    let transports: Vec<&str> = TRANSPORTS
        .into_iter()
        .filter(|t| *t == "tcp" || cfg!(feature = "mpi"))
        .collect();
    let dir = tempfile::tempdir().expect("temporary directory");
    for mixer in ["static", "fastmix"] {
        let mut one = Vec::new();
        let mut two = vec![Vec::new(); transports.len()];
        let mut share = vec![Vec::new(); transports.len()];
        for _ in 0..rounds {
            one.push(train(1, "-", mixer, steps, dir.path()).ms_per_step);
            for (i, transport) in transports.iter().enumerate() {
                let t = train(2, transport, mixer, steps, dir.path());
                two[i].push(t.ms_per_step);
                if let Some((seconds, _calls)) = t.all_reduce_s {
                    // All of rank 0's time in all-reduces (one per step, plus fastmix's g_val
                    // before each update) over the run's steps, against a step's time.
                    share[i].push(seconds * 1e3 / steps as f64 / t.ms_per_step);
                }
            }
        }
        let one = report::median(one);
        for (i, transport) in transports.iter().enumerate() {
            let two = report::median(two[i].clone());
            say!(
                "distributed/{mixer:<8} 1 rank x 2 cores {one:>7.1} ms/step   2 ranks x 1 core \
                 over {transport} {two:>7.1} ms/step   speed-up {:.2}   all-reduce share of a \
                 2-rank step {:.1}%",
                one / two,
                100.0 * report::median(share[i].clone())
            );
        }
    }
}
