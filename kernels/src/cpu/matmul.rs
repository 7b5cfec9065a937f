//! Matrix products on the CPU: matrixmultiply's sgemm over strided ndarray views, in
//! parallel over rayon's pool with bits that do not depend on the thread count.

use ndarray::{ArcArray, ArrayD, ArrayViewD, IxDyn};
use rayon::prelude::*;

/// lhs [.., m, k] × rhs [.., k, n] (same leading dims, any strides) → [.., m, n] row-major: one
/// sgemm per leading index, those in parallel (each output block written by one thread in a
/// fixed order, so the bits do not depend on the thread count).
pub(crate) fn host_matmul(lhs: ArrayViewD<f32>, rhs: ArrayViewD<f32>) -> ArcArray<f32, IxDyn> {
    let nd = lhs.ndim();
    let (m, k, n) = (
        lhs.shape()[nd - 2],
        lhs.shape()[nd - 1],
        rhs.shape()[nd - 1],
    );
    let lead = &lhs.shape()[..nd - 2];
    let batches: usize = lead.iter().product();
    let mut shape = lhs.shape().to_vec();
    shape[nd - 1] = n;
    let len = batches * m * n;
    if m * n == 0 || k == 0 {
        return ArrayD::zeros(shape).into_shared();
    }
    // Uninitialised: sgemm with β = 0 writes every element of C and never reads it (its
    // contract), which saves a memset of the output (5% of the step).
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let (ls, rs) = (lhs.strides(), rhs.strides());
    let offset = |b: usize, strides: &[isize]| lead_offset(b, lead, strides);
    // Addresses as integers: the views and the buffer outlive the loop; each product reads the
    // views and writes its own m·n block of the buffer.
    let (lp, rp, cp) = (
        lhs.as_ptr() as usize,
        rhs.as_ptr() as usize,
        out.as_mut_ptr() as usize,
    );
    // Rows first..first + count of product b.
    let rows_of_product = |b: usize, first: usize, count: usize| {
        // SAFETY: every (offset + i·stride) with i within the shape lies inside the views,
        // which are alive for the call; these rows of block b of the buffer (m·n values,
        // row-major) lie within its capacity and no other call writes them.
        unsafe {
            matrixmultiply::sgemm(
                count,
                k,
                n,
                1.0,
                (lp as *const f32).offset(offset(b, ls) + ls[nd - 2] * first as isize),
                ls[nd - 2],
                ls[nd - 1],
                (rp as *const f32).offset(offset(b, rs)),
                rs[nd - 2],
                rs[nd - 1],
                0.0,
                (cp as *mut f32).add(b * m * n + first * n),
                n as isize,
                1,
            )
        }
    };
    run_products(batches, m, rows_of_product);
    // SAFETY: the products above wrote all len values.
    unsafe { out.set_len(len) };
    ArrayD::from_shape_vec(shape, out)
        .expect("shape matches the buffer")
        .into_shared()
}

/// Runs `rows_of_product(b, first, count)` over every row of every product in parallel.
fn run_products(batches: usize, m: usize, rows_of_product: impl Fn(usize, usize, usize) + Sync) {
    if batches == 1 {
        // One product: its rows in blocks, one block per thread. Each output element is still
        // one sgemm's sum over all of k in the same order, so the bits do not depend on the
        // number of blocks. rayon is the only thread pool (matrixmultiply's own `threading` is
        // off): two pools on two cores took turns spinning, 5% of a step.
        let rows = m
            .div_ceil(rayon::current_num_threads().max(1))
            .next_multiple_of(8);
        (0..m.div_ceil(rows)).into_par_iter().for_each(|block| {
            let first = block * rows;
            rows_of_product(0, first, rows.min(m - first));
        });
    } else {
        (0..batches)
            .into_par_iter()
            .for_each(|b| rows_of_product(b, 0, m));
    }
}

/// Element offset of leading index `b` (row-major over `lead`) in an array with `strides`.
fn lead_offset(b: usize, lead: &[usize], strides: &[isize]) -> isize {
    let mut rest = b;
    let mut at = 0isize;
    for axis in (0..lead.len()).rev() {
        at += (rest % lead[axis]) as isize * strides[axis];
        rest /= lead[axis];
    }
    at
}

/// G[k] = Σ_{t: seg_t = k} x_t ⊗ y_t of x [n, p], y [n, q] (row-major) → [k, p, q] row-major:
/// one sgemm per run of equal seg (xᵀ of the run read through its strides), accumulated into
/// its source's block with β = 1, runs in token order. One thread: a step's passes already
/// run side by side.
pub(crate) fn host_segment_accumulate(
    x: &[f32],
    y: &[f32],
    seg: &[i64],
    (p, q, k): (usize, usize, usize),
) -> Vec<f32> {
    let n = seg.len();
    let mut out = vec![0.0f32; k * p * q];
    let mut start = 0;
    while start < n {
        let s = seg[start] as usize;
        let run = seg[start..]
            .iter()
            .take_while(|&&v| v as usize == s)
            .count();
        assert!(s < k, "segment {s} of {k}");
        let block = &mut out[s * p * q..(s + 1) * p * q];
        // SAFETY: xᵀ[i, t] = x[(start + t) · p + i] and y[start + t, j] for t < run, i < p,
        // j < q lie inside x and y; the block holds p · q values, row-major.
        unsafe {
            matrixmultiply::sgemm(
                p,
                run,
                q,
                1.0,
                x[start * p..].as_ptr(),
                1,
                p as isize,
                y[start * q..].as_ptr(),
                q as isize,
                1,
                1.0,
                block.as_mut_ptr(),
                q as isize,
                1,
            )
        }
        start += run;
    }
    out
}
