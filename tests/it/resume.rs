//! Kill -9 at a random step, then `--resume`: metrics.jsonl (less wall-clock fields),
//! ratios.csv, mixture.json and the final model are byte-identical to an uninterrupted run.
//! Set MIXTRAIN_KILL_STEP to replay a failing kill step.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{assert_resumed_from, metrics_without_wall, mixtrain, run_ok, tiny_config};

fn last_logged_step(metrics: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .next_back()
}

fn kill_and_resume(backend: &str, more_sets: &[&str]) {
    let steps = 60;
    let kill_step = std::env::var("MIXTRAIN_KILL_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .subsec_nanos() as u64;
            // From step 6 on, at least the checkpoint of step 5 is complete: a resume, not a
            // restart, is what is tested.
            6 + nanos % 45
        });
    eprintln!(
        "{backend}: killing at step {kill_step} (replay with MIXTRAIN_KILL_STEP={kill_step})"
    );

    let whole = tempfile::tempdir().unwrap();
    let cut = tempfile::tempdir().unwrap();
    let mut sets = vec![
        format!("run.backend={backend}"),
        format!("train.steps={steps}"),
    ];
    sets.extend(more_sets.iter().map(|s| s.to_string()));
    let with_sets = |cmd: &mut std::process::Command| {
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
    };

    let whole_cfg = tiny_config(whole.path(), "");
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&whole_cfg);
    with_sets(&mut cmd);
    run_ok(&mut cmd);

    let cut_cfg = tiny_config(cut.path(), "");
    let mut cmd = mixtrain();
    cmd.arg("run")
        .arg(&cut_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    with_sets(&mut cmd);
    let mut child = cmd.spawn().expect("spawn mixtrain");
    let metrics = cut.path().join("run/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_logged_step(&metrics).is_none_or(|s| s < kill_step) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before the kill step"
        );
        assert!(
            Instant::now() < deadline,
            "run did not reach step {kill_step}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed, not finished");
    let logged = last_logged_step(&metrics).unwrap();
    assert!(
        logged < steps as u64,
        "killed before the end (last logged step {logged})"
    );

    let expected = crate::common::newest_complete_checkpoint(&cut.path().join("run/checkpoints"))
        .expect("a complete checkpoint exists after step 6");
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&cut_cfg).arg("--resume");
    with_sets(&mut cmd);
    let out = run_ok(&mut cmd);
    assert_resumed_from(&out, expected);

    let (a, b) = (whole.path().join("run"), cut.path().join("run"));
    let ma = metrics_without_wall(&a.join("metrics.jsonl"));
    let mb = metrics_without_wall(&b.join("metrics.jsonl"));
    assert_eq!(ma.len(), mb.len(), "same number of metrics lines");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x, y);
    }
    // Byte-identical text too, once the wall fields are dropped.
    assert_eq!(
        ma.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        mb.iter().map(|v| v.to_string()).collect::<Vec<_>>()
    );
    for file in ["ratios.csv", "mixture.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs after kill at step {kill_step} and resume"
        );
    }
}

#[test]
fn kill_9_then_resume_is_bit_identical_ndarray() {
    kill_and_resume("ndarray", &[]);
}

#[test]
fn kill_9_then_resume_is_bit_identical_flex() {
    kill_and_resume("flex", &[]);
}

#[test]
fn kill_9_then_resume_is_bit_identical_sampling_with_grad_accum() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.apply=sample",
            "mixer.init={prose = 3, code = 1, legal = 1}",
            "train.grad_accum=2",
            "train.keep_checkpoints=1",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_fastmix() {
    kill_and_resume("ndarray", &["mixer.kind=fastmix", "mixer.every=3"]);
}

/// Windows of 4 steps, checkpoints every 5: most checkpoints fall inside a probe window, so
/// its g_val and sums must travel with them (`window_checkpoint_holds_g_val` checks they do).
#[test]
fn kill_9_then_resume_is_bit_identical_fastmix_probe_window() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=fastmix",
            "mixer.every=4",
            "mixer.fastmix.probe_steps=window",
        ],
    );
}

