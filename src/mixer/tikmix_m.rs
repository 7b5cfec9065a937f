//! TiKMiX-M: regression over mixtures. At each update the trainer measures, for a set of
//! candidate mixtures w (the K one-source mixtures and `candidates` draws from Dir(c · p)),
//! the true one-step group influence ΔL_val(w) = L_val(θ − η P ⊙ Σ_k w_k G_k) − L_val(θ) with
//! forward passes only. A gradient-boosted-tree regressor is fitted from w to ΔL_val over the
//! newest `history` updates (each update's ΔL z-scored, since their scale shrinks as training
//! goes on); the mean of the `top_k` best predicted of `pool` fresh draws from Dir(c · p) is
//! blended into the mixture, then the floor.

use serde::{Deserialize, Serialize};

use super::config::{GradStats, ProbeSteps, Probing};
use super::init::{apply_floor, blend_and_floor};
use super::InfluenceFrom;
use super::{restore_state, Mixer, MixerUpdate, SourceStats, StatsRequest, VirtualStepSpec};
use crate::gbt::{Gbt, GbtParams};
use crate::rng::Rng;
use crate::validate::{at_least_one, at_most, positive, unit_closed_above};

/// `[mixer.tikmix-m]`: candidate mixtures scored by their true one-step group influence, a
/// gradient-boosted-tree regressor over the history, the best predicted mixture blended in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TikMixMConfig {
    /// Where G_k comes from: "probe" (the per-source gradients of the probed training steps
    /// of the update's window, `probe_steps`, accumulated from the step's own traced backward
    /// by `segment_accumulate`: no extra backward) or "extra-passes" (`samples_per_source`
    /// more sequences of each source, one extra backward each, at every update). A source no
    /// probed step drew gets its G_k from extra passes.
    pub gradients: InfluenceFrom,
    /// Which steps measure G_k with `gradients = "probe"`: "last" (the update's own step; a
    /// source it did not draw gets extra passes) or "window" (every step of the update's
    /// window, G_k their mean). Default "last": a traced step costs ~1.45× a plain one, so
    /// tracing the whole window would cost about that much. Its G_k rest on the ~3 sequences
    /// a source has in one step of 16; with `virtual_from = "probed"` it trails the extra
    /// passes on one-source `man` by 0.021 ± 0.030 nats over 6 seeds and leads on `all` by
    /// 0.019 ± 0.029 (docs/results/mixing.md).
    pub probe_steps: ProbeSteps,
    /// Which parameters the virtual step starts from: "probed" (θ before the last probed
    /// step's optimizer step: the parameters its G_k were taken at, so the virtual step does
    /// not take again a step just applied to those very sequences) or "updated" (θ after the
    /// update's own optimizer step). Default: "probed" with `gradients = "probe"` (on
    /// one-source `man`, 6 seeds, it closed two thirds of the probe's gap to extra passes),
    /// "updated" with `"extra-passes"` (their G_k are taken there); "probed" with extra
    /// passes is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_from: Option<VirtualFrom>,
    /// Memory the gradient copies may take at their peak, in MiB: K · params · 4 bytes per
    /// copy; one copy with `"extra-passes"`, 3 + 2 · lanes with `"probe"` (the window's sums,
    /// the probed step's sum and the next pass added into it, and up to 2 · lanes passes'
    /// per-source gradients waiting, lanes = the passes the backend runs side by side). A run
    /// that would need more stops at start naming these keys. Default 4096.
    pub(crate) gradient_memory_mb: usize,
    /// Sequences of each source behind G_k with `gradients = "extra-passes"` (and for a
    /// source no probed step drew). Default 16.
    pub samples_per_source: usize,
    /// Random windows of the target on which ΔL_val is measured: fresh at every update, the
    /// same for all of its candidates, so their differences are paired. Default 3 (earlier
    /// versions: 16). An update costs 1 + K + `candidates` forward passes of this many
    /// windows: at 3 and 3 a tenth of the earlier 16 and 12, so a step is ~1.1× a static one
    /// instead of ~1.6×, at a price in mixing where the target is one source (one-source
    /// `man`, 3 seeds: −0.138 vs −0.190 nats against uniform; docs/results/mixing.md).
    pub val_sequences: usize,
    /// Dirichlet candidates measured per update, besides the K one-source mixtures. Default 3
    /// (earlier versions: 12).
    pub candidates: usize,
    /// Dirichlet concentration c around the current mixture p: w ~ Dir(c · p). Default 20.
    pub(crate) concentration: f64,
    /// The virtual step is θ − scale · lr · P ⊙ g, g = Σ_k w_k G_k, lr = the schedule's current
    /// rate, P = 1 or (`precondition`) the diagonal preconditioner AdamW would apply next with
    /// g as the gradient, 1 / (sqrt(v̂') + eps), v' = β2 v + (1 − β2) g². Default 10: on the
    /// quickstart ΔL_val is then 1e-3..1e-1, past the purely linear regime (where TiKMiX-M
    /// would only rank ⟨g_val, G_k⟩) without overshooting.
    pub(crate) step_scale: f64,
    /// Precondition the virtual step like AdamW. Default false: every coordinate then moves by
    /// about scale · lr, which made ΔL_val positive (several nats) on the quickstart even at
    /// scale 1; with it, use a small `step_scale` (~0.05).
    pub(crate) precondition: bool,
    /// Updates whose measurements the regressor is fitted on (the newest). Default 8.
    pub(crate) history: usize,
    /// Candidates drawn from Dir(c · p) and scored by the regressor. Default 1000.
    pub(crate) pool: usize,
    /// The new mixture is the mean of the `top_k` best predicted candidates. Default 8.
    pub(crate) top_k: usize,
    /// Blend β: p ← (1 − β) p + β p_new. Default 0.5.
    pub(crate) blend: f64,
}

