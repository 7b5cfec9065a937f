//! The CPU fast path against the references and burn, through autodiff.
use crate::*;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;

type AB = Autodiff<burn::backend::Flex>;

/// The reference backward (softmax − one-hot from the logsumexp) equals burn's autodiff of
/// the reference loss, with a non-uniform upstream gradient.
#[test]
fn reference_cross_entropy_backward_matches_autodiff() {
    let device = Default::default();
    let (n, vocab) = (9, 13);
    AB::seed(&device, 7);
    let logits =
        Tensor::<AB, 2>::random([n, vocab], Distribution::Normal(0.0, 2.0), &device).require_grad();
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

/// ndarray's fused SwiGLU gives burn's silu(gate) ⊙ up, and its gradients in both inputs,
/// through `Autodiff`; very negative and very positive gates included (σ saturates).
#[test]
fn ndarray_host_swiglu_matches_burn_through_autodiff() {
    type Host = Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    AB::seed(&device, 5);
    let gate = Tensor::<AB, 2>::random([9, 13], Distribution::Normal(0.0, 4.0), &device)
        .slice_assign([0..1, 0..2], Tensor::from_floats([[-120.0, 95.0]], &device));
    let up = Tensor::<AB, 2>::random([9, 13], Distribution::Normal(0.0, 1.0), &device);
    let dh = Tensor::<AB, 2>::random([9, 13], Distribution::Normal(0.0, 1.0), &device);

    // (h, d gate, d up), each flattened.
    fn run<B: StatKernels + burn::tensor::backend::AutodiffBackend>(
        gate: TensorData,
        up: TensorData,
        dh: TensorData,
    ) -> [Vec<f32>; 3] {
        let device = Default::default();
        let gate = Tensor::<B, 2>::from_data(gate, &device).require_grad();
        let up = Tensor::<B, 2>::from_data(up, &device).require_grad();
        let dh = Tensor::<B, 2>::from_data(dh, &device);
        let h = B::swiglu_rows(gate.clone(), up.clone());
        let grads = (h.clone() * dh).sum().backward();
        let host = |d: TensorData| d.convert::<f32>().into_vec::<f32>().unwrap();
        [
            host(h.into_data()),
            host(gate.grad(&grads).unwrap().into_data()),
            host(up.grad(&grads).unwrap().into_data()),
        ]
    }
    let want = run::<AB>(gate.to_data(), up.to_data(), dh.to_data());
    let got = run::<Host>(gate.into_data(), up.into_data(), dh.into_data());
    for (what, (got, want)) in ["h", "d gate", "d up"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}: {g} vs {w}"
            );
        }
    }
}

/// ndarray's host product on strided operands (transposed views, as the backward passes
/// them) gives the very bits of burn's matmul, forward and through autodiff.
#[test]
fn ndarray_host_matmul_matches_burn_bit_for_bit_on_strided_operands() {
    type Host = Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    Host::seed(&device, 11);
    let normal = Distribution::Normal(0.0, 1.0);
    let bits = |t: Tensor<Host, 4>| -> Vec<u32> {
        let values: Vec<f32> = t.into_data().to_vec().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    };
    // [2, 3, 5, 7] × ([2, 3, 6, 7] transposed) → [2, 3, 5, 6]; the 2-D case is the linear.
    let a = Tensor::<Host, 4>::random([2, 3, 5, 7], normal, &device);
    let b = Tensor::<Host, 4>::random([2, 3, 6, 7], normal, &device);
    let w = Tensor::<Host, 4>::random([2, 3, 5, 6], normal, &device);
    let run = |host: bool| {
        let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
        let y = if host {
            <Host as FusedOps>::matmul(a.clone(), b.clone().swap_dims(2, 3))
        } else {
            a.clone().matmul(b.clone().swap_dims(2, 3))
        };
        let grads = (y.clone() * w.clone()).sum().backward();
        let (da, db) = (a.grad(&grads).unwrap(), b.grad(&grads).unwrap());
        (
            bits(y),
            bits(Tensor::from_inner(da)),
            bits(Tensor::from_inner(db)),
        )
    };
    assert_eq!(run(true), run(false));

    let x = Tensor::<Host, 2>::random([9, 4], normal, &device);
    let m = Tensor::<Host, 2>::random([9, 8], normal, &device);
    let got = <Host as FusedOps>::matmul(x.clone().transpose(), m.clone());
    let want = x.transpose().matmul(m);
    let to_bits = |t: Tensor<Host, 2>| -> Vec<u32> {
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        v.iter().map(|v| v.to_bits()).collect()
    };
    assert_eq!(to_bits(got), to_bits(want));
}

