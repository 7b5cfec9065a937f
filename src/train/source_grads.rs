//! TiKMiX-M's G_k from probed training steps (`[mixer.tikmix-m] gradients = "probe"`): a
//! traced step's raw per-source gradients (`single_pass::source_gradients`, [k, numel] per
//! parameter, on the device) are rescaled so that row k is the gradient of source k's mean
//! token loss in the step; the update's window adds them up over its probed steps, and the
//! update takes each source's mean as a gradient shaped like the parameters.
//!
//! Memory: the window holds one copy of all K gradients (4 bytes per parameter per source),
//! a probed step up to 2 + 2 · lanes more while it runs (its sum, the next pass added into
//! it, passes waiting to be added; `gradient_memory_mb` bounds the total). A checkpoint saves
//! the window flat, one vector per source in module order (`flatten_grads`'s layout), and
//! distributed ranks sum each step's G_k in that layout.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::single_pass::{add_source_grads, RawSourceGrads};
use super::Session;
use crate::backend::TrainBackend;
use crate::distributed::flatten_grads;
use crate::error::Result;

/// The open window of an update: Σ over its probed steps of each source's G_k ([k, numel]
/// per parameter; a step adds zeros for a source it did not draw), and per source the
/// number of steps that drew it.
pub(crate) struct GradientWindow<B: Backend> {
    pub(crate) sums: RawSourceGrads<B>,
    pub(crate) steps: Vec<u32>,
}

impl<B: Backend> GradientWindow<B> {
    /// Adds one probed step's G_k; `drawn[k]`: the step drew source k.
    pub(crate) fn add(&mut self, grads: RawSourceGrads<B>, drawn: &[bool]) {
        add_source_grads(&mut self.sums, grads);
        for (steps, &drawn) in self.steps.iter_mut().zip(drawn) {
            *steps += u32::from(drawn);
        }
    }
}

/// The window's sums (or a step's G_k) as one flat vector per source, in module order
/// (`flatten_grads` of each source's row; a parameter without a sum gives zeros).
pub(super) fn flatten_by_source<AB, M>(
    model: &M,
    raw: &RawSourceGrads<AB::InnerBackend>,
    sources: usize,
) -> Vec<Vec<f32>>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    (0..sources)
        .map(|k| flatten_grads(model, &source_row(model, raw, k, 1.0)))
        .collect()
}

/// The inverse of `flatten_by_source`.
struct UnflattenBySource<'a, B: Backend> {
    flat: &'a [Vec<f32>],
    at: usize,
    device: burn::tensor::Device<B>,
    out: RawSourceGrads<B>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for UnflattenBySource<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let numel = param.val().dims().iter().product::<usize>();
        let k = self.flat.len();
        let mut values = Vec::with_capacity(k * numel);
        for source in self.flat {
            values.extend_from_slice(&source[self.at..self.at + numel]);
        }
        self.at += numel;
        let data = TensorData::new(values, [k, numel]);
        self.out
            .insert(param.id, Tensor::from_data(data, &self.device));
    }
}

/// One flat vector per source (module order) back to [k, numel] per parameter; None when a
/// vector's length is not the model's parameter count.
pub(super) fn unflatten_by_source<AB, M>(
    model: &M,
    flat: &[Vec<f32>],
    device: &burn::tensor::Device<AB::InnerBackend>,
) -> Option<RawSourceGrads<AB::InnerBackend>>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let params = model.num_params();
    if flat.is_empty() || flat.iter().any(|v| v.len() != params) {
        return None;
    }
    let mut visitor = UnflattenBySource {
        flat,
        at: 0,
        device: device.clone(),
        out: RawSourceGrads::new(),
    };
    model.visit(&mut visitor);
    Some(visitor.out)
}

/// Row `k` of every parameter's [k, numel] sum divided by `steps`, shaped like the parameter.
struct SourceRow<'a, B: Backend> {
    sums: &'a RawSourceGrads<B>,
    k: usize,
    steps: f64,
    out: GradientsParams,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for SourceRow<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(sum) = self.sums.get(&param.id) else {
            return;
        };
        let numel = sum.dims()[1];
        let row = sum.clone().slice([self.k..self.k + 1, 0..numel]) / self.steps; // [1, numel]
        let grad = row.reshape(param.val().dims());
        self.out.register::<AB::InnerBackend, D>(param.id, grad);
    }
}

