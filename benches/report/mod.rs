//! What a bench reports: every line it `say!`s goes to stdout and, with `--out [PATH]` after
//! `cargo bench --bench NAME --`, into its results file (`docs/results/TOPIC.md` by default),
//! headed by the commit, date, machine and the command that reproduces it. The generated part
//! sits between two markers named after the bench (two benches may share a topic's file), so
//! the notes written by hand around it survive a rerun.

use std::path::PathBuf;
use std::sync::Mutex;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Prints one line of results and keeps it for the results file.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        $crate::report::keep(line);
    }};
}

/// The median of `values` (the upper one of an even count).
#[allow(dead_code)] // Not every bench takes medians.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The four sources `CORPUS=nine` adds to the quickstart's five (Rust and Go code, Linux
/// kernel docs, ScanCode licence texts; see data/nine/SOURCES.md), built once by
/// `python3 data/nine/build.py` into target/corpora/nine/.
#[allow(dead_code)] // The benches that compare mixtures use it.
pub fn add_nine_sources(base: &mut mixtrain::config::Config) {
    for name in ["rust", "go", "kdocs", "licenses"] {
        let path = format!("target/corpora/nine/{name}.jsonl");
        assert!(
            std::path::Path::new(&path).is_file(),
            "{path} is missing: build it with `python3 data/nine/build.py` (needs apt-get and pip)"
        );
        base.data.sources.push(mixtrain::config::SourceConfig {
            name: name.to_string(),
            path,
            val_fraction: base.data.sources[0].val_fraction,
            val_path: None,
            text_field: "text".into(),
        });
    }
}

/// `CORPUS=nine-skewed`: each source's share of its file (whole documents from its start), so
/// the sources span 8× in size as in a real corpus (general text and code large, specialised
/// sources small): proportional and temperature mixtures then differ from uniform, and the
/// small sources repeat more in a longer run.
#[allow(dead_code)] // The benches that compare mixtures use it.
pub const NINE_SKEWED_SHARES: [(&str, f64); 9] = [
    ("prose", 1.0),
    ("code", 1.0),
    ("rust", 0.5),
    ("go", 0.5),
    ("docs", 0.25),
    ("kdocs", 0.25),
    ("man", 0.25),
    ("legal", 0.125),
    ("licenses", 0.125),
];

