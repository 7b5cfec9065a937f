//! Each kernel against its reference in `reference.rs`, on wgpu (Mesa's software Vulkan
//! driver in CI) or cuda.

use super::*;
use crate::{reference, ExecPolicy, FusedOps, KernelImpl, SourceStats};
use burn::prelude::{Backend, TensorData};
use burn::tensor::{Distribution, Int};

/// The CubeCL backend under test: wgpu when that feature is on (CI runs it on Mesa's software
/// driver), else cuda (built with `--features cuda`, run where a GPU is).
#[cfg(feature = "wgpu")]
type B = CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;
#[cfg(not(feature = "wgpu"))]
type B = CubeBackend<CudaRuntime, f32, i32, u8>;

fn test_device() -> burn::tensor::Device<B> {
    Default::default()
}

fn to_vec(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn check(n: usize, d: usize, k: usize, seed: u64) {
    let device = test_device();
    B::seed(&device, seed);
    let u = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, 2.0), &device);
    // Sources 0..k−1 but never the last one when k > 1: an empty segment.
    let used = if k > 1 { k - 1 } else { 1 };
    let seg_values: Vec<i32> = (0..n).map(|t| ((t * 7 + 3) % used) as i32).collect();
    let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg_values, [n]), &device);
    let got = to_vec(segment_row_dot(
        u.clone(),
        v.clone(),
        seg.clone(),
        w.clone(),
        k,
    ));
    let want = to_vec(reference::segment_row_dot(u, v, seg, w, k));
    assert_eq!(got.len(), k);
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - r).abs() <= 1e-4 * scale,
            "n={n} d={d} k={k}: out[{i}] kernel {g} vs reference {r}"
        );
    }
    if k > 1 {
        assert_eq!(got[k - 1], 0.0, "the empty segment");
    }
}

#[test]
fn segment_row_dot_matches_the_reference_on_edge_shapes() {
    for (n, d, k, seed) in [
        (1, 1, 1, 1),
        (7, 3, 1, 2),
        (255, 17, 2, 3),
        (256, 64, 5, 4),
        (1000, 129, 4, 5),
        (4099, 33, 9, 6),
    ] {
        check(n, d, k, seed);
    }
}

fn close(got: Vec<f32>, want: Vec<f32>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - r).abs() <= 1e-4 * scale,
            "{what}: [{i}] kernel {g} vs reference {r}"
        );
    }
}

#[test]
fn segment_accumulate_and_multi_dot_match_the_references() {
    let device = test_device();
    for (n, outs, inps, k, seed) in [
        (1, 1, 1, 1, 1),
        (37, 5, 3, 3, 2),
        (300, 17, 9, 4, 3),
        (1000, 33, 40, 5, 4),
        (16, 16, 16, 2, 5),
    ] {
        B::seed(&device, seed);
        let delta = Tensor::<B, 2>::random([n, outs], Distribution::Normal(0.0, 1.0), &device);
        let a = Tensor::<B, 2>::random([n, inps], Distribution::Normal(0.0, 1.0), &device);
        let used = if k > 1 { k - 1 } else { 1 };
        // Tokens of every source in every tile, and sources in runs (as a step lays them
        // out: most token tiles hold none of a given source's tokens and are skipped).
        let scattered: Vec<i32> = (0..n).map(|t| ((t * 5 + 1) % used) as i32).collect();
        let runs: Vec<i32> = (0..n).map(|t| (t * used / n) as i32).collect();
        for (layout, seg) in [("scattered", scattered), ("runs", runs)] {
            let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
            let got = B::segment_accumulate(delta.clone(), a.clone(), seg.clone(), k);
            let want = reference::segment_accumulate(delta.clone(), a.clone(), seg, k);
            assert_eq!(got.dims(), [k, outs, inps]);
            close(
                got.into_data().to_vec().unwrap(),
                want.into_data().to_vec().unwrap(),
                &format!("segment_accumulate {layout} n={n} out={outs} in={inps} k={k}"),
            );
        }
    }
    for (k, p, seed) in [(1, 1, 1), (3, 1000, 2), (5, 20_001, 3)] {
        B::seed(&device, seed);
        let g = Tensor::<B, 2>::random([k, p], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 1>::random([p], Distribution::Normal(0.0, 1.0), &device);
        let (dots, gram) = multi_dot(g.clone(), v.clone());
        let (want_dots, want_gram) = reference::multi_dot(g, v);
        close(
            to_vec(dots),
            to_vec(want_dots),
            &format!("multi_dot dots k={k} p={p}"),
        );
        close(
            gram.into_data().to_vec().unwrap(),
            want_gram.into_data().to_vec().unwrap(),
            &format!("multi_dot gram k={k} p={p}"),
        );
    }
}

/// The embedding's scatter form on the device against the same scatter on the CPU
/// reference backend (burn's select-assign with add on both).
#[test]
fn segment_scatter_rows_matches_the_cpu() {
    type Cpu = burn::backend::Flex;
    let device = test_device();
    for (n, vocab, d, k) in [(1, 1, 1, 1), (37, 11, 5, 3), (640, 256, 32, 5)] {
        let rows: Vec<i32> = (0..n).map(|t| ((t * 13 + 5) % vocab) as i32).collect();
        let seg: Vec<i32> = (0..n).map(|t| (t * k / n) as i32).collect();
        let v: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let got = B::segment_scatter_rows(
            Tensor::from_data(TensorData::new(rows.clone(), [n]), &device),
            Tensor::from_data(TensorData::new(v.clone(), [n, d]), &device),
            Tensor::from_data(TensorData::new(seg.clone(), [n]), &device),
            k,
            vocab,
        );
        let cpu = Default::default();
        let want = reference::segment_scatter_rows::<Cpu>(
            Tensor::from_data(TensorData::new(rows, [n]), &cpu),
            Tensor::from_data(TensorData::new(v, [n, d]), &cpu),
            Tensor::from_data(TensorData::new(seg, [n]), &cpu),
            k,
            vocab,
        );
        close(
            got.into_data().to_vec().unwrap(),
            want.into_data().to_vec().unwrap(),
            &format!("segment_scatter_rows n={n} vocab={vocab} d={d} k={k}"),
        );
    }
}

#[test]
fn per_source_cross_entropy_matches_the_reference() {
    let device = test_device();
    for (n, vocab, k, seed) in [
        (1, 1, 1, 1),
        (5, 3, 2, 2),
        (64, 257, 3, 3),
        (33, 1000, 4, 4),
        // More rows than wgpu's 65535 cubes per grid axis: the grid is spread.
        (70_000, 3, 2, 5),
    ] {
        B::seed(&device, seed);
        let logits = Tensor::<B, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &device);
        let targets: Vec<i32> = (0..n).map(|t| ((t * 31 + 7) % vocab) as i32).collect();
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let used = if k > 1 { k - 1 } else { 1 };
        let seg: Vec<i32> = (0..n).map(|t| ((t * 3) % used) as i32).collect();
        let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
        let (loss, sums, counts) =
            per_source_cross_entropy(logits.clone(), targets.clone(), seg.clone(), k);
        let (want_loss, want_sums, want_counts) =
            reference::per_source_cross_entropy(logits, targets, seg, k);
        let what = format!("n={n} vocab={vocab} k={k}");
        close(to_vec(loss), to_vec(want_loss), &format!("loss {what}"));
        close(to_vec(sums), to_vec(want_sums), &format!("sums {what}"));
        assert_eq!(to_vec(counts), to_vec(want_counts), "counts {what}");
    }
}

