//! `StatKernels` for ndarray, the default CPU backend: the row-wise ops as fused host loops
//! (`host.rs`) reading ndarray's arrays in place.

use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use ndarray::{Ix2, Ix3, Ix4};

use crate::host::{self, AdamWStep};
use crate::{KernelImpl, StatKernels};

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