/// Cuts every training source of `base` to its share in `shares` (the leading documents whose
/// bytes reach it), written once into target/corpora/nine-skewed/ and pointed to. A file
/// already holding the same cut is left alone, so runs of several processes can share it.
#[allow(dead_code)] // The benches that compare mixtures use it.
pub fn skew_sources(
    base: &mut mixtrain::config::Config,
    shares: &[(&str, f64)],
) -> std::io::Result<()> {
    let dir = std::path::Path::new("target/corpora/nine-skewed");
    std::fs::create_dir_all(dir)?;
    for source in &mut base.data.sources {
        let (_, share) = shares
            .iter()
            .find(|(name, _)| *name == source.name)
            .unwrap_or_else(|| panic!("no share for source {}", source.name));
        let text = std::fs::read_to_string(&source.path)?;
        let budget = (text.len() as f64 * share).ceil() as usize;
        let mut kept = String::new();
        for line in text.lines() {
            if kept.len() >= budget {
                break;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        let path = dir.join(format!("{}.jsonl", source.name));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(kept.as_str()) {
            // Renamed into place, so a process reading the file never sees half of it.
            let partial = path.with_extension(format!("jsonl.{}", std::process::id()));
            std::fs::write(&partial, &kept)?;
            std::fs::rename(&partial, &path)?;
        }
        source.path = path.display().to_string();
    }
    Ok(())
}

/// A change to a run's config (a method of a comparison).
#[allow(dead_code)] // The benches that compare mixtures use it.
pub type ConfigChange = Box<dyn Fn(&mut mixtrain::config::Config)>;

/// `oracle-<source><weight>` (e.g. `oracle-kdocs0.4`): a static mixture with `weight` on
/// `source` from step 0 and the rest shared equally by the other training sources, each
/// rounded to 6 decimals as in the `--set "mixer.init={...}"` tables the first such runs were
/// made with. A mixture known in advance (or found by screening static mixtures): the ceiling
/// a target-directed mixer's speed is judged against. None for another name.
#[allow(dead_code)] // The benches that compare mixtures use it.
pub fn static_tilt(name: &str) -> Option<ConfigChange> {
    let rest = name.strip_prefix("oracle-")?;
    let split = rest.find(|c: char| c.is_ascii_digit())?;
    let source = rest[..split].to_string();
    let weight: f64 = rest[split..].parse().ok()?;
    assert!(
        (0.0..=1.0).contains(&weight),
        "{name}: weight outside [0, 1]"
    );
    Some(Box::new(move |c: &mut mixtrain::config::Config| {
        let names = c.source_names();
        assert!(names.contains(&source), "{source}: not a training source");
        let rest = ((1.0 - weight) / (names.len() - 1) as f64 * 1e6).round() / 1e6;
        let table = names.into_iter().map(|n| {
            let w = if n == source { weight } else { rest };
            (n, w)
        });
        c.mixer.init = mixtrain::config::InitSpec::Explicit(table.collect());
    }))
}

pub fn keep(line: String) {
    LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// Writes bench `name`'s part of the results file of `topic` when `--out` was given; `knobs`
/// are the environment variables the bench reads (those set go into the command line). Exits
/// with status 1 when it cannot.
#[allow(dead_code)] // The transfer bench writes one region per case instead.
pub fn finish(name: &str, topic: &str, knobs: &[&str]) {
    finish_case(name, "", topic, knobs);
}

/// `finish` for one case of a bench that writes a region per case (`case` names it).
pub fn finish_case(name: &str, case: &str, topic: &str, knobs: &[&str]) {
    let Some(path) = out_path(topic) else {
        return;
    };
    let (begin, end) = markers([name, case].join(" ").trim_end());
    let lines = std::mem::take(&mut *LINES.lock().unwrap_or_else(|e| e.into_inner()));
    let mut region = vec![
        begin.clone(),
        format!("- **Command**: `{}`", command(name, knobs)),
        format!("- **Commit**: {}", commit()),
        format!("- **Date**: {}", date()),
        format!("- **Machine**: {}", machine()),
        String::new(),
        "```text".to_string(),
    ];
    region.extend(lines);
    region.push("```".to_string());
    region.push(end.clone());
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let text = replace_region(&old, &region.join("\n"), (&begin, &end), topic);
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write the results file {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!("wrote {}", path.display());
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- written by `cargo bench --bench {name}`: begin -->"),
        format!("<!-- written by `cargo bench --bench {name}`: end -->"),
    )
}

/// `--out PATH`, or `--out` alone for `docs/results/TOPIC.md`.
fn out_path(topic: &str) -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--out")?;
    Some(match args.get(at + 1).filter(|a| !a.starts_with("--")) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(format!("docs/results/{topic}.md")),
    })
}

/// The old file with this bench's region replaced (or, without one, put before its first
/// section, else under its title).
fn replace_region(old: &str, region: &str, (begin, end): (&str, &str), topic: &str) -> String {
    if let (Some(b), Some(e)) = (old.find(begin), old.find(end)) {
        if b < e {
            return format!("{}{region}{}", &old[..b], &old[e + end.len()..]);
        }
    }
    // A new region goes after the file's last region (a region's own text may hold "## "
    // headings), else before its first hand-written section.
    if let Some(at) = old.rfind(": end -->") {
        let line_end = at + ": end -->".len();
        return format!("{}\n\n{region}{}", &old[..line_end], &old[line_end..]);
    }
    if let Some(at) = old.find("\n## ") {
        return format!("{}{region}\n\n{}", &old[..at + 1], &old[at + 1..]);
    }
    match old.split_once('\n') {
        Some((title, rest)) if title.starts_with("# ") => format!("{title}\n\n{region}\n{rest}"),
        _ => format!("# {topic}\n\n{region}\n\n{old}"),
    }
}

fn command(name: &str, knobs: &[&str]) -> String {
    let mut parts: Vec<String> = knobs
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    parts.push("cargo bench".into());
    if cfg!(feature = "wgpu") {
        parts.push("--features wgpu".into());
    }
    if cfg!(feature = "cuda") {
        parts.push("--features cuda".into());
    }
    parts.push(format!("--bench {name} -- --out"));
    parts.join(" ")
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commit() -> String {
    let hash = run("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash} with uncommitted changes")
    } else {
        hash
    }
}

fn date() -> String {
    run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into())
}

/// CPU model and cores, memory, and a GPU when `nvidia-smi` names one.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    let mut text = format!("{model}, {cores} cores, {gib:.0} GiB");
    if let Some(gpu) = run("nvidia-smi", &["--query-gpu=name", "--format=csv,noheader"]) {
        text.push_str(&format!(", GPU {}", gpu.replace('\n', ", ")));
    }
    text
}
