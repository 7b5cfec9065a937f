//! `StatKernels`: the per-source statistics a backend computes, dispatched by backend type.
//!
//! Every method has a default in plain tensor ops (the references in `reference.rs`); the CPU
//! backends (ndarray, flex) take the defaults. CubeCL backends (`CubeBackend` over wgpu or
//! cuda, see `cube.rs`) override them with the kernels. `Autodiff<B>` forwards to `B`: its
//! cross-entropy is a tracked op whose forward and backward are `B`'s kernels when `B` has
//! them, and burn's autodiff through the reference ops otherwise (so CPU numbers are exactly
//! what they were before dispatch existed).
//!
//! A backend wrapped in burn's `Fusion` (burn's default `Wgpu` / `Cuda` types) does not
//! implement this trait; mixtrain runs `CubeBackend` directly so the kernels are reachable.

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

/// Which implementation a backend's statistics run on (logged with every run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImpl {
    /// Plain burn tensor ops (`reference.rs`).
    Reference,
    /// The CubeCL kernels (`cube.rs`).
    CubeCl,
}

impl KernelImpl {
    pub fn name(self) -> &'static str {
        match self {
            KernelImpl::Reference => "reference",
            KernelImpl::CubeCl => "cubecl",
        }
    }
}

pub trait StatKernels: Backend {
    /// What this backend's methods run.
    const IMPL: KernelImpl = KernelImpl::Reference;

    /// out[k] = Σ_{t: seg_t = k} w_t ⟨U_t, V_t⟩ for u, v [n, d], seg [n], w [n] → [k].
    fn segment_row_dot(
        u: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        reference::segment_row_dot(u, v, seg, w, k)
    }

    /// The gather form for embeddings: out[k] = Σ_{t: seg_t = k} w_t ⟨table[rows_t], V_t⟩ for
    /// table [vocab, d], rows [n], v [n, d] → [k], without the [n, d] gathered copy in the kernel.
    fn segment_gather_row_dot(
        table: Tensor<Self, 2>,
        rows: Tensor<Self, 1, Int>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        reference::segment_gather_row_dot(table, rows, v, seg, w, k)
    }

    /// Per-token cross-entropy of logits [n, vocab] against targets [n] → [n], differentiable
    /// on autodiff backends.
    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        reference::cross_entropy_per_token(logits, targets)
    }

    /// (loss [n], logsumexp [n]) of logits [n, vocab]: the forward the backward reuses.
    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::cross_entropy_rows(logits, targets)
    }

    /// d logits [n, vocab] = dloss_t (softmax(logits_t) − onehot(target_t)), softmax from the
    /// forward's logsumexp.
    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dloss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        reference::cross_entropy_rows_backward(logits, targets, logsumexp, dloss)
    }
}

impl StatKernels for burn::backend::NdArray {}
impl StatKernels for burn::backend::Flex {}

fn float<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn int<B: Backend, const D: usize>(primitive: IntTensor<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(primitive)
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

impl<B: StatKernels, C: CheckpointStrategy> StatKernels for Autodiff<B, C> {
    const IMPL: KernelImpl = B::IMPL;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type AB = Autodiff<burn::backend::Flex>;

    /// The reference backward (softmax − one-hot from the logsumexp) equals burn's autodiff of
    /// the reference loss, with a non-uniform upstream gradient.
    #[test]
    fn reference_cross_entropy_backward_matches_autodiff() {
        let device = Default::default();
        let (n, vocab) = (9, 13);
        AB::seed(&device, 7);
        let logits = Tensor::<AB, 2>::random([n, vocab], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let targets = Tensor::<AB, 1, Int>::from_ints([0, 12, 3, 3, 5, 7, 1, 11, 2], &device);
        let weights = Tensor::<AB, 1>::random([n], Distribution::Uniform(0.5, 2.0), &device);
        let loss = reference::cross_entropy_per_token(logits.clone(), targets.clone());
        let grads = (loss * weights.clone()).sum().backward();
        let want: Vec<f32> = logits.grad(&grads).unwrap().into_data().to_vec().unwrap();

        let inner = logits.inner();
        let (_, lse) = reference::cross_entropy_rows(inner.clone(), targets.clone().inner());
        let got: Vec<f32> =
            reference::cross_entropy_rows_backward(inner, targets.inner(), lse, weights.inner())
                .into_data()
                .to_vec()
                .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn cpu_backends_run_the_references() {
        assert_eq!(
            <burn::backend::NdArray as StatKernels>::IMPL,
            KernelImpl::Reference
        );
        assert_eq!(
            <Autodiff<burn::backend::Flex> as StatKernels>::IMPL,
            KernelImpl::Reference
        );
    }
}
