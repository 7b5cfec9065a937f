//! `StatKernels` for `Autodiff<B>`: each fused op is a tracked op whose forward and backward
//! are `B`'s (`B`'s kernels or host loops); with `B`'s references, burn's autodiff through the
//! reference ops instead, so those numbers are exactly burn's.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff, NodeId,
};
use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::TensorPrimitive;

use crate::reference;
use crate::{KernelImpl, StatKernels};

fn float<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn int<B: Backend, const D: usize>(primitive: IntTensor<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(primitive)
}

/// The backward of the causal softmax: state = (its output y, scale).
#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: StatKernels> Backward<B, 1> for CausalSoftmaxBackward {
    type State = (FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [scores_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (y, scale) = ops.state;
        if let Some(node) = scores_node {
            let ds = B::causal_softmax_backward(float::<B, 4>(y), float::<B, 4>(dy), scale);
            grads.register::<B>(node.id, ds.into_primitive().tensor());
        }
    }
}

/// The backward of RoPE: the inverse rotation. State = (cos, sin) [seq, head_dim / 2].
#[derive(Debug)]
struct RopeBackward;

impl<B: StatKernels> Backward<B, 1> for RopeBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = x_node {
            let dx = B::rope(float::<B, 4>(dy), float::<B, 2>(cos), -float::<B, 2>(sin));
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}

/// The backward of a reshape: state = the input's shape.
#[derive(Debug)]
struct ReshapeBackward<const D1: usize, const D2: usize>;

impl<B: StatKernels, const D1: usize, const D2: usize> Backward<B, 1> for ReshapeBackward<D1, D2> {
    type State = [usize; D1];

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let dy = float::<B, D2>(grads.consume::<B>(&ops.node));
        if let Some(node) = x_node {
            let dx = B::reshape(dy, ops.state);
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}

/// The backward of a matrix product: state = (lhs [.., m, k], rhs [.., k, n]); d lhs = dy rhsᵀ,
/// d rhs = lhsᵀ dy, the transposes being views (`B::matmul` reads strides in place).
#[derive(Debug)]
struct MatmulBackward<const D: usize>;

impl<B: StatKernels, const D: usize> Backward<B, 2> for MatmulBackward<D> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [lhs_node, rhs_node] = ops.parents;
        let dy = float::<B, D>(grads.consume::<B>(&ops.node));
        let (lhs, rhs) = ops.state;
        if let Some(node) = lhs_node {
            let rhs_t = float::<B, D>(rhs).swap_dims(D - 2, D - 1);
            let dlhs = B::matmul(dy.clone(), rhs_t);
            grads.register::<B>(node.id, dlhs.into_primitive().tensor());
        }
        if let Some(node) = rhs_node {
            let lhs_t = float::<B, D>(lhs).swap_dims(D - 2, D - 1);
            let drhs = B::matmul(lhs_t, dy);
            grads.register::<B>(node.id, drhs.into_primitive().tensor());
        }
    }
}

/// The backward of RMSNorm: state = (x [rows, d], gain [d], eps).
#[derive(Debug)]
struct RmsNormBackward;

impl<B: StatKernels> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gain_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, gain, eps) = ops.state;
        let (dx, dgain) = B::rms_norm_backward(
            float::<B, 2>(x),
            float::<B, 1>(gain),
            float::<B, 2>(dy),
            eps,
        );
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
        if let Some(node) = gain_node {
            grads.register::<B>(node.id, dgain.into_primitive().tensor());
        }
    }
}

/// The backward of GELU: state = x.
#[derive(Debug)]
struct GeluBackward;

impl<B: StatKernels> Backward<B, 1> for GeluBackward {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = x_node {
            let dx = B::gelu_rows_backward(float::<B, 2>(ops.state), float::<B, 2>(dy));
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}

/// The backward of SwiGLU's product: state = (gate, up), both [rows, d].
#[derive(Debug)]
struct SwigluBackward;

impl<B: StatKernels> Backward<B, 2> for SwigluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [gate_node, up_node] = ops.parents;
        let dh = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (dgate, dup) =
            B::swiglu_rows_backward(float::<B, 2>(gate), float::<B, 2>(up), float::<B, 2>(dh));
        if let Some(node) = gate_node {
            grads.register::<B>(node.id, dgate.into_primitive().tensor());
        }
        if let Some(node) = up_node {
            grads.register::<B>(node.id, dup.into_primitive().tensor());
        }
    }
}

/// The backward of the fused cross-entropy: state = (logits' checkpoint, targets [n],
/// logsumexp [n]).
#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: StatKernels> Backward<B, 1> for CrossEntropyBackward {
    type State = (NodeId, IntTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [logits_node] = ops.parents;
        let dloss = grads.consume::<B>(&ops.node); // [n]
        let (logits_id, targets, logsumexp) = ops.state;
        let logits: FloatTensor<B> = checkpointer.retrieve_node_output(logits_id);
        if let Some(node) = logits_node {
            let dlogits = B::cross_entropy_rows_backward(
                float::<B, 2>(logits),
                int::<B, 1>(targets),
                float::<B, 1>(logsumexp),
                float::<B, 1>(dloss),
            );
            grads.register::<B>(node.id, dlogits.into_primitive().tensor());
        }
    }
}

/// Runs `forward` (the output and the backward's state) as one op: tracked when a parent needs
/// a gradient (the state is kept for the backward), untracked otherwise (the state dropped).
fn tracked_op<B, C, BW, const N: usize>(
    prepared: OpsKind<BW, B, BW::State, C, N>,
    forward: impl FnOnce() -> (FloatTensor<B>, BW::State),
) -> FloatTensor<Autodiff<B, C>>
where
    B: StatKernels,
    C: CheckpointStrategy,
    BW: Backward<B, N>,
{
    match prepared {
        OpsKind::Tracked(prep) => {
            let (y, state) = forward();
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().0),
    }
}

impl<B: StatKernels, C: CheckpointStrategy> StatKernels for Autodiff<B, C> {
    const IMPL: KernelImpl = B::IMPL;
    const SPLITS_PASSES: bool = B::SPLITS_PASSES;

    fn concurrent_passes() -> usize {
        B::concurrent_passes()
    }

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
