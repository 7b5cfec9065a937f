//! Checkpoints: `checkpoints/step_XXXXXXXX/` with model.safetensors, optimizer.safetensors,
//! mixing.safetensors, state.json (step, config hash, log lengths, each part's state) and a `DONE` marker that
//! lists every file's SHA-256. Written into a temporary directory, fsynced, renamed; older
//! checkpoints are deleted only after a newer one is complete; resume takes the newest one whose
//! digests match.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod format_1;

use format_1::{StateV1, V1_G_VAL};

use crate::error::{Error, IoContext, Result};
use crate::fault::{self, CheckpointPhase};
use crate::fsutil::{sync_dir, write_synced};
use crate::params::NamedTensor;
use crate::tensor_file::{read_safetensors, write_safetensors};

/// Format 2 nests each part's state under `parts` and keeps the mixing part's tensors in their
/// own file; format 1 (flat state, g_val inside the optimizer file) is read and upgraded.
pub(crate) const FORMAT: u32 = 2;
const DONE: &str = "DONE";
/// The mixing part's g_val in mixing.safetensors.
pub(crate) const G_VAL: &str = "g_val";
/// The model weights file of a checkpoint directory.
pub(crate) const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
/// The mixing part's tensors (a kept validation gradient), absent in format 1.
const MIXING: &str = "mixing.safetensors";
const STATE: &str = "state.json";

/// state.json: where the run stands, and each part's own state under `parts` (`trainer`,
/// `batches`, `mixing`), as that part wrote it. Checkpoints know nothing of the parts.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub(crate) format: u32,
    pub(crate) step: usize,
    pub(crate) config_hash: String,
    /// Lengths of metrics.jsonl and ratios.csv when the checkpoint was taken.
    pub(crate) metrics_bytes: u64,
    pub(crate) ratios_bytes: u64,
    /// Ranks of the run that wrote it (`distributed.world_size`; 1 in older checkpoints).
    #[serde(default = "one_rank")]
    pub(crate) world_size: usize,
    pub(crate) parts: BTreeMap<String, serde_json::Value>,
}

fn one_rank() -> usize {
    1
}

pub(crate) fn step_dir_name(step: usize) -> String {
    format!("step_{step:08}")
}

/// Complete checkpoints (those with DONE) in `dir`, oldest first.
pub(crate) fn complete_checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    if !dir.is_dir() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step_"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step {
            if path.join(DONE).is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// SHA-256 of a file's bytes, hex.
fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).at(path)?;
    Ok(crate::fsutil::hex(&Sha256::digest(&bytes)))
}

/// The DONE marker lists the SHA-256 of every file of the checkpoint, one `HEX  NAME` line each
/// (`sha256sum -c DONE` checks it by hand). An empty DONE is a checkpoint of an older version.
fn write_done(dir: &Path) -> Result<()> {
    let mut lines = String::new();
    for name in [MODEL, OPTIMIZER, MIXING, STATE] {
        lines.push_str(&format!("{}  {name}\n", file_digest(&dir.join(name))?));
    }
    write_synced(&dir.join(DONE), lines.as_bytes())
}

/// Checks a complete checkpoint's files against the digests in its DONE marker.
pub fn verify(dir: &Path) -> Result<()> {
    let done = dir.join(DONE);
    let text = std::fs::read_to_string(&done)
        .map_err(|e| Error::checkpoint(dir, format!("unreadable DONE marker: {e}")))?;
    if text.is_empty() {
        return Ok(()); // Written before checkpoints carried digests.
    }
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (digest, name) = line.split_once("  ").ok_or_else(|| {
            Error::checkpoint(&done, format!("line {}: expected \"SHA256  FILE\"", i + 1))
        })?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(Error::checkpoint(
                &done,
                format!("line {}: {name:?} is not a file of the checkpoint", i + 1),
            ));
        }
        let path = dir.join(name);
        let actual = file_digest(&path)
            .map_err(|e| Error::checkpoint(&path, format!("listed in DONE but unreadable: {e}")))?;
        if actual != digest {
            return Err(Error::checkpoint(
                &path,
                format!("damaged: SHA-256 {actual}, DONE recorded {digest}"),
            ));
        }
        listed.push(name);
    }
    for name in [MODEL, OPTIMIZER, STATE] {
        if !listed.contains(&name) {
            return Err(Error::checkpoint(&done, format!("does not list {name}")));
        }
    }
    Ok(())
}

