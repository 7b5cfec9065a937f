//! The batches part: the training sources, the validation-only target sets, and the sampler
//! that draws the training and probe windows from them, with its own checkpoint state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainState;
use crate::config::Config;
use crate::data::{load_sources, load_target_sets, Sampler, SamplerState, Source, Tokenizer};
use crate::error::{Error, Result};

pub(crate) struct Batches {
    pub(crate) sources: Vec<Source>,
    /// The validation-only target sets (`[[target.sets]]`); the sampler never draws from them.
    pub(crate) target_sets: Vec<Source>,
    pub(crate) sampler: Sampler,
    /// Tokens in the vocabulary (the model's embedding rows).
    pub(crate) vocab_size: usize,
}

/// The batches' entry in a checkpoint's state.json.
#[derive(Serialize, Deserialize)]
struct BatchesState {
    sampler: SamplerState,
}

impl Batches {
    /// Loads the tokenizer, the sources and the target sets (tokenising them on first use).
    pub(crate) fn load(config: &Config) -> Result<Self> {
        let tokenizer =
            Tokenizer::from_spec(&config.data.tokenizer, config.data.eos_token.as_deref())?;
        let sources = load_sources(&config.data, &tokenizer)?;
        let target_sets = load_target_sets(&config.target, &config.data, &tokenizer, false)?;
        Ok(Batches {
            sampler: Sampler::new(config.run.seed, config.data.seq_len, &sources),
            sources,
            target_sets,
            vocab_size: tokenizer.vocab_size(),
        })
    }

    pub(crate) fn state(&self) -> serde_json::Value {
        let state = BatchesState {
            sampler: self.sampler.state().clone(),
        };
        serde_json::to_value(state).expect("the sampler state serialises")
    }

    pub(crate) fn restore(&mut self, state: &TrainState, state_path: &Path) -> Result<()> {
        let state: BatchesState = super::state::part(state, "batches", state_path)?;
        if !self.sampler.restore(state.sampler) {
            return Err(Error::checkpoint(
                state_path,
                "sampler state does not fit the sources (did the data change?)",
            ));
        }
        Ok(())
    }
}