impl Default for TikMixMConfig {
    fn default() -> Self {
        TikMixMConfig {
            gradients: InfluenceFrom::Probe,
            probe_steps: ProbeSteps::Last,
            virtual_from: None,
            gradient_memory_mb: 4096,
            samples_per_source: 16,
            val_sequences: 3,
            candidates: 3,
            concentration: 20.0,
            step_scale: 10.0,
            precondition: false,
            history: 8,
            pool: 1000,
            top_k: 8,
            blend: 0.5,
        }
    }
}

impl TikMixMConfig {
    /// The probing settings with `gradients = "probe"`: traced (single-pass) steps, no g_val.
    pub(crate) fn probing(&self) -> Option<Probing> {
        (self.gradients == InfluenceFrom::Probe).then_some(Probing {
            grad_stats: GradStats::SinglePass,
            probe_steps: self.probe_steps,
            gval_every: 1,
        })
    }

    /// `virtual_from`, or its default for `gradients`.
    pub(crate) fn virtual_step_from(&self) -> VirtualFrom {
        self.virtual_from.unwrap_or(match self.gradients {
            InfluenceFrom::Probe => VirtualFrom::Probed,
            InfluenceFrom::ExtraPasses => VirtualFrom::Updated,
        })
    }

    /// Copies of all K gradients held at the peak, with `lanes` passes run side by side.
    pub(crate) fn gradient_copies(&self, lanes: usize) -> usize {
        match self.gradients {
            InfluenceFrom::Probe => 3 + 2 * lanes,
            InfluenceFrom::ExtraPasses => 1,
        }
    }

    /// Refuses a run whose gradient copies would not fit `gradient_memory_mb`.
    pub(crate) fn check_memory(
        &self,
        sources: usize,
        params: usize,
        lanes: usize,
    ) -> crate::Result<()> {
        let copies = self.gradient_copies(lanes);
        let need = copies * sources * params * std::mem::size_of::<f32>();
        let mib = |b: usize| b.div_ceil(1 << 20);
        if need <= self.gradient_memory_mb << 20 {
            return Ok(());
        }
        Err(crate::Error::value(
            "mixer.tikmix-m.gradient_memory_mb",
            format!(
                "{sources} sources' gradients of a {params}-parameter model take {} MiB \
                 ({copies} copies per source with mixer.tikmix-m.gradients = \"{}\"), more than \
                 the {} MiB allowed; raise it if the memory is there, or use fewer sources, a \
                 smaller model or mixer.tikmix-m.gradients = \"extra-passes\" (one copy)",
                mib(need),
                match self.gradients {
                    InfluenceFrom::Probe => "probe",
                    InfluenceFrom::ExtraPasses => "extra-passes",
                },
                self.gradient_memory_mb
            ),
        ))
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.virtual_from == Some(VirtualFrom::Probed)
            && self.gradients == InfluenceFrom::ExtraPasses
        {
            return Err(crate::Error::value(
                "mixer.tikmix-m.virtual_from",
                "\"probed\" needs mixer.tikmix-m.gradients = \"probe\" (extra passes take G_k \
                 at the updated parameters)",
            ));
        }
        at_least_one("mixer.tikmix-m.gradient_memory_mb", self.gradient_memory_mb)?;
        at_least_one("mixer.tikmix-m.samples_per_source", self.samples_per_source)?;
        at_least_one("mixer.tikmix-m.val_sequences", self.val_sequences)?;
        at_least_one("mixer.tikmix-m.candidates", self.candidates)?;
        positive("mixer.tikmix-m.concentration", self.concentration)?;
        positive("mixer.tikmix-m.step_scale", self.step_scale)?;
        at_least_one("mixer.tikmix-m.history", self.history)?;
        at_least_one("mixer.tikmix-m.pool", self.pool)?;
        at_least_one("mixer.tikmix-m.top_k", self.top_k)?;
        at_most(
            "mixer.tikmix-m.top_k",
            self.top_k,
            "mixer.tikmix-m.pool",
            self.pool,
        )?;
        unit_closed_above("mixer.tikmix-m.blend", self.blend)
    }
}

/// The parameters TiKMiX-M's virtual step starts from (`[mixer.tikmix-m] virtual_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VirtualFrom {
    /// The parameters after the update's own optimizer step.
    Updated,
    /// The parameters before the last probed step's optimizer step (with probed G_k).
    Probed,
}

