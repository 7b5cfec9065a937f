//! Bad inputs: each gives a non-zero exit, one message naming what is wrong, no panic, and
//! leaves existing run files as they were.

use std::path::Path;
use std::process::Command;

use crate::common::{mixtrain, run_ok, tiny_config};

/// Runs `cmd`, expects exit status 1 (the README's promise for bad input) with `needle` in
/// stderr and no panic (a panic exits with 101).
fn expect_error(cmd: &mut Command, needle: &str) -> String {
    let out = cmd.output().expect("spawn mixtrain");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1 for {needle:?}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked at"),
        "panic for {needle:?}:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "expected {needle:?} in the error; stderr:\n{stderr}"
    );
    stderr
}

fn run_with(config: &Path, sets: &[&str]) -> Command {
    let mut cmd = mixtrain();
    cmd.arg("run").arg(config);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd
}

#[test]
fn config_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let cases: &[(&[&str], &str)] = &[
        (&["train.stepz=3"], "train.stepz: unknown field `stepz`"),
        (&["model.widht=3"], "unknown field `widht`"),
        (&["train.steps=\"ten\""], "train.steps"),
        (&["train.lr=-1"], "train.lr: must be > 0 (got -1)"),
        (
            &["model.n_heads=3"],
            "model.n_heads: must divide model.d_model",
        ),
        (&["mixer.kind=magic"], "mixer.kind: unknown variant `magic`"),
        (
            &["mixer.init={nope = 1.0}"],
            "mixer.init.nope: no source named \"nope\"",
        ),
        (
            &["mixer.init=fancy"],
            "mixer.init: unknown mixture \"fancy\"",
        ),
        (
            &["data.sources.0.val_fraction=0"],
            "data.sources[0].val_fraction: must be in (0, 1)",
        ),
        (&["data.sources.1.name=prose"], "duplicate source name"),
        (
            &["data.tokenizer=gpt9"],
            "data.tokenizer: unknown tokenizer",
        ),
        (
            &["data.tokenizer=bpe:/no/such/tokenizer.json"],
            "/no/such/tokenizer.json",
        ),
        (
            &["target.sources=[\"math\"]"],
            "target.sources: no source or target set named \"math\"",
        ),
        (&["mixer.min_weight=0.5"], "mixer.min_weight"),
        (
            &["mixer.probe_steps=window"],
            "mixer.probe_steps: moved into the section of the mixer it configures",
        ),
        (&["mixer.fastmix.gval_every=0"], "mixer.fastmix.gval_every"),
        (
            &["data.sources.0.text_field=\"\""],
            "data.sources[0].text_field: must not be empty",
        ),
        (&["data.on_bad_record=ignore"], "data.on_bad_record"),
        (
            &["data.max_bad_fraction=1.5"],
            "data.max_bad_fraction: must be in [0, 1)",
        ),
        (&["data.max_epochs=0"], "data.max_epochs"),
        (
            &["mixer.tikmix.probe_steps=all"],
            "mixer.tikmix.probe_steps",
        ),
        (&["train.beta2=1.5"], "train.beta2: must be in [0, 1)"),
        (&["data.sources.9.path=x"], "index 9 out of range"),
        (&["novalue"], "expected key=value"),
        (
            &["mixer.kind=doremi", "mixer.doremi.reference=/no/such/run"],
            "mixer.doremi.reference: /no/such/run is neither",
        ),
        (&["mixer.fastmix.lr=0"], "mixer.fastmix.lr: must be > 0"),
        (
            &["mixer.tikmix.blend=1.5"],
            "mixer.tikmix.blend: must be in (0, 1]",
        ),
        (
            &["mixer.tikmix-m.top_k=2000"],
            "mixer.tikmix-m.top_k: must be <= mixer.tikmix-m.pool = 1000",
        ),
        (&["mixer.kind=tikmix_m"], "tikmix-m"),
        (
            &["mixer.tikmix-m.val_batches=1"],
            "mixer.tikmix-m.val_batches: replaced by mixer.tikmix-m.val_sequences",
        ),
        (
            &["mixer.tikmix-m.val_sequences=0"],
            "mixer.tikmix-m.val_sequences",
        ),
        (
            &["mixer.init=entropy:renyi"],
            "mixer.init: unknown mixture \"entropy:renyi\"",
        ),
        (
            &["target.sets=[{ name = \"prose\", path = \"x.jsonl\" }]"],
            "target.sets[0].name: \"prose\" is also a training source's name",
        ),
        (
            &["target.sets=[{ name = \"qa\", path = \"\" }]"],
            "target.sets[0].path: must not be empty",
        ),
        (
            &["target.sets=[{ name = \"qa\", path = \"x.jsonl\", weight = 2 }]"],
            "unknown field `weight`",
        ),
        (
            &["mixer.max_change=0"],
            "mixer.max_change: must be in (0, 1]",
        ),
        (
            &["mixer.ado.history=2"],
            "mixer.ado.history: must be >= mixer.ado.min_points = 4",
        ),
        (&["mixer.apply=stratified"], "mixer.apply: unknown variant"),
    ];
    for (sets, needle) in cases {
        expect_error(&mut run_with(&config, sets), needle);
    }
    // A GPU backend this build lacks (a build with both has none to ask for).
    let compiled = [
        ("wgpu", cfg!(feature = "wgpu")),
        ("cuda", cfg!(feature = "cuda")),
    ];
    if let Some((missing, _)) = compiled.into_iter().find(|(_, built)| !built) {
        expect_error(
            &mut run_with(&config, &[&format!("run.backend={missing}")]),
            &format!("run.backend: \"{missing}\" is not compiled in"),
        );
    }
    // None of them created a run.
    assert!(!dir.path().join("run").exists());
}