/// The newest checkpoint in `dir` whose files match their digests and whose state.json reads.
/// A damaged one is reported with a warning and skipped; with `quarantine` (resume) it is
/// renamed to `damaged-step_XXXXXXXX` (kept, never deleted) so that the resumed run can write
/// that step again. Ok(None) when there is no complete checkpoint at all; an error when there
/// are some but every one is damaged.
pub(crate) fn newest_intact(dir: &Path, quarantine: bool) -> Result<Option<(usize, PathBuf)>> {
    let mut damaged = Vec::new();
    for (step, path) in complete_checkpoints(dir)?.into_iter().rev() {
        match verify(&path).and_then(|()| read_state(&path).map(|_| ())) {
            Ok(()) => return Ok(Some((step, path))),
            Err(e) => {
                let kept = if quarantine {
                    let aside = unused_name(dir, &format!("damaged-{}", step_dir_name(step)));
                    std::fs::rename(&path, &aside).at(&aside)?;
                    sync_dir(dir)?;
                    aside
                } else {
                    path.clone()
                };
                tracing::warn!(
                    checkpoint = %path.display(),
                    kept_at = %kept.display(),
                    "damaged checkpoint skipped ({e}); using the previous one"
                );
                damaged.push(format!("{} ({e})", kept.display()));
            }
        }
    }
    if damaged.is_empty() {
        Ok(None)
    } else {
        Err(Error::checkpoint(
            dir,
            format!(
                "no intact checkpoint left; damaged (kept for inspection): {}",
                damaged.join("; ")
            ),
        ))
    }
}

/// `dir/name`, or `dir/name.2`, `.3`, … when taken.
fn unused_name(dir: &Path, name: &str) -> PathBuf {
    let mut candidate = dir.join(name);
    let mut n = 2;
    while candidate.exists() {
        candidate = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    candidate
}

/// Removes what interrupted saves left behind: `.tmp-*` (a save that never completed) and
/// `.trash-*` (an old checkpoint whose deletion was cut short).
fn remove_leftovers(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(".tmp-") || name.starts_with(".trash-") {
            std::fs::remove_dir_all(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Writes the session's checkpoint at its current step into `checkpoints_dir`, then deletes
/// all but the newest `keep` complete checkpoints. Crash-safe at every point: the new
/// checkpoint appears (renamed from a temporary directory) only once complete; an old one is
/// first renamed out of the `step_*` namespace and only then deleted. On an error (disk full,
/// unwritable directory) the partial temporary directory is removed and every earlier
/// checkpoint is left as it was.
pub(crate) fn save(snapshot: &Snapshot, checkpoints_dir: &Path, keep: usize) -> Result<PathBuf> {
    let step = snapshot.state.step;
    let save_number = fault::begin_save();
    let final_dir = checkpoints_dir.join(step_dir_name(step));
    if final_dir.join(DONE).is_file() && verify(&final_dir).is_ok() {
        return Ok(final_dir);
    }
    std::fs::create_dir_all(checkpoints_dir).at(checkpoints_dir)?;
    remove_leftovers(checkpoints_dir)?;
    let tmp = checkpoints_dir.join(format!(".tmp-{}", step_dir_name(step)));
    let written = write_into(snapshot, &tmp, save_number);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::checkpoint(
            &final_dir,
            format!("could not be written ({e}); earlier checkpoints are untouched"),
        ));
    }
    fault::checkpoint_phase(save_number, CheckpointPhase::BeforeRename);
    if final_dir.exists() {
        // An incomplete leftover (no DONE) of an interrupted save, or a damaged copy: kept aside.
        let aside = unused_name(checkpoints_dir, &format!("damaged-{}", step_dir_name(step)));
        std::fs::rename(&final_dir, &aside).at(&aside)?;
    }
    std::fs::rename(&tmp, &final_dir).at(&final_dir)?;
    sync_dir(checkpoints_dir)?;
    fault::checkpoint_phase(save_number, CheckpointPhase::AfterRename);

    prune(checkpoints_dir, keep, save_number)?;
    Ok(final_dir)
}

/// Deletes all but the newest `keep` complete checkpoints: each is first renamed out of the
/// `step_*` namespace (so a kill mid-deletion never leaves a half-deleted "complete" one), then
/// removed.
fn prune(checkpoints_dir: &Path, keep: usize, save_number: usize) -> Result<()> {
    let complete = complete_checkpoints(checkpoints_dir)?;
    if complete.len() <= keep {
        return Ok(());
    }
    for (step, old) in &complete[..complete.len() - keep] {
        let trash = checkpoints_dir.join(format!(".trash-{}", step_dir_name(*step)));
        std::fs::rename(old, &trash).at(&trash)?;
        sync_dir(checkpoints_dir)?;
        std::fs::remove_file(trash.join(MODEL)).at(&trash)?;
        fault::checkpoint_phase(save_number, CheckpointPhase::Pruning);
        std::fs::remove_dir_all(&trash).at(&trash)?;
    }
    Ok(())
}

/// On resume: finishes what an interrupted save left undone (its temporary or half-deleted
/// directories, checkpoints beyond `keep`).
pub(crate) fn tidy(checkpoints_dir: &Path, keep: usize) -> Result<()> {
    if !checkpoints_dir.is_dir() {
        return Ok(());
    }
    remove_leftovers(checkpoints_dir)?;
    prune(checkpoints_dir, keep, 0)
}

/// What a checkpoint saves: the model's and the optimizer's tensors, and the rest of the
/// training state.
pub(crate) struct Snapshot {
    pub(crate) model: Vec<NamedTensor>,
    pub(crate) optimizer: Vec<NamedTensor>,
    /// The mixing part's tensors (a kept validation gradient); often none.
    pub(crate) mixing: Vec<NamedTensor>,
    pub(crate) state: TrainState,
}

/// The checkpoint's files, fsynced, in `tmp` (created fresh).
fn write_into(snapshot: &Snapshot, tmp: &Path, save_number: usize) -> Result<()> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).at(tmp)?;
    }
    std::fs::create_dir_all(tmp).at(tmp)?;
    write_safetensors(&tmp.join(MODEL), &snapshot.model, &[])?;
    fault::checkpoint_phase(save_number, CheckpointPhase::Partial);
    let optimizer_path = tmp.join(OPTIMIZER);
    if let Some(e) = fault::checkpoint_write_error(save_number) {
        // As a disk that fills up mid-file: the model complete, the optimizer file begun.
        std::fs::write(&optimizer_path, b"partial").at(&optimizer_path)?;
        return Err(Error::io(optimizer_path, e));
    }
    write_safetensors(&optimizer_path, &snapshot.optimizer, &[])?;
    write_safetensors(&tmp.join(MIXING), &snapshot.mixing, &[])?;
    let state_json = serde_json::to_string_pretty(&snapshot.state).expect("TrainState serialises");
    write_synced(&tmp.join(STATE), state_json.as_bytes())?;
    write_done(tmp)?;
    sync_dir(tmp)
}

