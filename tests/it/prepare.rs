//! `mixtrain prepare` at scale, on a corpus the test writes: shards that do not depend on
//! the thread count across several encoding batches, a cache keyed by content (moving the
//! data keeps it, changing a file rebuilds it), an edited shard caught by the token scan, and a
//! prepare killed inside a file continued from its last finished shard.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::{entry_tokens, mixtrain, run_ok};

/// About `mb` MB of numbered JSON lines (several 2 MB encoding batches).
fn write_corpus(path: &Path, mb: usize) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let (mut bytes, mut docs) = (0, 0);
    while bytes < mb << 20 {
        let text = format!(
            "document {docs}: {}",
            "the quick brown fox jumps. ".repeat(docs % 50 + 1)
        );
        let line = serde_json::json!({ "text": text }).to_string();
        writeln!(out, "{line}").unwrap();
        bytes += line.len() + 1;
        docs += 1;
    }
    docs
}

fn config(dir: &Path, corpus: &Path, cache: &str) -> PathBuf {
    let path = dir.join(format!("{cache}.toml"));
    let text = format!(
        "[run]\nout_dir = \"{}\"\n[data]\ncache_dir = \"{}\"\n[[data.sources]]\nname = \"big\"\npath = \"{}\"\n",
        dir.join("run").display(),
        dir.join(cache).display(),
        corpus.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The cache entry directory `prepare` printed.
fn prepare(config: &Path, threads: usize, extra: &[&str]) -> PathBuf {
    let mut cmd = mixtrain();
    cmd.arg("prepare")
        .arg(config)
        .args(extra)
        .env("RAYON_NUM_THREADS", threads.to_string());
    let out = run_ok(&mut cmd);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("big:"))
        .expect("a line for the source");
    PathBuf::from(line.rsplit(" in ").next().unwrap())
}

fn prepare_err(config: &Path) -> String {
    let out = mixtrain().arg("prepare").arg(config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn streaming_prepare_is_the_same_on_any_thread_count_and_caches_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let docs = write_corpus(&corpus, 20);
    let one = prepare(&config(dir.path(), &corpus, "cache1"), 1, &[]);
    let two = prepare(&config(dir.path(), &corpus, "cache2"), 2, &[]);
    assert!(
        entry_tokens(&one) == entry_tokens(&two),
        "shards differ between 1 and 2 threads"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["train_documents"].as_u64().unwrap() + meta["val_documents"].as_u64().unwrap(),
        docs as u64
    );
    let text_bytes = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .len()
                + 1
        })
        .sum::<usize>() as u64;
    assert_eq!(
        meta["train_tokens"].as_u64().unwrap() + meta["val_tokens"].as_u64().unwrap(),
        text_bytes,
        "bytes + one end-of-document token each"
    );

    // Moved: the same cache entry, no re-tokenising.
    let moved = dir.path().join("moved.jsonl");
    std::fs::rename(&corpus, &moved).unwrap();
    let config2 = config(dir.path(), &moved, "cache2");
    assert_eq!(prepare(&config2, 2, &[]), two);
    // Changed: a new entry.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&moved)
        .unwrap()
        .write_all(b"{\"text\": \"one more\"}\n")
        .unwrap();
    let changed = prepare(&config2, 2, &[]);
    assert_ne!(changed, two);
    assert_eq!(prepare(&config2, 2, &["--verify"]), changed);

    // A shard edited after it was written (same length) is scanned and refused.
    let train = crate::common::part_shards(&dir.path().join("cache2"), "train.bin")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&train).unwrap();
    bytes[32] = 0xff;
    bytes[33] = 0xff;
    std::fs::write(&train, &bytes).unwrap();
    let stderr = prepare_err(&config2);
    assert!(
        stderr.contains("outside the vocabulary") && stderr.contains("train.bin"),
        "{stderr}"
    );
}

/// `val_path`: its documents are the validation split, all of `path` is training.
#[test]
fn val_path_gives_the_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let val = dir.path().join("val.jsonl");
    let train_docs = write_corpus(&train, 1);
    let held_out: String = (0..20)
        .map(|i| {
            format!(
                "{{\"text\": \"held out {i}: {}\"}}\n",
                "a validation sentence. ".repeat(5)
            )
        })
        .collect();
    std::fs::write(&val, held_out).unwrap();
    let val_docs = 20;
    let config = config(dir.path(), &train, "cache");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_val = format!("{text}val_path = \"{}\"\n", val.display());
    std::fs::write(&config, with_val).unwrap();
    let entry = prepare(&config, 2, &[]);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["train_documents"].as_u64(), Some(train_docs as u64));
    assert_eq!(meta["val_documents"].as_u64(), Some(val_docs as u64));
}

