//! `StatKernels` for `Autodiff<B>`: each fused op is a tracked op whose forward and backward
//! are `B`'s (`B`'s kernels or host loops); with `B`'s references, burn's autodiff through the
//! reference ops instead, so those numbers are exactly burn's.

use burn::backend::autodiff::{
    checkpoint::strategy::CheckpointStrategy,
    ops::{Backward, OpsKind},
    Autodiff,
};
use burn::prelude::*;
use burn::tensor::ops::IntTensor;

use crate::reference;
use crate::{ExecPolicy, FusedOps, KernelImpl, SourceStats, StatKernels};

mod ops;

use ops::*;

impl<B: StatKernels, C: CheckpointStrategy> SourceStats for Autodiff<B, C> {}

impl<B: StatKernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        if B::IMPL == KernelImpl::Reference {
            return reference::cross_entropy_per_token(logits, targets);
        }
        let logits = logits.into_primitive().tensor();
        let targets: IntTensor<B> = targets.into_primitive();
        let loss = match CrossEntropyBackward
            .prepare::<C>([logits.node.clone()])
            // Keeps its state (logits' checkpoint, logsumexp) rather than recomputing the
            // forward when gradient checkpointing is on.
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let logits_id = prep.checkpoint(&logits);
                let (loss, logsumexp) = B::cross_entropy_rows(
                    float::<B, 2>(logits.primitive),
                    int::<B, 1>(targets.clone()),
                );
                let state = (logits_id, targets, logsumexp.into_primitive().tensor());
                prep.finish(state, loss.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => {
                let (loss, _) =
                    B::cross_entropy_rows(float::<B, 2>(logits.primitive), int::<B, 1>(targets));
                prep.finish(loss.into_primitive().tensor())
            }
        };
        float::<Self, 1>(loss)
    }

    /// A tracked op where `B` has fused host loops (one graph node instead of the scale, mask
    /// and softmax's five); burn's autodiff of the reference ops elsewhere (the GPU backends
    /// keep the graph their kernels were tested with).
    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        if B::IMPL != KernelImpl::Host {
            return reference::causal_softmax(scores, scale);
        }
        let scores = scores.into_primitive().tensor();
        let y = tracked_op(
            CausalSoftmaxBackward
                .prepare::<C>([scores.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::causal_softmax(float::<B, 4>(scores.primitive), scale)
                    .into_primitive()
                    .tensor();
                (y.clone(), (y, scale))
            },
        );
        float::<Self, 4>(y)
    }

    /// A tracked op where `B` has fused host loops (the tables are constants; its backward is
    /// the inverse rotation); burn's autodiff of the reference ops elsewhere.
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        if B::IMPL != KernelImpl::Host {
            return reference::rope(x, cos, sin);
        }
        let x = x.into_primitive().tensor();
        let (cos, sin) = (cos.inner(), sin.inner());
        let y = tracked_op(
            RopeBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::rope(float::<B, 4>(x.primitive), cos.clone(), sin.clone());
                let state = (cos.into_primitive().tensor(), sin.into_primitive().tensor());
                (y.into_primitive().tensor(), state)
            },
        );
        float::<Self, 4>(y)
    }

    /// A tracked op where `B` has host ops (reshaping without a copy, both ways); burn's
    /// reshape elsewhere.
    fn reshape<const D1: usize, const D2: usize>(
        x: Tensor<Self, D1>,
        shape: [usize; D2],
    ) -> Tensor<Self, D2> {
        if B::IMPL != KernelImpl::Host {
            return x.reshape(shape);
        }
        let from = x.dims();
        let x = x.into_primitive().tensor();
        let y = tracked_op(
            ReshapeBackward::<D1, D2>
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::reshape(float::<B, D1>(x.primitive), shape);
                (y.into_primitive().tensor(), from)
            },
        );
        float::<Self, D2>(y)
    }

    /// A tracked op where `B` has host products; burn's matmul and its autodiff elsewhere.
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let (l, r) = (lhs.dims(), rhs.dims());
        if B::IMPL != KernelImpl::Host || D < 2 || l[..D - 2] != r[..D - 2] || l[D - 1] != r[D - 2]
        {
            return lhs.matmul(rhs);
        }
        let lhs = lhs.into_primitive().tensor();
        let rhs = rhs.into_primitive().tensor();
        let y = tracked_op(
            MatmulBackward::<D>
                .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::matmul(
                    float::<B, D>(lhs.primitive.clone()),
                    float::<B, D>(rhs.primitive.clone()),
                );
                (y.into_primitive().tensor(), (lhs.primitive, rhs.primitive))
            },
        );
        float::<Self, D>(y)
    }

    /// A tracked op where `B` has fused host loops; burn's autodiff of the reference ops
    /// elsewhere (the GPU backends' numbers stay what they were).
    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if B::IMPL != KernelImpl::Host {
            return reference::rms_norm(x, gain, eps);
        }
        let x = x.into_primitive().tensor();
        let gain = gain.into_primitive().tensor();
        let y = tracked_op(
            RmsNormBackward
                .prepare::<C>([x.node.clone(), gain.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::rms_norm(
                    float::<B, 2>(x.primitive.clone()),
                    float::<B, 1>(gain.primitive.clone()),
                    eps,
                );
                (
                    y.into_primitive().tensor(),
                    (x.primitive, gain.primitive, eps),
                )
            },
        );
        float::<Self, 2>(y)
    }

    /// A tracked op where `B` has fused host loops; burn's own silu and product elsewhere.
    fn swiglu_rows(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if B::IMPL != KernelImpl::Host {
            return burn::tensor::activation::silu(gate) * up;
        }
        let gate = gate.into_primitive().tensor();
        let up = up.into_primitive().tensor();
        let h = tracked_op(
            SwigluBackward
                .prepare::<C>([gate.node.clone(), up.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let h = B::swiglu_rows(
                    float::<B, 2>(gate.primitive.clone()),
                    float::<B, 2>(up.primitive.clone()),
                );
                (h.into_primitive().tensor(), (gate.primitive, up.primitive))
            },
        );
        float::<Self, 2>(h)
    }

    /// A tracked op where `B` has fused host loops; burn's own GELU elsewhere.
    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if B::IMPL != KernelImpl::Host {
            return burn::tensor::activation::gelu(x);
        }
        let x = x.into_primitive().tensor();
        let y = tracked_op(
            GeluBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful(),
            || {
                let y = B::gelu_rows(float::<B, 2>(x.primitive.clone()));
                (y.into_primitive().tensor(), x.primitive)
            },
        );
        float::<Self, 2>(y)
    }
}

impl<B: StatKernels, C: CheckpointStrategy> ExecPolicy for Autodiff<B, C> {
    const IMPL: KernelImpl = B::IMPL;

    const SPLITS_PASSES: bool = B::SPLITS_PASSES;

    fn concurrent_passes() -> usize {
        B::concurrent_passes()
    }
}
