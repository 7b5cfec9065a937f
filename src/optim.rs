//! AdamW with decoupled weight decay, global-norm gradient clipping, and the learning-rate
//! schedule (linear warmup, cosine decay). Written here rather than taken from burn so its
//! state is plain named tensors (checkpointed exactly) and the mixers can read the diagonal
//! preconditioner.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::params::{NamedTensor, ParamPath};
use crate::train::TrainConfig;
use mixtrain_kernels::cpu::host::AdamWStep;
use mixtrain_kernels::{FusedOps, StatKernels};

/// Learning rate after `step` optimizer steps (the rate used by step `step + 1`).
pub(crate) fn lr_at(step: usize, train: &TrainConfig) -> f64 {
    let warmup = train.warmup_steps;
    if step < warmup {
        return train.lr * (step + 1) as f64 / warmup as f64;
    }
    let min_lr = train.lr * train.min_lr_ratio;
    let decay_steps = train.steps.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    min_lr + 0.5 * (train.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// First and second moments of one parameter, flattened: [numel] each.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

pub(crate) struct AdamW<B: Backend> {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken (bias correction uses it).
    pub(crate) steps: u64,
    moments: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub(crate) fn new(train: &TrainConfig) -> Self {
        AdamW {
            beta1: train.beta1,
            beta2: train.beta2,
            eps: train.adam_eps,
            weight_decay: train.weight_decay,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient in `grads` (which it consumes), with
    /// the gradients multiplied by `grad_scale` (clipping) first.
    pub(crate) fn step<AB, M>(
        &mut self,
        model: M,
        grads: &mut GradientsParams,
        lr: f64,
        grad_scale: f64,
    ) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        B: StatKernels,
        M: AutodiffModule<AB>,
    {
        self.steps += 1;
        let mut mapper = AdamWMapper {
            optim: self,
            grads,
            lr,
            grad_scale,
            path: ParamPath::default(),
        };
        model.map(&mut mapper)
    }

    /// P ⊙ g for parameter `name` with g [numel] and AdamW's diagonal preconditioner
    /// P = 1 / (sqrt(v / (1 − β2^t)) + eps) (fused on the CPU), or None before the
    /// parameter's first step.
    pub(crate) fn precondition(&self, name: &str, g: Tensor<B, 1>) -> Option<Tensor<B, 1>>
    where
        B: StatKernels,
    {
        let moments = self.moments.get(name)?;
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        Some(B::preconditioned(g, moments.v.clone(), bias2, self.eps))
    }

    /// The preconditioner the next step would use if its gradient of `name` were `g` ([numel]):
    /// 1 / (sqrt(v' / (1 − β2^(t+1))) + eps) with v' = β2 v + (1 − β2) g². Bounded, unlike
    /// `preconditioner`, where v is ~0 but g is not (rare tokens' embedding rows): the step
    /// P ⊙ g stays within sqrt((1 − β2^(t+1)) / (1 − β2)) per coordinate. [numel]
    pub(crate) fn next_preconditioner(&self, name: &str, g: &Tensor<B, 1>) -> Tensor<B, 1> {
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32 + 1);
        let fresh = g.clone().powi_scalar(2) * (1.0 - self.beta2);
        let v = match self.moments.get(name) {
            Some(moments) => moments.v.clone() * self.beta2 + fresh,
            None => fresh,
        };
        ((v / bias2).sqrt() + self.eps).recip()
    }

    /// The moments as named host tensors ("m.<param>", "v.<param>"), for checkpoints.
    pub(crate) fn to_named(&self) -> Vec<NamedTensor> {
        let mut out = Vec::with_capacity(self.moments.len() * 2);
        for (name, moments) in &self.moments {
            for (prefix, tensor) in [("m", &moments.m), ("v", &moments.v)] {
                let data = tensor
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("converted to f32 above");
                out.push(NamedTensor {
                    name: format!("{prefix}.{name}"),
                    shape: vec![data.len()],
                    data,
                    is_linear_weight: false,
                });
            }
        }
        out
    }

    /// Restores moments saved by `to_named`; false if the set is inconsistent.
    pub(crate) fn load_named(
        &mut self,
        tensors: &BTreeMap<String, NamedTensor>,
        device: &B::Device,
    ) -> bool {
        let mut moments = BTreeMap::new();
        for (key, m) in tensors {
            let Some(name) = key.strip_prefix("m.") else {
                continue;
            };
            let Some(v) = tensors.get(&format!("v.{name}")) else {
                return false;
            };
            let to_tensor = |t: &NamedTensor| {
                Tensor::<B, 1>::from_data(TensorData::new(t.data.clone(), [t.data.len()]), device)
            };
            moments.insert(
                name.to_string(),
                Moments {
                    m: to_tensor(m),
                    v: to_tensor(v),
                },
            );
        }
        if moments.len() * 2 != tensors.len() {
            return false;
        }
        self.moments = moments;
        true
    }
}

struct AdamWMapper<'a, B: Backend> {
    optim: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    path: ParamPath,
}

impl<AB> ModuleMapper<AB> for AdamWMapper<'_, AB::InnerBackend>
where
    AB: AutodiffBackend<InnerBackend: StatKernels>,
{
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let optim = &mut *self.optim;
        let name = self.path.name();
        let dims = tensor.dims();
        let numel: usize = dims.iter().product();
        let require_grad = tensor.is_require_grad();
        let param = tensor.inner().reshape([numel]); // [numel]
        let grad = grad.reshape([numel]);
        let Moments { m, v } = optim.moments.remove(&name).unwrap_or_else(|| Moments {
            m: param.zeros_like(),
            v: param.zeros_like(),
        });
        let t = optim.steps as i32;
        let step = AdamWStep {
            beta1: optim.beta1,
            beta2: optim.beta2,
            eps: optim.eps,
            lr: self.lr,
            bias1: 1.0 - optim.beta1.powi(t),
            bias2: 1.0 - optim.beta2.powi(t),
            // Decoupled decay on matrices and embeddings only (not norm gains).
            decay: if D >= 2 && optim.weight_decay > 0.0 {
                1.0 - self.lr * optim.weight_decay
            } else {
                1.0
            },
            grad_scale: self.grad_scale,
        };
        // One fused pass on the CPU (host loop), the reference tensor ops elsewhere.
        let (param, m, v) = AB::InnerBackend::adamw(param, grad, m, v, step);
        optim.moments.insert(name, Moments { m, v });
        let mut updated = Tensor::<AB, D>::from_inner(param.reshape(dims));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

struct GradNorm<'a, B: Backend> {
    grads: &'a GradientsParams,
    sum_squares: Option<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradNorm<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(grad) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            let s = (grad.clone() * grad).sum(); // [1]
            self.sum_squares = Some(match self.sum_squares.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Puts a NaN into the first element of the first parameter's gradient that exists: the
/// `nonfinite-grad` fault (src/fault.rs), so that the non-finite policy is tested on a real
/// gradient whose losses were finite.
pub(crate) fn poison_first_gradient<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    model: &M,
    grads: &mut GradientsParams,
) {
    let mut visitor = Poison::<AB::InnerBackend> {
        grads,
        done: false,
        backend: std::marker::PhantomData,
    };
    model.visit(&mut visitor);
}

struct Poison<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    done: bool,
    backend: std::marker::PhantomData<B>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Poison<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if self.done {
            return;
        }
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) else {
            return;
        };
        let dims = grad.dims();
        let device = grad.device();
        let flat = grad.reshape([dims.iter().product::<usize>()]);
        let nan = Tensor::<AB::InnerBackend, 1>::from_floats([f32::NAN], &device);
        let poisoned = flat.slice_assign(0..1, nan).reshape(dims);
        self.grads.register(param.id, poisoned);
        self.done = true;
    }
}

/// The global L2 norm of all gradients. One host sync.
pub(crate) fn global_grad_norm<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = GradNorm::<AB::InnerBackend> {
        grads,
        sum_squares: None,
    };
    model.visit(&mut visitor);
    visitor
        .sum_squares
        .map(|s| s.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let train = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((lr_at(0, &train) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, &train) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, &train) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, &train) - 0.55).abs() < 1e-12);
        assert!((lr_at(100, &train) - 0.1).abs() < 1e-12);
        for s in 10..100 {
            assert!(lr_at(s + 1, &train) <= lr_at(s, &train));
        }
    }
}
