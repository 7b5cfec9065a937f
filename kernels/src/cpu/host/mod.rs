//! Fused row kernels for the CPU backends, written as plain loops over host slices.
//!
//! On the CPU every burn op is a pass over memory with its own allocation, and the autodiff
//! graph records each one; a row-wise softmax or cross-entropy written in tensor ops is six to
//! ten such passes forward and as many backward. These do each in one or two passes.
//!
//! Rows are split over threads with rayon, but every row is computed by one thread in a fixed
//! order, so results are the same bit for bit for any thread count and schedule (bit-identical
//! resume depends on it).

use rayon::prelude::*;

/// Rows per rayon task: enough work per task to amortise the scheduling.
const ROWS_PER_TASK: usize = 64;

/// A new buffer of `len` values in chunks of `chunk`, each zeroed and then handed to
/// `fill(chunk index, chunk)` in a rayon task; returns the buffer and what each task returned,
/// in chunk order. `vec![0.0; len]` zeroed the whole buffer (a few MiB of activations) on the
/// calling thread while the other core waited (3% of a step under `perf`); here each task
/// zeroes its own chunk just before writing it.
fn fill_chunks<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(index, part)| {
            for value in part.iter_mut() {
                value.write(0.0);
            }
            // SAFETY: every element of `part` was initialised just above.
            let part = unsafe {
                std::slice::from_raw_parts_mut(part.as_mut_ptr().cast::<f32>(), part.len())
            };
            fill(index, part)
        })
        .collect();
    // SAFETY: the chunks cover 0..len and each was initialised.
    unsafe { out.set_len(len) };
    (out, results)
}

/// Cross-entropy of each row of `logits` [n, vocab] against `targets` [n]: returns
/// (loss [n], logsumexp [n]) with loss_t = logsumexp_t − logits[t, target_t].
pub fn cross_entropy_rows(logits: &[f32], vocab: usize, targets: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let n = targets.len();
    let mut loss = vec![0.0f32; n];
    let mut lse = vec![0.0f32; n];
    loss.par_chunks_mut(ROWS_PER_TASK)
        .zip(lse.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(chunk, (loss, lse))| {
            // exp of one row, computed apart from its sum so that the loop vectorises. [vocab]
            let mut exps = vec![0.0f32; vocab];
            for (i, (loss, lse)) in loss.iter_mut().zip(lse.iter_mut()).enumerate() {
                let row = chunk * ROWS_PER_TASK + i;
                let x = &logits[row * vocab..(row + 1) * vocab];
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (e, &v) in exps.iter_mut().zip(x) {
                    *e = fast_exp(v - max);
                }
                let sum: f32 = exps.iter().sum();
                *lse = max + sum.ln();
                *loss = *lse - x[targets[row] as usize];
            }
        });
    (loss, lse)
}

/// d logits [n, vocab] = dloss_t (exp(logits_t − logsumexp_t) − onehot(target_t)).
pub fn cross_entropy_rows_backward(
    logits: &[f32],
    vocab: usize,
    targets: &[i64],
    lse: &[f32],
    dloss: &[f32],
) -> Vec<f32> {
    fill_chunks(logits.len(), vocab * ROWS_PER_TASK, |chunk, out| {
        for (i, out) in out.chunks_mut(vocab).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let x = &logits[row * vocab..(row + 1) * vocab];
            let (l, g) = (lse[row], dloss[row]);
            for (o, &v) in out.iter_mut().zip(x) {
                *o = fast_exp(v - l) * g;
            }
            out[targets[row] as usize] -= g;
        }
    })
    .0
}

/// Causal softmax of attention scores [rows, seq] where row r is query position r % seq:
/// y[j] = softmax_j(scale · s[j]) over j ≤ r % seq, and exactly 0 for j > r % seq.
pub fn causal_softmax(scores: &[f32], seq: usize, scale: f32) -> Vec<f32> {
    fill_chunks(scores.len(), seq * ROWS_PER_TASK, |chunk, out| {
        for (i, y) in out.chunks_mut(seq).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let visible = row % seq + 1;
            let s = &scores[row * seq..row * seq + visible];
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (y, &v) in y.iter_mut().zip(s) {
                *y = fast_exp((v - max) * scale);
            }
            let sum: f32 = y[..visible].iter().sum();
            let inv = 1.0 / sum;
            for y in &mut y[..visible] {
                *y *= inv;
            }
        }
    })
    .0
}

