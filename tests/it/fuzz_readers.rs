//! Fuzzing of every reader of user- or disk-provided input: config TOML, `--set` values, jsonl
//! documents, token shard headers, checkpoint DONE/state.json, safetensors files, mixture.json.
//! Inputs are valid files mutated at random (flips, inserts, deletions, truncations, splices of
//! troublesome tokens) plus random bytes; a few thousand cases, seeded. Each reader must return
//! (never panic), and every error must name the file it read.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use mixtrain::checkpoint;
use mixtrain::config::{Config, MixtureInit};
use mixtrain::data::{read_documents, write_shard, Shard};
use mixtrain::export::read_safetensors;
use mixtrain::mixer::resolve_init;

use crate::common::{repo, tiny_config};

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\n",
    "\0",
    "-1",
    "0",
    "1e999",
    "-1e999",
    "nan",
    "inf",
    "18446744073709551616",
    "99999999999999999999",
    "-0",
    "true",
    "null",
    "\\u0000",
    "\u{FEFF}",
    "é",
    "[[",
    "]]",
    "\"\"\"",
    "#",
    ".",
    "..",
    "/",
    "\\",
];

/// One random mutation of `input` (or, one time in 16, random bytes).
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    if rng.below(16) == 0 {
        return (0..rng.below(200)).map(|_| rng.next() as u8).collect();
    }
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, rng.next() as u8),
            2 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => out.truncate(at),
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            _ => {
                // Overwrite a run of bytes with one repeated byte (zeros, 0xff, digits).
                let byte = [0u8, 0xff, b'9', b' '][rng.below(4)];
                let end = (at + 1 + rng.below(8)).min(out.len());
                for b in &mut out[at.min(end)..end] {
                    *b = byte;
                }
            }
        }
    }
    out
}

/// Runs `read` on `cases` mutations of `valid`, each written to `path`; every Err must name
/// `needle` (the file), and nothing may panic.
fn fuzz<T>(
    name: &str,
    rng: &mut Rng,
    cases: usize,
    valid: &[u8],
    path: &Path,
    needle: &str,
    read: impl Fn(&Path) -> mixtrain::Result<T>,
) -> (usize, usize) {
    let (mut ok, mut err) = (0, 0);
    for case in 0..cases {
        let bytes = mutate(rng, valid);
        std::fs::write(path, &bytes).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| read(path)));
        match result {
            Err(_) => panic!(
                "{name}: case {case} panicked on input {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                let message = format!("{e:#}");
                assert!(
                    message.contains(needle),
                    "{name}: case {case}: the error does not name {needle}: {message}\ninput: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
                err += 1;
            }
        }
    }
    eprintln!("{name}: {cases} cases, {ok} accepted, {err} errors");
    (ok, err)
}

fn seed() -> u64 {
    std::env::var("MIXTRAIN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d69_7874)
}

#[test]
fn config_files_never_panic_and_errors_name_the_file() {
    let mut rng = Rng(seed());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.toml");
    let mut errors = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let valid = std::fs::read(entry.unwrap().path()).unwrap();
        let (_, err) = fuzz("config", &mut rng, 300, &valid, &path, "fuzz.toml", |p| {
            Config::load(p, &[])
        });
        errors += err;
    }
    assert!(
        errors > 1000,
        "the mutations should mostly break the configs"
    );
}

#[test]
fn set_overrides_never_panic_and_errors_name_the_key_or_file() {
    let mut rng = Rng(seed() ^ 1);
    let text = std::fs::read_to_string(repo().join("configs/quickstart.toml")).unwrap();
    let keys = [
        "train.steps",
        "train.lr",
        "mixer.kind",
        "mixer.init",
        "data.sources",
        "target.sets",
        "model.d_model",
        "mixer.fastmix.lr",
        "run.out_dir",
        "x",
        "",
        "train.",
        ".a",
        "a..b",
        "data.sources.0.name",
        "train.steps.x",
    ];
    let values = [
        "1",
        "-1",
        "0",
        "1e999",
        "nan",
        "\"a\"",
        "[1, 2]",
        "{ a = 1 }",
        "",
        "=",
        "abc",
        "[[",
        "{",
        "1\nv = 2",
        "true",
        "\"\"\"",
        "9999999999999999999999",
    ];
    let (mut ok, mut err) = (0, 0);
    for case in 0..2000 {
        let item = match rng.below(4) {
            0 => String::from_utf8_lossy(&mutate(&mut rng, b"train.steps=40")).into_owned(),
            _ => format!(
                "{}={}",
                keys[rng.below(keys.len())],
                values[rng.below(values.len())]
            ),
        };
        let result = catch_unwind(|| {
            Config::from_toml_str(&text, "quickstart.toml", std::slice::from_ref(&item))
        });
        match result {
            Err(_) => panic!("case {case}: --set {item:?} panicked"),
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                let message = e.to_string();
                assert!(
                    message.starts_with("--set") || message.starts_with("quickstart.toml"),
                    "case {case}: --set {item:?}: {message}"
                );
                err += 1;
            }
        }
    }
    eprintln!("--set: 2000 cases, {ok} accepted, {err} errors");
    assert!(ok > 0 && err > 0);
}

