//! `mixtrain prepare` at scale: peak memory and throughput of tokenising one large source,
//! with bytes and with a trained BPE, at two corpus sizes (memory must not grow with the
//! size), BPE on 1 and 2 threads (the shards must be the same bytes), training a BPE on each
//! corpus (streamed), the warm start that follows (the manifest instead of re-hashing the
//! corpus; no token scan of unchanged shards), and a prepare killed after half its shards and
//! run again (it continues; the token stream must be the same bytes).
//!
//!     cargo bench --bench prepare -- --out
//!     SIZES_MB=50,200 cargo bench --bench prepare
//!
//! The corpus is generated into target/prepare-bench/ from the quickstart's documents (each
//! copy numbered, so documents differ), as a single .jsonl file per size. Each prepare runs
//! the release binary in its own process; its peak RSS comes from wait4.

#[macro_use]
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const ROOT: &str = "target/prepare-bench";

fn mixtrain() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mixtrain"))
}

/// A single .jsonl of about `mb` MB made of numbered copies of the quickstart's documents.
fn corpus(mb: usize) -> PathBuf {
    let path = Path::new(ROOT).join(format!("corpus-{mb}mb.jsonl"));
    if path.is_file() {
        return path;
    }
    let mut docs = Vec::new();
    for name in ["prose", "code", "docs", "legal", "man"] {
        let file = format!("data/quickstart/{name}.jsonl");
        docs.extend(mixtrain::data::read_documents(Path::new(&file), "text").expect("quickstart"));
    }
    std::fs::create_dir_all(ROOT).expect("bench dir");
    let tmp = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("corpus file"));
    let (mut written, mut copy) = (0usize, 0usize);
    while written < mb << 20 {
        for doc in &docs {
            let line = serde_json::json!({ "text": format!("[{copy}] {doc}") }).to_string();
            writeln!(out, "{line}").expect("write corpus");
            written += line.len() + 1;
        }
        copy += 1;
    }
    out.flush().expect("flush corpus");
    drop(out);
    std::fs::rename(&tmp, &path).expect("rename corpus");
    path
}

/// A config with one source, `corpus`, tokenised by `tokenizer` into `cache`.
fn config(corpus: &Path, tokenizer: &str, cache: &Path) -> PathBuf {
    let path = cache.with_extension("toml");
    let text = format!(
        "[run]\nout_dir = \"{ROOT}/run\"\n[data]\ntokenizer = \"{tokenizer}\"\ncache_dir = \"{}\"\n\
         [[data.sources]]\nname = \"big\"\npath = \"{}\"\n",
        cache.display(),
        corpus.display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Runs `mixtrain ARGS` with `threads` rayon threads; (seconds, peak RSS in MB). The peak is
/// the child's own VmHWM, polled from /proc every 10 ms (wait4's ru_maxrss would include the
/// bench process's own high-water mark, which a child inherits at fork).
fn measure(args: &[&str], threads: usize) -> (f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(mixtrain())
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn mixtrain");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            let kb = hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak_kb = peak_kb.max(kb.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait for mixtrain") {
            assert!(status.success(), "mixtrain {args:?} failed: {status}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (started.elapsed().as_secs_f64(), peak_kb as f64 / 1024.0)
}

/// Tokenises `corpus` from a cold cache; returns (seconds, peak MB, the shard's digest).
fn cold(corpus: &Path, tokenizer: &str, label: &str, threads: usize) -> (f64, f64, String) {
    let cache = Path::new(ROOT).join(format!("cache-{label}-t{threads}"));
    let _ = std::fs::remove_dir_all(&cache);
    let config = config(corpus, tokenizer, &cache);
    let (seconds, peak) = measure(&["prepare", config.to_str().unwrap()], threads);
    (seconds, peak, train_stream_digest(&cache))
}

/// The fingerprint of the training token stream of a one-file source's part (its shards in
/// order, headers left out: the stream does not depend on the shard size).
fn train_stream_digest(cache: &Path) -> String {
    let part = std::fs::read_dir(cache.join("parts"))
        .expect("cache parts")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("part.json").is_file())
        .expect("a finished part");
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&part)
        .expect("part")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("train.bin"))
        .filter(|p| p.is_file())
        .collect();
    shards.sort();
    let mut stream = Vec::new();
    for shard in shards {
        stream.extend_from_slice(&std::fs::read(&shard).expect("shard")[32..]);
    }
    format!("{:x}", md5_like(&stream))
}

