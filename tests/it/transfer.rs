//! Mixtures that travel: `mixtrain mixture` in every format parsed back by what reads it
//! (YAML by PyYAML, Python by Python, TOML by mixtrain's own config loader), and the schedule
//! mixer replaying a run's trajectory by fraction of training.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mixtrain::config::{Config, InitSpec, MixerKind};
use mixtrain::trajectory::Trajectory;

use crate::common::{metrics_without_wall, mixtrain, python, run_ok, tiny_config};

type Weights = BTreeMap<String, f64>;

/// ratios.csv rows as [step, weights...].
fn ratio_rows(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).expect("read ratios.csv");
    let rows = text.lines().skip(1);
    rows.map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect()
}

/// A 40-step fastmix run updating every 5 steps: a trajectory of 8 rows.
fn proxy_run(dir: &Path) -> std::path::PathBuf {
    let config = tiny_config(dir, "[mixer]\nkind = \"fastmix\"\nevery = 5\n");
    run_ok(mixtrain().arg("run").arg(&config));
    dir.join("run")
}

fn export(run: &Path, args: &[&str]) -> String {
    let out = run_ok(mixtrain().arg("mixture").arg(run).args(args));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Python's reading of `text`: `code` turns `text` (a str) into `result`, printed as JSON.
fn python_reads(text: &str, code: &str) -> serde_json::Value {
    let script = format!(
        "import json, sys, yaml\ntext = sys.stdin.read()\n{code}\nprint(json.dumps(result))"
    );
    let mut child = Command::new(python())
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python could not read:\n{text}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn assert_weights(got: &Weights, names: &[String], want: &[f64], what: &str) {
    assert_eq!(got.len(), names.len(), "{what}: {got:?}");
    for (name, w) in names.iter().zip(want) {
        assert_eq!(got[name], *w, "{what}: {name}");
    }
}

fn weights_of(value: &serde_json::Value) -> Weights {
    serde_json::from_value(value.clone()).expect("a map of weights")
}

fn zip_weights(names: &serde_json::Value, weights: &serde_json::Value) -> Weights {
    let names: Vec<String> = serde_json::from_value(names.clone()).unwrap();
    let weights: Vec<f64> = serde_json::from_value(weights.clone()).unwrap();
    names.into_iter().zip(weights).collect()
}

/// torchtitan's `DatasetMixConfig` and `WeightedDataset` as its 2026 code declares them
/// (frozen keyword-only dataclasses; `build` refuses a weight ≤ 0), standing in for the
/// package; the export's function gets each source's name as its dataset.
const TORCHTITAN_READS: &str = r#"
import dataclasses, types
@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightedDataset:
    dataset: object
    weight: float = 1.0
@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetMixConfig:
    datasets: tuple
    def __post_init__(self):
        if not self.datasets or any(d.weight <= 0 for d in self.datasets):
            raise ValueError("DatasetMixConfig requires positive-weight datasets")
data = types.ModuleType("torchtitan.components.data")
data.WeightedDataset, data.DatasetMixConfig = WeightedDataset, DatasetMixConfig
for name in ["torchtitan", "torchtitan.components"]:
    sys.modules[name] = types.ModuleType(name)
sys.modules["torchtitan.components.data"] = data
scope = {}
exec(text, scope)
class EachName(dict):
    def __missing__(self, name):
        return name
mix = scope["mixtrain_mixture"](EachName())
result = {d.dataset: d.weight for d in mix.datasets}
"#;

/// Every format's static mixture parses back to the run's final and average weights,
/// bit for bit.
#[test]
fn static_exports_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run = proxy_run(dir.path());
    let trajectory = Trajectory::read(&run).unwrap();
    let names = &trajectory.names;
    for (what, want) in [
        ("final", trajectory.final_weights().to_vec()),
        ("average", trajectory.average()),
    ] {
        let read = |format: &str| export(&run, &["--format", format, "--use", what]);
        let json: serde_json::Value = serde_json::from_str(&read("json")).unwrap();
        assert_weights(&weights_of(&json["weights"]), names, &want, "json");
        let levanter = python_reads(
            &read("levanter"),
            "result = yaml.safe_load(text)['train_weights']",
        );
        assert_weights(&weights_of(&levanter), names, &want, "levanter");
        let olmo = python_reads(
            &read("olmo"),
            "result = {s['source_name']: s['target_ratio'] for s in yaml.safe_load(text)['sources']}",
        );
        assert_weights(&weights_of(&olmo), names, &want, "olmo");
        let nanotron = python_reads(
            &read("nanotron"),
            "result = yaml.safe_load(text)['data_stages'][0]['data']['dataset']",
        );
        let nanotron = zip_weights(&nanotron["dataset_folder"], &nanotron["dataset_weights"]);
        assert_weights(&nanotron, names, &want, "nanotron");
        let hf = python_reads(
            &read("hf"),
            "scope = {}\nexec(text, scope)\nresult = [scope['names'], scope['probabilities']]",
        );
        assert_weights(&zip_weights(&hf[0], &hf[1]), names, &want, "hf");
        let torchtitan = python_reads(&read("torchtitan"), TORCHTITAN_READS);
        assert_weights(&weights_of(&torchtitan), names, &want, "torchtitan");
        let megatron = read("megatron");
        let line = megatron
            .lines()
            .find(|l| l.starts_with("--data-path"))
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        let blend: Weights = fields
            .chunks(2)
            .map(|p| (p[1].to_string(), p[0].parse().unwrap()))
            .collect();
        assert_weights(&blend, names, &want, "megatron");
        // The TOML fragment is a valid mixtrain config once merged into one.
        let toml_dir = tempfile::tempdir().unwrap();
        let config = Config::load(&tiny_config(toml_dir.path(), &read("toml")), &[]).unwrap();
        assert_eq!(config.mixer.kind, MixerKind::Static);
        let InitSpec::Explicit(init) = &config.mixer.init else {
            panic!("a table of weights")
        };
        assert_weights(init, names, &want, "toml");
    }
}

/// Each source's training tokens (tokens drawn over passes made) and the run's tokens, read
/// from the last record of metrics.jsonl that has them.
fn source_sizes(run: &Path, names: &[String]) -> (Vec<f64>, f64) {
    let records = metrics_without_wall(&run.join("metrics.jsonl"));
    let last = records
        .iter()
        .rev()
        .find(|r| r.get("epochs_by_source").is_some())
        .unwrap();
    let size = |n: &String| {
        last["tokens_by_source"][n].as_f64().unwrap()
            / last["epochs_by_source"][n].as_f64().unwrap()
    };
    (
        names.iter().map(size).collect(),
        last["tokens"].as_f64().unwrap(),
    )
}

/// `--max-epochs E --tokens 4x`: over four times the run's tokens no source repeats past E,
/// the most repeated one sits exactly at E, the others keep their proportions; OLMo's
/// `max_repetition_ratio` says E; impossible or unsupported caps are refused by name.
#[test]
fn repetition_cap_holds_each_source_to_its_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let run = proxy_run(dir.path());
    let trajectory = Trajectory::read(&run).unwrap();
    let (names, weights) = (&trajectory.names, trajectory.final_weights());
    let (sizes, run_tokens) = source_sizes(&run, names);
    let planned = 4.0 * run_tokens;
    let epochs =
        |w: &[f64]| -> Vec<f64> { w.iter().zip(&sizes).map(|(w, n)| w * planned / n).collect() };
    let before = epochs(weights);
    let top = (0..names.len())
        .max_by(|&a, &b| before[a].total_cmp(&before[b]))
        .unwrap();
    let limit = 0.9 * before[top];
    let args = ["--max-epochs", &limit.to_string(), "--tokens", "4x"];
    let json: serde_json::Value =
        serde_json::from_str(&export(&run, &[&args[..], &["--format", "json"]].concat())).unwrap();
    assert_eq!(json["max_epochs_per_source"].as_f64(), Some(limit));
    let note = json["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("at that limit: {}", names[top])),
        "{note}"
    );
    let got = weights_of(&json["weights"]);
    let capped: Vec<f64> = names.iter().map(|n| got[n]).collect();
    assert!(
        (capped.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{capped:?}"
    );
    let after = epochs(&capped);
    assert!(
        (after[top] - limit).abs() < 1e-9 * limit,
        "{after:?} vs {limit}"
    );
    assert!(
        after.iter().all(|&e| e <= limit * (1.0 + 1e-9)),
        "{after:?}"
    );
    let others: Vec<usize> = (0..names.len())
        .filter(|&k| weights[k] > 0.0 && (after[k] - limit).abs() > 1e-9 * limit)
        .collect();
    let scale = capped[others[0]] / weights[others[0]];
    for &k in &others {
        assert!(
            (capped[k] / weights[k] - scale).abs() < 1e-9,
            "{} out of proportion",
            names[k]
        );
    }
    let olmo = python_reads(
        &export(&run, &[&args[..], &["--format", "olmo"]].concat()),
        "result = [s['max_repetition_ratio'] for s in yaml.safe_load(text)['sources']]",
    );
    assert_eq!(olmo, serde_json::json!(vec![limit; names.len()]));
    for (bad, says) in [
        (
            vec!["--max-epochs", "1", "--tokens", "1e15"],
            "--max-epochs",
        ),
        (
            vec!["--max-epochs", "1", "--tokens", "2x", "--use", "schedule"],
            "static mixture",
        ),
        (vec!["--max-epochs", "1"], "--tokens"),
        (vec!["--max-epochs", "1", "--tokens", "lots"], "lots"),
    ] {
        let out = mixtrain()
            .arg("mixture")
            .arg(&run)
            .args(&bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{bad:?}: {stderr}"
        );
    }
}

/// A schedule's stages keep the run's rows, placed by fraction on --steps and rounded.
#[test]
fn schedule_exports_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run = proxy_run(dir.path());
    let trajectory = Trajectory::read(&run).unwrap();
    let names = &trajectory.names;
    assert_eq!(trajectory.rows.len(), 8, "one row at 0 and one per update");
    let read = |format: &str| {
        export(
            &run,
            &[
                "--format",
                format,
                "--use",
                "schedule",
                "--steps",
                "400",
                "--round-steps",
                "20",
            ],
        )
    };
    // Rows every 5 of 40 steps → every 50 of 400.
    let want_steps: Vec<u64> = (0..8).map(|i| i * 50).collect();
    let levanter = python_reads(
        &read("levanter"),
        "result = yaml.safe_load(text)['train_weights']",
    );
    let stages = levanter.as_array().unwrap();
    assert_eq!(stages.len(), 8);
    let rounded: Vec<u64> = want_steps.iter().map(|s| (s + 10) / 20 * 20).collect();
    for ((stage, row), step) in stages.iter().zip(&trajectory.rows).zip(&rounded) {
        assert_eq!(stage[0].as_u64(), Some(*step));
        assert_weights(&weights_of(&stage[1]), names, &row.1, "levanter stage");
    }
    let nanotron = python_reads(
        &read("nanotron"),
        "result = [s['start_training_step'] for s in yaml.safe_load(text)['data_stages']]",
    );
    let starts: Vec<u64> = rounded.iter().map(|s| s + 1).collect();
    assert_eq!(nanotron, serde_json::json!(starts));
    let megatron = read("megatron");
    let transitions: Vec<String> = rounded[1..].iter().map(|s| s.to_string()).collect();
    assert!(
        megatron.contains(&format!(
            "--phase-transition-iterations {}",
            transitions.join(",")
        )),
        "{megatron}"
    );
    assert_eq!(
        megatron
            .lines()
            .filter(|l| l.starts_with("--data-path"))
            .count(),
        8
    );
    // Without --steps, JSON and TOML keep fractions; the TOML is a schedule mixtrain loads.
    let json: serde_json::Value =
        serde_json::from_str(&export(&run, &["--use", "schedule"])).unwrap();
    assert_eq!(json["stages"][1]["at"].as_f64(), Some(5.0 / 40.0));
    let toml = export(&run, &["--format", "toml", "--use", "schedule"]);
    let toml_dir = tempfile::tempdir().unwrap();
    let config = Config::load(&tiny_config(toml_dir.path(), &toml), &[]).unwrap();
    assert_eq!(config.mixer.kind, MixerKind::Schedule);
    assert_eq!(config.mixer.schedule.stages.len(), 8);
    assert_weights(
        &config.mixer.schedule.stages[7].weights,
        names,
        trajectory.final_weights(),
        "toml stage",
    );
}

