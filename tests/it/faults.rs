//! Faults around a run, on the real binary: a second process on the same run directory, kills
//! at every phase of a checkpoint write, damaged checkpoints, a full disk, non-finite losses.
//! Kills and errors are placed with `MIXTRAIN_FAULT` (src/fault.rs) so every trial is
//! reproducible; after each, `--resume` must give the uninterrupted run's bytes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{metrics_without_wall, mixtrain, run_ok, tiny_config};

const STEPS: usize = 40;

/// Everything a finished run leaves that must not depend on interruptions.
#[derive(Debug, PartialEq)]
struct RunOutputs {
    metrics: Vec<serde_json::Value>,
    ratios: String,
    mixture: String,
    model: Vec<u8>,
}

fn outputs(run: &Path) -> RunOutputs {
    RunOutputs {
        metrics: metrics_without_wall(&run.join("metrics.jsonl")),
        ratios: std::fs::read_to_string(run.join("ratios.csv")).unwrap(),
        mixture: std::fs::read_to_string(run.join("mixture.json")).unwrap(),
        model: std::fs::read(run.join("model.safetensors")).unwrap(),
    }
}

/// The tiny config with fastmix (mixer state in every checkpoint), 40 steps, a checkpoint
/// every 5 steps (8 saves; from the 3rd on each one prunes an older one).
fn config(dir: &Path) -> PathBuf {
    tiny_config(dir, "[mixer]\nkind = \"fastmix\"\nevery = 3\n")
}

fn run_cmd(config: &Path, fault: Option<&str>, resume: bool) -> Command {
    let mut cmd = mixtrain();
    cmd.arg("run").arg(config);
    if resume {
        cmd.arg("--resume");
    }
    match fault {
        Some(f) => cmd.env("MIXTRAIN_FAULT", f),
        None => cmd.env_remove("MIXTRAIN_FAULT"),
    };
    cmd
}

fn run_failing(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("spawn mixtrain");
    assert!(!out.status.success(), "mixtrain should have failed");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

fn reference_outputs() -> (tempfile::TempDir, RunOutputs) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run_ok(&mut run_cmd(&cfg, None, false));
    let out = outputs(&dir.path().join("run"));
    (dir, out)
}