/// Prepare of `corpus` (bytes, 2 threads, shards of `shard_mb`) killed after half its
/// shards, then run again: (seconds of the second run, its stream digest).
fn killed_and_continued(corpus: &Path, mb: usize, shard_mb: usize) -> (f64, String) {
    let cache = Path::new(ROOT).join(format!("cache-killed-{mb}"));
    let _ = std::fs::remove_dir_all(&cache);
    let config = config(corpus, "bytes", &cache);
    let set = format!("data.shard_mb={shard_mb}");
    let args = ["prepare", config.to_str().unwrap(), "--set", &set];
    let half = (mb / shard_mb / 2).max(1);
    let status = Command::new(mixtrain())
        .args(args)
        .env("MIXTRAIN_FAULT", format!("prepare-kill={half}"))
        .env("RUST_LOG", "warn")
        .status()
        .expect("spawn mixtrain");
    assert!(status.code().is_none(), "the first prepare was killed");
    let (seconds, _) = measure(&args, 2);
    (seconds, train_stream_digest(&cache))
}

/// A cheap content fingerprint (FNV-1a) to compare shards across thread counts.
fn md5_like(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn bpe() -> String {
    let out = Path::new(ROOT).join("bpe-8000.json");
    if !out.is_file() {
        let status = Command::new(mixtrain())
            .args([
                "prepare",
                "configs/quickstart.toml",
                "--train-bpe",
                "8000",
                "--tokenizer-out",
            ])
            .arg(&out)
            .env("RUST_LOG", "warn")
            .status()
            .expect("train BPE");
        assert!(status.success(), "--train-bpe failed");
    }
    format!("bpe:{}", out.display())
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES_MB")
        .unwrap_or_else(|_| "100,400".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SIZES_MB: numbers"))
        .collect();
    let bpe = bpe();
    say!("| tokenizer | corpus MB | threads | seconds | MB/s | peak RSS MB | shard fingerprint |");
    say!("|---|---|---|---|---|---|---|");
    let mut bpe_rates = Vec::new();
    for &mb in &sizes {
        let corpus = corpus(mb);
        let real_mb = std::fs::metadata(&corpus).expect("corpus").len() as f64 / 1e6;
        for (name, tokenizer, threads) in [
            ("bytes", "bytes", 2),
            ("bpe-8k", bpe.as_str(), 2),
            ("bpe-8k", bpe.as_str(), 1),
        ] {
            if threads == 1 && mb != sizes[0] {
                continue; // one thread only on the smallest corpus: the speedup and the bytes
            }
            let label = format!("{name}-{mb}");
            let (seconds, peak, digest) = cold(&corpus, tokenizer, &label, threads);
            say!("| {name} | {real_mb:.0} | {threads} | {seconds:.1} | {:.1} | {peak:.0} | {digest} |", real_mb / seconds);
            if name != "bytes" && mb == sizes[0] {
                bpe_rates.push((threads, real_mb / seconds, digest));
            }
        }
    }
    // Killed halfway through the largest corpus, then continued: the same stream.
    let largest = *sizes.iter().max().expect("a size");
    let shard_mb = (largest / 8).max(1);
    let (seconds, digest) = killed_and_continued(&corpus(largest), largest, shard_mb);
    let (_, _, whole) = cold(&corpus(largest), "bytes", &format!("bytes-{largest}"), 2);
    say!(
        "\nbytes, {largest} MB, shards of {shard_mb} MB, killed after half of them: the second \
         prepare took {seconds:.1} s; stream {digest} vs uninterrupted {whole}: identical {}",
        digest == whole
    );
    if let [(2, two, d2), (1, one, d1)] = bpe_rates.as_slice() {
        say!(
            "\nBPE on 2 threads: {:.2}× one thread; shards identical: {}",
            two / one,
            d1 == d2
        );
    }
    // Training a BPE streams the documents: its memory is the trainer's word counts.
    say!("\n| --train-bpe 8000 on | seconds | peak RSS MB |\n|---|---|---|");
    for &mb in &sizes {
        let cache = Path::new(ROOT).join(format!("cache-bytes-{mb}-t2"));
        let config = config(&corpus(mb), "bytes", &cache);
        let out = Path::new(ROOT).join(format!("bpe-{mb}.json"));
        let args = [
            "prepare",
            config.to_str().unwrap(),
            "--train-bpe",
            "8000",
            "--tokenizer-out",
        ];
        let (seconds, peak) = measure(&[&args[..], &[out.to_str().unwrap()]].concat(), 2);
        say!("| {mb} MB corpus | {seconds:.1} | {peak:.0} |");
    }
    // The warm start: the largest corpus, already tokenised, prepared again.
    let largest = *sizes.iter().max().expect("a size");
    let cache = Path::new(ROOT).join(format!("cache-bytes-{largest}-t2"));
    let config = config(&corpus(largest), "bytes", &cache);
    let (warm, warm_peak) = measure(&["prepare", config.to_str().unwrap()], 2);
    let (verify, _) = measure(&["prepare", config.to_str().unwrap(), "--verify"], 2);
    let peak = if warm_peak < 1.0 {
        "too short for a 10 ms sample of its memory".to_string()
    } else {
        format!("peak {warm_peak:.0} MB")
    };
    say!(
        "\nwarm start of the {largest} MB corpus (bytes): {warm:.2} s ({peak}); with --verify (re-hash, token scan): {verify:.2} s"
    );
    report::finish("prepare", "data", &["SIZES_MB"]);
}