/// The fused cross-entropy as a tracked op on `Autodiff<CubeBackend>` (the kernel forward
/// and backward through `StatKernels`) against burn's autodiff of the reference ops, on the
/// same backend: per-token loss and d loss/d logits for a non-uniform upstream gradient.
#[test]
fn cross_entropy_gradients_match_the_reference() {
    use burn::backend::Autodiff;
    type AB = Autodiff<B>;
    assert_eq!(<AB as ExecPolicy>::IMPL, KernelImpl::CubeCl);
    let device = test_device();
    for (n, vocab, seed) in [(1, 1, 1), (7, 3, 2), (64, 257, 3), (130, 1000, 4)] {
        AB::seed(&device, seed);
        let logits = Tensor::<AB, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &device);
        let weights = Tensor::<AB, 1>::random([n], Distribution::Uniform(0.5, 2.0), &device);
        let targets: Vec<i32> = (0..n).map(|t| (t * 31 + 7) % vocab).collect();
        let targets = Tensor::<AB, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let what = format!("n={n} vocab={vocab}");

        let kernel_logits = logits.clone().require_grad();
        let kernel_loss =
            <AB as FusedOps>::cross_entropy_per_token(kernel_logits.clone(), targets.clone());
        let grads = (kernel_loss.clone() * weights.clone()).sum().backward();
        let kernel_grad = kernel_logits
            .grad(&grads)
            .expect("a gradient for the logits");

        let reference_logits = logits.require_grad();
        let reference_loss = reference::cross_entropy_per_token(reference_logits.clone(), targets);
        let grads = (reference_loss.clone() * weights).sum().backward();
        let reference_grad = reference_logits.grad(&grads).unwrap();

        close(
            kernel_loss.inner().into_data().to_vec().unwrap(),
            reference_loss.inner().into_data().to_vec().unwrap(),
            &format!("loss {what}"),
        );
        close(
            kernel_grad.into_data().to_vec().unwrap(),
            reference_grad.into_data().to_vec().unwrap(),
            &format!("d loss / d logits {what}"),
        );
    }
}

#[test]
fn segment_gather_row_dot_matches_the_reference() {
    let device = test_device();
    for (n, vocab, d, k, seed) in [(1, 1, 1, 1, 1), (9, 4, 3, 2, 2), (700, 257, 65, 5, 3)] {
        B::seed(&device, seed);
        let table = Tensor::<B, 2>::random([vocab, d], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, 2.0), &device);
        let rows: Vec<i32> = (0..n).map(|t| ((t * 13 + 5) % vocab) as i32).collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let used = if k > 1 { k - 1 } else { 1 };
        let seg: Vec<i32> = (0..n).map(|t| ((t * 7 + 3) % used) as i32).collect();
        let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
        let got = <B as SourceStats>::segment_gather_row_dot(
            table.clone(),
            rows.clone(),
            v.clone(),
            seg.clone(),
            w.clone(),
            k,
        );
        let want = reference::segment_gather_row_dot(table, rows, v, seg, w, k);
        close(
            to_vec(got),
            to_vec(want),
            &format!("segment_gather_row_dot n={n} vocab={vocab} d={d} k={k}"),
        );
    }
}

#[test]
fn segment_sum_matches_the_reference() {
    let device = test_device();
    let values = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0], &device);
    let seg = Tensor::<B, 1, Int>::from_ints([2, 0, 2, 0, 2], &device);
    assert_eq!(
        to_vec(segment_sum(values.clone(), seg.clone(), 4)),
        to_vec(reference::segment_sum(values, seg, 4))
    );
}
