//! `StatKernels` for ndarray, the default CPU backend: the row-wise ops as fused host loops
//! (`host.rs`) reading ndarray's arrays in place.

use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use ndarray::{ArrayViewD, Ix2, Ix3, Ix4, IxDyn};

use super::host::{self, AdamWStep};
use super::matmul::{host_matmul, host_segment_accumulate};
use crate::{ExecPolicy, FusedOps, KernelImpl, SourceStats};

/// The default CPU backend runs the row-wise ops as fused host loops (`host.rs`): measured
/// faster than the reference's chain of tensor ops (`cargo bench --bench vs_pytorch`).
impl SourceStats for NdArray {
    fn dot(a: Tensor<Self, 1>, b: Tensor<Self, 1>) -> Tensor<Self, 1> {
        let device = a.device();
        let value = with_host_f32(a, |a| with_host_f32(b, |b| host::dot(a, b)));
        Tensor::from_data(TensorData::new(vec![value], [1]), &device)
    }

    /// One sgemm per run of a source's tokens, accumulated in place (`host_segment_accumulate`).
    fn segment_accumulate(
        x: Tensor<Self, 2>,
        y: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        k: usize,
    ) -> Tensor<Self, 3> {
        let ([n, p], [_, q]) = (x.dims(), y.dims());
        let device = x.device();
        let seg = host_i64(seg);
        assert_eq!(seg.len(), n, "one segment per row");
        let out = with_host_f32(x, |x| {
            with_host_f32(y, |y| host_segment_accumulate(x, y, &seg, (p, q, k)))
        });
        Tensor::from_data(TensorData::new(out, [k, p, q]), &device)
    }

    fn preconditioned(
        g: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        bias2: f64,
        eps: f64,
    ) -> Tensor<Self, 1> {
        let [n] = g.dims();
        let device = g.device();
        let out = with_host_f32(g, |g| {
            with_host_f32(v, |v| host::preconditioned(g, v, bias2 as f32, eps as f32))
        });
        Tensor::from_data(TensorData::new(out, [n]), &device)
    }
}

impl FusedOps for NdArray {
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
        let targets = host_i64(targets);
        let (loss, lse) = with_host_f32(logits, |logits| {
            host::cross_entropy_rows(logits, vocab, &targets)
        });
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
        let (targets, logsumexp, dloss) = (host_i64(targets), host_f32(logsumexp), host_f32(dloss));
        let d = with_host_f32(logits, |logits| {
            host::cross_entropy_rows_backward(logits, vocab, &targets, &logsumexp, &dloss)
        });
        Tensor::from_data(TensorData::new(d, [n, vocab]), &device)
    }

    /// Without a copy when x is row-major (burn-ndarray's reshape always copies: 10% of the
    /// step); a strided x is copied as burn does.
    fn reshape<const D1: usize, const D2: usize>(
        x: Tensor<Self, D1>,
        shape: [usize; D2],
    ) -> Tensor<Self, D2> {
        match x.into_primitive().tensor() {
            NdArrayTensor::F32(storage) => {
                let array = storage.into_shared();
                if array.is_standard_layout() {
                    let out = array
                        .into_shape_with_order(IxDyn(&shape))
                        .expect("reshape keeps the number of elements");
                    return Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(
                        out,
                    )));
                }
                Tensor::<Self, D1>::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(
                    array,
                )))
                .reshape(shape)
            }
            other => {
                Tensor::<Self, D1>::from_primitive(TensorPrimitive::Float(other)).reshape(shape)
            }
        }
    }

    /// matrixmultiply's sgemm on the arrays in place, whatever their strides: burn-ndarray's
    /// matmul copies both operands (a reshape to rank 3 that always copies, and a second copy of
    /// a transposed operand) and its output, which took a third of the step
    /// (`perf record` on `cargo bench --bench vs_pytorch`). The product itself is the same
    /// (sgemm packs its operands, so the strides do not change the arithmetic).
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        let (l, r) = (lhs.dims(), rhs.dims());
        if D < 2 || l[..D - 2] != r[..D - 2] || l[D - 1] != r[D - 2] {
            return lhs.matmul(rhs);
        }
        match (lhs.into_primitive().tensor(), rhs.into_primitive().tensor()) {
            (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => {
                let out = host_matmul(a.view(), b.view());
                Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(out)))
            }
            (a, b) => Tensor::<Self, D>::from_primitive(TensorPrimitive::Float(a))
                .matmul(Tensor::from_primitive(TensorPrimitive::Float(b))),
        }
    }

    fn causal_softmax(scores: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        let shape = scores.dims();
        let device = scores.device();
        let y = with_host_f32(scores, |scores| {
            host::causal_softmax(scores, shape[3], scale as f32)
        });
        Tensor::from_data(TensorData::new(y, shape), &device)
    }

    fn causal_softmax_backward(
        y: Tensor<Self, 4>,
        dy: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let shape = y.dims();
        let device = y.device();
        let d = with_host_f32(y, |y| {
            with_host_f32(dy, |dy| {
                host::causal_softmax_backward(y, dy, shape[3], scale as f32)
            })
        });
        Tensor::from_data(TensorData::new(d, shape), &device)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        let shape = x.dims();
        let device = x.device();
        let (cos, sin) = (host_f32(cos), host_f32(sin));
        let y = with_host_f32(x, |x| host::rope(x, shape[2], shape[3], &cos, &sin));
        Tensor::from_data(TensorData::new(y, shape), &device)
    }

    fn rms_norm(x: Tensor<Self, 2>, gain: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        let gain = host_f32(gain);
        let (y, _) = with_host_f32(x, |x| host::rms_norm(x, &gain, eps as f32));
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
        let gain = host_f32(gain);
        let (dx, dgain) = with_host_f32(x, |x| {
            // r is recomputed (one pass over x) rather than kept from the forward.
            let (_, r) = host::rms_norm(x, &gain, eps as f32);
            with_host_f32(dy, |dy| host::rms_norm_backward(x, &gain, &r, dy))
        });
        (
            Tensor::from_data(TensorData::new(dx, shape), &device),
            Tensor::from_data(TensorData::new(dgain, [shape[1]]), &device),
        )
    }

    fn gelu_rows(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        Tensor::from_data(
            TensorData::new(with_host_f32(x, host::gelu), shape),
            &device,
        )
    }

    fn gelu_rows_backward(x: Tensor<Self, 2>, dy: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = x.dims();
        let device = x.device();
        let dx = with_host_f32(x, |x| with_host_f32(dy, |dy| host::gelu_backward(x, dy)));
        Tensor::from_data(TensorData::new(dx, shape), &device)
    }

    fn swiglu_rows(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = gate.dims();
        let device = gate.device();
        let h = with_host_f32(gate, |gate| with_host_f32(up, |up| host::swiglu(gate, up)));
        Tensor::from_data(TensorData::new(h, shape), &device)
    }

    fn swiglu_rows_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        dh: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let shape = gate.dims();
        let device = gate.device();
        let (dgate, dup) = with_host_f32(gate, |gate| {
            with_host_f32(up, |up| {
                with_host_f32(dh, |dh| host::swiglu_backward(gate, up, dh))
            })
        });
        (
            Tensor::from_data(TensorData::new(dgate, shape), &device),
            Tensor::from_data(TensorData::new(dup, shape), &device),
        )
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
        with_host_f32(grad, |grad| {
            host::adamw(&mut param, grad, &mut m, &mut v, step)
        });
        let back = |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [n]), &device);
        (back(param), back(m), back(v))
    }
}

