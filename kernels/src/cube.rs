//! CubeCL kernels (wgpu, cuda) for per-source statistics, each checked against its
//! plain-tensor reference in `reference.rs`.
//!
//! - `segment_row_dot` (the gather form with the identity index, and the gather form itself
//!   for embeddings) runs in two launches: one cube per token row computes w_t ⟨U_t, V_t⟩ with coalesced reads and a shared-memory tree
//!   reduction (an [N] buffer), then one cube per source sums its tokens' values the same way.
//!   No atomics (wgpu has no portable float atomics).
//! - `segment_accumulate` is tiled: TILE × TILE outputs per cube, tokens staged in shared
//!   memory TILE at a time.
//! - `multi_dot` makes one pass over the [k, p] buffer (k + k² partial sums per unit, then a
//!   small sum over the units).
//! - the fused cross-entropy: one cube per row for the forward (max and Σ exp by tree
//!   reductions, softmax never stored; logsumexp kept), one unit per element for the backward.
//!
//! Not vectorised (no `Line` loads): reads are coalesced across units instead. Grids larger
//! than the hardware's per-axis limit (65535 on wgpu) are spread over the axes. Correct for
//! any N, D, K, including K = 1, sources with no token and sizes not a multiple of a tile.

use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
pub use burn_cubecl::CubeBackend;
use burn_cubecl::{element::BoolElement, CubeRuntime, FloatElement, IntElement};
/// The CUDA runtime (burn's `cuda` module keeps it private).
#[cfg(feature = "cuda")]
pub use cubecl::cuda::CudaRuntime;
use cubecl::prelude::ComputeClient;
use cubecl::server::CubeCountSelection;
use cubecl::{CubeCount, CubeDim};

use crate::{KernelImpl, StatKernels};

use kernel::{
    cross_entropy_backward_kernel, cross_entropy_rows_kernel, multi_dot_partials_kernel,
    segment_accumulate_kernel, segment_sum_kernel, weighted_gather_row_dot_kernel,
};

/// Units per cube of the segment reduction (a power of two).
pub(crate) const REDUCE_UNITS: u32 = 256;
/// Units per cube of the elementwise kernels (one unit per element).
pub(crate) const ROW_UNITS: u32 = 256;
/// Units per cube of the row-dot kernels (one cube per token row; rows are d_model or
/// d_ff long, so 64 units read each row in one to a few coalesced sweeps).
pub(crate) const ROW_DOT_UNITS: u32 = 64;
/// Side of segment_accumulate's output tiles (TILE × TILE units per cube).
pub(crate) const TILE: u32 = 16;

/// The device code (CubeCL's own `Tensor`, `Float` and `Int`, hence a module of its own).
mod kernel {
    use cubecl::prelude::*;

    /// loss[t] = logsumexp(logits[t, :]) − logits[t, targets[t]] and logsumexp[t], one cube
    /// per token row t: its units stride over the vocabulary for the max, then for
    /// Σ exp(x − max), each a shared-memory tree reduction; softmax is never materialised.
    #[cube(launch)]
    pub fn cross_entropy_rows_kernel<F: Float, I: Int>(
        logits: &Tensor<F>,
        targets: &Tensor<I>,
        loss: &mut Tensor<F>,
        logsumexp: &mut Tensor<F>,
        #[comptime] units: u32,
    ) {
        let t = CUBE_POS;
        if t >= loss.len() {
            terminate!(); // a spare cube of a hardware-limited grid; uniform in the cube
        }
        let vocab = logits.shape(1);
        let base = t * vocab;
        let mut shared = SharedMemory::<F>::new(units as usize);
        let unit = UNIT_POS_X as usize;

        let mut local_max = F::new(-3.0e38);
        let mut j = unit;
        while j < vocab {
            local_max = F::max(local_max, logits[base + j]);
            j += units as usize;
        }
        shared[unit] = local_max;
        sync_cube();
        let mut stride = CUBE_DIM_X / 2;
        while stride > 0 {
            if UNIT_POS_X < stride {
                shared[unit] = F::max(shared[unit], shared[(UNIT_POS_X + stride) as usize]);
            }
            sync_cube();
            stride /= 2;
        }
        let row_max = shared[0];
        sync_cube();

        let mut local_sum = F::new(0.0);
        let mut j = unit;
        while j < vocab {
            local_sum += (logits[base + j] - row_max).exp();
            j += units as usize;
        }
        shared[unit] = local_sum;
        sync_cube();
        tree_sum::<F>(&mut shared);
        if UNIT_POS_X == 0 {
            let target = u32::cast_from(targets[t]) as usize;
            let lse = shared[0].ln() + row_max;
            logsumexp[t] = lse;
            loss[t] = lse - logits[base + target];
        }
    }

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

