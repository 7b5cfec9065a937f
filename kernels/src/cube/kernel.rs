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
