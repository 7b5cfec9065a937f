//! Gradient probes for the online mixers: the validation gradient g_val, and inner products
//! ⟨g_val, g⟩ (optionally ⟨P g_val, g⟩ with AdamW's diagonal preconditioner P) over a
//! parameter scope, computed from gradient buffers without extra copies.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use mixtrain_kernels::{SourceStats, StatKernels};

use crate::mixer::GradScope;
use crate::optim::AdamW;
use crate::params::ParamPath;

/// What a probed training step measures against.
pub struct GradProbe {
    /// Gradient of the target validation loss.
    pub g_val: GradientsParams,
    pub scope: GradScope,
    pub precondition: bool,
}

/// The probe of an update's window (`probe_steps` of the mixer's section): its g_val, and per source the sum
/// of ⟨g_val, g_k⟩ over the window's probed steps that drew the source and their number.
pub(crate) struct ProbeWindow {
    pub(crate) probe: GradProbe,
    pub(crate) sums: Vec<(f64, u32)>,
    /// Earlier updates this g_val already served (`gval_every` of the mixer's section).
    pub(crate) served: u32,
}

impl ProbeWindow {
    /// A window over `sources` sources around a g_val that served `served` updates before.
    pub(crate) fn new(probe: GradProbe, sources: usize, served: u32) -> Self {
        ProbeWindow {
            probe,
            sums: vec![(0.0, 0); sources],
            served,
        }
    }

    /// Adds one probed step's ⟨g_val, g_k⟩ (None for a source the step did not draw).
    pub(crate) fn add(&mut self, dots: &[Option<f64>]) {
        for (sum, dot) in self.sums.iter_mut().zip(dots) {
            if let Some(dot) = dot {
                sum.0 += dot;
                sum.1 += 1;
            }
        }
    }

    /// Per source, the mean of ⟨g_val, g_k⟩ over the steps that drew it (None if none did).
    pub(crate) fn means(&self) -> Vec<Option<f64>> {
        self.sums
            .iter()
            .map(|&(sum, n)| (n > 0).then(|| sum / n as f64))
            .collect()
    }
}

/// Builds P ⊙ g_val (or g_val itself) over a scope, shaped like each parameter.
struct Prepare<'a, B: Backend> {
    g_val: &'a GradientsParams,
    scope: GradScope,
    head: &'a str,
    optim: Option<&'a AdamW<B>>,
    path: ParamPath,
    out: GradientsParams,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Prepare<'_, AB::InnerBackend>
where
    AB::InnerBackend: StatKernels,
{
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let name = self.path.name();
        if self.scope == GradScope::Head && name != self.head {
            return;
        }
        let Some(g) = self.g_val.get::<AB::InnerBackend, D>(param.id) else {
            return;
        };
        let g = match self.optim {
            Some(optim) => {
                let dims = g.dims();
                let numel = g.shape().num_elements();
                match optim.precondition(&name, g.clone().reshape([numel])) {
                    Some(pg) => pg.reshape(dims),
                    None => g,
                }
            }
            None => g,
        };
        self.out.register(param.id, g);
    }
}

impl GradProbe {
    /// What one training step dots its gradients with: P ⊙ g_val over the probe's scope
    /// (g_val itself without preconditioning), shaped like each parameter. P changes only
    /// between optimizer steps, so a step builds this once for all its micro-batches (and
    /// single-pass statistics read it as their G).
    pub(crate) fn step_target<AB, M>(
        &self,
        model: &M,
        head: &str,
        optim: &AdamW<AB::InnerBackend>,
    ) -> GradientsParams
    where
        AB: AutodiffBackend<InnerBackend: StatKernels>,
        M: AutodiffModule<AB>,
    {
        let mut visitor = Prepare::<AB::InnerBackend> {
            g_val: &self.g_val,
            scope: self.scope,
            head,
            optim: self.precondition.then_some(optim),
            path: ParamPath::default(),
            out: GradientsParams::new(),
        };
        model.visit(&mut visitor);
        visitor.out
    }
}