/// Row `k` of the sums divided by `steps`, as a gradient shaped like the parameters.
fn source_row<AB, M>(
    model: &M,
    sums: &RawSourceGrads<AB::InnerBackend>,
    k: usize,
    steps: f64,
) -> GradientsParams
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let mut row = SourceRow {
        sums,
        k,
        steps,
        out: GradientsParams::new(),
    };
    model.visit(&mut row);
    row.out
}

impl<B: TrainBackend> Session<B> {
    /// Whether the next step measures TiKMiX-M's G_k (`gradients = "probe"`, a step of an
    /// update's window).
    pub(super) fn source_grads_for_next_step(&self) -> bool {
        self.mixing
            .mixer
            .needs()
            .virtual_step
            .is_some_and(|spec| spec.from_probe)
            && self
                .config
                .mixer
                .probes_at(self.trainer.progress.step + 1, self.config.train.steps)
    }

    /// Whether TiKMiX-M's virtual step starts from the parameters its probed G_k were taken
    /// at (`virtual_from = "probed"`).
    pub(super) fn virtual_step_from_probed_params(&self) -> bool {
        self.mixing
            .mixer
            .needs()
            .virtual_step
            .is_some_and(|spec| spec.from_probed_params)
    }

    /// A probed step's G_k from its raw per-source sums: source k's row scaled by
    /// W / Σ_{i∈k} w_i (δ carried each sequence's w_i / W), summed over ranks (each held
    /// its rows' share), added to the update's window. `weights` is (·, Σ_{i∈k} w_i) per
    /// source.
    pub(super) fn add_step_source_grads(
        &mut self,
        raw: RawSourceGrads<B::InnerBackend>,
        weights: &[(f64, f64)],
        weight_total: f64,
    ) -> Result<()> {
        let k = weights.len();
        let scale: Vec<f32> = weights
            .iter()
            .map(|&(_, w)| {
                if w > 0.0 {
                    (weight_total / w) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let scale =
            Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(scale, [k, 1]), &self.device);
        let mut grads: RawSourceGrads<B::InnerBackend> = raw
            .into_iter()
            .map(|(id, g)| (id, g * scale.clone()))
            .collect();
        if !self.reducer.is_alone() {
            let flat = flatten_by_source(&self.trainer.model, &grads, k);
            let len = flat[0].len();
            let summed = self.sum_over_ranks(flat.concat(), Vec::new())?.f32s;
            let flat: Vec<Vec<f32>> = summed.chunks(len).map(<[f32]>::to_vec).collect();
            grads = unflatten_by_source(&self.trainer.model, &flat, &self.device)
                .expect("the ranks' sums have the model's layout");
        }
        let drawn: Vec<bool> = weights.iter().map(|&(_, w)| w > 0.0).collect();
        match &mut self.mixing.probe.gradients {
            Some(window) => window.add(grads, &drawn),
            None => {
                let steps = drawn.iter().map(|&d| u32::from(d)).collect();
                self.mixing.probe.gradients = Some(GradientWindow { sums: grads, steps });
            }
        }
        Ok(())
    }

    /// TiKMiX-M's G_k for an update: the window's mean for every source a probed step drew,
    /// extra passes (`samples_per_source`) for the others; summed over ranks.
    pub(crate) fn probed_source_gradients(
        &mut self,
        samples_per_source: usize,
    ) -> Result<Vec<GradientsParams>> {
        let k = self.batches.sources.len();
        let window = self.mixing.probe.gradients.take();
        let mut out = Vec::with_capacity(k);
        for source in 0..k {
            let steps = window.as_ref().map_or(0, |w| w.steps[source]);
            out.push(match &window {
                Some(window) if steps > 0 => {
                    source_row(&self.trainer.model, &window.sums, source, steps as f64)
                }
                _ => {
                    let share = self.source_gradient_share(source, samples_per_source);
                    self.sum_grads_over_ranks(share)?
                }
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "source_grads_tests.rs"]
mod tests;