/// A run twice as long replays the trajectory at twice the steps, with the same weights;
/// linear interpolation changes every `every` steps between rows.
#[test]
fn schedule_replays_a_run_by_fraction_of_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = proxy_run(dir.path());
    let replay = tempfile::tempdir().unwrap();
    let from = format!("mixer.schedule.from={}", run.display());
    let config = tiny_config(replay.path(), "");
    run_ok(mixtrain().arg("run").arg(&config).args([
        "--set",
        "mixer.kind=schedule",
        "--set",
        &from,
        "--set",
        "train.steps=80",
    ]));
    let proxy_rows = ratio_rows(&run.join("ratios.csv"));
    let replay_rows = ratio_rows(&replay.path().join("run/ratios.csv"));
    assert_eq!(replay_rows.len(), proxy_rows.len());
    for (p, r) in proxy_rows.iter().zip(&replay_rows) {
        assert_eq!(r[0], 2.0 * p[0], "step doubled");
        assert_eq!(&r[1..], &p[1..], "same weights");
    }
    let linear = tempfile::tempdir().unwrap();
    let config = tiny_config(linear.path(), "");
    let sets = [
        "mixer.kind=schedule",
        &from,
        "train.steps=80",
        "mixer.schedule.interpolate=linear",
        "mixer.every=4",
    ];
    let mut cmd = mixtrain();
    cmd.arg("run").arg(&config);
    for s in sets {
        cmd.args(["--set", s]);
    }
    run_ok(&mut cmd);
    let rows = ratio_rows(&linear.path().join("run/ratios.csv"));
    let steps: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    // Every 4 steps and at every point (multiples of 10) up to the last point, 70: after it
    // the weights hold, so no row.
    let want: Vec<f64> = (0..=70)
        .filter(|s| s % 4 == 0 || s % 10 == 0)
        .map(|s| s as f64)
        .collect();
    assert_eq!(steps, want);
    let mid = rows.iter().find(|r| r[0] == 12.0).unwrap();
    let (a, b) = (&proxy_rows[1], &proxy_rows[2]); // steps 5 and 10 → 10 and 20
    for k in 1..a.len() {
        let expected = a[k] + 0.2 * (b[k] - a[k]);
        assert!(
            (mid[k] - expected).abs() < 1e-9,
            "linear at step 12: {} vs {expected}",
            mid[k]
        );
    }
}

