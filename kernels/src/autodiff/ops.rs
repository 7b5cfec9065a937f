//! The backward ops of the fused ops: each holds what its backward needs (its state) and
//! computes the input gradients with `B`'s ops.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff, NodeId,
};
use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::TensorPrimitive;

use crate::StatKernels;

pub(super) fn float<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

pub(super) fn int<B: Backend, const D: usize>(primitive: IntTensor<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(primitive)
}

/// The backward of the causal softmax: state = (its output y, scale).
#[derive(Debug)]
pub(super) struct CausalSoftmaxBackward;

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
pub(super) struct RopeBackward;

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
pub(super) struct ReshapeBackward<const D1: usize, const D2: usize>;

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
pub(super) struct MatmulBackward<const D: usize>;

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
pub(super) struct RmsNormBackward;

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
pub(super) struct GeluBackward;

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
pub(super) struct SwigluBackward;

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
pub(super) struct CrossEntropyBackward;

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
pub(super) fn tracked_op<B, C, BW, const N: usize>(
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
