//! Checkpoints: `checkpoints/step_XXXXXXXX/` with model.safetensors, optimizer.safetensors,
//! state.json (step, tokens, config hash, sampler, mixer, log lengths) and a `DONE` marker.
//! Written into a temporary directory, fsynced, renamed; older checkpoints are deleted only
//! after a newer one is complete.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::TrainBackend;
use crate::data::SamplerState;
use crate::error::{Error, IoContext, Result};
use crate::export::{read_safetensors, write_safetensors};
use crate::params::{collect_params, load_params};
use crate::train::Session;

const FORMAT: u32 = 1;
const DONE: &str = "DONE";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    pub step: usize,
    pub tokens: u64,
    pub config_hash: String,
    pub optimizer_steps: u64,
    pub sampler: SamplerState,
    pub mixer: serde_json::Value,
    pub weight_sums: Vec<f64>,
    pub loss_since_update: Vec<(f64, u64)>,
    /// Training tokens drawn per source (absent in checkpoints of older versions: zeros).
    #[serde(default)]
    pub tokens_by_source: Vec<u64>,
    /// Lengths of metrics.jsonl and ratios.csv when the checkpoint was taken.
    pub metrics_bytes: u64,
    pub ratios_bytes: u64,
}

pub fn step_dir_name(step: usize) -> String {
    format!("step_{step:08}")
}

/// Complete checkpoints (those with DONE) in `dir`, oldest first.
pub fn complete_checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
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

fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .at(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).at(path)?;
    file.write_all(bytes).at(path)?;
    file.sync_all().at(path)
}

/// Writes the session's checkpoint at its current step into `checkpoints_dir`, then deletes
/// all but the newest `keep` complete checkpoints.
pub fn save<B: TrainBackend>(
    session: &Session<B>,
    checkpoints_dir: &Path,
    log_lengths: (u64, u64),
    keep: usize,
) -> Result<PathBuf> {
    let final_dir = checkpoints_dir.join(step_dir_name(session.step));
    if final_dir.join(DONE).is_file() {
        return Ok(final_dir);
    }
    std::fs::create_dir_all(checkpoints_dir).at(checkpoints_dir)?;
    let tmp = checkpoints_dir.join(format!(".tmp-{}", step_dir_name(session.step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;

    let model_path = tmp.join(MODEL);
    write_safetensors(&model_path, &collect_params(&session.model), &[])?;
    std::fs::File::open(&model_path)
        .and_then(|f| f.sync_all())
        .at(&model_path)?;
    let optim_path = tmp.join(OPTIMIZER);
    write_safetensors(&optim_path, &session.optim.to_named(), &[])?;
    std::fs::File::open(&optim_path)
        .and_then(|f| f.sync_all())
        .at(&optim_path)?;

    let state = TrainState {
        format: FORMAT,
        step: session.step,
        tokens: session.tokens,
        config_hash: session.config.hash(),
        optimizer_steps: session.optim.steps,
        sampler: session.sampler.state().clone(),
        mixer: session.mixer.state(),
        weight_sums: session.weight_sums.clone(),
        loss_since_update: session.loss_since_update.clone(),
        tokens_by_source: session.tokens_by_source.clone(),
        metrics_bytes: log_lengths.0,
        ratios_bytes: log_lengths.1,
    };
    let state_json = serde_json::to_string_pretty(&state).expect("TrainState serialises");
    write_synced(&tmp.join(STATE), state_json.as_bytes())?;
    write_synced(&tmp.join(DONE), b"")?;
    sync_dir(&tmp)?;
    if final_dir.exists() {
        // An incomplete leftover (no DONE) of an interrupted save.
        std::fs::remove_dir_all(&final_dir).at(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).at(&final_dir)?;
    sync_dir(checkpoints_dir)?;

    let complete = complete_checkpoints(checkpoints_dir)?;
    if complete.len() > keep {
        for (_, old) in &complete[..complete.len() - keep] {
            if *old != final_dir {
                std::fs::remove_dir_all(old).at(old)?;
            }
        }
    }
    Ok(final_dir)
}

/// Reads only state.json of a checkpoint (validating its presence and format).
pub fn read_state(dir: &Path) -> Result<TrainState> {
    if !dir.join(DONE).is_file() {
        return Err(Error::checkpoint(dir, "incomplete (no DONE marker)"));
    }
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("corrupt state: {e}")))?;
    if state.format != FORMAT {
        return Err(Error::checkpoint(
            &path,
            format!(
                "format {}, this mixtrain reads format {FORMAT}",
                state.format
            ),
        ));
    }
    Ok(state)
}

/// Loads the model weights of a checkpoint into `session` (for evaluation).
pub fn load_model<B: TrainBackend>(dir: &Path, session: &mut Session<B>) -> Result<()> {
    let path = dir.join(MODEL);
    let tensors = read_safetensors(&path)?;
    session.model = load_params(session.model.clone(), &tensors, &path)?;
    Ok(())
}

/// Restores everything a checkpoint holds into `session`; the config must hash the same.
pub fn load<B: TrainBackend>(dir: &Path, session: &mut Session<B>) -> Result<TrainState> {
    let state = read_state(dir)?;
    let hash = session.config.hash();
    if state.config_hash != hash {
        return Err(Error::checkpoint(
            dir,
            format!(
                "was written with a different config (hash {}, now {hash}); resume with the \
                 original config, or start a new run.out_dir",
                state.config_hash
            ),
        ));
    }
    load_model(dir, session)?;
    let optim_path = dir.join(OPTIMIZER);
    let moments = read_safetensors(&optim_path)?;
    if !session.optim.load_named(&moments, &session.device) {
        return Err(Error::checkpoint(
            &optim_path,
            "optimizer moments are incomplete",
        ));
    }
    session.optim.steps = state.optimizer_steps;
    let k = session.sources.len();
    if state.weight_sums.len() != k
        || state.loss_since_update.len() != k
        || !(state.tokens_by_source.is_empty() || state.tokens_by_source.len() == k)
    {
        return Err(Error::checkpoint(
            dir.join(STATE),
            format!("state is for a different number of sources than {k}"),
        ));
    }
    if !session.sampler.restore(state.sampler.clone()) {
        return Err(Error::checkpoint(
            dir.join(STATE),
            "sampler state does not fit the sources (did the data change?)",
        ));
    }
    session
        .mixer
        .restore(&state.mixer)
        .map_err(|e| Error::checkpoint(dir.join(STATE), e))?;
    session.step = state.step;
    session.tokens = state.tokens;
    session.weight_sums = state.weight_sums.clone();
    session.loss_since_update = state.loss_since_update.clone();
    session.tokens_by_source = if state.tokens_by_source.is_empty() {
        vec![0; k]
    } else {
        state.tokens_by_source.clone()
    };
    Ok(state)
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