/// megatron-core's own reader of indexed datasets (`IndexedDataset`, from the pinned wheel on
/// PyPI, torch stubbed: reading never calls it) prints what it reads at PREFIX as JSON.
const MEGATRON_READ: &str = r#"
import importlib.util, json, sys, types
root, prefix = sys.argv[1], sys.argv[2]
torch = types.ModuleType("torch")
torch.utils = types.SimpleNamespace(data=types.SimpleNamespace(Dataset=object))
torch.__getattr__ = lambda name: object  # type annotations such as torch.Tensor
sys.modules["torch"] = torch
for name in ["megatron", "megatron.core", "megatron.core.datasets"]:
    module = types.ModuleType(name)
    module.__path__ = []
    sys.modules[name] = module
msc = types.ModuleType("megatron.core.msc_utils")
msc.MultiStorageClientFeature = types.SimpleNamespace(is_enabled=lambda: False)
sys.modules["megatron.core.msc_utils"] = msc
utils = types.ModuleType("megatron.core.utils")
utils.log_single_rank = lambda *args, **kwargs: None
sys.modules["megatron.core.utils"] = utils
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, f"{root}/{path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
load("megatron.core.datasets.object_storage_utils", "megatron/core/datasets/object_storage_utils.py")
indexed = load("megatron.core.datasets.indexed_dataset", "megatron/core/datasets/indexed_dataset.py")
data = indexed.IndexedDataset(prefix)
print(json.dumps({
    "sequences": [data[i].tolist() for i in range(len(data))],
    "document_indices": data.document_indices.tolist(),
    "dtype": str(data.index.dtype.__name__),
}))
"#;

