//! Kernels that `benches/kernels.rs` measures against their references but that no mixer uses
//! yet: a per-source sum, the per-source weight-gradient accumulation (the way to per-source
//! gradients without K backward passes) and the one-pass dot/Gram product.

use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::CubeDim;

use super::forward::{cross_entropy_rows, segment_sum_primitive};
use super::{cubes, empty, CubeBackend, ROW_UNITS, TILE};
use kernel::{multi_dot_partials_kernel, segment_accumulate_kernel};

/// The device code of the kernels below.
mod kernel {
    use cubecl::prelude::*;

    /// out[k, o, i] = Σ_{t: seg[t] = k} delta[t, o] · a[t, i], tiled: one cube of
    /// TILE × TILE units per (source k, block of TILE outputs o, block of TILE inputs i). The
    /// cube walks the tokens TILE at a time, staging delta[t, o-block] (zero where seg[t] ≠ k)
    /// and a[t, i-block] in shared memory with coalesced loads, and each unit accumulates its
    /// (o, i) from the staged tiles, so each loaded value is used TILE times.
    // Nested ifs, not `&&`: seg[t] must not be read for t ≥ n, and device code does not
    // promise short-circuit evaluation.
    #[allow(clippy::collapsible_if)]
    #[cube(launch)]
    pub fn segment_accumulate_kernel<F: Float, I: Int>(
        delta: &Tensor<F>,
        a: &Tensor<F>,
        seg: &Tensor<I>,
        out: &mut Tensor<F>,
        #[comptime] tile: u32,
    ) {
        let n = seg.len();
        let outs = delta.shape(1);
        let inps = a.shape(1);
        let tile_n = tile as usize;
        let o_blocks = outs.div_ceil(tile_n);
        let i_blocks = inps.div_ceil(tile_n);
        let cube = CUBE_POS;
        if cube >= out.len() / (outs * inps) * o_blocks * i_blocks {
            terminate!(); // a spare cube; uniform in the cube
        }
        let k = cube / (o_blocks * i_blocks);
        let o0 = (cube / i_blocks) % o_blocks * tile_n;
        let i0 = cube % i_blocks * tile_n;
        let x = UNIT_POS_X as usize; // column within the tile
        let y = UNIT_POS_Y as usize; // row within the tile
        let mut delta_tile = SharedMemory::<F>::new(tile_n * tile_n); // [token, o]
        let mut a_tile = SharedMemory::<F>::new(tile_n * tile_n); // [token, i]
        let mut acc = F::new(0.0);
        let mut t0 = 0usize;
        while t0 < n {
            // Unit (x, y) stages token t0 + y: delta[t, o0 + x] and a[t, i0 + x].
            let t = t0 + y;
            let mut d_value = F::new(0.0);
            let mut a_value = F::new(0.0);
            if t < n {
                if u32::cast_from(seg[t]) as usize == k {
                    if o0 + x < outs {
                        d_value = delta[t * outs + o0 + x];
                    }
                    if i0 + x < inps {
                        a_value = a[t * inps + i0 + x];
                    }
                }
            }
            delta_tile[y * tile_n + x] = d_value;
            a_tile[y * tile_n + x] = a_value;
            sync_cube();
            // Unit (x, y) owns out[k, o0 + y, i0 + x].
            for r in 0..tile_n {
                acc += delta_tile[r * tile_n + y] * a_tile[r * tile_n + x];
            }
            sync_cube();
            t0 += tile_n;
        }
        if o0 + y < outs && i0 + x < inps {
            out[(k * outs + o0 + y) * inps + i0 + x] = acc;
        }
    }

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

/// G[k] = Σ_{t: seg_t = k} δ_t ⊗ a_t → [k, out, inp] on a CubeCL backend; the twin of
/// `reference::segment_accumulate`. Tiled (TILE × TILE outputs per cube, tokens staged in
/// shared memory).
pub fn segment_accumulate<R, F, I, BT>(
    delta: Tensor<CubeBackend<R, F, I, BT>, 2>,
    a: Tensor<CubeBackend<R, F, I, BT>, 2>,
    seg: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    k: usize,
) -> Tensor<CubeBackend<R, F, I, BT>, 3>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [_n, outs] = delta.dims();
    let [_, inps] = a.dims();
    let delta = into_contiguous(delta.into_primitive().tensor());
    let a = into_contiguous(a.into_primitive().tensor());
    let seg = into_contiguous(seg.into_primitive());
    let len = k * outs * inps;
    let out = empty::<R, F>(&delta, len);
    if len > 0 {
        let client = delta.client.clone();
        let tile = TILE as usize;
        let tiles = k * outs.div_ceil(tile) * inps.div_ceil(tile);
        segment_accumulate_kernel::launch::<F, I, R>(
            &client,
            cubes(&client, tiles, 1),
            CubeDim::new_2d(TILE, TILE),
            delta.into_tensor_arg(),
            a.into_tensor_arg(),
            seg.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            TILE,
        );
    }
    let out: Tensor<CubeBackend<R, F, I, BT>, 1> =
        Tensor::from_primitive(TensorPrimitive::Float(out));
    out.reshape([k, outs, inps])
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
