//! Kernels that `benches/kernels.rs` measures against their references but that no mixer uses
//! yet: a per-source sum and the one-pass dot/Gram product.

use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::CubeDim;

use super::forward::{cross_entropy_rows, segment_sum_primitive};
use super::{cubes, CubeBackend, ROW_UNITS};
use kernel::multi_dot_partials_kernel;

/// The device code of the kernels below.
mod kernel {
    use cubecl::prelude::*;

    /// One pass over g [k, p] and v [p]: unit u accumulates, over its grid-strided columns j,
    /// g[a, j] v[j] (a < k) and g[a, j] g[b, j] (a, b < k) into partials[u, 0..k + k²].
    #[cube(launch)]
    pub fn multi_dot_partials_kernel<F: Float>(
        g: &Tensor<F>,
        v: &Tensor<F>,
        partials: &mut Tensor<F>,
        #[comptime] k: usize,
    ) {
        let unit = ABSOLUTE_POS;
        let units = partials.shape(0);
        if unit >= units {
            terminate!();
        }
        let p = v.len();
        let mut acc = Array::<F>::new(k + k * k);
        #[unroll]
        for x in 0..k + k * k {
            acc[x] = F::new(0.0);
        }
        let mut j = unit;
        while j < p {
            let vj = v[j];
            #[unroll]
            for a in 0..k {
                let ga = g[a * p + j];
                acc[a] += ga * vj;
                #[unroll]
                for b in 0..k {
                    acc[k + a * k + b] += ga * g[b * p + j];
                }
            }
            j += units;
        }
        #[unroll]
        for x in 0..k + k * k {
            partials[unit * (k + k * k) + x] = acc[x];
        }
    }
}

/// out[k] = Σ_{t: seg_t = k} values_t on a CubeCL backend; the twin of
/// `reference::segment_sum`.
pub fn segment_sum<R, F, I, BT>(
    values: Tensor<CubeBackend<R, F, I, BT>, 1>,
    seg: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    k: usize,
) -> Tensor<CubeBackend<R, F, I, BT>, 1>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let values = into_contiguous(values.into_primitive().tensor());
    let seg = into_contiguous(seg.into_primitive());
    Tensor::from_primitive(TensorPrimitive::Float(segment_sum_primitive::<R, F, I>(
        values, seg, k,
    )))
}

/// Per-token cross-entropy of logits [n, vocab] against targets [n] and its per-source sums
/// and token counts for seg [n] → (loss [n], sums [k], counts [k]) on a CubeCL backend; the
/// twin of `reference::per_source_cross_entropy`. Differentiable through `StatKernels` on
/// `Autodiff<CubeBackend>` (`cross_entropy_rows` + `cross_entropy_rows_backward`).
#[allow(clippy::type_complexity)]
pub fn per_source_cross_entropy<R, F, I, BT>(
    logits: Tensor<CubeBackend<R, F, I, BT>, 2>,
    targets: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    seg: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    k: usize,
) -> (
    Tensor<CubeBackend<R, F, I, BT>, 1>,
    Tensor<CubeBackend<R, F, I, BT>, 1>,
    Tensor<CubeBackend<R, F, I, BT>, 1>,
)
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [n, _vocab] = logits.dims();
    let device = logits.device();
    let (loss, _) = cross_entropy_rows(logits, targets);
    let sums = segment_sum(loss.clone(), seg.clone(), k);
    let counts = segment_sum(Tensor::ones([n], &device), seg, k);
    (loss, sums, counts)
}

/// Units of the multi_dot pass (each keeps k + k² partial sums).
const MULTI_DOT_UNITS: usize = 4096;

/// (⟨g_a, v⟩ for a < k, the k×k Gram ⟨g_a, g_b⟩) of g [k, p], v [p] in one pass over g on a
/// CubeCL backend (then a small sum over the units' partials); the twin of
/// `reference::multi_dot`.
#[allow(clippy::type_complexity)]
pub fn multi_dot<R, F, I, BT>(
    g: Tensor<CubeBackend<R, F, I, BT>, 2>,
    v: Tensor<CubeBackend<R, F, I, BT>, 1>,
) -> (
    Tensor<CubeBackend<R, F, I, BT>, 1>,
    Tensor<CubeBackend<R, F, I, BT>, 2>,
)
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [k, p] = g.dims();
    let units = MULTI_DOT_UNITS.min(p.max(1));
    let width = k + k * k;
    let g = into_contiguous(g.into_primitive().tensor());
    let v = into_contiguous(v.into_primitive().tensor());
    let buffer = g.client.empty(units * width * core::mem::size_of::<F>());
    let partials = CubeTensor::new_contiguous(
        g.client.clone(),
        g.device.clone(),
        Shape::new([units, width]),
        buffer,
        F::dtype(),
    );
    let client = g.client.clone();
    multi_dot_partials_kernel::launch::<F, R>(
        &client,
        cubes(&client, units, ROW_UNITS),
        CubeDim::new_1d(ROW_UNITS),
        g.into_tensor_arg(),
        v.into_tensor_arg(),
        partials.clone().into_tensor_arg(),
        k,
    );
    let partials: Tensor<CubeBackend<R, F, I, BT>, 2> =
        Tensor::from_primitive(TensorPrimitive::Float(partials));
    let sums = partials.sum_dim(0).reshape([width]); // [k + k²]
    let dots = sums.clone().narrow(0, 0, k);
    let gram = sums.narrow(0, k, k * k).reshape([k, k]);
    (dots, gram)
}
