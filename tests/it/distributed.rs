//! Data-parallel runs started with `mixtrain launch --procs N` on localhost: they match a
//! one-process run with the same global batch to float tolerance, repeat bit for bit, resume
//! bit for bit, and stop with an error naming the rank when one dies or hangs. `launch` runs
//! the build's default transport: the TCP star, or MPI (mpirun) in a build with `--features
//! mpi`, where the same tests run again (`.ci/run`) and MPI is also compared with TCP.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{metrics_without_wall, mixtrain, ratio_rows, run_ok, tiny_config};

/// Sets shared by every run here: fastmix (a probed step before each update, so the sums of
/// ⟨g_val, g_k⟩ over ranks are exercised), micro-batches of 5 (shares of 2 and 3 sequences).
const SETS: &[&str] = &[
    "train.steps=20",
    "train.batch_size=5",
    "mixer.kind=fastmix",
    "mixer.every=4",
    "mixer.warmup_steps=0",
];

fn with_sets(cmd: &mut std::process::Command, more: &[&str]) {
    for s in SETS.iter().chain(more) {
        cmd.arg("--set").arg(s);
    }
}

fn run_one(dir: &Path, more: &[&str]) {
    let config = tiny_config(dir, "");
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&config);
    with_sets(&mut cmd, more);
    run_ok(&mut cmd);
}

fn launch(dir: &Path, more: &[&str], fault: Option<&str>, resume: bool) -> Output {
    launch_ranks(dir, 2, more, fault, resume)
}

fn launch_ranks(
    dir: &Path,
    procs: usize,
    more: &[&str],
    fault: Option<&str>,
    resume: bool,
) -> Output {
    let config = tiny_config(dir, "");
    let mut cmd = mixtrain();
    cmd.arg("launch")
        .arg(&config)
        .arg("--procs")
        .arg(procs.to_string());
    if resume {
        cmd.arg("--resume");
    }
    with_sets(&mut cmd, more);
    if let Some(fault) = fault {
        cmd.env("MIXTRAIN_FAULT", fault);
    }
    cmd.output().expect("spawn mixtrain launch")
}

fn launch_ok(dir: &Path, more: &[&str]) {
    let out = launch(dir, more, None, false);
    assert_launched(&out);
}

fn assert_launched(out: &Output) {
    assert!(
        out.status.success(),
        "launch failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A two-rank run with `distributed.timeout_s` and `MIXTRAIN_FAULT=fault` that must fail: its
/// stderr (the launcher's and the ranks') and how long it took.
fn launch_failing(dir: &Path, timeout_s: u32, fault: &str) -> (String, Duration) {
    let started = Instant::now();
    let timeout = format!("distributed.timeout_s={timeout_s}");
    let out = launch(dir, &[timeout.as_str()], Some(fault), false);
    assert!(!out.status.success(), "the run with {fault} succeeded");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The same config trained by one process and by two ranks: their directories.
fn one_and_two_ranks(more: &[&str]) -> (tempfile::TempDir, tempfile::TempDir) {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    run_one(one.path(), more);
    launch_ok(two.path(), more);
    (one, two)
}

/// The last mixture of `rows` moved off uniform over the three sources.
fn assert_moved(rows: &[Vec<f64>]) {
    let last = rows.last().expect("ratio rows");
    assert!(
        last.iter().any(|w| (w - 1.0 / 3.0).abs() > 1e-3),
        "the mixture moved: {rows:?}"
    );
}

/// The two runs' ratios.csv rows, asserted equal to 1e-5 weight by weight.
fn assert_mixtures_close(a: &Path, b: &Path, what: &str) -> Vec<Vec<f64>> {
    assert_mixtures_within(a, b, what, 1e-5)
}

/// The two runs' ratios.csv rows, asserted equal to `tolerance` weight by weight.
fn assert_mixtures_within(a: &Path, b: &Path, what: &str, tolerance: f64) -> Vec<Vec<f64>> {
    let (ra, rb) = (
        ratio_rows(&a.join("run/ratios.csv")),
        ratio_rows(&b.join("run/ratios.csv")),
    );
    assert_eq!(ra.len(), rb.len(), "{what}: ratio rows");
    for (x, y) in ra.iter().zip(&rb) {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= tolerance, "{what}: mixture {x:?} vs {y:?}");
        }
    }
    rb
}

fn assert_bit_identical(a: &Path, b: &Path) {
    let (ma, mb) = (
        metrics_without_wall(&a.join("run/metrics.jsonl")),
        metrics_without_wall(&b.join("run/metrics.jsonl")),
    );
    assert_eq!(ma, mb, "metrics.jsonl differs");
    for file in ["ratios.csv", "mixture.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join("run").join(file)).unwrap(),
            std::fs::read(b.join("run").join(file)).unwrap(),
            "{file} differs"
        );
    }
}

