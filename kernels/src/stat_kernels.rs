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

use burn::backend::ndarray::{NdArray, NdArrayTensor};
use ndarray::{Ix2, Ix3, Ix4};

use crate::host::{self, AdamWStep};
use crate::reference;

/// Which implementation a backend's statistics run on (logged with every run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImpl {
    /// Plain burn tensor ops (`reference.rs`).
    Reference,
    /// Fused loops over host memory (`host.rs`), for the CPU backends.
    Host,
    /// The CubeCL kernels (`cube.rs`).
    CubeCl,
}

impl KernelImpl {
    pub fn name(self) -> &'static str {
        match self {
            KernelImpl::Reference => "reference",
            KernelImpl::Host => "host",
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

    /// Causal softmax of attention scores [batch, heads, seq, seq] scaled by `scale`: keys after
    /// the query get exactly 0. Differentiable on autodiff backends (one tracked op).
    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        reference::causal_softmax(scores, scale)
    }

    /// d scores [batch, heads, seq, seq] from the causal softmax's output `y` and its gradient `dy`.
    fn causal_softmax_backward(
        y: Tensor<Self, 4>,
        dy: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        reference::causal_softmax_backward(y, dy, scale)
    }

    /// RoPE (GPT-NeoX half-split) of x [batch, heads, seq, head_dim] with the constant tables
    /// cos, sin [seq, head_dim / 2]. Its gradient is `rope(dy, cos, −sin)`.
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        reference::rope(x, cos, sin)
    }

    /// RMSNorm of x [rows, d] with gain [d] (burn's `RmsNorm`); differentiable in both.
    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        reference::rms_norm(x, gain, eps)
    }

    /// (dx [rows, d], dgain [d]) of `rms_norm` for the output gradient dy [rows, d].
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gain: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        eps: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        reference::rms_norm_backward(x, gain, dy, eps)
    }

    /// GELU (erf form) of x [rows, d]; differentiable.
    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        burn::tensor::activation::gelu(x)
    }

    /// d x of GELU for the output gradient dy, both [rows, d].
    fn gelu_rows_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::gelu_backward(x, dy)
    }

    /// One AdamW update of a flattened parameter and its moments, all [numel]: (param, m, v).
    fn adamw(
        param: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        step: AdamWStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        reference::adamw(param, grad, m, v, step)
    }
}

impl StatKernels for burn::backend::Flex {}

/// The default CPU backend runs the row-wise ops as fused host loops (`host.rs`): measured
/// faster than the reference's chain of tensor ops (`cargo bench --bench vs_pytorch`).
impl StatKernels for NdArray {
    const IMPL: KernelImpl = KernelImpl::Host;

    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        Self::cross_entropy_rows(logits, targets).0
    }

    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        let [n, vocab] = logits.dims();
        let device = logits.device();
        let (loss, lse) = host::cross_entropy_rows(&host_f32(logits), vocab, &host_i64(targets));
        (
            Tensor::from_data(TensorData::new(loss, [n]), &device),
            Tensor::from_data(TensorData::new(lse, [n]), &device),
        )
    }

    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dloss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        let [n, vocab] = logits.dims();
        let device = logits.device();
        let d = host::cross_entropy_rows_backward(
            &host_f32(logits),
            vocab,
            &host_i64(targets),
            &host_f32(logsumexp),
            &host_f32(dloss),
        );
        Tensor::from_data(TensorData::new(d, [n, vocab]), &device)
    }

    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        let shape = scores.dims();
        let device = scores.device();
        let y = host::causal_softmax(&host_f32(scores), shape[3], scale as f32);
        Tensor::from_data(TensorData::new(y, shape), &device)
    }

    fn causal_softmax_backward(
        y: Tensor<Self, 4>,
        dy: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let shape = y.dims();
        let device = y.device();
        let d = host::causal_softmax_backward(&host_f32(y), &host_f32(dy), shape[3], scale as f32);
        Tensor::from_data(TensorData::new(d, shape), &device)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        let shape = x.dims();
        let device = x.device();
        let y = host::rope(
            &host_f32(x),
            shape[2],
            shape[3],
            &host_f32(cos),
            &host_f32(sin),
        );
        Tensor::from_data(TensorData::new(y, shape), &device)
    }

    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        let (y, _) = host::rms_norm(&host_f32(x), &host_f32(gain), eps as f32);
        Tensor::from_data(TensorData::new(y, shape), &device)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gain: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        eps: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        let shape = x.dims();
        let device = x.device();
        let (x, gain) = (host_f32(x), host_f32(gain));
        // r is recomputed (one pass over x) rather than kept from the forward.
        let (_, r) = host::rms_norm(&x, &gain, eps as f32);
        let (dx, dgain) = host::rms_norm_backward(&x, &gain, &r, &host_f32(dy));
        (
            Tensor::from_data(TensorData::new(dx, shape), &device),
            Tensor::from_data(TensorData::new(dgain, [shape[1]]), &device),
        )
    }

    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        Tensor::from_data(TensorData::new(host::gelu(&host_f32(x)), shape), &device)
    }

    fn gelu_rows_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        let dx = host::gelu_backward(&host_f32(x), &host_f32(dy));
        Tensor::from_data(TensorData::new(dx, shape), &device)
    }

    fn adamw(
        param: Tensor<Self, 1>,
        grad: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        step: AdamWStep,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>, Tensor<Self, 1>) {
        let [n] = param.dims();
        let device = param.device();
        let (mut param, mut m, mut v) = (host_f32(param), host_f32(m), host_f32(v));
        host::adamw(&mut param, &host_f32(grad), &mut m, &mut v, step);
        let back = |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [n]), &device);
        (back(param), back(m), back(v))
    }
}