/// ndarray's fused probe ops: `preconditioned` gives burn's formula bit for bit; `dot`
/// (f64 partial sums) is within f32 rounding of an f64 reference, over several blocks
/// and with a ragged last one, and gives the same bits with one thread as with two.
#[test]
fn ndarray_host_dot_and_preconditioner_match_burn() {
    type Host = burn::backend::NdArray;
    let device = Default::default();
    Host::seed(&device, 3);
    let n = 3 * 16384 + 1000;
    let g = Tensor::<Host, 1>::random([n], Distribution::Normal(0.0, 1e-2), &device);
    let v = Tensor::<Host, 1>::random([n], Distribution::Uniform(0.0, 1e-4), &device);
    let to_bits = |t: Tensor<Host, 1>| -> Vec<u32> {
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        v.iter().map(|v| v.to_bits()).collect()
    };
    let (bias2, eps) = (0.3, 1e-8);
    let got = <Host as SourceStats>::preconditioned(g.clone(), v.clone(), bias2, eps);
    let want = ((v.clone() / bias2).sqrt() + eps).recip() * g.clone();
    assert_eq!(to_bits(got.clone()), to_bits(want));

    let a: Vec<f32> = got.clone().into_data().to_vec().unwrap();
    let b: Vec<f32> = g.clone().into_data().to_vec().unwrap();
    let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let dot = |threads: usize| -> f32 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| <Host as SourceStats>::dot(got.clone(), g.clone()).into_scalar())
    };
    let (one, two) = (dot(1), dot(2));
    assert_eq!(one.to_bits(), two.to_bits());
    assert!(
        ((one as f64 - exact) / exact).abs() < 1e-6,
        "{one} vs {exact}"
    );
}

/// ndarray's copy-free reshape gives burn's values and gradients, for a row-major input and
/// for a strided one (which it copies as burn does).
#[test]
fn ndarray_host_reshape_matches_burn_forward_and_backward() {
    type Host = Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    Host::seed(&device, 5);
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<Host, 3>::random([2, 3, 4], normal, &device);
    let w = Tensor::<Host, 2>::random([6, 4], normal, &device);
    for strided in [false, true] {
        let run = |host: bool| {
            let x = x.clone().require_grad();
            let input = if strided {
                x.clone().swap_dims(0, 1) // [3, 2, 4], not row-major
            } else {
                x.clone()
            };
            let y: Tensor<Host, 2> = if host {
                <Host as FusedOps>::reshape(input, [6, 4])
            } else {
                input.reshape([6, 4])
            };
            let grads = (y.clone() * y.clone() * w.clone()).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let y: Vec<f32> = y.into_data().to_vec().unwrap();
            (y, dx)
        };
        assert_eq!(run(true), run(false), "strided {strided}");
    }
}

#[test]
fn cpu_backends_run_host_loops_or_references() {
    assert_eq!(
        <burn::backend::NdArray as ExecPolicy>::IMPL,
        KernelImpl::Host
    );
    assert_eq!(
        <Autodiff<burn::backend::Flex> as ExecPolicy>::IMPL,
        KernelImpl::Reference
    );
}

/// Sources as runs (as a step lays them out: sorted, each a few sequences), with one source
/// empty and one split in two runs: seg for n tokens over k sources.
fn runs_seg(n: usize, k: usize) -> Vec<i64> {
    (0..n)
        .map(|t| match (t * 4 / n, k) {
            (_, 1) => 0,
            (0, _) | (3, _) => 0,
            (q, _) => (q as i64).min(k as i64 - 2) + 1,
        })
        .collect()
}

/// The per-run products (the default, and ndarray's host products) equal the one-hot
/// reference, on runs and on tokens in any order, with empty sources.
#[test]
fn segment_accumulate_by_runs_matches_the_one_hot_reference() {
    fn check<B: SourceStats>(n: usize, p: usize, q: usize, k: usize, shuffled: bool) {
        let device = Default::default();
        B::seed(&device, (n * 31 + k) as u64);
        let x = Tensor::<B, 2>::random([n, p], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<B, 2>::random([n, q], Distribution::Normal(0.0, 1.0), &device);
        let seg: Vec<i64> = if shuffled {
            (0..n).map(|t| ((t * 7 + 3) % k) as i64).collect()
        } else {
            runs_seg(n, k)
        };
        let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
        let got = B::segment_accumulate(x.clone(), y.clone(), seg.clone(), k);
        let want = reference::segment_accumulate(x, y, seg, k);
        assert_eq!(got.dims(), [k, p, q]);
        let (got, want): (Vec<f32>, Vec<f32>) = (
            got.into_data().to_vec().unwrap(),
            want.into_data().to_vec().unwrap(),
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "[{i}] {g} vs {w}");
        }
    }
    for (n, p, q, k) in [
        (1, 1, 1, 1),
        (40, 5, 3, 3),
        (512, 17, 9, 5),
        (256, 64, 33, 2),
    ] {
        for shuffled in [false, true] {
            check::<burn::backend::Flex>(n, p, q, k, shuffled);
            check::<burn::backend::NdArray>(n, p, q, k, shuffled);
        }
    }
}

/// out[seg_t, rows_t] += v_t by hand: tokens (row 2, source 1), (row 0, source 0),
/// (row 2, source 1) and (row 1, source 1) of a 3-row table, 2 sources.
#[test]
fn segment_scatter_rows_matches_hand_computation() {
    let device = Default::default();
    type B = burn::backend::NdArray;
    let rows = Tensor::<B, 1, Int>::from_ints([2, 0, 2, 1], &device);
    let v = Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], &device);
    let seg = Tensor::<B, 1, Int>::from_ints([1, 0, 1, 1], &device);
    let out: Vec<f32> = B::segment_scatter_rows(rows, v, seg, 2, 3)
        .into_data()
        .to_vec()
        .unwrap();
    #[rustfmt::skip]
    let want = vec![
        3.0, 4.0,  0.0, 0.0,  0.0, 0.0, // source 0: row 0
        0.0, 0.0,  7.0, 8.0,  6.0, 8.0, // source 1: row 1; row 2 twice
    ];
    assert_eq!(out, want);
}
