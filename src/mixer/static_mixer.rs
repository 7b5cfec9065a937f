//! The static mixer: the initial mixture, unchanged for the whole run.

use super::{Mixer, MixerUpdate, SourceStats, StatsRequest};

pub(crate) struct StaticMixer {
    weights: Vec<f64>,
}

impl StaticMixer {
    pub(crate) fn new(weights: Vec<f64>) -> Self {
        StaticMixer { weights }
    }
}

impl Mixer for StaticMixer {
    fn weights(&self) -> &[f64] {
        &self.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest::default()
    }

    fn update(&mut self, _stats: &SourceStats) -> Option<MixerUpdate> {
        None
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "weights": self.weights })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let weights: Vec<f64> = serde_json::from_value(state["weights"].clone())
            .map_err(|e| format!("static mixer state: {e}"))?;
        if weights.len() != self.weights.len() {
            return Err(format!(
                "static mixer state has {} weights, the run has {} sources",
                weights.len(),
                self.weights.len()
            ));
        }
        self.weights = weights;
        Ok(())
    }
}
