//! Format 1 of a checkpoint (mixtrain before the session was split into parts): every part's
//! fields side by side in state.json, the mixing part's g_val inside the optimizer file. Read
//! and upgraded to format 2 on resume.

use serde::Deserialize;

use super::{one_rank, TrainState};

/// state.json of format 1: every part's fields side by side at the top level, the mixing
/// part's g_val as `probe.g_val` in the optimizer file.
#[derive(Deserialize)]
pub(super) struct StateV1 {
    step: usize,
    tokens: u64,
    config_hash: String,
    optimizer_steps: u64,
    sampler: serde_json::Value,
    mixer: serde_json::Value,
    weight_sums: Vec<f64>,
    loss_since_update: Vec<(f64, u64)>,
    #[serde(default)]
    tokens_by_source: Vec<u64>,
    #[serde(default)]
    skipped_steps: u32,
    metrics_bytes: u64,
    ratios_bytes: u64,
    #[serde(default = "one_rank")]
    world_size: usize,
    #[serde(default)]
    probe_window: Option<Vec<(f64, u32)>>,
    #[serde(default)]
    gval_served: Option<u32>,
}

/// Format 1's g_val entry in the optimizer file.
pub(super) const V1_G_VAL: &str = "probe.g_val";

impl StateV1 {
    /// The same state as format 2's parts; `format` still says 1.
    pub(super) fn upgrade(self) -> TrainState {
        use serde_json::json;
        let trainer = json!({
            "progress": {
                "step": self.step,
                "tokens": self.tokens,
                "weight_sums": self.weight_sums,
                "loss_since_update": self.loss_since_update,
                "tokens_by_source": self.tokens_by_source,
                "skipped_steps": self.skipped_steps,
            },
            "optimizer_steps": self.optimizer_steps,
        });
        let mut mixing = json!({ "mixer": self.mixer });
        if let Some(sums) = self.probe_window {
            mixing["probe_window"] = json!(sums);
        }
        if let Some(served) = self.gval_served {
            mixing["gval_served"] = json!(served);
        }
        let parts = [
            ("trainer", trainer),
            ("batches", json!({ "sampler": self.sampler })),
            ("mixing", mixing),
        ];
        TrainState {
            format: 1,
            step: self.step,
            config_hash: self.config_hash,
            metrics_bytes: self.metrics_bytes,
            ratios_bytes: self.ratios_bytes,
            world_size: self.world_size,
            parts: parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }
}
