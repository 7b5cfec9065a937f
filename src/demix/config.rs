//! `[demix]`: the DeMix seed search's settings.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate::{at_least_one, at_most, positive};

/// `[demix]`: the seed mixture from merged per-source component models (`mixtrain demix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DemixConfig {
    /// Steps of a shared base model on the initial mixture (0: components start from the
    /// freshly initialised model). Default 100.
    pub(crate) base_steps: usize,
    /// Steps of each per-source component, from the base. Default 100.
    pub(crate) component_steps: usize,
    /// Share of the initial mixture kept in each component's data:
    /// w = (1 − f) one-hot(k) + f p_init. Default 0.1.
    pub(crate) general_fraction: f64,
    /// Exponent τ of the candidates' prior, p ∝ tokens^τ. Default 0.5.
    pub(crate) prior_temperature: f64,
    /// Candidates keep w_k <= max_ratio · prior_k. Default 4.0.
    pub(crate) max_ratio: f64,
    /// Dirichlet concentrations c of the candidates, w ~ Dir(c · K · prior), used in turn.
    /// Default [1.0, 4.0, 16.0].
    pub(crate) concentrations: Vec<f64>,
    /// Merged proxies scored in the first round; round r scores first_round / 2^r. Default 32.
    pub(crate) first_round: usize,
    /// Scoring rounds. Default 3.
    pub(crate) rounds: usize,
    /// Candidates the regressor ranks in each later round and for the final mixture.
    /// Default 5000.
    pub(crate) pool: usize,
    /// The seed mixture is the mean of the `top_k` best predicted pool candidates. Default 16.
    pub(crate) top_k: usize,
    /// Steps of each real model `mixtrain demix --validate M` trains (from the base) to check
    /// the proxies. 0: `component_steps`. Default 0.
    pub(crate) validate_steps: usize,
}

impl Default for DemixConfig {
    fn default() -> Self {
        DemixConfig {
            base_steps: 100,
            component_steps: 100,
            general_fraction: 0.1,
            prior_temperature: 0.5,
            max_ratio: 4.0,
            concentrations: vec![1.0, 4.0, 16.0],
            first_round: 32,
            rounds: 3,
            pool: 5000,
            top_k: 16,
            validate_steps: 0,
        }
    }
}

impl DemixConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        at_least_one("demix.component_steps", self.component_steps)?;
        if !(0.0..1.0).contains(&self.general_fraction) {
            return Err(Error::value(
                "demix.general_fraction",
                format!("must be in [0, 1) (got {})", self.general_fraction),
            ));
        }
        positive("demix.prior_temperature", self.prior_temperature)?;
        if !(self.max_ratio.is_finite() && self.max_ratio >= 1.0) {
            return Err(Error::value(
                "demix.max_ratio",
                format!("must be >= 1 (got {})", self.max_ratio),
            ));
        }
        if self.concentrations.is_empty() {
            return Err(Error::value("demix.concentrations", "must not be empty"));
        }
        for (i, &c) in self.concentrations.iter().enumerate() {
            positive(&format!("demix.concentrations.{i}"), c)?;
        }
        at_least_one("demix.first_round", self.first_round)?;
        at_least_one("demix.rounds", self.rounds)?;
        at_least_one("demix.pool", self.pool)?;
        at_least_one("demix.top_k", self.top_k)?;
        at_most("demix.top_k", self.top_k, "demix.pool", self.pool)
    }
}