/// A target set with two documents copied from the training data: prepare reports 2 of 5
/// and warns; the unrelated ones are clean.
#[test]
fn prepare_reports_target_documents_found_in_training() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    write_corpus(&train, 1);
    let copied: Vec<String> = std::fs::read_to_string(&train)
        .unwrap()
        .lines()
        .skip(100)
        .step_by(37)
        .filter(|l| l.len() > 600)
        .take(2)
        .map(String::from)
        .collect();
    assert_eq!(copied.len(), 2);
    let fresh = (0..3).map(|i| {
        let text = format!(
            "unrelated {i}: {}",
            "zebras quietly assemble furniture at noon. ".repeat(4)
        );
        serde_json::json!({ "text": text }).to_string()
    });
    let set = dir.path().join("set.jsonl");
    std::fs::write(
        &set,
        copied
            .into_iter()
            .chain(fresh)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();
    let config = config(dir.path(), &train, "cache");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_set = format!(
        "{text}[[target.sets]]\nname = \"held\"\npath = \"{}\"\n",
        set.display()
    );
    std::fs::write(&config, with_set).unwrap();
    let out = run_ok(
        mixtrain()
            .arg("prepare")
            .arg(&config)
            .env("RUST_LOG", "warn"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("held target set: 2 of 5 documents (40.0%)"),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("held-out documents overlap the training data"),
        "{stderr}"
    );
    // The report is cached with the shards: a warm prepare prints the cached one (edited
    // here to tell it apart) instead of scanning the corpus again.
    let reports: Vec<_> = std::fs::read_dir(dir.path().join("cache/contamination"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let cached = std::fs::read_to_string(&reports[0]).unwrap();
    let edited = cached.replace("\"contaminated\": 2", "\"contaminated\": 3");
    assert_ne!(cached, edited, "{cached}");
    std::fs::write(&reports[0], edited).unwrap();
    let out = run_ok(mixtrain().arg("prepare").arg(&config));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("held target set: 3 of 5 documents (60.0%)"),
        "{stdout}"
    );
}

/// A source of several files is cached file by file: a prepare cut short (the entry and the
/// last part missing, a half-written part left behind) finishes with the same tokens and
/// leaves the finished parts alone; a file added later is the only one tokenised.
#[test]
fn prepare_resumes_by_file_and_tokenises_only_added_files() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let write_file = |i: usize| {
        let path = corpus.join(format!("{i}.jsonl"));
        write_corpus(&path, 1);
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(out, "{{\"text\": \"the file numbered {i}\"}}").unwrap(); // files differ
    };
    (0..3).for_each(write_file);
    let config = config(dir.path(), &corpus, "cache");
    let whole = prepare(&config, 2, &[]);
    let tokens = entry_tokens(&whole);
    let parts = dir.path().join("cache/parts");
    let stamps = |names: &[String]| -> Vec<std::time::SystemTime> {
        names
            .iter()
            .map(|n| {
                std::fs::metadata(parts.join(n).join("shard-00000/train.bin"))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect()
    };
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("meta.json")).unwrap()).unwrap();
    let names: Vec<String> = meta["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_str()
                .unwrap()
                .trim_start_matches("../parts/")
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 3);
    let before = stamps(&names[..2]);
    // As if killed while tokenising the third file, after its only shard.
    std::fs::remove_file(whole.join("meta.json")).unwrap();
    let partial = parts.join(format!(".partial-{}", names[2]));
    std::fs::rename(parts.join(&names[2]), &partial).unwrap();
    std::fs::remove_file(partial.join("part.json")).unwrap();
    assert_eq!(prepare(&config, 2, &[]), whole);
    assert!(
        entry_tokens(&whole) == tokens,
        "a resumed prepare gives the same tokens"
    );
    assert_eq!(
        stamps(&names[..2]),
        before,
        "finished parts are not rewritten"
    );
    // A file added: one new part, the others kept.
    write_file(3);
    let grown = prepare(&config, 2, &[]);
    assert_ne!(grown, whole);
    assert_eq!(stamps(&names[..3])[..2], before[..]);
    let dirs = std::fs::read_dir(&parts)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(dirs, 4);
}

/// A prepare killed after the third shard of a single file (`data.shard_mb = 0.5`, about 8
/// shards of a 4 MB file) continues after that shard, and its token streams are the same bytes
/// as an uninterrupted prepare's and as a prepare in one shard.
#[test]
fn a_prepare_killed_inside_a_file_continues_from_its_last_shard() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 4);
    let small = ["--set", "data.shard_mb=0.5"];
    let whole = prepare(&config(dir.path(), &corpus, "whole"), 2, &small);
    let one_shard = prepare(&config(dir.path(), &corpus, "one"), 2, &[]);
    assert!(
        entry_tokens(&whole) == entry_tokens(&one_shard),
        "shard size changes the tokens"
    );
    let shards = crate::common::part_shards(&dir.path().join("whole"), "train.bin").len();
    assert!(shards >= 6, "{shards} shards");

    let cut = config(dir.path(), &corpus, "cut");
    let out = mixtrain()
        .arg("prepare")
        .arg(&cut)
        .args(small)
        .env("MIXTRAIN_FAULT", "prepare-kill=3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed by its signal");
    let parts = dir.path().join("cut/parts");
    let partial: Vec<_> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-") && !n.ends_with(".lock"))
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let finished = std::fs::read_dir(parts.join(&partial[0]))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("shard.json").is_file())
        .count();
    assert_eq!(finished, 3);

    let mut cmd = mixtrain();
    cmd.arg("prepare")
        .arg(&cut)
        .args(small)
        .env("RUST_LOG", "info");
    let out = run_ok(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("continuing after the shards") && stderr.contains("shards=3"),
        "{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().find(|l| l.starts_with("big:")).unwrap();
    let resumed = PathBuf::from(line.rsplit(" in ").next().unwrap());
    assert!(
        entry_tokens(&resumed) == entry_tokens(&whole),
        "the resumed prepare's tokens differ"
    );
}