#[test]
fn jsonl_documents_never_panic_and_errors_name_the_file() {
    let mut rng = Rng(seed() ^ 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    let valid = b"{\"text\": \"first document\"}\n{\"text\": \"second \\u00e9\", \"id\": 2}\n\n{\"text\": \"third\"}\n";
    let (_, err) = fuzz("jsonl", &mut rng, 1500, valid, &path, "docs.jsonl", |p| {
        read_documents(p, "text")
    });
    assert!(err > 500);
}

#[test]
fn shards_never_panic_and_errors_name_the_file() {
    let mut rng = Rng(seed() ^ 3);
    let dir = tempfile::tempdir().unwrap();
    let valid_path = dir.path().join("valid.bin");
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7) % 257).collect();
    write_shard(&valid_path, &tokens, 257).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let path = dir.path().join("shard.bin");
    let (_, err) = fuzz("shard", &mut rng, 1500, &valid, &path, "shard.bin", |p| {
        Shard::open(p, 257).map(|s| s.len())
    });
    assert!(err > 500);
}

/// A real checkpoint of a tiny run, read back after its state.json, DONE or model file was
/// mutated.
#[test]
fn checkpoint_files_never_panic_and_errors_name_the_file() {
    let mut rng = Rng(seed() ^ 4);
    let dir = tempfile::tempdir().unwrap();
    let config_path = tiny_config(
        dir.path(),
        "[data]\nseq_len = 16\n[model]\nd_model = 16\nn_layers = 1\nd_ff = 32\n\
         [train]\nsteps = 2\nbatch_size = 2\nwarmup_steps = 1\neval_every = 2\n",
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mixtrain"))
        .arg("run")
        .arg(&config_path)
        .env("RUST_LOG", "error")
        .status()
        .unwrap();
    assert!(status.success());
    let ckpt = dir.path().join("run/checkpoints/step_00000002");
    for file in ["state.json", "DONE", "model.safetensors"] {
        let path = ckpt.join(file);
        let valid = std::fs::read(&path).unwrap();
        let read = |_: &Path| {
            checkpoint::verify(&ckpt)?;
            checkpoint::read_state(&ckpt)?;
            read_safetensors(&ckpt.join("model.safetensors")).map(|_| ())
        };
        // Errors name the checkpoint directory (and, where one file is at fault, that file).
        let needle = ckpt.display().to_string();
        let (accepted, _) = fuzz(file, &mut rng, 400, &valid, &path, &needle, read);
        // Every changed byte breaks the file's SHA-256 in DONE; only a mutation that leaves
        // the digests' meaning intact (DONE's whitespace) may pass.
        assert!(
            accepted <= 2,
            "{file}: {accepted} of 400 damaged copies accepted despite the digests"
        );
        std::fs::write(&path, &valid).unwrap();
    }
    // The unmodified checkpoint still reads.
    checkpoint::verify(&ckpt).unwrap();

    // Without digests (an older checkpoint's empty DONE) damage reaches the readers themselves.
    std::fs::write(ckpt.join("DONE"), b"").unwrap();
    for file in ["state.json", "model.safetensors"] {
        let path = ckpt.join(file);
        let valid = std::fs::read(&path).unwrap();
        let needle = path.display().to_string();
        let read = |p: &Path| -> mixtrain::Result<()> {
            if file == "state.json" {
                checkpoint::read_state(&ckpt).map(|_| ())
            } else {
                read_safetensors(p).map(|_| ())
            }
        };
        let (_, rejected) = fuzz(file, &mut rng, 400, &valid, &path, &needle, read);
        // Without digests the readers' own checks catch most damage (a changed float in a
        // tensor's data is legitimately accepted): 386 and 352 of 400 at the default seed.
        assert!(
            rejected > 200,
            "{file}: only {rejected} of 400 damaged copies rejected"
        );
        std::fs::write(&path, &valid).unwrap();
    }
}

#[test]
fn mixture_files_never_panic_and_errors_name_the_file() {
    let mut rng = Rng(seed() ^ 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixture.json");
    let valid = br#"{
  "sources": ["prose", "code"],
  "final": { "prose": 0.7, "code": 0.3 },
  "time_averaged": { "prose": 0.6, "code": 0.4 }
}
"#;
    let names = vec!["prose".to_string(), "code".to_string()];
    let init = MixtureInit::File(path.clone());
    let (ok, err) = fuzz(
        "mixture.json",
        &mut rng,
        1500,
        valid,
        &path,
        "mixture.json",
        |_| resolve_init(&init, &names, &[10, 10], None),
    );
    assert!(ok > 0 && err > 500);
}