fn field(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

/// Two ranks with micro-batches of 5 split 2 + 3 against one process training on all 5: the
/// same sequences, so losses and mixtures agree up to the rounding of the sums over ranks
/// (measured ~1e-8 relative; the test allows 1e-5), and the token counters exactly.
#[test]
fn two_ranks_match_one_process_and_repeat_bit_for_bit() {
    let (one, two) = one_and_two_ranks(&[]);
    let again = tempfile::tempdir().unwrap();
    launch_ok(again.path(), &[]);

    let m1 = metrics_without_wall(&one.path().join("run/metrics.jsonl"));
    let m2 = metrics_without_wall(&two.path().join("run/metrics.jsonl"));
    assert_eq!(m1.len(), m2.len());
    let mut compared = 0;
    for (a, b) in m1.iter().zip(&m2) {
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a["tokens"], b["tokens"]);
        assert_eq!(a.get("tokens_by_source"), b.get("tokens_by_source"));
        for key in ["train_loss", "val_loss", "target_val_loss", "grad_norm"] {
            if let (Some(x), Some(y)) = (field(a, key), field(b, key)) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "step {}: {key} {x} (1 process) vs {y} (2 ranks)",
                    a["step"]
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 40, "compared only {compared} values");
    let r2 = assert_mixtures_close(one.path(), two.path(), "fastmix");
    assert!(
        r2.len() >= 5,
        "fastmix updated the mixture ({} rows)",
        r2.len()
    );
    // The mixture moved: the comparison above is not between two uniform rows.
    assert!(r2
        .last()
        .unwrap()
        .iter()
        .any(|w| (w - 1.0 / 3.0).abs() > 1e-3));

    assert_bit_identical(two.path(), again.path());
}

/// Sampling with gradient accumulation and single-pass statistics: the other code paths of
/// the step.
#[test]
fn two_ranks_match_one_process_with_accumulation_and_single_pass() {
    let more = [
        "mixer.apply=hybrid",
        "mixer.fastmix.grad_stats=single-pass",
        "train.grad_accum=2",
        "train.steps=12",
    ];
    let (one, two) = one_and_two_ranks(&more);
    assert_mixtures_close(one.path(), two.path(), "hybrid, single-pass, grad_accum 2");
    let m1 = metrics_without_wall(&one.path().join("run/metrics.jsonl"));
    let m2 = metrics_without_wall(&two.path().join("run/metrics.jsonl"));
    let (x, y) = (
        field(m1.last().unwrap(), "val_loss").unwrap(),
        field(m2.last().unwrap(), "val_loss").unwrap(),
    );
    assert!((x - y).abs() <= 1e-5 * x, "final val_loss {x} vs {y}");
}

/// fastmix measuring every step of its update windows: each step's ⟨g_val, g_k⟩ is summed
/// over ranks before it joins the window, so both runs' windows agree.
#[test]
fn two_ranks_match_one_process_with_probe_windows() {
    let (one, two) = one_and_two_ranks(&["mixer.fastmix.probe_steps=window", "train.steps=12"]);
    let r2 = assert_mixtures_close(one.path(), two.path(), "probe window");
    assert_moved(&r2);
}

/// The guard's check of the target loss is split over ranks and summed: both runs' tests see
/// the same losses, so their radii and mixtures agree.
#[test]
fn two_ranks_match_one_process_with_the_guard() {
    let (one, two) = one_and_two_ranks(&[
        "mixer.guard.kind=trust-region",
        "mixer.fastmix.lr=2.0",
        "train.steps=12",
    ]);
    let r2 = assert_mixtures_close(one.path(), two.path(), "guard");
    assert_moved(&r2);
    let check_losses = |dir: &std::path::Path| -> Vec<f64> {
        metrics_without_wall(&dir.join("run/metrics.jsonl"))
            .iter()
            .filter_map(|m| m["mixer"]["guard"]["target_loss"].as_f64())
            .collect()
    };
    let (l1, l2) = (check_losses(one.path()), check_losses(two.path()));
    assert!(!l1.is_empty() && l1.len() == l2.len(), "{l1:?} vs {l2:?}");
    for (a, b) in l1.iter().zip(&l2) {
        assert!((a - b).abs() <= 1e-5 * a, "guard target loss {a} vs {b}");
    }
}

/// The mixers' extra measurements split over ranks: tikmix's g_val and influences (from its
/// extra passes, and from its default probe windows), tikmix-m's source gradients and
/// candidates' losses, DoReMi's excess losses on fresh samples, on the step's own sequences
/// and on its fixed pool (its reference model is trained by rank 0 and read by rank 1).
#[test]
fn split_measurements_match_one_process() {
    for (mixer, setting) in [
        ("tikmix", "mixer.tikmix.influence=extra-passes"),
        ("tikmix", "mixer.tikmix.influence=probe"),
        ("tikmix-m", "mixer.tikmix-m.candidates=12"),
        ("doremi", "mixer.doremi.excess_from=samples"),
        ("doremi", "mixer.doremi.excess_from=step"),
        ("doremi", "mixer.doremi.excess_from=pool"),
    ] {
        let kind = format!("mixer.kind={mixer}");
        let more = [
            kind.as_str(),
            setting,
            "train.steps=12",
            "mixer.doremi.reference_steps=10",
        ];
        let (one, two) = one_and_two_ranks(&more);
        // Sums over ranks differ from one process's in the last bits. tikmix-m's regression
        // trees and top-k choice are discontinuous in ΔL_val, so such a difference can move a
        // split or swap a candidate: 2.4e-4 in this test after the step's arithmetic changed
        // (fast_exp, fused SwiGLU), while the other mixers stay within 1e-5.
        let tolerance = if mixer == "tikmix-m" { 1e-3 } else { 1e-5 };
        let what = format!("{mixer} {setting}");
        let r2 = assert_mixtures_within(one.path(), two.path(), &what, tolerance);
        assert_eq!(r2.len(), 3, "{what}: step 0 and updates at 4 and 8");
        assert!(
            r2.last()
                .unwrap()
                .iter()
                .any(|w| (w - 1.0 / 3.0).abs() > 1e-3),
            "{what} moved the mixture: {r2:?}"
        );
    }
}

/// Rank 0 dies at step 13 (after the checkpoint of step 10); `launch --resume` finishes the
/// run, byte-identical to an uninterrupted two-rank run.
#[test]
fn resume_of_a_two_rank_run_is_bit_identical() {
    let whole = tempfile::tempdir().unwrap();
    let cut = tempfile::tempdir().unwrap();
    launch_ok(whole.path(), &[]);
    let out = launch(cut.path(), &[], Some("rank-kill=0:13"), false);
    assert!(!out.status.success(), "rank 0 was killed");
    let out = launch(cut.path(), &[], None, true);
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Rank 0's stdout is launch's: it continued from the checkpoint of step 10.
    crate::common::assert_resumed_from(&out, 10);
    assert_bit_identical(whole.path(), cut.path());
}

/// The checkpoint of a two-rank run holds the whole state: one process can continue it (not
/// bit for bit: the sums round differently), ending close to the two-rank run.
#[test]
fn a_two_rank_checkpoint_resumes_on_one_process() {
    let whole = tempfile::tempdir().unwrap();
    let cut = tempfile::tempdir().unwrap();
    launch_ok(whole.path(), &[]);
    let out = launch(cut.path(), &[], Some("rank-kill=1:13"), false);
    assert!(!out.status.success());
    let config = tiny_config(cut.path(), "");
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&config).arg("--resume");
    with_sets(&mut cmd, &[]);
    let out = run_ok(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("written by 2 rank(s), resuming with 1"),
        "{stderr}"
    );
    crate::common::assert_resumed_from(&out, 10);
    let (a, b) = (
        ratio_rows(&whole.path().join("run/ratios.csv")),
        ratio_rows(&cut.path().join("run/ratios.csv")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.last().unwrap().iter().zip(b.last().unwrap()) {
        assert!((x - y).abs() <= 1e-4, "{a:?} vs {b:?}");
    }
}

/// A rank killed mid-run: the other rank stops at once with an error naming it, `launch`
/// exits non-zero naming it too, and the last complete checkpoint is intact.
#[test]
fn a_killed_rank_stops_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, took) = launch_failing(dir.path(), 60, "rank-kill=1:8");
    // Over TCP rank 0 sees the link close; under MPI, mpirun sees the process die.
    #[cfg(not(feature = "mpi"))]
    assert!(stderr.contains("rank 1 disconnected"), "{stderr}");
    assert!(
        stderr.contains("error: rank 1 was killed by signal 9"),
        "{stderr}"
    );
    // Noticed when the socket closed, well before the 60 s timeout.
    assert!(took < Duration::from_secs(50), "{took:?}");
    let mut eval = mixtrain();
    eval.arg("eval").arg(dir.path().join("run"));
    let out = run_ok(&mut eval);
    assert!(String::from_utf8_lossy(&out.stdout).contains("prose"));
    assert!(dir
        .path()
        .join("run/checkpoints/step_00000005/DONE")
        .is_file());
}

