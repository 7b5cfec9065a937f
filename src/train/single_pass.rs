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

use std::marker::PhantomData;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mixtrain_kernels::StatKernels;

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