/// Gradient of `causal_softmax` with respect to the scores, from its output `y` and the
/// output gradient `dy` (both [rows, seq]): ds[j] = scale · y[j] (dy[j] − Σ_i dy[i] y[i]).
pub fn causal_softmax_backward(y: &[f32], dy: &[f32], seq: usize, scale: f32) -> Vec<f32> {
    fill_chunks(y.len(), seq * ROWS_PER_TASK, |chunk, out| {
        for (i, ds) in out.chunks_mut(seq).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let visible = row % seq + 1;
            let y = &y[row * seq..row * seq + visible];
            let dy = &dy[row * seq..row * seq + visible];
            let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
            for ((ds, &y), &dy) in ds.iter_mut().zip(y).zip(dy) {
                *ds = scale * y * (dy - dot);
            }
        }
    })
    .0
}

/// RoPE (GPT-NeoX half-split) of x [rows, seq, head_dim] where row r's position is r % seq:
/// (x1, x2) → (x1 cos − x2 sin, x1 sin + x2 cos) with cos, sin [seq, head_dim / 2]. Its gradient
/// is the same map with −sin (the inverse rotation).
pub fn rope(x: &[f32], seq: usize, head_dim: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let half = head_dim / 2;
    fill_chunks(x.len(), head_dim * ROWS_PER_TASK, |chunk, out| {
        for (i, y) in out.chunks_mut(head_dim).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let pos = row % seq;
            let x = &x[row * head_dim..(row + 1) * head_dim];
            let (cos, sin) = (
                &cos[pos * half..(pos + 1) * half],
                &sin[pos * half..(pos + 1) * half],
            );
            let (y1, y2) = y.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x[j], x[half + j]);
                y1[j] = a * cos[j] - b * sin[j];
                y2[j] = a * sin[j] + b * cos[j];
            }
        }
    })
    .0
}

/// RMSNorm of x [rows, d] with gain [d]: y = x̂ ⊙ gain with x̂ = x · r, r = 1 / sqrt(mean(x²) + eps).
/// Returns (y [rows, d], r [rows]).
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gain.len();
    let (y, r) = fill_chunks(x.len(), d * ROWS_PER_TASK, |chunk, y| {
        let mut r = Vec::with_capacity(ROWS_PER_TASK);
        for (i, y) in y.chunks_mut(d).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let x = &x[row * d..(row + 1) * d];
            let mean_square = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let row_r = 1.0 / (mean_square + eps).sqrt();
            for ((y, &x), &g) in y.iter_mut().zip(x).zip(gain) {
                *y = x * row_r * g;
            }
            r.push(row_r);
        }
        r
    });
    (y, r.concat())
}