/// A rank that stops answering (SIGSTOP): rank 0 gives up after `distributed.timeout_s` with
/// an error naming it; the launcher then kills the stopped rank and exits non-zero.
#[test]
fn a_hung_rank_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, took) = launch_failing(dir.path(), 3, "rank-stop=1:8");
    assert!(
        stderr.contains("rank 1 did not answer within distributed.timeout_s = 3 s"),
        "{stderr}"
    );
    // Rank 0 gives up on rank 1: over TCP it exits with an error, under MPI it aborts the job.
    let rank0_stopped = if cfg!(feature = "mpi") {
        "error: rank 0 stopped the job (its error is above)"
    } else {
        "error: rank 0 exited with status 1"
    };
    assert!(stderr.contains(rank0_stopped), "{stderr}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(90),
        "{took:?}"
    );
}

/// Runs `mixtrain ARGS...` expecting it to fail; its stderr.
fn failing(args: &[&std::ffi::OsStr]) -> String {
    let out = mixtrain().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_distributed_settings_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let config = config.as_os_str();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "run",
                "--set",
                "distributed.world_size=2",
                "--set",
                "distributed.rank=2",
            ],
            "distributed.rank: must be below distributed.world_size = 2 (got 2)",
        ),
        (
            &[
                "run",
                "--set",
                "distributed.world_size=2",
                "--set",
                "distributed.address=nowhere",
            ],
            "distributed.address: expected host:port",
        ),
        (&["launch", "--procs", "0"], "--procs: must be at least 1"),
    ];
    for (args, expected) in cases {
        let mut all = vec![std::ffi::OsStr::new(args[0]), config];
        all.extend(args[1..].iter().map(std::ffi::OsStr::new));
        let stderr = failing(&all);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("run").exists(), "nothing was created");
}