/// The two files of megatron-core 0.16.1 the reader needs, extracted once under target/.
fn megatron_core() -> std::path::PathBuf {
    let root = crate::common::repo().join("target/test-wheels/megatron-core-0.16.1");
    if root
        .join("megatron/core/datasets/indexed_dataset.py")
        .is_file()
    {
        return root;
    }
    let wheels = root.parent().unwrap().to_path_buf();
    let download = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "megatron-core==0.16.1", "-d"])
        .arg(&wheels)
        .output()
        .expect("pip runs");
    assert!(
        download.status.success(),
        "pip download megatron-core (is PyPI reachable?): {}",
        String::from_utf8_lossy(&download.stderr)
    );
    let extract = "import glob, sys, zipfile\n\
        wheel = glob.glob(sys.argv[1] + '/megatron_core-0.16.1-*.whl')[0]\n\
        names = ['megatron/core/datasets/indexed_dataset.py', \
                 'megatron/core/datasets/object_storage_utils.py']\n\
        zipfile.ZipFile(wheel).extractall(sys.argv[2], names)";
    python_script(extract, &[wheels.as_os_str(), root.as_os_str()]);
    root
}

/// The stdout of the test venv's Python running `code` with `args`; its stderr on failure.
fn python_script(code: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(python())
        .args(["-c", code])
        .args(args)
        .output()
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    out.stdout
}