/// The schedule mixer, linear between stages given by fraction and by step: its weights at a
/// resumed step come from the schedule, its checkpoint holds the current ones.
#[test]
fn kill_9_then_resume_is_bit_identical_schedule() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=schedule",
            "mixer.schedule.interpolate=linear",
            "mixer.every=3",
            "mixer.schedule.stages=[{at = 0.0, weights = {prose = 0.6, code = 0.2, legal = 0.2}}, \
             {at = 0.4, weights = {prose = 0.1, code = 0.1, legal = 0.8}}, \
             {step = 50, weights = {prose = 0.2, code = 0.7, legal = 0.1}}]",
        ],
    );
}

/// Runs the tiny config with `sets` in a new temporary directory, which it returns.
fn run_tiny(sets: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "");
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&cfg);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    run_ok(&mut cmd);
    dir
}

#[test]
fn window_checkpoint_holds_g_val() {
    let dir = run_tiny(&[
        "train.steps=10",
        "train.keep_checkpoints=3",
        "mixer.kind=fastmix",
        "mixer.every=4",
        "mixer.fastmix.probe_steps=window",
    ]);
    let checkpoint = |step: usize| dir.path().join(format!("run/checkpoints/step_{step:08}"));
    // Step 5 is inside the window of the update at step 8 (steps 5..=8): one step measured.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint(5).join("state.json")).unwrap())
            .unwrap();
    let sums = state["parts"]["mixing"]["probe_window"]
        .as_array()
        .expect("an open window");
    assert_eq!(sums.len(), 3, "one (sum, steps) per source");
    let steps: Vec<u64> = sums.iter().map(|s| s[1].as_u64().unwrap()).collect();
    assert!(steps.iter().all(|&n| n <= 1) && steps.contains(&1));
    assert!(
        safetensor_bytes(&checkpoint(5).join("mixing.safetensors"), "g_val").is_some(),
        "the window's g_val is saved"
    );
    // Step 10 is the end of the run: no update window is open.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint(10).join("state.json")).unwrap())
            .unwrap();
    assert!(state["parts"]["mixing"].get("probe_window").is_none());
}

/// One g_val for 3 updates (`mixer.fastmix.gval_every = 3`): most checkpoints fall between two
/// updates that share a g_val, so the kept g_val travels with them.
#[test]
fn kill_9_then_resume_is_bit_identical_fastmix_kept_gval() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=fastmix",
            "mixer.every=2",
            "mixer.fastmix.gval_every=3",
        ],
    );
}

/// The bytes of tensor `name` in a safetensors file.
fn safetensor_bytes(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = header.get(name)?["data_offsets"].as_array()?.clone();
    let (start, end) = (offsets[0].as_u64()? as usize, offsets[1].as_u64()? as usize);
    Some(bytes[8 + header_len + start..8 + header_len + end].to_vec())
}

/// Windows of 2 steps, one g_val for 3 updates, a checkpoint after every step.
const KEPT_GVAL_EVERY_STEP: [&str; 7] = [
    "train.steps=10",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=10",
    "mixer.kind=fastmix",
    "mixer.every=2",
    "mixer.fastmix.probe_steps=window",
    "mixer.fastmix.gval_every=3",
];

