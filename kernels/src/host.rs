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
            for (i, (loss, lse)) in loss.iter_mut().zip(lse.iter_mut()).enumerate() {
                let row = chunk * ROWS_PER_TASK + i;
                let x = &logits[row * vocab..(row + 1) * vocab];
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
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
    let mut out = vec![0.0f32; logits.len()];
    out.par_chunks_mut(vocab * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, out)| {
            for (i, out) in out.chunks_mut(vocab).enumerate() {
                let row = chunk * ROWS_PER_TASK + i;
                let x = &logits[row * vocab..(row + 1) * vocab];
                let (l, g) = (lse[row], dloss[row]);
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v - l).exp() * g;
                }
                out[targets[row] as usize] -= g;
            }
        });
    out
}

/// Causal softmax of attention scores [rows, seq] where row r is query position r % seq:
/// y[j] = softmax_j(scale · s[j]) over j ≤ r % seq, and exactly 0 for j > r % seq.
pub fn causal_softmax(scores: &[f32], seq: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; scores.len()];
    out.par_chunks_mut(seq * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, out)| {
            for (i, y) in out.chunks_mut(seq).enumerate() {
                let row = chunk * ROWS_PER_TASK + i;
                let visible = row % seq + 1;
                let s = &scores[row * seq..row * seq + visible];
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for (y, &v) in y.iter_mut().zip(s) {
                    *y = ((v - max) * scale).exp();
                    sum += *y;
                }
                let inv = 1.0 / sum;
                for y in &mut y[..visible] {
                    *y *= inv;
                }
            }
        });
    out
}

/// Gradient of `causal_softmax` with respect to the scores, from its output `y` and the
/// output gradient `dy` (both [rows, seq]): ds[j] = scale · y[j] (dy[j] − Σ_i dy[i] y[i]).
pub fn causal_softmax_backward(y: &[f32], dy: &[f32], seq: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; y.len()];
    out.par_chunks_mut(seq * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, out)| {
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
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_softmax_masks_the_future_and_normalises_the_past() {
        // seq 3: row 0 sees 1 score, row 1 two, row 2 three.
        let scores = [5.0, 9.0, 9.0, 0.0, 2f32.ln(), 9.0, 0.0, 0.0, 0.0];
        let y = causal_softmax(&scores, 3, 1.0);
        let want = [
            1.0,
            0.0,
            0.0,
            1.0 / 3.0,
            2.0 / 3.0,
            0.0,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn causal_softmax_backward_matches_finite_differences() {
        let seq = 4;
        let scale = 0.7;
        let scores: Vec<f32> = (0..2 * seq * seq)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let dy: Vec<f32> = (0..scores.len())
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5)
            .collect();
        let objective = |s: &[f32]| -> f64 {
            causal_softmax(s, seq, scale)
                .iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let y = causal_softmax(&scores, seq, scale);
        let grad = causal_softmax_backward(&y, &dy, seq, scale);
        for j in 0..scores.len() {
            let mut plus = scores.clone();
            plus[j] += 1e-2;
            let mut minus = scores.clone();
            minus[j] -= 1e-2;
            let numeric = (objective(&plus) - objective(&minus)) / 2e-2;
            assert!(
                (numeric - grad[j] as f64).abs() < 2e-3,
                "{j}: {numeric} vs {}",
                grad[j]
            );
        }
    }

    #[test]
    fn cross_entropy_rows_match_hand_computation_and_backward_sums_to_zero() {
        // Row 0: logits [0, ln 3] → p = [1/4, 3/4], target 1 → −ln 0.75.
        let logits = [0.0, 3f32.ln(), 0.0, 0.0];
        let (loss, lse) = cross_entropy_rows(&logits, 2, &[1, 0]);
        assert!((loss[0] + 0.75f32.ln()).abs() < 1e-6);
        assert!((loss[1] - 2f32.ln()).abs() < 1e-6);
        let d = cross_entropy_rows_backward(&logits, 2, &[1, 0], &lse, &[1.0, 2.0]);
        assert!((d[0] - 0.25).abs() < 1e-6 && (d[1] + 0.25).abs() < 1e-6);
        assert!((d[2] + 1.0).abs() < 1e-6 && (d[3] - 1.0).abs() < 1e-6);
    }
}