/// tikmix-m's probed G_k: each step's per-source gradients are summed over ranks before they
/// join the update's window, so both runs' candidates step along the same G_k.
#[test]
fn two_ranks_match_one_process_with_tikmix_m_probed_gradients() {
    let more = [
        "mixer.kind=tikmix-m",
        "mixer.tikmix-m.candidates=4",
        "train.steps=12",
    ];
    let (one, two) = one_and_two_ranks(&more);
    let r2 = assert_mixtures_close(one.path(), two.path(), "tikmix-m, probed G_k");
    assert_moved(&r2);
}

/// Three ranks (micro-batches of 5 split 1 + 2 + 2) against one process, and again bit for bit.
#[test]
fn three_ranks_match_one_process_and_repeat_bit_for_bit() {
    let more = ["train.steps=12"];
    let one = tempfile::tempdir().unwrap();
    run_one(one.path(), &more);
    let three = tempfile::tempdir().unwrap();
    let again = tempfile::tempdir().unwrap();
    for dir in [&three, &again] {
        assert_launched(&launch_ranks(dir.path(), 3, &more, None, false));
    }
    let rows = assert_mixtures_close(one.path(), three.path(), "three ranks");
    assert_moved(&rows);
    assert_bit_identical(three.path(), again.path());
}

/// Built without MPI, a process that an MPI launcher started refuses to train alone (each
/// would write the same run directory), and `launch --transport mpi` names the feature.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_an_mpi_job_is_refused_naming_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let out = mixtrain()
        .arg("run")
        .arg(&config)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("built without MPI") && stderr.contains("--features mpi"),
        "{stderr}"
    );
    let mut cmd = mixtrain();
    cmd.arg("launch")
        .arg(&config)
        .args(["--procs", "2", "--transport", "mpi"]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--transport: mpi needs a mixtrain built with the `mpi` feature"),
        "{stderr}"
    );
    assert!(!dir.path().join("run").exists(), "nothing was created");
}

