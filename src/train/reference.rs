//! DoReMi's reference model: loaded from `mixer.doremi.reference` (a run or checkpoint
//! directory), or trained first for `mixer.doremi.reference_steps` steps on the initial mixture
//! and saved as `out_dir/reference.safetensors`, which a resumed run loads again.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;

use super::session::Session;
use crate::backend::TrainBackend;
use crate::checkpoint;
use crate::error::{Error, IoContext, Result};
use crate::mixer::MixerKind;
use crate::params::{collect_params, load_params};
use crate::tensor_file::{read_safetensors, write_safetensors};

pub(crate) const REFERENCE_FILE: &str = "reference.safetensors";

/// The model weights file of a run directory's newest checkpoint, or of a checkpoint directory.
fn weights_of(path: &Path) -> Result<PathBuf> {
    let dir = match checkpoint::newest_intact(&path.join("checkpoints"), false)? {
        Some((_, newest)) => newest,
        None => path.to_path_buf(),
    };
    let weights = dir.join(checkpoint::MODEL);
    if !weights.is_file() {
        return Err(Error::value(
            "mixer.doremi.reference",
            format!(
                "{} is neither a run directory with a checkpoint nor a checkpoint directory",
                path.display()
            ),
        ));
    }
    Ok(weights)
}

/// Loads or trains the reference model into `session.mixing.reference`. A resumed run loads the one
/// it saved; a new run loads `mixer.doremi.reference` or trains one and saves it in `out_dir`
/// (replacing any leftover of an earlier, failed start).
pub(crate) fn ensure_reference<B: TrainBackend>(
    session: &mut Session<B>,
    out_dir: &Path,
    resume: bool,
) -> Result<()> {
    let saved = out_dir.join(REFERENCE_FILE);
    let configured = &session.config.mixer.doremi.reference;
    let source = if resume && saved.is_file() {
        Some(saved.clone())
    } else if !configured.is_empty() {
        Some(weights_of(Path::new(configured))?)
    } else {
        None
    };
    let reference = match source {
        Some(path) => {
            let tensors = read_safetensors(&path)?;
            let fresh = session
                .config
                .model
                .init::<B>(session.batches.vocab_size, &session.device);
            load_params(fresh, &tensors, &path)?.valid()
        }
        None => {
            let model = train_reference(session)?;
            std::fs::create_dir_all(out_dir).at(out_dir)?;
            // Atomic: a temporary file, fsynced, renamed, the directory fsynced.
            write_safetensors(&saved, &collect_params(&model), &[])?;
            model
        }
    };
    session.mixing.reference = Some(reference);
    Ok(())
}

/// Trains a reference model on the initial mixture (static mixer), same seed and model.
fn train_reference<B: TrainBackend>(
    session: &Session<B>,
) -> Result<crate::model::Gpt<B::InnerBackend>> {
    let mut config = session.config.clone();
    config.mixer.kind = MixerKind::Static;
    config.train.steps = config.mixer.doremi.reference_steps;
    config.train.warmup_steps = config.train.warmup_steps.min(config.train.steps);
    let steps = config.train.steps;
    tracing::info!(
        steps,
        "training the DoReMi reference model on the initial mixture"
    );
    let mut reference = Session::<B>::build(config, session.device.clone())?;
    for _ in 0..steps {
        reference.train_step()?;
    }
    Ok(reference.trainer.model.valid())
}