impl ExecPolicy for NdArray {
    const IMPL: KernelImpl = KernelImpl::Host;

    const SPLITS_PASSES: bool = true;

    /// One pass per thread: small passes use two cores better side by side than split
    /// (`concurrent`), and give the same bits either way.
    fn concurrent_passes() -> usize {
        super::concurrent::cpu_lanes()
    }
}

/// Calls `f` with an ndarray tensor's values in row-major order, read in place when the array
/// is row-major (the common case: no copy) and copied otherwise. `into_data` would walk a
/// shared array (autodiff keeps the forward's inputs) element by element through a
/// dynamic-rank iterator, which cost more than the ops it fed; a copy of every input was still
/// 4% of a step, all on the main thread while the other core waited (`perf record`).
fn with_host_f32<const D: usize, R>(tensor: Tensor<NdArray, D>, f: impl FnOnce(&[f32]) -> R) -> R {
    match tensor.into_primitive().tensor() {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            match view.as_slice() {
                Some(values) => f(values),
                None => f(&strided_to_vec(view)),
            }
        }
        other => f(
            &Tensor::<NdArray, D>::from_primitive(TensorPrimitive::Float(other))
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32"),
        ),
    }
}

/// An ndarray tensor's values in row-major order, as an owned buffer (for the ops that update
/// it in place).
fn host_f32<const D: usize>(tensor: Tensor<NdArray, D>) -> Vec<f32> {
    with_host_f32(tensor, <[f32]>::to_vec)
}

/// A strided view's values in row-major order.
fn strided_to_vec(view: ArrayViewD<f32>) -> Vec<f32> {
    // Strided with contiguous rows (the attention heads: a [b, s, h, hd] array viewed as
    // [b, h, s, hd]): one copy per row rather than per element.
    let rank = view.ndim();
    if rank > 0 && view.strides()[rank - 1] == 1 && !view.is_empty() {
        let mut values = Vec::with_capacity(view.len());
        for row in view.rows() {
            values.extend_from_slice(row.as_slice().expect("unit stride"));
        }
        return values;
    }
    // Otherwise (a transposed matrix): copy through a fixed-rank view.
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

fn host_i64<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("converted to i64")
}
