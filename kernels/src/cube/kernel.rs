//! The device code of the training-path kernels (CubeCL's own `Tensor`, `Float` and `Int`,
//! hence a module of its own).

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

/// Σ of `shared[0..units]` into `shared[0]` by a tree reduction (units a power of two,
/// every unit of the cube calling it).
#[cube]
pub fn tree_sum<F: Float>(shared: &mut SharedMemory<F>) {
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

/// out[k, o, i] = Σ_{t: seg[t] = k} delta[t, o] · a[t, i], tiled: one cube of
/// TILE × TILE units per (source k, block of TILE outputs o, block of TILE inputs i). The
/// cube walks the tokens TILE at a time, staging delta[t, o-block] (zero where seg[t] ≠ k)
/// and a[t, i-block] in shared memory with coalesced loads, and each unit accumulates its
/// (o, i) from the staged tiles, so each loaded value is used TILE times. A token tile with
/// no token of source k (flagged in shared memory while staging) skips the products: with a
/// step's sources in runs, the multiply-adds are about those of the layer's weight gradient,
/// not k times them; every cube still reads all of seg.
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
                                                              // 1 when the staged tile holds a token of source k (every writer writes 1).
    let mut hit = SharedMemory::<u32>::new(1usize);
    let mut acc = F::new(0.0);
    let mut t0 = 0usize;
    while t0 < n {
        if x == 0 && y == 0 {
            hit[0usize] = 0u32;
        }
        sync_cube();
        // Unit (x, y) stages token t0 + y: delta[t, o0 + x] and a[t, i0 + x].
        let t = t0 + y;
        let mut d_value = F::new(0.0);
        let mut a_value = F::new(0.0);
        if t < n {
            if u32::cast_from(seg[t]) as usize == k {
                hit[0usize] = 1u32;
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
        // Unit (x, y) owns out[k, o0 + y, i0 + x]; the branch is uniform in the cube.
        if hit[0usize] == 1u32 {
            for r in 0..tile_n {
                acc += delta_tile[r * tile_n + y] * a_tile[r * tile_n + x];
            }
        }
        sync_cube();
        t0 += tile_n;
    }
    if o0 + y < outs && i0 + x < inps {
        out[(k * outs + o0 + y) * inps + i0 + x] = acc;
    }
}