/// A gradient (or P ⊙ g_val) with every parameter's tensor flattened, by parameter id: what
/// `grad_dot` reads its first operand from. Unlike `GradientsParams` (whose tensors sit behind
/// `dyn Any`) it can be shared between threads, so the passes of a step dot their own
/// gradients with it where they run (`passes::backward_passes`).
pub(crate) struct FlatGrads<B: Backend> {
    by_id: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> FlatGrads<B> {
    /// The tensors of `grads` for the parameters of `model`, flattened.
    pub(crate) fn of<AB, M>(model: &M, grads: &GradientsParams) -> Self
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut visitor = Flatten::<B> {
            grads,
            out: HashMap::new(),
        };
        model.visit(&mut visitor);
        FlatGrads { by_id: visitor.out }
    }
}

struct Flatten<'a, B: Backend> {
    grads: &'a GradientsParams,
    out: HashMap<ParamId, Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Flatten<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            let numel = g.shape().num_elements();
            self.out.insert(param.id, g.reshape([numel]));
        }
    }
}

/// Σ over the parameters held by both `a` and `b` of ⟨a, b⟩.
struct Dot<'a, B: Backend> {
    a: &'a FlatGrads<B>,
    b: &'a GradientsParams,
    sum: Option<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Dot<'_, AB::InnerBackend>
where
    AB::InnerBackend: StatKernels,
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let (Some(a), Some(b)) = (
            self.a.by_id.get(&param.id),
            self.b.get::<AB::InnerBackend, D>(param.id),
        ) else {
            return;
        };
        let numel = b.shape().num_elements();
        let s = <AB::InnerBackend as SourceStats>::dot(a.clone(), b.reshape([numel])); // [1]
        self.sum = Some(match self.sum.take() {
            Some(acc) => acc + s,
            None => s,
        });
    }
}

/// ⟨a, b⟩ over the parameters of `model` that both hold (a scope, or P ⊙ g_val, is built into
/// `a` by `GradProbe::step_target`). One host sync.
pub(crate) fn grad_dot<AB: AutodiffBackend<InnerBackend: StatKernels>, M: AutodiffModule<AB>>(
    model: &M,
    a: &FlatGrads<AB::InnerBackend>,
    b: &GradientsParams,
) -> f64 {
    let mut visitor = Dot::<AB::InnerBackend> { a, b, sum: None };
    model.visit(&mut visitor);
    visitor
        .sum
        .map(|s| s.into_scalar().elem::<f64>())
        .unwrap_or(0.0)
}

struct VirtualStep<'a, B: Backend> {
    gradients: &'a [GradientsParams],
    weights: &'a [f64],
    lr: f64,
    optim: Option<&'a AdamW<B>>,
    path: ParamPath,
}

impl<B: Backend> ModuleMapper<B> for VirtualStep<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let mut direction: Option<Tensor<B, D>> = None;
        for (gradients, &w) in self.gradients.iter().zip(self.weights) {
            if w == 0.0 {
                continue;
            }
            if let Some(g) = gradients.get::<B, D>(id) {
                let g = g * w;
                direction = Some(match direction.take() {
                    Some(d) => d + g,
                    None => g,
                });
            }
        }
        let Some(mut direction) = direction else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if let Some(optim) = self.optim {
            let dims = direction.dims();
            let numel = direction.shape().num_elements();
            let flat = direction.reshape([numel]);
            let p = optim.next_preconditioner(&self.path.name(), &flat);
            direction = (flat * p).reshape(dims);
        }
        Param::from_mapped_value(id, tensor - direction * self.lr, mapper)
    }
}

/// θ − lr · P ⊙ g with g = Σ_k w_k G_k: the parameters after a virtual step on mixture
/// `weights` of the per-source gradients. P = 1, or, when `optim` is given, the diagonal
/// preconditioner AdamW would use next with g as its gradient (`next_preconditioner`).
pub(crate) fn virtual_step<B: Backend, M: Module<B>>(
    model: M,
    gradients: &[GradientsParams],
    weights: &[f64],
    lr: f64,
    optim: Option<&AdamW<B>>,
) -> M {
    model.map(&mut VirtualStep {
        gradients,
        weights,
        lr,
        optim,
        path: ParamPath::default(),
    })
}