/// `prepare --megatron DIR` writes every source's splits as indexed datasets that
/// megatron-core reads back as mixtrain's token streams, one sequence per document ending in
/// the end-of-document token; `mixture --format megatron --data-prefix DIR` names them in
/// the blend.
#[test]
fn megatron_datasets_read_by_megatron_core_and_named_in_the_blend() {
    let dir = tempfile::tempdir().unwrap();
    let run = proxy_run(dir.path());
    let data = dir.path().join("megatron");
    let out = run_ok(
        mixtrain()
            .arg("prepare")
            .arg(dir.path().join("config.toml"))
            .arg("--megatron")
            .arg(&data),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let names = Trajectory::read(&run).unwrap().names;
    let (eod, reader) = (256, megatron_core());
    for name in &names {
        let entry = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.split(" in ").nth(1))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        let (train, val) = crate::common::entry_tokens(Path::new(entry));
        for (split, bytes) in [("train", train), ("val", val)] {
            let prefix = data.join(name).join(split);
            let out = python_script(MEGATRON_READ, &[reader.as_os_str(), prefix.as_os_str()]);
            let read: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let sequences: Vec<Vec<u32>> =
                serde_json::from_value(read["sequences"].clone()).unwrap();
            let stream: Vec<u32> = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect();
            // Compared as a whole, reported by the first position that differs.
            let read_back = sequences.concat();
            let first_difference = read_back.iter().zip(&stream).position(|(a, b)| a != b);
            assert_eq!(
                (read_back.len(), first_difference),
                (stream.len(), None),
                "{name} {split}: megatron-core read another stream"
            );
            assert!(
                sequences.iter().all(|s| s.last() == Some(&eod)),
                "{name} {split}"
            );
            assert!(sequences.len() > 1, "{name} {split}");
            let documents: Vec<usize> =
                serde_json::from_value(read["document_indices"].clone()).unwrap();
            assert_eq!(documents, (0..=sequences.len()).collect::<Vec<_>>());
            assert_eq!(read["dtype"], "uint16");
        }
    }
    let blend = export(
        &run,
        &[
            "--format",
            "megatron",
            "--data-prefix",
            data.to_str().unwrap(),
        ],
    );
    let line = blend
        .lines()
        .find(|l| l.starts_with("--data-path"))
        .unwrap();
    let prefixes: Vec<&str> = line.split_whitespace().skip(2).step_by(2).collect();
    assert_eq!(prefixes.len(), names.len(), "{line}");
    for (prefix, name) in prefixes.iter().zip(&names) {
        assert_eq!(Path::new(prefix), data.join(name).join("train"));
        assert!(Path::new(&format!("{prefix}.idx")).is_file(), "{prefix}");
    }
    // Another format, or a directory `prepare --megatron` did not write: refused, named.
    let refused = |format: &str, prefix: &Path| {
        let out = mixtrain()
            .arg("mixture")
            .arg(&run)
            .args(["--format", format, "--data-prefix"])
            .arg(prefix)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--format {format}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("json", &data);
    assert!(err.contains("--data-prefix"), "{err}");
    let err = refused("megatron", dir.path());
    assert!(err.contains("train.idx"), "{err}");
}