/// An ndarray tensor's values in row-major order. Reads the array in place (one memcpy when it
/// is contiguous): `into_data` would walk a shared array (autodiff keeps the forward's inputs)
/// element by element through a dynamic-rank iterator, which cost more than the ops it fed.
fn host_f32<const D: usize>(tensor: Tensor<NdArray, D>) -> Vec<f32> {
    match tensor.into_primitive().tensor() {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            if let Some(values) = view.as_slice() {
                return values.to_vec();
            }
            // Strided (a transposed or narrowed view): copy through a fixed-rank view.
            match view.ndim() {
                2 => view
                    .into_dimensionality::<Ix2>()
                    .expect("rank 2")
                    .iter()
                    .copied()
                    .collect(),
                3 => view
                    .into_dimensionality::<Ix3>()
                    .expect("rank 3")
                    .iter()
                    .copied()
                    .collect(),
                4 => view
                    .into_dimensionality::<Ix4>()
                    .expect("rank 4")
                    .iter()
                    .copied()
                    .collect(),
                _ => view.iter().copied().collect(),
            }
        }
        other => Tensor::<NdArray, D>::from_primitive(TensorPrimitive::Float(other))
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("converted to f32"),
    }
}

fn host_i64<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("converted to i64")
}

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

    /// A tracked op where `B` has fused host loops (one graph node instead of the scale, mask
    /// and softmax's five); burn's autodiff of the reference ops elsewhere (the GPU backends
    /// keep the graph their kernels were tested with).
    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        if B::IMPL != KernelImpl::Host {
            return reference::causal_softmax(scores, scale);
        }
        let scores = scores.into_primitive().tensor();
        let y = match CausalSoftmaxBackward
            .prepare::<C>([scores.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::causal_softmax(float::<B, 4>(scores.primitive), scale)
                    .into_primitive()
                    .tensor();
                prep.finish((y.clone(), scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                B::causal_softmax(float::<B, 4>(scores.primitive), scale)
                    .into_primitive()
                    .tensor(),
            ),
        };
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
        let y = match RopeBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rope(float::<B, 4>(x.primitive), cos.clone(), sin.clone());
                let state = (cos.into_primitive().tensor(), sin.into_primitive().tensor());
                prep.finish(state, y.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => prep.finish(
                B::rope(float::<B, 4>(x.primitive), cos, sin)
                    .into_primitive()
                    .tensor(),
            ),
        };
        float::<Self, 4>(y)
    }

    /// A tracked op where `B` has fused host loops; burn's autodiff of the reference ops
    /// elsewhere (the GPU backends' numbers stay what they were).
    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if B::IMPL != KernelImpl::Host {
            return reference::rms_norm(x, gain, eps);
        }
        let x = x.into_primitive().tensor();
        let gain = gain.into_primitive().tensor();
        let y = match RmsNormBackward
            .prepare::<C>([x.node.clone(), gain.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rms_norm(
                    float::<B, 2>(x.primitive.clone()),
                    float::<B, 1>(gain.primitive.clone()),
                    eps,
                );
                prep.finish(
                    (x.primitive, gain.primitive, eps),
                    y.into_primitive().tensor(),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(
                B::rms_norm(
                    float::<B, 2>(x.primitive),
                    float::<B, 1>(gain.primitive),
                    eps,
                )
                .into_primitive()
                .tensor(),
            ),
        };
        float::<Self, 2>(y)
    }

    /// A tracked op where `B` has fused host loops; burn's own GELU elsewhere.
    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if B::IMPL != KernelImpl::Host {
            return burn::tensor::activation::gelu(x);
        }
        let x = x.into_primitive().tensor();
        let y = match GeluBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::gelu_rows(float::<B, 2>(x.primitive.clone()));
                prep.finish(x.primitive, y.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => prep.finish(
                B::gelu_rows(float::<B, 2>(x.primitive))
                    .into_primitive()
                    .tensor(),
            ),
        };
        float::<Self, 2>(y)
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

    /// ndarray's fused host versions compute what the references compute, forward and
    /// backward, through `Autodiff` (where the fused ops are tracked ops of their own).
    #[test]
    fn ndarray_host_ops_match_the_references_through_autodiff() {
        type Host = Autodiff<burn::backend::NdArray>;
        let device = Default::default();
        let (n, vocab) = (37, 19);
        AB::seed(&device, 3);
        let logits = Tensor::<AB, 2>::random([n, vocab], Distribution::Normal(0.0, 2.0), &device);
        let weights = Tensor::<AB, 1>::random([n], Distribution::Uniform(0.5, 2.0), &device);
        let targets: Vec<i64> = (0..n as i64).map(|i| i * 7 % vocab as i64).collect();
        let scores = Tensor::<AB, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 3.0), &device);
        let dy = Tensor::<AB, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);

        // (loss, d logits, softmax, d scores), each flattened.
        fn run<B: StatKernels + burn::tensor::backend::AutodiffBackend>(
            logits: TensorData,
            weights: TensorData,
            targets: &[i64],
            scores: TensorData,
            dy: TensorData,
        ) -> [Vec<f32>; 4] {
            let device = Default::default();
            let logits = Tensor::<B, 2>::from_data(logits, &device).require_grad();
            let weights = Tensor::<B, 1>::from_data(weights, &device);
            let targets = Tensor::<B, 1, Int>::from_data(
                TensorData::new(targets.to_vec(), [targets.len()]),
                &device,
            );
            let scores = Tensor::<B, 4>::from_data(scores, &device).require_grad();
            let dy = Tensor::<B, 4>::from_data(dy, &device);
            let loss = B::cross_entropy_per_token(logits.clone(), targets);
            let y = B::causal_softmax(scores.clone(), 0.35);
            let grads = ((loss.clone() * weights).sum() + (y.clone() * dy).sum()).backward();
            let host = |d: TensorData| d.convert::<f32>().into_vec::<f32>().unwrap();
            [
                host(loss.into_data()),
                host(logits.grad(&grads).unwrap().into_data()),
                host(y.into_data()),
                host(scores.grad(&grads).unwrap().into_data()),
            ]
        }
        let want = run::<AB>(
            logits.to_data(),
            weights.to_data(),
            &targets,
            scores.to_data(),
            dy.to_data(),
        );
        let got = run::<Host>(
            logits.into_data(),
            weights.into_data(),
            &targets,
            scores.into_data(),
            dy.into_data(),
        );
        for (what, (got, want)) in ["loss", "d logits", "softmax", "d scores"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{what}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn cpu_backends_run_host_loops_or_references() {
        assert_eq!(
            <burn::backend::NdArray as StatKernels>::IMPL,
            KernelImpl::Host
        );
        assert_eq!(
            <Autodiff<burn::backend::Flex> as StatKernels>::IMPL,
            KernelImpl::Reference
        );
    }
}
