//! The mixing part: the mixer and what its updates need between them (the mixture the run
//! started from, the target, DoReMi's reference model and pool, the open probe window or the
//! kept g_val), with its own checkpoint state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::measure::ExcessPool;
use super::probe::{GradProbe, ProbeWindow};
use super::source_grads::{flatten_by_source, unflatten_by_source, GradientWindow};
use crate::backend::TrainBackend;
use crate::checkpoint::{Restored, G_VAL};
use crate::config::Config;
use crate::data::Source;
use crate::distributed::{flatten_grads, unflatten_grads};
use crate::error::{Error, Result};
use crate::mixer::{self, Mixer};
use crate::model::Gpt;
use crate::params::NamedTensor;
use crate::target::Target;

pub(crate) struct MixingDriver<B: TrainBackend> {
    pub(crate) mixer: Box<dyn Mixer>,
    /// The mixture the run started from.
    pub(crate) initial: mixer::InitialMixture,
    /// The resolved `[target]`.
    pub(crate) target: Target,
    /// The reference model of DoReMi's excess loss.
    pub(crate) reference: Option<Gpt<B::InnerBackend>>,
    /// DoReMi's fixed pool (`excess_from = "pool"`), built at its first update from the run's
    /// seed and the reference model, so a resumed run rebuilds the same one.
    pub(crate) excess_pool: Option<ExcessPool<B::InnerBackend>>,
    pub(crate) probe: ProbeState<B::InnerBackend>,
}

/// The g_val of the mixers that probe training steps (fastmix, tikmix), between steps.
pub(crate) struct ProbeState<B: burn::prelude::Backend> {
    /// ⟨g_val, g_k⟩ measured so far for the next update, with its g_val (`probe_steps`).
    pub(crate) window: Option<ProbeWindow>,
    /// A g_val kept for the next updates' windows (`gval_every`), with the number of updates
    /// it has served.
    pub(crate) kept: Option<(GradProbe, u32)>,
    /// TiKMiX-M's G_k measured so far for the next update (`gradients = "probe"`).
    pub(crate) gradients: Option<GradientWindow<B>>,
    /// The parameters before the last probed step's optimizer step, for a virtual step from
    /// them (`virtual_from = "probed"`); taken by the update right after that step.
    pub(crate) before_probed_step: Option<Gpt<B>>,
}

impl<B: burn::prelude::Backend> Default for ProbeState<B> {
    fn default() -> Self {
        ProbeState {
            window: None,
            kept: None,
            gradients: None,
            before_probed_step: None,
        }
    }
}

impl<B: burn::prelude::Backend> ProbeState<B> {
    /// Closes the open window for an update: per source the mean ⟨g_val, g_k⟩ over its steps
    /// (None without a window). Its g_val is kept for the next window until it has served
    /// `gval_every` updates.
    pub(crate) fn close_window(&mut self, gval_every: u32) -> Option<Vec<Option<f64>>> {
        let window = self.window.take()?;
        let means = window.means();
        let served = window.served + 1;
        if served < gval_every {
            self.kept = Some((window.probe, served));
        }
        Some(means)
    }
}

/// The mixing part's entry in a checkpoint's state.json; the g_val of an open window or the
/// kept one is `g_val` in mixing.safetensors.
#[derive(Serialize, Deserialize)]
struct MixingState {
    mixer: serde_json::Value,
    /// Per source (Σ ⟨g_val, g_k⟩, steps) of a probe window open at the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probe_window: Option<Vec<(f64, u32)>>,
    /// Updates already served by the saved g_val (the open window's or the kept one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gval_served: Option<u32>,
    /// Per source, the probed steps behind the G_k sums of TiKMiX-M's open window (the sums
    /// are `g_k.K` in mixing.safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gradient_window: Option<Vec<u32>>,
}

/// The name of source k's G_k sum in mixing.safetensors.
fn g_k_name(k: usize) -> String {
    format!("g_k.{k}")
}

impl<B: TrainBackend> MixingDriver<B> {
    /// The mixer of `[mixer]` from its initial mixture over `sources`.
    pub(crate) fn new(config: &Config, sources: &[Source], vocab_size: usize) -> Result<Self> {
        let (mixer_config, steps) = (&config.mixer, config.train.steps);
        let out_dir = &config.run.out_dir;
        let initial = mixer::initial_mixture(mixer_config, out_dir, sources, vocab_size, steps)?;
        let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
        Ok(MixingDriver {
            mixer: mixer_config.build(&initial.weights, config.run.seed, &names, steps)?,
            initial,
            target: config.target(),
            reference: None,
            excess_pool: None,
            probe: ProbeState::default(),
        })
    }