/// MPI's rank-order all-reduce gives the TCP star's bits: 3 ranks started by `mpirun` directly
/// (rank and world size from MPI, no `[distributed]` settings) and by `launch --transport
/// tcp` write byte-identical runs.
#[cfg(feature = "mpi")]
#[test]
fn mpirun_ranks_are_bit_identical_to_tcp_ranks() {
    let more = ["train.steps=12"];
    let tcp = tempfile::tempdir().unwrap();
    let config = tiny_config(tcp.path(), "");
    let mut cmd = mixtrain();
    cmd.arg("launch")
        .arg(&config)
        .args(["--procs", "3", "--transport", "tcp"]);
    with_sets(&mut cmd, &more);
    run_ok(&mut cmd);

    let mpi = tempfile::tempdir().unwrap();
    let config = tiny_config(mpi.path(), "");
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["-np", "3", "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .arg(env!("CARGO_BIN_EXE_mixtrain"))
        .arg("run")
        .arg(&config);
    with_sets(&mut cmd, &more);
    let out = run_ok(&mut cmd);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("transport=\"mpi\""),
        "the ranks joined over MPI"
    );
    assert_moved(&ratio_rows(&mpi.path().join("run/ratios.csv")));
    assert_bit_identical(tcp.path(), mpi.path());
}

/// A rank that hangs inside the data collectives, after every rank agreed on the step: MPI
/// would wait for ever; the watchdog stops the job after `distributed.timeout_s` + 5 s.
#[cfg(feature = "mpi")]
#[test]
fn a_rank_hung_inside_an_mpi_all_reduce_is_stopped_by_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, took) = launch_failing(dir.path(), 3, "rank-hang-in-reduce=1:6");
    assert!(
        stderr.contains("did not complete within distributed.timeout_s = 3 s (+5 s)"),
        "{stderr}"
    );
    assert!(stderr.contains("the run stopped"), "{stderr}");
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(90),
        "{took:?}"
    );
}