    /// Σ of `shared[0..units]` into `shared[0]` by a tree reduction (units a power of two,
    /// every unit of the cube calling it).
    #[cube]
    fn tree_sum<F: Float>(shared: &mut SharedMemory<F>) {
        // A runtime counter (a comptime one cannot be mutated); CUBE_DIM_X == units.
        let mut stride = CUBE_DIM_X / 2;
        while stride > 0 {
            if UNIT_POS_X < stride {
                shared[UNIT_POS_X as usize] =
                    shared[UNIT_POS_X as usize] + shared[(UNIT_POS_X + stride) as usize];
            }
            sync_cube();
            stride /= 2;
        }
    }

    /// dlogits[t, j] = dloss[t] (exp(logits[t, j] − logsumexp[t]) − [j = targets[t]]), one
    /// unit per element: the cross-entropy backward, softmax recomputed from the forward's
    /// logsumexp rather than stored.
    #[cube(launch)]
    pub fn cross_entropy_backward_kernel<F: Float, I: Int>(
        logits: &Tensor<F>,
        targets: &Tensor<I>,
        logsumexp: &Tensor<F>,
        dloss: &Tensor<F>,
        dlogits: &mut Tensor<F>,
    ) {
        let idx = ABSOLUTE_POS;
        if idx >= dlogits.len() {
            terminate!();
        }
        let vocab = logits.shape(1);
        let t = idx / vocab;
        let j = idx % vocab;
        let mut g = (logits[idx] - logsumexp[t]).exp();
        if u32::cast_from(targets[t]) as usize == j {
            g -= F::new(1.0);
        }
        dlogits[idx] = g * dloss[t];
    }

    /// rows[t] = w[t] · Σ_j table[index[t], j] v[t, j], one cube per token row t (CUBE_POS):
    /// its units read the rows with consecutive units on consecutive elements (coalesced),
    /// then a tree reduction in shared memory. The gather form reads embedding rows in place;
    /// the plain row dot is the same kernel with index t ↦ t.
    #[cube(launch)]
    pub fn weighted_gather_row_dot_kernel<F: Float, I: Int>(
        table: &Tensor<F>,
        index: &Tensor<I>,
        v: &Tensor<F>,
        w: &Tensor<F>,
        rows: &mut Tensor<F>,
        #[comptime] units: u32,
    ) {
        let t = CUBE_POS;
        if t >= rows.len() {
            terminate!();
        }
        let d = v.shape(1);
        let row = (u32::cast_from(index[t]) as usize) * d;
        let base = t * d;
        let mut shared = SharedMemory::<F>::new(units as usize);
        let mut sum = F::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < d {
            sum += table[row + j] * v[base + j];
            j += units as usize;
        }
        shared[UNIT_POS_X as usize] = sum;
        sync_cube();
        tree_sum::<F>(&mut shared);
        if UNIT_POS_X == 0 {
            rows[t] = shared[0] * w[t];
        }
    }

    /// out[k] = Σ_{t: seg[t] = k} values[t], one cube per source k (CUBE_POS), its units striding
    /// over the tokens, then a tree reduction in shared memory.
    #[cube(launch)]
    pub fn segment_sum_kernel<F: Float, I: Int>(
        values: &Tensor<F>,
        seg: &Tensor<I>,
        out: &mut Tensor<F>,
        #[comptime] units: u32,
    ) {
        let k = CUBE_POS;
        let n = values.len();
        let mut partial = SharedMemory::<F>::new(units as usize);
        let mut acc = F::new(0.0);
        let mut t = UNIT_POS_X as usize;
        while t < n {
            if u32::cast_from(seg[t]) as usize == k {
                acc += values[t];
            }
            t += units as usize;
        }
        partial[UNIT_POS_X as usize] = acc;
        sync_cube();
        tree_sum::<F>(&mut partial);
        if UNIT_POS_X == 0 {
            out[k] = partial[0];
        }
    }
}

fn empty<R: CubeRuntime, F: FloatElement>(like: &CubeTensor<R>, len: usize) -> CubeTensor<R> {
    let buffer = like.client.empty(len * core::mem::size_of::<F>());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new([len]),
        buffer,
        F::dtype(),
    )
}

/// Enough cubes of `per_cube` units for `n` units, spread over the grid's axes within the
/// hardware's limits (wgpu allows 65535 per axis); kernels index by the axis-free
/// ABSOLUTE_POS / CUBE_POS and skip the spare ones.
fn cubes<R: CubeRuntime>(client: &ComputeClient<R>, n: usize, per_cube: u32) -> CubeCount {
    CubeCountSelection::new(client, (n.max(1) as u32).div_ceil(per_cube)).cube_count()
}

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

