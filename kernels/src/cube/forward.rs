//! Launchers of the kernels on the training path: each takes burn tensors, makes them
//! contiguous, launches, and returns burn tensors.

use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::{CubeCount, CubeDim};

use super::kernel::{
    cross_entropy_backward_kernel, cross_entropy_rows_kernel, segment_accumulate_kernel,
    segment_sum_kernel, weighted_gather_row_dot_kernel,
};
use super::{cubes, empty, float, CubeBackend, REDUCE_UNITS, ROW_DOT_UNITS, ROW_UNITS, TILE};

/// out[k] = Σ_{t: seg_t = k} w_t ⟨U_t, V_t⟩ for u, v [n, d], seg [n], w [n] on a CubeCL
/// backend. The kernel twin of `reference::segment_row_dot`.
pub fn segment_row_dot<R, F, I, BT>(
    u: Tensor<CubeBackend<R, F, I, BT>, 2>,
    v: Tensor<CubeBackend<R, F, I, BT>, 2>,
    seg: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    w: Tensor<CubeBackend<R, F, I, BT>, 1>,
    k: usize,
) -> Tensor<CubeBackend<R, F, I, BT>, 1>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [n, _d] = u.dims();
    // Row t of u is row t of the "table": the gather kernel with the identity index.
    let identity = Tensor::arange(0..n as i64, &u.device()); // [n]
    segment_gather_row_dot(u, identity, v, seg, w, k)
}

pub(crate) fn segment_sum_primitive<R: CubeRuntime, F: FloatElement, I: IntElement>(
    values: CubeTensor<R>,
    seg: CubeTensor<R>,
    k: usize,
) -> CubeTensor<R> {
    let out = empty::<R, F>(&values, k);
    let client = values.client.clone();
    segment_sum_kernel::launch::<F, I, R>(
        &client,
        CubeCount::Static(k as u32, 1, 1),
        CubeDim::new_1d(REDUCE_UNITS),
        values.into_tensor_arg(),
        seg.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        REDUCE_UNITS,
    );
    out
}

/// (loss [n], logsumexp [n]) of logits [n, vocab] against targets [n] on a CubeCL backend;
/// the twin of `reference::cross_entropy_rows`.
#[allow(clippy::type_complexity)]
pub fn cross_entropy_rows<R, F, I, BT>(
    logits: Tensor<CubeBackend<R, F, I, BT>, 2>,
    targets: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
) -> (
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
    let logits = into_contiguous(logits.into_primitive().tensor());
    let targets = into_contiguous(targets.into_primitive());
    let loss = empty::<R, F>(&logits, n);
    let logsumexp = empty::<R, F>(&logits, n);
    if n > 0 {
        let client = logits.client.clone();
        cross_entropy_rows_kernel::launch::<F, I, R>(
            &client,
            cubes(&client, n, 1),
            CubeDim::new_1d(REDUCE_UNITS),
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            loss.clone().into_tensor_arg(),
            logsumexp.clone().into_tensor_arg(),
            REDUCE_UNITS,
        );
    }
    (float(loss), float(logsumexp))
}

/// d logits [n, vocab] = dloss_t (softmax(logits_t) − onehot(target_t)) on a CubeCL backend;
/// the twin of `reference::cross_entropy_rows_backward`.
pub fn cross_entropy_rows_backward<R, F, I, BT>(
    logits: Tensor<CubeBackend<R, F, I, BT>, 2>,
    targets: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    logsumexp: Tensor<CubeBackend<R, F, I, BT>, 1>,
    dloss: Tensor<CubeBackend<R, F, I, BT>, 1>,
) -> Tensor<CubeBackend<R, F, I, BT>, 2>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [n, vocab] = logits.dims();
    let logits = into_contiguous(logits.into_primitive().tensor());
    let targets = into_contiguous(targets.into_primitive());
    let logsumexp = into_contiguous(logsumexp.into_primitive().tensor());
    let dloss = into_contiguous(dloss.into_primitive().tensor());
    let len = n * vocab;
    let dlogits = empty::<R, F>(&logits, len);
    if len > 0 {
        let client = logits.client.clone();
        cross_entropy_backward_kernel::launch::<F, I, R>(
            &client,
            cubes(&client, len, ROW_UNITS),
            CubeDim::new_1d(ROW_UNITS),
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            logsumexp.into_tensor_arg(),
            dloss.into_tensor_arg(),
            dlogits.clone().into_tensor_arg(),
        );
    }
    float::<R, F, I, BT, 1>(dlogits).reshape([n, vocab])
}

/// out[k] = Σ_{t: seg_t = k} w_t ⟨table[rows_t], V_t⟩ for table [vocab, d], rows [n], v [n, d]
/// on a CubeCL backend; the twin of `reference::segment_gather_row_dot`.
pub fn segment_gather_row_dot<R, F, I, BT>(
    table: Tensor<CubeBackend<R, F, I, BT>, 2>,
    rows: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    v: Tensor<CubeBackend<R, F, I, BT>, 2>,
    seg: Tensor<CubeBackend<R, F, I, BT>, 1, Int>,
    w: Tensor<CubeBackend<R, F, I, BT>, 1>,
    k: usize,
) -> Tensor<CubeBackend<R, F, I, BT>, 1>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [n, _d] = v.dims();
    let table = into_contiguous(table.into_primitive().tensor());
    let rows = into_contiguous(rows.into_primitive());
    let v = into_contiguous(v.into_primitive().tensor());
    let w = into_contiguous(w.into_primitive().tensor());
    let seg = into_contiguous(seg.into_primitive());
    let dots = empty::<R, F>(&v, n);
    if n > 0 {
        let client = v.client.clone();
        weighted_gather_row_dot_kernel::launch::<F, I, R>(
            &client,
            cubes(&client, n, 1),
            CubeDim::new_1d(ROW_DOT_UNITS),
            table.into_tensor_arg(),
            rows.into_tensor_arg(),
            v.into_tensor_arg(),
            w.into_tensor_arg(),
            dots.clone().into_tensor_arg(),
            ROW_DOT_UNITS,
        );
    }
    float(segment_sum_primitive::<R, F, I>(dots, seg, k))
}

/// G[k] = Σ_{t: seg_t = k} δ_t ⊗ a_t → [k, out, inp] on a CubeCL backend; the twin of
/// `reference::segment_accumulate`. Tiled (TILE × TILE outputs per cube, tokens staged in
/// shared memory); every source's cubes read all of seg, and token tiles with none of their
/// source's tokens skip the products.
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