/// Gradients of `rms_norm` from x [rows, d], gain [d], its r [rows] and dy [rows, d]:
/// with g = dy ⊙ gain, dx = r (g − x̂ · mean(g ⊙ x̂)) and dgain = Σ_rows dy ⊙ x̂.
/// dgain is summed per fixed block of rows, then the blocks in order: the same bits for any
/// thread count.
pub fn rms_norm_backward(x: &[f32], gain: &[f32], r: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = gain.len();
    let (dx, partials) = fill_chunks(x.len(), d * ROWS_PER_TASK, |chunk, dx| {
        let mut dgain = vec![0.0f32; d];
        for (i, dx) in dx.chunks_mut(d).enumerate() {
            let row = chunk * ROWS_PER_TASK + i;
            let (x, dy, r) = (
                &x[row * d..(row + 1) * d],
                &dy[row * d..(row + 1) * d],
                r[row],
            );
            let mut dot = 0.0f32;
            for j in 0..d {
                let x_hat = x[j] * r;
                dot += dy[j] * gain[j] * x_hat;
                dgain[j] += dy[j] * x_hat;
            }
            let mean = dot / d as f32;
            for j in 0..d {
                dx[j] = r * (dy[j] * gain[j] - x[j] * r * mean);
            }
        }
        dgain
    });
    let mut dgain = vec![0.0f32; d];
    for partial in partials {
        for (total, p) in dgain.iter_mut().zip(partial) {
            *total += p;
        }
    }
    (dx, dgain)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// e^x within 1 ulp of the correctly rounded value for every finite f32 whose result is a
/// normal number (`fast_exp_is_within_one_ulp`): 0 below −103.97, +∞ above 88.72, NaN for NaN.
/// Cody–Waite reduction x = n ln 2 + r, |r| ≤ ln 2 / 2, Cephes' degree-6 polynomial for e^r, and
/// 2^n built from exponent bits in two halves (so that n down to −150 stays normal in each).
/// Branch-free, so the loops calling it vectorise; libm's expf is a call per element and was 7%
/// of a step (softmax, cross-entropy, GELU).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LOWEST: f32 = -103.972_08;
    const HIGHEST: f32 = 88.722_83;
    let clamped = x.clamp(LOWEST, HIGHEST);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let power_of_two = |k: i32| f32::from_bits(((k + 127) << 23) as u32);
    let y = exp_r * power_of_two(n1) * power_of_two(n2);
    let y = if x < LOWEST { 0.0 } else { y };
    let y = if x > HIGHEST { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// (erf(x), e^(−x²)) by Abramowitz & Stegun 7.1.26 (1.5e-7 in exact arithmetic, within 1e-6 of
/// libm in f32): one exp and one division, several times cheaper than libm's erff, which
/// dominated GELU. The exponential comes back too: GELU's backward needs it for φ.
#[inline(always)]
fn erf_and_gaussian(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let gaussian = fast_exp(-a * a);
    let y = 1.0 - poly * gaussian;
    (y.copysign(x), gaussian)
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    erf_and_gaussian(x).0
}

/// GELU (the exact, erf form): x Φ(x) = x · ½ (1 + erf(x / √2)).
pub fn gelu(x: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 4096;
    fill_chunks(x.len(), CHUNK, |chunk, y| {
        for (y, &x) in y.iter_mut().zip(&x[chunk * CHUNK..]) {
            *y = x * 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
    })
    .0
}

/// d x = dy · (Φ(x) + x φ(x)) for GELU.
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 4096;
    fill_chunks(x.len(), CHUNK, |chunk, dx| {
        let at = chunk * CHUNK;
        for ((dx, &x), &dy) in dx.iter_mut().zip(&x[at..]).zip(&dy[at..]) {
            // e^(−(x/√2)²) = e^(−x²/2): one exponential for both Φ and φ.
            let (erf, gaussian) = erf_and_gaussian(x * FRAC_1_SQRT_2);
            let cdf = 0.5 * (1.0 + erf);
            let pdf = FRAC_1_SQRT_2PI * gaussian;
            *dx = dy * (cdf + x * pdf);
        }
    })
    .0
}

/// SwiGLU's h = silu(g) ⊙ u = g σ(g) u, elementwise over gate g and up u.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 4096;
    fill_chunks(gate.len(), CHUNK, |chunk, h| {
        let at = chunk * CHUNK;
        for ((h, &g), &u) in h.iter_mut().zip(&gate[at..]).zip(&up[at..]) {
            // σ(g) = 1 / (1 + e^(−g)): e^(−g) = ∞ for very negative g gives σ = 0, as it should.
            let s = 1.0 / (1.0 + fast_exp(-g));
            *h = g * s * u;
        }
    })
    .0
}

/// (d gate, d up) of `swiglu` for the output gradient dh: with s = σ(g),
/// d g = dh · u · s (1 + g (1 − s)) and d u = dh · g · s.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    const CHUNK: usize = 4096;
    let (dgate, dups) = fill_chunks(gate.len(), CHUNK, |chunk, dgate| {
        let at = chunk * CHUNK;
        let mut dup = Vec::with_capacity(dgate.len());
        for (((dg, &g), &u), &dh) in dgate
            .iter_mut()
            .zip(&gate[at..])
            .zip(&up[at..])
            .zip(&dh[at..])
        {
            let s = 1.0 / (1.0 + fast_exp(-g));
            *dg = dh * u * s * (1.0 + g * (1.0 - s));
            dup.push(dh * g * s);
        }
        dup
    });
    (dgate, dups.concat())
}