/// TiKMiX-M's K gradient copies over `gradient_memory_mb`: refused at start, naming the
/// keys and the sizes (2.2M parameters × 3 sources × 4 bytes = 25 MiB a copy; probing holds
/// 3 + 2 · lanes copies, over 16 MiB).
#[test]
fn tikmix_m_refuses_gradients_over_its_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let wide = [
        "mixer.kind=tikmix-m",
        "model.d_model=256",
        "model.n_heads=4",
        "model.d_ff=1024",
        "mixer.tikmix-m.gradient_memory_mb=16",
    ];
    let stderr = expect_error(
        &mut run_with(&config, &wide),
        "mixer.tikmix-m.gradient_memory_mb: 3 sources' gradients of a",
    );
    assert!(
        stderr.contains("copies per source with mixer.tikmix-m.gradients = \"probe\")"),
        "{stderr}"
    );
    // Extra passes keep one copy: 25 MiB, under a budget of 32.
    let mut one_copy = wide.to_vec();
    one_copy.extend([
        "mixer.tikmix-m.gradients=extra-passes",
        "mixer.tikmix-m.gradient_memory_mb=32",
        "train.steps=2",
    ]);
    run_ok(&mut run_with(&config, &one_copy));
}

#[test]
fn file_errors_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");

    // Missing config file.
    let missing = dir.path().join("missing.toml");
    let stderr = expect_error(&mut run_with(&missing, &[]), "missing.toml");
    // The OS error once, not repeated by the error chain.
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    // Malformed TOML: the parser's line is named.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[train]\nsteps = = 3\n").unwrap();
    expect_error(&mut run_with(&broken, &[]), "line 2");

    // Missing source path.
    expect_error(
        &mut run_with(&config, &["data.sources.0.path=/no/such/corpus"]),
        "/no/such/corpus",
    );

    // An empty source.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let set = format!("data.sources.0.path={}", empty.display());
    expect_error(&mut run_with(&config, &[&set]), "is empty");

    // Target sets: the path of a training source, a missing path, an empty set, a set too
    // short for one window. Each names the set's key or file.
    let qa_at = |path: &Path| {
        format!(
            "target.sets=[{{ name = \"qa\", path = \"{}\" }}]",
            path.display()
        )
    };
    let code = crate::common::repo().join("data/quickstart/code.jsonl");
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, "{\"text\": \"too short\"}\n").unwrap();
    let cases: &[(&Path, &str)] = &[
        (&code, "target.sets[0].path: \""),
        (
            Path::new("/no/such/heldout.jsonl"),
            "target.sets[0].path: no such file or directory",
        ),
        (&empty, "target set \"qa\" is empty"),
        (&short, "target set \"qa\" has 10 validation tokens"),
    ];
    for (path, needle) in cases {
        expect_error(&mut run_with(&config, &[&qa_at(path)]), needle);
    }

    // A jsonl line that is not JSON: file and line named.
    let bad_json = dir.path().join("bad.jsonl");
    std::fs::write(&bad_json, "{\"text\": \"fine\"}\n{\"text\": oops}\n").unwrap();
    let set = format!("data.sources.0.path={}", bad_json.display());
    expect_error(
        &mut run_with(&config, &[&set]),
        "bad.jsonl: line 2: invalid JSON",
    );

    // A jsonl line without a text field.
    let no_text = dir.path().join("notext.jsonl");
    std::fs::write(&no_text, "{\"body\": \"x\"}\n").unwrap();
    let set = format!("data.sources.0.path={}", no_text.display());
    expect_error(
        &mut run_with(&config, &[&set]),
        "line 1: expected an object with a string field \"text\"",
    );

    // A source too small for one validation window.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "tiny").unwrap();
    let set = format!("data.sources.0.path={}", small.display());
    expect_error(
        &mut run_with(&config, &[&set]),
        "fewer than data.seq_len + 1",
    );
}

