//! Single-pass per-source gradient statistics: s_k = ⟨G_val, g_k⟩ for every source and every
//! parameter in scope, out of the training step's own backward pass (docs/design.md, "Per-source
//! gradient statistics"). A traced forward records each parameter's input and a zero probe on
//! its output; after backward the probe's gradient is the per-token output gradient δ_t, and
//!   linear W [in, out]:  ⟨G, Σ_{t∈k} a_t ⊗ δ_t⟩ = Σ_{t∈k} ⟨a_t G, δ_t⟩
//!   embedding E:         Σ_{t∈k} ⟨G[x_t], δ_t⟩
//!   tied head (h Eᵀ):    Σ_{t∈k} ⟨h_t Gᵀ, δ_t⟩
//!   norm gain γ:         Σ_{t∈k} ⟨G ⊙ x̂_t, δ_t⟩
//! each a `segment_row_dot` over the step's tokens, accumulated into K scalars. With
//! `optim`, G is replaced by P ⊙ G (AdamW's diagonal preconditioner).

use std::collections::HashMap;

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mixtrain_kernels::StatKernels;

use crate::mixer::GradScope;
use crate::model::{TapInput, Trace};
use crate::optim::AdamW;
use crate::params::ParamPath;

struct Names {
    path: ParamPath,
    out: HashMap<ParamId, String>,
}

impl<B: Backend> ModuleVisitor<B> for Names {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.insert(param.id, self.path.name());
    }
}

/// Every parameter's readable name (as AdamW's state and checkpoints use), by id.
pub fn param_names<B: Backend, M: burn::module::Module<B>>(model: &M) -> HashMap<ParamId, String> {
    let mut names = Names {
        path: ParamPath::default(),
        out: HashMap::new(),
    };
    model.visit(&mut names);
    names.out
}

/// What a single-pass step measures against.
pub struct SinglePass<'a, B: Backend> {
    /// Gradient of the target validation loss.
    pub g_val: &'a GradientsParams,
    pub names: &'a HashMap<ParamId, String>,
    pub scope: GradScope,
    /// The LM head's parameter name (the embedding when tied).
    pub head: &'a str,
    pub optim: Option<&'a AdamW<B>>,
}

impl<B: StatKernels> SinglePass<'_, B> {
    /// G (or P ⊙ G) of `param`, shaped like the parameter; None when out of scope.
    fn val_grad<const D: usize>(&self, param: ParamId) -> Option<Tensor<B, D>> {
        let name = self.names.get(&param)?;
        if self.scope == GradScope::Head && name != self.head {
            return None;
        }
        let g = self.g_val.get::<B, D>(param)?;
        Some(match self.optim.and_then(|o| o.preconditioner(name)) {
            Some(p) => {
                let dims = g.dims();
                p.reshape(dims) * g
            }
            None => g,
        })
    }

    /// Σ over the trace's taps of Σ_{t: seg_t = k} ⟨G-side_t, δ_t⟩ → [k]. Takes the probes'
    /// gradients out of `grads` (call before turning `grads` into parameter gradients).
    pub fn source_dots<AB>(
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