/// Names in run/checkpoints.
fn checkpoint_entries(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A small deterministic generator for the trial points (SplitMix64).
struct Trials(u64);
impl Trials {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn kills_at_every_phase_of_a_checkpoint_write_resume_bit_identically() {
    let (_ref_dir, expected) = reference_outputs();
    let seed = std::env::var("MIXTRAIN_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261124u64);
    let mut trials = Trials(seed);
    let phases = ["partial", "before-rename", "after-rename", "pruning"];
    let saves = STEPS / 5;
    let mut seen_phases = std::collections::BTreeSet::new();
    for trial in 0..20 {
        // The first four trials cover each phase once; the rest are drawn.
        let phase = phases[if trial < 4 {
            trial
        } else {
            trials.next(4) as usize
        }];
        // Pruning starts at the third save (two checkpoints are kept).
        let first = if phase == "pruning" { 3 } else { 1 };
        let save = first + trials.next((saves + 1 - first) as u64) as usize;
        let fault = format!("checkpoint-kill={phase}:{save}");
        eprintln!("trial {trial}: {fault} (replay: MIXTRAIN_FAULT_SEED={seed})");
        seen_phases.insert(phase);

        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let out = run_cmd(&cfg, Some(&fault), false).output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{fault}: the run should have been killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = dir.path().join("run");
        let newest = crate::common::newest_complete_checkpoint(&run.join("checkpoints"));
        let out = run_ok(&mut run_cmd(&cfg, None, true));
        // The killed save counts only if its rename happened.
        let killed_at = save * 5;
        let expected_from = match phase {
            "partial" | "before-rename" => (save > 1).then(|| killed_at - 5),
            _ => Some(killed_at),
        };
        assert_eq!(newest, expected_from, "{fault}: checkpoints on disk");
        match expected_from {
            Some(step) => crate::common::assert_resumed_from(&out, step),
            None => crate::common::assert_restarted(&out),
        }
        assert!(
            outputs(&run) == expected,
            "{fault}: the resumed run differs from the uninterrupted one"
        );
        // What the killed save left behind was cleaned up by a later one.
        let entries = checkpoint_entries(&run);
        assert_eq!(
            entries,
            ["step_00000035", "step_00000040"],
            "{fault}: {entries:?}"
        );
    }
    assert_eq!(seen_phases.len(), 4);
}

#[test]
fn a_second_process_on_a_run_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "");
    let long = [
        "--set",
        "train.steps=3000",
        "--set",
        "train.checkpoint_every=50",
    ];
    let mut first = run_cmd(&cfg, None, false)
        .args(long)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("run/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 2) {
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        assert!(Instant::now() < deadline, "first run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder = format!("pid {}", first.id());
    for resume in [false, true] {
        let started = Instant::now();
        let (_, stderr) = run_failing(run_cmd(&cfg, None, resume).args(long));
        assert!(
            stderr.contains("is in use by another mixtrain process") && stderr.contains(&holder),
            "resume={resume}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not refused at once"
        );
    }
    // `demix` writes into run.out_dir/demix/: the same lock refuses it.
    let mut demix = mixtrain();
    demix.arg("demix").arg(&cfg).args(long);
    let (_, stderr) = run_failing(&mut demix);
    assert!(
        stderr.contains("is in use by another mixtrain process") && stderr.contains(&holder),
        "demix: {stderr}"
    );
    assert!(
        !dir.path().join("run/demix").exists(),
        "the refused demix wrote nothing"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was disturbed"
    );
    first.kill().unwrap(); // SIGKILL: the lock file stays behind, the lock does not.
    first.wait().unwrap();
    assert!(dir.path().join("run/.lock").is_file());
    let mut resumed = run_cmd(&cfg, None, true)
        .args([
            "--set",
            "train.steps=3000",
            "--set",
            "train.checkpoint_every=50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The resume took the lock: it keeps running (a refusal exits at once, non-zero), or on a
    // fast machine has already finished successfully.
    std::thread::sleep(Duration::from_secs(3));
    let healthy = match resumed.try_wait().unwrap() {
        None => true,
        Some(status) => status.success(),
    };
    let _ = resumed.kill();
    let out = resumed.wait_with_output().unwrap();
    assert!(
        healthy,
        "resume after a killed run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_damaged_checkpoint_is_reported_kept_and_skipped_for_the_previous_one() {
    let (_ref_dir, expected) = reference_outputs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run_ok(&mut run_cmd(&cfg, None, false));
    let run = dir.path().join("run");
    let newest = run.join("checkpoints/step_00000040/model.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x40;
    std::fs::write(&newest, &bytes).unwrap();

    // eval reads past it (and leaves it where it is).
    let out = run_ok(mixtrain().arg("eval").arg(&run).arg("--json"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["step"], 35);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(run.join("checkpoints/step_00000040").is_dir());

    // Resume names it, keeps it aside, resumes from step 35 and ends as if nothing happened.
    let out = run_ok(&mut run_cmd(&cfg, None, true));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step_00000040") && stderr.contains("damaged: SHA-256"),
        "{stderr}"
    );
    crate::common::assert_resumed_from(&out, 35);
    assert!(outputs(&run) == expected, "resumed run differs");
    let aside = run.join("checkpoints/damaged-step_00000040/model.safetensors");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the damaged copy was kept"
    );

    // With every checkpoint damaged, resume refuses and deletes nothing.
    for (step, file) in [(35, "state.json"), (40, "optimizer.safetensors")] {
        let path = run.join(format!("checkpoints/step_{step:08}/{file}"));
        let mut data = std::fs::read(&path).unwrap();
        data[10] ^= 0x01;
        std::fs::write(&path, data).unwrap();
    }
    let (_, stderr) = run_failing(&mut run_cmd(&cfg, None, true));
    assert!(stderr.contains("no intact checkpoint left"), "{stderr}");
    assert!(stderr.contains("state.json") && stderr.contains("optimizer.safetensors"));
    let entries = checkpoint_entries(&run);
    assert_eq!(entries.len(), 3, "{entries:?}");
}

#[test]
fn a_full_disk_during_a_checkpoint_fails_clearly_and_keeps_the_earlier_ones() {
    let (_ref_dir, expected) = reference_outputs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (_, stderr) = run_failing(&mut run_cmd(&cfg, Some("checkpoint-write-error=3"), false));
    assert!(
        stderr.contains("step_00000015")
            && stderr.contains("optimizer.safetensors")
            && stderr.contains("No space left on device")
            && stderr.contains("earlier checkpoints are untouched"),
        "{stderr}"
    );
    let run = dir.path().join("run");
    assert_eq!(
        checkpoint_entries(&run),
        ["step_00000005", "step_00000010"],
        "the failed save left its temporary directory"
    );
    // Both earlier checkpoints are intact: eval verifies their digests.
    for step in [5, 10] {
        let path = run.join(format!("checkpoints/step_{step:08}"));
        run_ok(mixtrain().arg("eval").arg(&path));
    }
    let out = run_ok(&mut run_cmd(&cfg, None, true));
    crate::common::assert_resumed_from(&out, 10);
    assert!(outputs(&run) == expected, "resumed run differs");
}

#[test]
fn extending_a_run_is_refused_naming_train_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run_ok(&mut run_cmd(&cfg, None, false));
    let (_, stderr) = run_failing(run_cmd(&cfg, None, true).args(["--set", "train.steps=80"]));
    assert!(
        stderr.contains("train.steps = 40 there, 80 here") && stderr.contains("cannot be extended"),
        "{stderr}"
    );
}

#[test]
fn a_nonfinite_loss_stops_the_run_naming_step_and_source_after_saving_the_last_good_state() {
    let (_ref_dir, expected) = reference_outputs();
    // Step 13 is a plain step; step 15 is probed (fastmix updates at 15), so its validation
    // batches were drawn before it failed and must be drawn again on resume.
    for step in [13, 15] {
        nonfinite_then_resume(step, &expected);
    }
}

/// A NaN inside a gradient tensor (the losses finite) is caught by the gradient norm, with
/// the same policy as a non-finite loss.
#[test]
fn a_nan_gradient_stops_the_run_naming_the_gradient_norm() {
    let (_ref_dir, expected) = reference_outputs();
    nonfinite_then_resume_with("nonfinite-grad", 13, "gradient norm is NaN", &expected);
}

fn nonfinite_then_resume(step: usize, expected: &RunOutputs) {
    let what = "loss is NaN (non-finite in source(s): ";
    nonfinite_then_resume_with("nonfinite-loss", step, what, expected);
}

fn nonfinite_then_resume_with(fault: &str, step: usize, what: &str, expected: &RunOutputs) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let fault = format!("{fault}={step}");
    let (_, stderr) = run_failing(&mut run_cmd(&cfg, Some(&fault), false));
    let last_good = format!("step_{:08}", step - 1);
    assert!(
        stderr.contains(&format!("step {step}: {what}")) && stderr.contains(&last_good),
        "{stderr}"
    );
    let run = dir.path().join("run");
    assert!(run
        .join("checkpoints")
        .join(&last_good)
        .join("DONE")
        .is_file());
    // The checkpoint holds the state before the step (sampler included): resuming without the
    // fault replays it and ends exactly like a run that never failed.
    let out = run_ok(&mut run_cmd(&cfg, None, true));
    crate::common::assert_resumed_from(&out, step - 1);
    assert!(
        outputs(&run) == *expected,
        "step {step}: resumed run differs"
    );
}

#[test]
fn skip_mode_drops_nonfinite_steps_and_stops_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let skip = ["--set", "train.on_nonfinite=skip"];
    run_ok(run_cmd(&cfg, Some("nonfinite-loss=13"), false).args(skip));
    let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
    let line = metrics.iter().find(|m| m["step"] == 13).unwrap();
    assert!(
        line["skipped"].as_str().unwrap().contains("loss is NaN"),
        "{line}"
    );
    // The skipped step trained on nothing: 39 steps of 6 sequences of 32 tokens.
    let last = metrics.last().unwrap();
    assert_eq!(last["tokens"], 39 * 6 * 32);
    let by_source: u64 = last["tokens_by_source"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_source, 39 * 6 * 32);

    // A NaN in a gradient (losses finite) is dropped the same way and never reaches AdamW's
    // moments: the run ends with finite losses.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run_ok(run_cmd(&cfg, Some("nonfinite-grad=13"), false).args(skip));
    let metrics = metrics_without_wall(&dir.path().join("run/metrics.jsonl"));
    let line = metrics.iter().find(|m| m["step"] == 13).unwrap();
    assert!(
        line["skipped"]
            .as_str()
            .unwrap()
            .contains("gradient norm is NaN"),
        "{line}"
    );
    let last = metrics.last().unwrap();
    assert_eq!(last["step"], 40);
    let val = last["val_loss"].as_f64().expect("a final validation loss");
    assert!(val.is_finite() && val < 6.0, "{last}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (_, stderr) = run_failing(run_cmd(&cfg, Some("nonfinite-loss=13"), false).args([
        "--set",
        "train.on_nonfinite=skip",
        "--set",
        "train.max_skipped_steps=0",
    ]));
    assert!(
        stderr.contains("step 13") && stderr.contains("train.max_skipped_steps = 0"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_out_dir_is_a_clear_error() {
    // A regular file where a directory must go fails even for root (which ignores permissions).
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").unwrap();
    let out_dir = blocker.join("run");
    let (out, stderr) = run_failing(
        run_cmd(&cfg, None, false).args(["--set", &format!("run.out_dir={}", out_dir.display())]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&out_dir.display().to_string()) && stderr.contains("Not a directory"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&blocker).unwrap(), b"a file");
}