/// The constants of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr: f64,
    /// 1 − β1^t and 1 − β2^t.
    pub bias1: f64,
    pub bias2: f64,
    /// Multiplies the parameter before the update: 1 − lr · weight_decay (1 without decay).
    pub decay: f64,
    /// Multiplies the gradient first (clipping).
    pub grad_scale: f64,
}

/// One AdamW update in place, element by element: m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g²,
/// θ ← decay · θ − lr · (m / bias1) / (sqrt(v / bias2) + eps), with g = grad_scale · grad.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], c: AdamWStep) {
    const BLOCK: usize = 8192;
    let (beta1, beta2, eps, lr) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32, c.lr as f32);
    let (bias1, bias2, decay, scale) = (
        c.bias1 as f32,
        c.bias2 as f32,
        c.decay as f32,
        c.grad_scale as f32,
    );
    param
        .par_chunks_mut(BLOCK)
        .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
        .zip(grad.par_chunks(BLOCK))
        .for_each(|((param, (m, v)), grad)| {
            for (((p, m), v), &g) in param.iter_mut().zip(m).zip(v).zip(grad) {
                let g = g * scale;
                *m = *m * beta1 + g * (1.0 - beta1);
                *v = *v * beta2 + g * g * (1.0 - beta2);
                let update = (*m / bias1) / ((*v / bias2).sqrt() + eps);
                *p = *p * decay - update * lr;
            }
        });
}

/// Elements per parallel task of the flat vector ops below: a fixed split, so the partial
/// sums and their order (hence the bits) do not depend on the thread count.
const FLAT_BLOCK: usize = 16384;

/// ⟨a, b⟩ as f32: each block of `FLAT_BLOCK` summed in f64, the blocks added in order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    let partial: Vec<f64> = a
        .par_chunks(FLAT_BLOCK)
        .zip(b.par_chunks(FLAT_BLOCK))
        .map(|(a, b)| dot_f64(a, b))
        .collect();
    partial.iter().sum::<f64>() as f32
}

/// Σ a_i b_i in f64 (each product exact), over 8 interleaved partial sums: one running sum
/// is a chain of dependent adds, 4× slower on the 0.9M parameters a probed step dots once per
/// pass. A fixed pattern, so the same bits on any thread.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut sums = [0.0f64; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (a, b) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            sums[lane] += a[lane] as f64 * b[lane] as f64;
        }
    }
    let tail: f64 = a_tail
        .iter()
        .zip(b_tail)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    sums.iter().sum::<f64>() + tail
}

/// g / (sqrt(v / bias2) + eps) elementwise, in the same f32 operations as burn's
/// `((v / bias2).sqrt() + eps).recip() * g`. [n]
pub fn preconditioned(g: &[f32], v: &[f32], bias2: f32, eps: f32) -> Vec<f32> {
    assert_eq!(g.len(), v.len(), "preconditioner of a different length");
    let (out, _) = fill_chunks(g.len(), FLAT_BLOCK, |index, chunk| {
        let first = index * FLAT_BLOCK;
        let (g, v) = (
            &g[first..first + chunk.len()],
            &v[first..first + chunk.len()],
        );
        for ((o, &g), &v) in chunk.iter_mut().zip(g).zip(v) {
            *o = (1.0 / ((v / bias2).sqrt() + eps)) * g;
        }
    });
    out
}

#[cfg(test)]
mod tests;