/// With windows of 2 steps and `gval_every = 3`, the g_val computed for the update at step 2
/// serves the updates at 4 and 6 too, and a fresh one is computed for step 8's window: every
/// checkpoint from step 1 to 5 holds the same g_val bytes, step 6 (after its third update)
/// none, steps 7 to 10 a different one; `gval_served` counts the updates it served.
#[test]
fn kept_gval_serves_gval_every_updates() {
    let dir = run_tiny(&KEPT_GVAL_EVERY_STEP);
    let checkpoint = |step: usize| dir.path().join(format!("run/checkpoints/step_{step:08}"));
    let state = |step: usize| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(checkpoint(step).join("state.json")).unwrap())
            .unwrap()
    };
    let g_val =
        |step: usize| safetensor_bytes(&checkpoint(step).join("mixing.safetensors"), "g_val");
    // (window open, gval_served) after each step.
    let expected = [
        (true, Some(0)),
        (false, Some(1)),
        (true, Some(1)),
        (false, Some(2)),
        (true, Some(2)),
        (false, None),
        (true, Some(0)),
        (false, Some(1)),
        (false, Some(1)),
        (false, Some(1)),
    ];
    for (step, &(window, served)) in (1..=10).zip(&expected) {
        let state = state(step);
        let mixing = &state["parts"]["mixing"];
        assert_eq!(mixing.get("probe_window").is_some(), window, "step {step}");
        assert_eq!(mixing["gval_served"].as_u64(), served, "step {step}");
        assert_eq!(g_val(step).is_some(), served.is_some(), "step {step}");
    }
    let first = g_val(1).unwrap();
    for step in 2..=5 {
        assert_eq!(
            g_val(step).unwrap(),
            first,
            "step {step} reuses step 1's g_val"
        );
    }
    let second = g_val(7).unwrap();
    assert_ne!(second, first, "a fresh g_val after gval_every updates");
    for step in 8..=10 {
        assert_eq!(g_val(step).unwrap(), second, "step {step}");
    }
}

#[test]
fn kill_9_then_resume_is_bit_identical_fastmix_head_scope_sampling() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=fastmix",
            "mixer.every=4",
            "mixer.apply=sample",
            "mixer.fastmix.scope=head",
            "mixer.fastmix.precondition=false",
        ],
    );
}

/// tikmix's default: I_k from every step of its windows of 4, checkpoints every 5 (most
/// inside a window).
#[test]
fn kill_9_then_resume_is_bit_identical_tikmix() {
    kill_and_resume("ndarray", &["mixer.kind=tikmix", "mixer.every=4"]);
}

#[test]
fn kill_9_then_resume_is_bit_identical_tikmix_extra_passes() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=tikmix",
            "mixer.every=3",
            "mixer.tikmix.influence=extra-passes",
            "mixer.tikmix.samples_per_source=6",
        ],
    );
}

/// tikmix-m's default: G_k from the traced step before each update. The regressor is
/// refitted from the checkpointed history and the candidate RNG.
#[test]
fn kill_9_then_resume_is_bit_identical_tikmix_m() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=tikmix-m",
            "mixer.every=3",
            "mixer.tikmix-m.samples_per_source=4",
            "mixer.tikmix-m.candidates=4",
        ],
    );
}

/// G_k from every traced step of windows of 3, checkpoints every 5 (most inside a window:
/// the G_k sums are saved and restored).
#[test]
fn kill_9_then_resume_is_bit_identical_tikmix_m_probe_window() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=tikmix-m",
            "mixer.every=3",
            "mixer.tikmix-m.probe_steps=window",
            "mixer.tikmix-m.samples_per_source=4",
            "mixer.tikmix-m.candidates=4",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_tikmix_m_extra_passes() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=tikmix-m",
            "mixer.every=3",
            "mixer.tikmix-m.gradients=extra-passes",
            "mixer.tikmix-m.samples_per_source=4",
            "mixer.tikmix-m.candidates=4",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_odm() {
    kill_and_resume("ndarray", &["mixer.kind=odm", "mixer.every=2"]);
}

#[test]
fn kill_9_then_resume_is_bit_identical_doremi() {
    // The reference model is trained first and saved; the resumed run loads it back, and
    // rebuilds the default fixed pool (`excess_from = "pool"`) from the run's seed.
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=doremi",
            "mixer.every=3",
            "mixer.doremi.reference_steps=10",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_doremi_excess_from_step() {
    // λ_k measured on the step before each update: carried from the step to the update.
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=doremi",
            "mixer.every=3",
            "mixer.doremi.reference_steps=10",
            "mixer.doremi.excess_from=step",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_doremi_excess_from_samples() {
    // Fresh samples at each update: the probe stream travels with the sampler's state.
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=doremi",
            "mixer.every=3",
            "mixer.doremi.reference_steps=10",
            "mixer.doremi.excess_from=samples",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_ado_hybrid_trust_region() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=ado",
            "mixer.every=2",
            "mixer.ado.min_points=2",
            "mixer.apply=hybrid",
            "mixer.max_change=0.05",
            "mixer.warmup_steps=6",
        ],
    );
}