fn segment_sum_primitive<R: CubeRuntime, F: FloatElement, I: IntElement>(
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

/// A kernel's output buffer as a burn tensor.
fn float<R, F, I, BT, const D: usize>(out: CubeTensor<R>) -> Tensor<CubeBackend<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

impl<R, F, I, BT> StatKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const IMPL: KernelImpl = KernelImpl::CubeCl;

    fn segment_row_dot(
        u: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        segment_row_dot(u, v, seg, w, k)
    }

    fn segment_gather_row_dot(
        table: Tensor<Self, 2>,
        rows: Tensor<Self, 1, Int>,
        v: Tensor<Self, 2>,
        seg: Tensor<Self, 1, Int>,
        w: Tensor<Self, 1>,
        k: usize,
    ) -> Tensor<Self, 1> {
        segment_gather_row_dot(table, rows, v, seg, w, k)
    }

    fn cross_entropy_per_token(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        cross_entropy_rows(logits, targets).0
    }

    fn cross_entropy_rows(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> (Tensor<Self, 1>, Tensor<Self, 1>) {
        cross_entropy_rows(logits, targets)
    }

    fn cross_entropy_rows_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        logsumexp: Tensor<Self, 1>,
        dloss: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        cross_entropy_rows_backward(logits, targets, logsumexp, dloss)
    }
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

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::reference;
    use burn::backend::wgpu::{WgpuDevice, WgpuRuntime};
    use burn::prelude::{Backend, TensorData};
    use burn::tensor::Distribution;

    type B = CubeBackend<WgpuRuntime, f32, i32, u32>;

    fn to_vec(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn check(n: usize, d: usize, k: usize, seed: u64) {
        let device = WgpuDevice::default();
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
        let device = WgpuDevice::default();
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
            let seg: Vec<i32> = (0..n).map(|t| ((t * 5 + 1) % used) as i32).collect();
            let seg = Tensor::<B, 1, Int>::from_data(TensorData::new(seg, [n]), &device);
            let got = segment_accumulate(delta.clone(), a.clone(), seg.clone(), k);
            let want = reference::segment_accumulate(delta, a, seg, k);
            assert_eq!(got.dims(), [k, outs, inps]);
            close(
                got.into_data().to_vec().unwrap(),
                want.into_data().to_vec().unwrap(),
                &format!("segment_accumulate n={n} out={outs} in={inps} k={k}"),
            );
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

    #[test]
    fn per_source_cross_entropy_matches_the_reference() {
        let device = WgpuDevice::default();
        for (n, vocab, k, seed) in [
            (1, 1, 1, 1),
            (5, 3, 2, 2),
            (64, 257, 3, 3),
            (33, 1000, 4, 4),
            // More rows than wgpu's 65535 cubes per grid axis: the grid is spread.
            (70_000, 3, 2, 5),
        ] {
            B::seed(&device, seed);
            let logits =
                Tensor::<B, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &device);
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
        assert_eq!(<AB as StatKernels>::IMPL, KernelImpl::CubeCl);
        let device = WgpuDevice::default();
        for (n, vocab, seed) in [(1, 1, 1), (7, 3, 2), (64, 257, 3), (130, 1000, 4)] {
            AB::seed(&device, seed);
            let logits =
                Tensor::<AB, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &device);
            let weights = Tensor::<AB, 1>::random([n], Distribution::Uniform(0.5, 2.0), &device);
            let targets: Vec<i32> = (0..n).map(|t| (t * 31 + 7) % vocab).collect();
            let targets = Tensor::<AB, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
            let what = format!("n={n} vocab={vocab}");

            let kernel_logits = logits.clone().require_grad();
            let kernel_loss = <AB as StatKernels>::cross_entropy_per_token(
                kernel_logits.clone(),
                targets.clone(),
            );
            let grads = (kernel_loss.clone() * weights.clone()).sum().backward();
            let kernel_grad = kernel_logits
                .grad(&grads)
                .expect("a gradient for the logits");

            let reference_logits = logits.require_grad();
            let reference_loss =
                reference::cross_entropy_per_token(reference_logits.clone(), targets);
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
        let device = WgpuDevice::default();
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
            let got = <B as StatKernels>::segment_gather_row_dot(
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
        let device = WgpuDevice::default();
        let values = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0], &device);
        let seg = Tensor::<B, 1, Int>::from_ints([2, 0, 2, 0, 2], &device);
        assert_eq!(
            to_vec(segment_sum(values.clone(), seg.clone(), 4)),
            to_vec(reference::segment_sum(values, seg, 4))
        );
    }
}