#[test]
fn corrupt_shard_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    // Prepare shards, copy one source's shards, truncate the copy, use it as a prepared source.
    let out = run_ok(mixtrain().arg("prepare").arg(&config));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prepared = stdout
        .lines()
        .find(|l| l.starts_with("prose:"))
        .and_then(|l| l.rsplit(" in ").next())
        .expect("prepare prints where the shards are")
        .to_string();
    // The entry and its part, copied with their layout (the entry lists "../parts/KEY").
    let copy = dir.path().join("copy");
    let entry = copy.join("prose");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::copy(
        Path::new(&prepared).join("meta.json"),
        entry.join("meta.json"),
    )
    .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("meta.json")).unwrap()).unwrap();
    let part = meta["parts"][0].as_str().unwrap();
    let (from, to) = (Path::new(&prepared).join(part), entry.join(part));
    let shard = Path::new("shard-00000");
    std::fs::create_dir_all(to.join(shard)).unwrap();
    std::fs::copy(from.join("part.json"), to.join("part.json")).unwrap();
    for f in ["train.bin", "val.bin"] {
        std::fs::copy(from.join(shard).join(f), to.join(shard).join(f)).unwrap();
    }
    let set = format!("data.sources.0.path={}", entry.display());
    // Intact copy works as a source (a short run).
    run_ok(&mut run_with(&config, &[&set, "train.steps=2"]));
    let train = to.join(shard).join("train.bin");
    let bytes = std::fs::read(&train).unwrap();
    std::fs::write(&train, &bytes[..bytes.len() - 7]).unwrap();
    let set_out = format!("run.out_dir={}", dir.path().join("run2").display());
    expect_error(
        &mut run_with(&config, &[&set, &set_out]),
        "truncated or corrupt",
    );
    // Garbage instead of a shard.
    std::fs::write(&train, b"not a shard at all, just some text here").unwrap();
    expect_error(&mut run_with(&config, &[&set, &set_out]), "bad magic");
}