/// The guard's radius, trend, last good mixture and the inner mixer's state travel with the
/// checkpoint (a large fastmix step, so the radius binds and changes).
#[test]
fn kill_9_then_resume_is_bit_identical_fastmix_guarded() {
    kill_and_resume(
        "ndarray",
        &[
            "mixer.kind=fastmix",
            "mixer.every=3",
            "mixer.fastmix.lr=2.0",
            "mixer.guard.kind=trust-region",
        ],
    );
}

#[test]
fn kill_9_then_resume_is_bit_identical_fastmix_target_set() {
    let man = crate::common::repo().join("data/quickstart/man.jsonl");
    let sets = format!(
        "target.sets=[{{ name = \"heldout\", path = \"{}\" }}]",
        man.display()
    );
    kill_and_resume("ndarray", &["mixer.kind=fastmix", "mixer.every=3", &sets]);
}

/// Rewrites the format-2 checkpoint in `dir` as the format-1 one of an older version: the
/// parts' states flat at the top level, the mixing part's g_val as `probe.g_val` in the
/// optimizer file, and an empty DONE (older versions wrote no digests).
fn downgrade_to_format_1(dir: &std::path::Path) {
    use mixtrain::export::{read_safetensors, write_safetensors};
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let parts = &state["parts"];
    let mut flat = serde_json::Map::new();
    for key in [
        "step",
        "config_hash",
        "metrics_bytes",
        "ratios_bytes",
        "world_size",
    ] {
        flat.insert(key.into(), state[key].clone());
    }
    flat.insert("format".into(), 1.into());
    flat.insert(
        "optimizer_steps".into(),
        parts["trainer"]["optimizer_steps"].clone(),
    );
    for (key, value) in parts["trainer"]["progress"].as_object().unwrap() {
        flat.insert(key.clone(), value.clone());
    }
    flat.insert("sampler".into(), parts["batches"]["sampler"].clone());
    for (key, value) in parts["mixing"].as_object().unwrap() {
        flat.insert(key.clone(), value.clone());
    }
    let text = serde_json::to_string_pretty(&flat).unwrap();
    std::fs::write(dir.join("state.json"), text).unwrap();
    let mut optimizer: Vec<_> = read_safetensors(&dir.join("optimizer.safetensors"))
        .unwrap()
        .into_values()
        .collect();
    let mut mixing = read_safetensors(&dir.join("mixing.safetensors")).unwrap();
    let mut g_val = mixing.remove("g_val").expect("step 5 has a g_val");
    g_val.name = "probe.g_val".into();
    optimizer.push(g_val);
    write_safetensors(&dir.join("optimizer.safetensors"), &optimizer, &[]).unwrap();
    std::fs::remove_file(dir.join("mixing.safetensors")).unwrap();
    std::fs::write(dir.join("DONE"), b"").unwrap();
}

/// A checkpoint of the older format 1 (flat state, g_val in the optimizer file), taken inside
/// a probe window with a kept g_val, resumes to the same bytes as an uninterrupted run.
#[test]
fn format_1_checkpoint_resumes_bit_identically() {
    let sets = KEPT_GVAL_EVERY_STEP;
    let whole = run_tiny(&sets);
    let cut = run_tiny(&sets);
    let checkpoints = cut.path().join("run/checkpoints");
    for step in 6..=10 {
        std::fs::remove_dir_all(checkpoints.join(format!("step_{step:08}"))).unwrap();
    }
    downgrade_to_format_1(&checkpoints.join("step_00000005"));
    let mut cmd = mixtrain();
    cmd.arg("run")
        .arg(cut.path().join("config.toml"))
        .arg("--resume");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    assert_resumed_from(&run_ok(&mut cmd), 5);
    let (a, b) = (whole.path().join("run"), cut.path().join("run"));
    assert_eq!(
        metrics_without_wall(&a.join("metrics.jsonl")),
        metrics_without_wall(&b.join("metrics.jsonl"))
    );
    for file in ["ratios.csv", "mixture.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs after resuming from a format-1 checkpoint"
        );
    }
}
