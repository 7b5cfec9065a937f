//! Single-pass per-source gradient statistics: s_k = ⟨G_val, g_k⟩ for every source and every
//! parameter in scope, out of the training step's own backward pass (docs/design.md, "Per-source
//! gradient statistics"). A traced forward records each parameter's input and a zero probe on
//! its output; after backward the probe's gradient is the per-token output gradient δ_t, and
//!   linear W [in, out]:  ⟨G, Σ_{t∈k} a_t ⊗ δ_t⟩ = Σ_{t∈k} ⟨a_t G, δ_t⟩
//!   embedding E:         Σ_{t∈k} ⟨G[x_t], δ_t⟩
//!   tied head (h Eᵀ):    Σ_{t∈k} ⟨h_t Gᵀ, δ_t⟩
//!   norm gain γ:         Σ_{t∈k} ⟨G ⊙ x̂_t, δ_t⟩
//! each a `segment_row_dot` over the step's tokens, accumulated into K scalars. G is the
//! step's target: P ⊙ G_val with AdamW's diagonal preconditioner, or G_val itself.

use std::collections::HashMap;
use std::marker::PhantomData;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mixtrain_kernels::{FusedOps, SourceStats, StatKernels};

use crate::model::{TapInput, Trace};

/// What a single-pass step measures against.
pub(crate) struct SinglePass<'a, B: Backend> {
    /// The step's G: P ⊙ g_val over the probe's scope (`GradProbe::step_target`); parameters
    /// it does not hold are out of scope.
    pub(crate) target: &'a GradientsParams,
    pub(crate) backend: PhantomData<B>,
}

impl<B: StatKernels> SinglePass<'_, B> {
    /// G of `param`, shaped like the parameter; None when out of scope.
    fn val_grad<const D: usize>(&self, param: ParamId) -> Option<Tensor<B, D>> {
        self.target.get::<B, D>(param)
    }

    /// Σ over the trace's taps of Σ_{t: seg_t = k} ⟨G-side_t, δ_t⟩ → [k]. Takes the probes'
    /// gradients out of `grads` (call before turning `grads` into parameter gradients).
    pub(crate) fn source_dots<AB>(
        &self,
        trace: Trace<AB>,
        grads: &mut <AB as AutodiffBackend>::Gradients,
        seg: Tensor<B, 1, Int>,
        k: usize,
    ) -> Tensor<B, 1>
    where
        AB: AutodiffBackend<InnerBackend = B>,
    {
        let [n] = seg.dims();
        let device = seg.device();
        let ones = Tensor::<B, 1>::ones([n], &device);
        let mut total = Tensor::<B, 1>::zeros([k], &device);
        for tap in trace.taps {
            let Some(delta) = tap.probe.grad_remove(grads) else {
                continue; // a probe the loss does not depend on
            };
            let dots = match tap.input {
                // ⟨a_t G, δ_t⟩: [n, in] @ [in, out]
                TapInput::Linear(a) => self.val_grad::<2>(tap.param).map(|g| {
                    B::segment_row_dot(a.inner().matmul(g), delta, seg.clone(), ones.clone(), k)
                }),
                // ⟨G[x_t], δ_t⟩, G [vocab, d] read in place by the gather form
                TapInput::Embedding(tokens) => self.val_grad::<2>(tap.param).map(|g| {
                    B::segment_gather_row_dot(
                        g,
                        tokens.inner(),
                        delta,
                        seg.clone(),
                        ones.clone(),
                        k,
                    )
                }),
                // ⟨h_t Gᵀ, δ_t⟩: [n, d] @ [d, vocab]
                TapInput::TiedHead(h) => self.val_grad::<2>(tap.param).map(|g| {
                    let u = h.inner().matmul(g.transpose());
                    B::segment_row_dot(u, delta, seg.clone(), ones.clone(), k)
                }),
                // ⟨G ⊙ x̂_t, δ_t⟩: [n, d]
                TapInput::NormGain(x_hat) => self.val_grad::<1>(tap.param).map(|g| {
                    let u = x_hat.inner() * g.unsqueeze::<2>();
                    B::segment_row_dot(u, delta, seg.clone(), ones.clone(), k)
                }),
            };
            if let Some(dots) = dots {
                total = total + dots;
            }
        }
        total
    }
}