/// One update's measurements: (candidate mixture, ΔL_val).
type Measured = Vec<(Vec<f64>, f64)>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// The blended mixture before the floor.
    base: Vec<f64>,
    weights: Vec<f64>,
    rng: Rng,
    /// The newest `history` updates' measurements, oldest first.
    history: Vec<Measured>,
}

pub struct TikMixM {
    config: TikMixMConfig,
    floor: f64,
    state: State,
    /// Candidates handed out by `candidates`, awaiting their ΔL in `update`.
    pending: Vec<Vec<f64>>,
}

/// Random stream of the mixer's candidate draws (distinct from the sampler's streams).
const RNG_STREAM: u64 = 0x7111_3111;

impl TikMixM {
    pub(crate) fn new(config: TikMixMConfig, init: &[f64], floor: f64, seed: u64) -> Self {
        TikMixM {
            config,
            floor,
            state: State {
                base: init.to_vec(),
                weights: apply_floor(init, floor),
                rng: Rng::new(seed, RNG_STREAM),
                history: Vec::new(),
            },
            pending: Vec::new(),
        }
    }

    fn draw_around_weights(&mut self, n: usize) -> Vec<Vec<f64>> {
        let alpha: Vec<f64> = self
            .state
            .weights
            .iter()
            .map(|w| self.config.concentration * w.max(1e-6))
            .collect();
        (0..n).map(|_| self.state.rng.dirichlet(&alpha)).collect()
    }
}

/// Fits the regressor on `history` (each update's ΔL z-scored) and returns the mean of the
/// `top_k` candidates of `pool` with the lowest predicted ΔL (ties: the earlier candidate).
fn regress_and_choose(
    history: &[Measured],
    pool: &[Vec<f64>],
    params: GbtParams,
    top_k: usize,
) -> Vec<f64> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for update in history {
        let n = update.len() as f64;
        let mean = update.iter().map(|(_, d)| d).sum::<f64>() / n;
        let std = (update.iter().map(|(_, d)| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
        for (w, d) in update {
            x.push(w.clone());
            y.push(if std > 0.0 { (d - mean) / std } else { 0.0 });
        }
    }
    let model = Gbt::fit(&x, &y, params);
    let predicted: Vec<f64> = pool.iter().map(|w| model.predict(w)).collect();
    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.sort_by(|&a, &b| predicted[a].total_cmp(&predicted[b]).then(a.cmp(&b)));
    let chosen = &order[..top_k.min(pool.len())];
    let mut mean = vec![0.0; pool[0].len()];
    for &i in chosen {
        for (m, w) in mean.iter_mut().zip(&pool[i]) {
            *m += w / chosen.len() as f64;
        }
    }
    mean
}

impl Mixer for TikMixM {
    fn weights(&self) -> &[f64] {
        &self.state.weights
    }

    fn needs(&self) -> StatsRequest {
        StatsRequest {
            virtual_step: Some(VirtualStepSpec {
                from_probe: self.config.gradients == InfluenceFrom::Probe,
                from_probed_params: self.config.virtual_step_from() == VirtualFrom::Probed,
                samples_per_source: self.config.samples_per_source,
                val_sequences: self.config.val_sequences,
                scale: self.config.step_scale,
                precondition: self.config.precondition,
            }),
            ..StatsRequest::default()
        }
    }

    fn candidates(&mut self) -> Vec<Vec<f64>> {
        let k = self.state.weights.len();
        let mut candidates: Vec<Vec<f64>> = (0..k)
            .map(|i| (0..k).map(|j| f64::from(i == j)).collect())
            .collect();
        candidates.extend(self.draw_around_weights(self.config.candidates));
        self.pending = candidates.clone();
        candidates
    }

    fn update(&mut self, stats: &SourceStats) -> Option<MixerUpdate> {
        let deltas = stats.candidate_delta.as_ref()?;
        let candidates = std::mem::take(&mut self.pending);
        if candidates.len() != deltas.len() || deltas.iter().any(|d| !d.is_finite()) {
            return None;
        }
        let k = self.state.weights.len();
        // ΔL of the one-source mixtures: the per-source signal in metrics.jsonl.
        let per_source = deltas[..k].to_vec();
        self.state
            .history
            .push(candidates.into_iter().zip(deltas.iter().copied()).collect());
        let excess = self.state.history.len().saturating_sub(self.config.history);
        self.state.history.drain(..excess);

        let pool = self.draw_around_weights(self.config.pool);
        let target = regress_and_choose(
            &self.state.history,
            &pool,
            GbtParams::default(),
            self.config.top_k,
        );
        let st = &mut self.state;
        st.weights = blend_and_floor(&mut st.base, &target, self.config.blend, self.floor);
        Some(MixerUpdate {
            weights: st.weights.clone(),
            signal: Some(("delta_val_loss", per_source)),
            guard: None,
        })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let k = self.state.base.len();
        self.state = restore_state("tikmix-m", state, k, |s: &State| s.base.len())?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "tikmix_m_tests.rs"]
mod tests;