    /// The state and the tensors (the saved g_val, flat in `model`'s parameter order).
    pub(crate) fn state(&self, model: &Gpt<B>) -> (serde_json::Value, Vec<NamedTensor>) {
        let saved = match (&self.probe.window, &self.probe.kept) {
            (Some(window), _) => Some((&window.probe, window.served)),
            (None, Some((probe, served))) => Some((probe, *served)),
            (None, None) => None,
        };
        let tensors = saved.map(|(probe, _)| {
            // [Σ numel]
            let data = flatten_grads(model, &probe.g_val);
            NamedTensor {
                name: G_VAL.into(),
                shape: vec![data.len()],
                data,
                is_linear_weight: false,
            }
        });
        let mut tensors: Vec<NamedTensor> = tensors.into_iter().collect();
        if let Some(window) = &self.probe.gradients {
            let flat = flatten_by_source(model, &window.sums, window.steps.len());
            for (k, sum) in flat.into_iter().enumerate() {
                tensors.push(NamedTensor {
                    name: g_k_name(k),
                    shape: vec![sum.len()],
                    data: sum,
                    is_linear_weight: false,
                });
            }
        }
        let state = MixingState {
            mixer: self.mixer.state(),
            probe_window: self.probe.window.as_ref().map(|w| w.sums.clone()),
            gval_served: saved.map(|(_, served)| served),
            gradient_window: self.probe.gradients.as_ref().map(|w| w.steps.clone()),
        };
        let state = serde_json::to_value(state).expect("the mixing state serialises");
        (state, tensors)
    }

    /// Restores the mixer and the probe window or kept g_val of a checkpoint.
    pub(crate) fn restore(
        &mut self,
        restored: &Restored,
        model: &Gpt<B>,
        sources: usize,
        state_path: &Path,
    ) -> Result<()> {
        let state: MixingState = super::state::part(&restored.state, "mixing", state_path)?;
        self.mixer
            .restore(&state.mixer)
            .map_err(|e| Error::checkpoint(state_path, e))?;
        self.probe = self.restore_probe(&state, restored, model, sources, state_path)?;
        self.probe.gradients = restore_gradient_window(&state, restored, model)?;
        Ok(())
    }

    /// The probe window a checkpoint saved (its sums in the state, g_val in the mixing file),
    /// or, with no window open, the g_val it kept for the next updates; empty for what it had
    /// none of.
    fn restore_probe(
        &self,
        state: &MixingState,
        restored: &Restored,
        model: &Gpt<B>,
        sources: usize,
        state_path: &Path,
    ) -> Result<ProbeState<B::InnerBackend>> {
        if state.probe_window.is_none() && state.gval_served.is_none() {
            return Ok(ProbeState::default());
        }
        let path = &restored.mixing_path;
        let Some(g_val) = restored.mixing.get(G_VAL) else {
            return Err(Error::checkpoint(
                path,
                "g_val is missing, but the state has an open probe window or a kept g_val \
                 (gval_served)",
            ));
        };
        let Some(spec) = self.mixer.needs().grad_probe else {
            return Ok(ProbeState::default());
        };
        let expected = model.num_params();
        if g_val.data.len() != expected {
            return Err(Error::checkpoint(
                path,
                format!(
                    "g_val has {} values for a model of {expected} parameters",
                    g_val.data.len()
                ),
            ));
        }
        let probe = GradProbe {
            g_val: unflatten_grads(model, &g_val.data),
            scope: spec.scope,
            precondition: spec.precondition,
        };
        // Checkpoints from before `gval_every` have no gval_served: their g_val was fresh.
        let served = state.gval_served.unwrap_or(0);
        let Some(sums) = &state.probe_window else {
            return Ok(ProbeState {
                window: None,
                kept: Some((probe, served)),
                gradients: None,
                before_probed_step: None,
            });
        };
        if sums.len() != sources {
            return Err(Error::checkpoint(
                state_path,
                format!("probe_window has {} sources, the run {sources}", sums.len()),
            ));
        }
        let mut window = ProbeWindow::new(probe, sums.len(), served);
        window.sums = sums.clone();
        Ok(ProbeState {
            window: Some(window),
            kept: None,
            gradients: None,
            before_probed_step: None,
        })
    }
}

/// TiKMiX-M's open G_k window a checkpoint saved: the steps per source in the state, each
/// source's sum in the mixing file, flat in module order.
fn restore_gradient_window<B: TrainBackend>(
    state: &MixingState,
    restored: &Restored,
    model: &Gpt<B>,
) -> Result<Option<GradientWindow<B::InnerBackend>>> {
    let Some(steps) = &state.gradient_window else {
        return Ok(None);
    };
    let path = &restored.mixing_path;
    let mut flat = Vec::with_capacity(steps.len());
    for k in 0..steps.len() {
        let name = g_k_name(k);
        let Some(tensor) = restored.mixing.get(&name) else {
            return Err(Error::checkpoint(
                path,
                format!("{name} is missing, but the state has an open gradient_window"),
            ));
        };
        flat.push(tensor.data.clone());
    }
    let device = model.tok_emb.weight.val().device();
    let Some(sums) = unflatten_by_source(model, &flat, &device) else {
        return Err(Error::checkpoint(
            path,
            format!(
                "the G_k sums of gradient_window are not {} values each",
                model.num_params()
            ),
        ));
    };
    Ok(Some(GradientWindow {
        sums,
        steps: steps.clone(),
    }))
}