/// Per parameter, Σ over some tokens of source k of the per-token gradient, for every k:
/// [k, numel] in the parameter's row-major layout.
pub(crate) type RawSourceGrads<B> = HashMap<ParamId, Tensor<B, 2>>;

/// Adds `g` to the sum of parameter `id`.
fn add_source_grad<B: Backend>(sums: &mut RawSourceGrads<B>, id: ParamId, g: Tensor<B, 2>) {
    let sum = match sums.remove(&id) {
        Some(earlier) => earlier + g,
        None => g,
    };
    sums.insert(id, sum);
}

/// Adds `b` into `a`, parameter by parameter.
pub(crate) fn add_source_grads<B: Backend>(a: &mut RawSourceGrads<B>, b: RawSourceGrads<B>) {
    for (id, g) in b {
        add_source_grad(a, id, g);
    }
}

/// Per-source gradients from a traced backward: for every parameter with a tap, the raw
/// G_k = Σ_{t: seg_t = k} (its per-token gradient) as [k, numel] in the parameter's
/// row-major layout (the tied embedding's two uses added):
///   linear W [in, out]:  Σ_{t∈k} a_t ⊗ δ_t          (`segment_accumulate`)
///   embedding E:         Σ_{t∈k} onehot(x_t) ⊗ δ_t  (`segment_scatter_rows`)
///   tied head (h Eᵀ):    Σ_{t∈k} δ_t ⊗ h_t          (`segment_accumulate`)
///   norm gain γ:         Σ_{t∈k} δ_t ⊙ x̂_t          (`segment_accumulate` of a ones column)
/// "Raw": δ carries the step's loss weights; the caller rescales each source. Takes the
/// probes' gradients out of `grads`.
pub(crate) fn source_gradients<AB>(
    trace: Trace<AB>,
    grads: &mut <AB as AutodiffBackend>::Gradients,
    seg: Tensor<AB::InnerBackend, 1, Int>,
    k: usize,
    vocab: usize,
) -> RawSourceGrads<AB::InnerBackend>
where
    AB: AutodiffBackend<InnerBackend: StatKernels>,
{
    type Inner<AB> = <AB as AutodiffBackend>::InnerBackend;
    let mut out = RawSourceGrads::new();
    for tap in trace.taps {
        let Some(delta) = tap.probe.grad_remove(grads) else {
            continue; // a probe the loss does not depend on
        };
        let [n, d_out] = delta.dims();
        let g = match tap.input {
            TapInput::Linear(a) => {
                let d_in = a.dims()[1];
                let g = Inner::<AB>::segment_accumulate(a.inner(), delta, seg.clone(), k);
                Inner::<AB>::reshape(g, [k, d_in * d_out])
            }
            TapInput::Embedding(tokens) => {
                let rows = tokens.inner();
                let g = Inner::<AB>::segment_scatter_rows(rows, delta, seg.clone(), k, vocab);
                Inner::<AB>::reshape(g, [k, vocab * d_out])
            }
            TapInput::TiedHead(h) => {
                let d = h.dims()[1];
                let g = Inner::<AB>::segment_accumulate(delta, h.inner(), seg.clone(), k);
                Inner::<AB>::reshape(g, [k, d_out * d])
            }
            TapInput::NormGain(x_hat) => {
                let ones = Tensor::ones([n, 1], &delta.device());
                let g =
                    Inner::<AB>::segment_accumulate(ones, delta * x_hat.inner(), seg.clone(), k);
                Inner::<AB>::reshape(g, [k, d_out])
            }
        };
        add_source_grad(&mut out, tap.param, g);
    }
    out
}