#[test]
fn run_directory_and_checkpoint_errors_keep_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    run_ok(&mut run_with(
        &config,
        &["train.steps=10", "train.keep_checkpoints=1"],
    ));
    let run = dir.path().join("run");
    let snapshot = |name: &str| std::fs::read(run.join(name)).unwrap();
    let before: Vec<Vec<u8>> = ["metrics.jsonl", "ratios.csv", "config.toml"]
        .iter()
        .map(|f| snapshot(f))
        .collect();
    let unchanged = || {
        let now: Vec<Vec<u8>> = ["metrics.jsonl", "ratios.csv", "config.toml"]
            .iter()
            .map(|f| snapshot(f))
            .collect();
        assert!(now == before, "run files changed");
    };

    // A second run into the same out_dir without --resume is refused.
    expect_error(
        &mut run_with(&config, &["train.steps=10", "train.keep_checkpoints=1"]),
        "already holds a run; pass --resume",
    );
    unchanged();

    // Resuming with another config is refused.
    let mut cmd = run_with(
        &config,
        &[
            "train.steps=10",
            "train.keep_checkpoints=1",
            "train.lr=1e-3",
        ],
    );
    cmd.arg("--resume");
    expect_error(&mut cmd, "differs from the given config");
    unchanged();

    // A damaged checkpoint (the only one: keep_checkpoints = 1): truncated model weights, then
    // a corrupt state. Resume refuses, names it, and keeps it (set aside as damaged-...).
    let newest = run.join("checkpoints/step_00000010");
    let aside = run.join("checkpoints/damaged-step_00000010");
    for (file, damage) in [
        ("model.safetensors", None),
        ("state.json", Some(&b"{\"format\": 1, \"step\": "[..])),
    ] {
        let path = newest.join(file);
        let original = std::fs::read(&path).unwrap();
        let damaged =
            damage.map_or_else(|| original[..original.len() / 2].to_vec(), <[u8]>::to_vec);
        std::fs::write(&path, &damaged).unwrap();
        let mut cmd = run_with(&config, &["train.steps=10", "train.keep_checkpoints=1"]);
        cmd.arg("--resume");
        expect_error(&mut cmd, "no intact checkpoint left");
        unchanged();
        assert_eq!(
            std::fs::read(aside.join(file)).unwrap(),
            damaged,
            "{file} was not kept"
        );
        std::fs::rename(&aside, &newest).unwrap();
        std::fs::write(&path, &original).unwrap();
    }

    // Without digests (an older version's empty DONE) the readers' own checks still hold.
    let model = newest.join("model.safetensors");
    let weights = std::fs::read(&model).unwrap();
    std::fs::write(newest.join("DONE"), b"").unwrap();
    std::fs::write(&model, &weights[..weights.len() / 2]).unwrap();
    let mut cmd = run_with(&config, &["train.steps=10", "train.keep_checkpoints=1"]);
    cmd.arg("--resume");
    expect_error(&mut cmd, "corrupt safetensors file");
    unchanged();
    std::fs::write(&model, &weights).unwrap();

    // eval on a checkpoint whose state was tampered with to another config hash.
    let state = newest.join("state.json");
    let state_bytes = std::fs::read(&state).unwrap();
    let tampered = String::from_utf8(state_bytes.clone())
        .unwrap()
        .replace("\"config_hash\": \"", "\"config_hash\": \"00");
    std::fs::write(&state, tampered).unwrap();
    expect_error(mixtrain().arg("eval").arg(&newest), "different config");
    std::fs::write(&state, &state_bytes).unwrap();

    // --resume where there is no run.
    let elsewhere = format!("run.out_dir={}", dir.path().join("nothing-here").display());
    let mut cmd = run_with(&config, &[&elsewhere]);
    cmd.arg("--resume");
    expect_error(&mut cmd, "holds no run to resume");

    // eval / plot on something that is not a run.
    let empty = tempfile::tempdir().unwrap();
    expect_error(
        mixtrain().arg("eval").arg(empty.path()),
        "is neither a run directory",
    );
    expect_error(mixtrain().arg("plot").arg(empty.path()), "ratios.csv");
}

/// A schedule off the simplex, a damaged ratios.csv, another run's sources, and an export
/// a format cannot hold: each named by key, file and line.
#[test]
fn schedule_and_mixture_errors_name_file_line_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "[mixer]\nkind = \"schedule\"\n");
    let stages =
        "mixer.schedule.stages=[{at = 0.0, weights = {prose = 0.5, code = 0.25, legal = 0.25}}, \
                  {at = 0.5, weights = {prose = 0.5, code = 0.5, legal = 0.25}}]";
    expect_error(
        &mut run_with(&config, &[stages]),
        "mixer.schedule.stages[1].weights: weights must sum to 1 (got 1.25)",
    );
    let proxy = dir.path().join("proxy");
    std::fs::create_dir_all(&proxy).unwrap();
    std::fs::write(proxy.join("config.toml"), "[train]\nsteps = 10\n").unwrap();
    std::fs::write(
        proxy.join("ratios.csv"),
        "step,prose,code,legal\n0,0.3,0.3,0.4\n5,0.5,x,0.5\n",
    )
    .unwrap();
    let from = format!("mixer.schedule.from={}", proxy.display());
    let stderr = expect_error(
        &mut run_with(&config, &[&from]),
        "line 3: expected a step and 3 weights",
    );
    assert!(stderr.contains("proxy/ratios.csv"), "{stderr}");
    std::fs::write(proxy.join("ratios.csv"), "step,prose,code\n0,0.5,0.5\n").unwrap();
    expect_error(
        &mut run_with(&config, &[&from]),
        "its sources (prose, code) are not this run's (prose, code, legal)",
    );
    expect_error(
        &mut run_with(&config, &[]),
        "mixer.schedule: the schedule mixer needs `from",
    );
    let mut export = mixtrain();
    export.args([
        "mixture",
        proxy.to_str().unwrap(),
        "--format",
        "hf",
        "--use",
        "schedule",
    ]);
    expect_error(&mut export, "--format hf has no mixture schedule");
    let mut missing = mixtrain();
    missing.args(["mixture", dir.path().join("nowhere").to_str().unwrap()]);
    expect_error(&mut missing, "nowhere: no such run directory or ratios.csv");
    assert!(
        !dir.path().join("run").exists(),
        "no run directory made for a refused config"
    );
}