/// Reads only state.json of a checkpoint (validating its presence and format); a format-1
/// state comes back upgraded to format 2's parts (its `format` still says 1).
pub fn read_state(dir: &Path) -> Result<TrainState> {
    if !dir.join(DONE).is_file() {
        return Err(Error::checkpoint(dir, "incomplete (no DONE marker)"));
    }
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    let corrupt = |e: serde_json::Error| Error::checkpoint(&path, format!("corrupt state: {e}"));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(corrupt)?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(1) => Ok(serde_json::from_value::<StateV1>(value)
            .map_err(corrupt)?
            .upgrade()),
        Some(f) if f == FORMAT as u64 => serde_json::from_value(value).map_err(corrupt),
        other => Err(Error::checkpoint(
            &path,
            format!(
                "format {}, this mixtrain reads formats 1 and {FORMAT}",
                other.map_or("missing".to_string(), |f| f.to_string())
            ),
        )),
    }
}

/// The model weights of a checkpoint, by parameter name.
pub(crate) fn read_model(dir: &Path) -> Result<(PathBuf, BTreeMap<String, NamedTensor>)> {
    let path = dir.join(MODEL);
    let tensors = read_safetensors(&path)?;
    Ok((path, tensors))
}

/// Everything a checkpoint holds, read back for a resume: the state (its config hash checked
/// against `config_hash`), the model weights, the optimizer moments and the mixing part's
/// tensors (empty when it kept none).
pub(crate) struct Restored {
    pub(crate) state: TrainState,
    pub(crate) model_path: PathBuf,
    pub(crate) model: BTreeMap<String, NamedTensor>,
    pub(crate) optimizer_path: PathBuf,
    pub(crate) optimizer: BTreeMap<String, NamedTensor>,
    pub(crate) mixing_path: PathBuf,
    pub(crate) mixing: BTreeMap<String, NamedTensor>,
}

pub(crate) fn read(dir: &Path, config_hash: &str) -> Result<Restored> {
    let state = read_state(dir)?;
    if state.config_hash != config_hash {
        return Err(Error::checkpoint(
            dir,
            format!(
                "was written with a different config (hash {}, now {config_hash}); resume with \
                 the original config, or start a new run.out_dir",
                state.config_hash
            ),
        ));
    }
    let (model_path, model) = read_model(dir)?;
    let optimizer_path = dir.join(OPTIMIZER);
    let mut optimizer = read_safetensors(&optimizer_path)?;
    let (mixing_path, mut mixing) = (dir.join(MIXING), BTreeMap::new());
    if state.format == 1 {
        if let Some(mut g_val) = optimizer.remove(V1_G_VAL) {
            g_val.name = G_VAL.into();
            mixing.insert(G_VAL.to_string(), g_val);
        }
        return Ok(Restored {
            state,
            model_path,
            model,
            mixing_path: optimizer_path.clone(),
            optimizer_path,
            optimizer,
            mixing,
        });
    }
    mixing = read_safetensors(&mixing_path)?;
    Ok(Restored {
        state,
        model_path,
        model,
        optimizer_path,
        optimizer,
        mixing_path,
        mixing,
    })
}

/// Path of a checkpoint's state.json (for errors about its contents).
pub(crate) fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE)
}

#[cfg(test)]
mod tests {
    /// Regression: serde_json without `float_roundtrip` parsed some f64 one ULP off, so a
    /// resumed FastMix/TiKMiX mixture drifted in the last bit from the uninterrupted run.
    #[test]
    fn mixer_state_floats_round_trip_exactly_through_state_json() {
        let values: Vec<f64> = (1..2000)
            .map(|i| (i as f64 * 0.731).sin() / (i as f64).sqrt())
            .chain([0.21007302063585143, 0.21007302063585137, 1e-300, 5e-324])
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "v": values })).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back: Vec<f64> = serde_json::from_value(back["v"].clone()).unwrap();
        assert_eq!(back, values);
    }
}
