//! Each CubeCL kernel against its plain-tensor reference on the same backend (wgpu), at the
//! quickstart's sizes (N = 16 · 128 tokens, K = 5 sources):
//!
//!     CUBECL_WGPU_DEFAULT_DEVICE=Cpu cargo bench --features wgpu --bench kernels
//!
//! Without a GPU this runs on lavapipe (Mesa's software Vulkan), where the ratios say little
//! about GPU speed; on a GPU, run it with the default device. Each figure is the median of
//! ROUNDS (default 5) timed calls after one warm-up, each call synced by reading the result.

#[macro_use]
mod report;

use std::time::Instant;

use burn::backend::wgpu::{WgpuDevice, WgpuRuntime};
use burn::prelude::*;
use burn::tensor::Distribution;
use mixtrain_kernels::cube::{self, CubeBackend};
use mixtrain_kernels::reference;

type B = CubeBackend<WgpuRuntime, f32, i32, u32>;

fn median_ms(rounds: usize, mut call: impl FnMut() -> Vec<f32>) -> f64 {
    call();
    let times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let out = call();
            std::hint::black_box(out);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    report::median(times)
}

fn report(name: &str, kernel: f64, reference: f64) {
    say!(
        "kernels/{name:<24} kernel {kernel:>9.2} ms  reference {reference:>9.2} ms  kernel/reference {:.3}",
        kernel / reference
    );
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let device = WgpuDevice::default();
    B::seed(&device, 0);
    let (n, d, k) = (2048, 384, 5);
    let normal = Distribution::Normal(0.0, 1.0);
    let u = Tensor::<B, 2>::random([n, d], normal, &device);
    let v = Tensor::<B, 2>::random([n, d], normal, &device);
    let w = Tensor::<B, 1>::ones([n], &device);
    let seg: Vec<i32> = (0..n).map(|t| (t / (n / k + 1)) as i32).collect();
    let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
    let vec = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap();

    report(
        "segment_row_dot",
        median_ms(rounds, || {
            vec(cube::segment_row_dot(
                u.clone(),
                v.clone(),
                seg.clone(),
                w.clone(),
                k,
            ))
        }),
        median_ms(rounds, || {
            vec(reference::segment_row_dot(
                u.clone(),
                v.clone(),
                seg.clone(),
                w.clone(),
                k,
            ))
        }),
    );

    let (outs, inps) = (128, 128);
    let delta = u.clone().narrow(1, 0, outs);
    let a = v.clone().narrow(1, 0, inps);
    report(
        "segment_accumulate",
        median_ms(rounds, || {
            vec(
                cube::segment_accumulate(delta.clone(), a.clone(), seg.clone(), k)
                    .reshape([k * outs * inps]),
            )
        }),
        median_ms(rounds, || {
            vec(
                reference::segment_accumulate(delta.clone(), a.clone(), seg.clone(), k)
                    .reshape([k * outs * inps]),
            )
        }),
    );

    let vocab = 257;
    let logits = Tensor::<B, 2>::random([n, vocab], normal, &device);
    let targets: Vec<i32> = (0..n).map(|t| ((t * 31 + 7) % vocab) as i32).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
    report(
        "per_source_xent",
        median_ms(rounds, || {
            let (loss, sums, _) =
                cube::per_source_cross_entropy(logits.clone(), targets.clone(), seg.clone(), k);
            let mut out = vec(loss);
            out.extend(vec(sums));
            out
        }),
        median_ms(rounds, || {
            let (loss, sums, _) = reference::per_source_cross_entropy(
                logits.clone(),
                targets.clone(),
                seg.clone(),
                k,
            );
            let mut out = vec(loss);
            out.extend(vec(sums));
            out
        }),
    );

    let dloss = Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, 1.0), &device);
    let (_, logsumexp) = reference::cross_entropy_rows(logits.clone(), targets.clone());
    report(
        "xent_backward",
        median_ms(rounds, || {
            let d = cube::cross_entropy_rows_backward(
                logits.clone(),
                targets.clone(),
                logsumexp.clone(),
                dloss.clone(),
            );
            vec(d.reshape([n * vocab]))
        }),
        median_ms(rounds, || {
            let d = reference::cross_entropy_rows_backward(
                logits.clone(),
                targets.clone(),
                logsumexp.clone(),
                dloss.clone(),
            );
            vec(d.reshape([n * vocab]))
        }),
    );

    // The embedding's gather form: table [vocab, d] rows picked by the tokens.
    let table = Tensor::<B, 2>::random([vocab, d], normal, &device);
    let rows: Vec<i32> = (0..n).map(|t| ((t * 13 + 5) % vocab) as i32).collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    report(
        "segment_gather_row_dot",
        median_ms(rounds, || {
            vec(cube::segment_gather_row_dot(
                table.clone(),
                rows.clone(),
                v.clone(),
                seg.clone(),
                w.clone(),
                k,
            ))
        }),
        median_ms(rounds, || {
            vec(reference::segment_gather_row_dot(
                table.clone(),
                rows.clone(),
                v.clone(),
                seg.clone(),
                w.clone(),
                k,
            ))
        }),
    );

    let p = 1 << 20;
    let g = Tensor::<B, 2>::random([k, p], normal, &device);
    let x = Tensor::<B, 1>::random([p], normal, &device);
    report(
        "multi_dot (+Gram)",
        median_ms(rounds, || {
            let (dots, gram) = cube::multi_dot(g.clone(), x.clone());
            let mut out = vec(dots);
            out.extend(vec(gram.reshape([k * k])));
            out
        }),
        median_ms(rounds, || {
            let (dots, gram) = reference::multi_dot(g.clone(), x.clone());
            let mut out = vec(dots);
            out.extend(vec(gram.reshape([k * k])));
            out
        }),
    );
    report::finish("kernels", "kernels", &["ROUNDS"]);
}
