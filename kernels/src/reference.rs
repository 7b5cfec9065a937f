//! Plain-tensor reference implementations. They run on every backend and define what the
//! kernels must compute.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::IndexingUpdateOp;

/// Cross-entropy of each row: `logits` [n, vocab], `targets` [n] → loss [n] = −log softmax(logits)[target].
pub fn cross_entropy_per_token<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _vocab] = logits.dims();
    let log_probs = log_softmax(logits, 1); // [n, vocab]
    log_probs
        .gather(1, targets.reshape([n, 1])) // [n, 1]
        .reshape([n])
        .neg()
}

/// (loss [n], logsumexp [n]) of `logits` [n, vocab] against `targets` [n]: loss_t =
/// logsumexp_t − logits[t, target_t].
pub fn cross_entropy_rows<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, _vocab] = logits.dims();
    let max = logits.clone().max_dim(1); // [n, 1]
    let logsumexp = ((logits.clone() - max.clone()).exp().sum_dim(1).log() + max).reshape([n]); // [n]
    let picked = logits.gather(1, targets.reshape([n, 1])).reshape([n]); // [n]
    (logsumexp.clone() - picked, logsumexp)
}

/// d logits [n, vocab] = dloss_t (exp(logits_t − logsumexp_t) − onehot(target_t)): the
/// gradient of Σ_t dloss_t · loss_t.
pub fn cross_entropy_rows_backward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    logsumexp: Tensor<B, 1>,
    dloss: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [n, vocab] = logits.dims();
    let device = logits.device();
    let softmax = (logits - logsumexp.reshape([n, 1])).exp(); // [n, vocab]
    let columns = Tensor::<B, 1, Int>::arange(0..vocab as i64, &device).reshape([1, vocab]);
    let one_hot = columns.equal(targets.reshape([n, 1])).float(); // [n, vocab]
    (softmax - one_hot) * dloss.reshape([n, 1])
}

/// Causal softmax of attention scores [batch, heads, seq, seq]: softmax over the last axis of
/// `scale` · scores with every key after the query (column > row) masked out.
pub fn causal_softmax<B: Backend>(scores: Tensor<B, 4>, scale: f64) -> Tensor<B, 4> {
    let [_, _, seq, _] = scores.dims();
    let device = scores.device();
    // Additive mask: -1e9 above the diagonal. [1, 1, seq, seq]
    let mask = Tensor::<B, 2>::zeros([seq, seq], &device)
        .mask_fill(
            Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &device),
            -1e9,
        )
        .unsqueeze::<4>();
    burn::tensor::activation::softmax(scores * scale + mask, 3)
}

/// d scores [batch, heads, seq, seq] = scale · y ⊙ (dy − Σ_j dy_j y_j), from the softmax's output
/// `y` and output gradient `dy` (masked entries have y = 0, so they get 0).
pub fn causal_softmax_backward<B: Backend>(
    y: Tensor<B, 4>,
    dy: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let dot = (dy.clone() * y.clone()).sum_dim(3); // [batch, heads, seq, 1]
    (dy - dot) * y * scale
}

/// RoPE (GPT-NeoX half-split) of x [batch, heads, seq, head_dim] with cos, sin
/// [seq, head_dim / 2]: (x1, x2) → (x1 cos − x2 sin, x1 sin + x2 cos).
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
    let [_, _, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let (cos, sin) = (cos.unsqueeze::<4>(), sin.unsqueeze::<4>()); // [1, 1, seq, half]
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let rotated2 = x1 * sin + x2 * cos;
    Tensor::cat(vec![rotated1, rotated2], 3)
}

/// RMSNorm of x [rows, d] with gain [d]: x / sqrt(mean(x²) + eps) ⊙ gain (burn's `RmsNorm`).
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, gain: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let rms = (x.clone().square().mean_dim(1) + eps).sqrt(); // [rows, 1]
    (x / rms) * gain.unsqueeze::<2>()
}

/// (dx [rows, d], dgain [d]) of `rms_norm` for output gradient dy [rows, d]: with
/// r = 1 / rms, x̂ = x r and g = dy ⊙ gain, dx = r (g − x̂ mean(g ⊙ x̂)), dgain = Σ_rows dy ⊙ x̂.
pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    gain: Tensor<B, 1>,
    dy: Tensor<B, 2>,
    eps: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let [_, d] = x.dims();
    let r = (x.clone().square().mean_dim(1) + eps).sqrt().recip(); // [rows, 1]
    let x_hat = x * r.clone();
    let g = dy.clone() * gain.unsqueeze::<2>();
    let mean = (g.clone() * x_hat.clone()).sum_dim(1) / d as f64; // [rows, 1]
    let dx = (g - x_hat.clone() * mean) * r;
    let dgain = (dy * x_hat).sum_dim(0).reshape([d]);
    (dx, dgain)
}

/// d x of GELU (erf form) for output gradient dy: dy (Φ(x) + x φ(x)).
pub fn gelu_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dy: Tensor<B, D>,
) -> Tensor<B, D> {
    let cdf = ((x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
    let pdf = (x.clone().square() * -0.5).exp()
        * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    dy * (cdf + x * pdf)
}

/// (d gate, d up) of h = silu(gate) ⊙ up for output gradient dh: with s = σ(gate),
/// d gate = dh ⊙ up ⊙ s (1 + gate (1 − s)) and d up = dh ⊙ gate ⊙ s.
pub fn swiglu_backward<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
    dh: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let s = burn::tensor::activation::sigmoid(gate.clone());
    let silu = gate.clone() * s.clone();
    let dgate = dh.clone() * up * s.clone() * ((s.neg() + 1.0) * gate + 1.0);
    (dgate, dh * silu)
}

/// One AdamW update of a flattened parameter [numel] and its moments (see `host::adamw`):
/// returns (param, m, v).
pub fn adamw<B: Backend>(
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    c: crate::cpu::host::AdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let grad = if c.grad_scale != 1.0 {
        grad * c.grad_scale
    } else {
        grad
    };
    let m = m * c.beta1 + grad.clone() * (1.0 - c.beta1);
    let v = v * c.beta2 + grad.square() * (1.0 - c.beta2);
    let update = (m.clone() / c.bias1) / ((v.clone() / c.bias2).sqrt() + c.eps);
    let param = if c.decay != 1.0 {
        param * c.decay
    } else {
        param
    };
    (param - update * c.lr, m, v)
}

/// out[k] = Σ_{i: seg_i = k} values_i, for `values` [n], `seg` [n] with ids in 0..k.
pub fn segment_sum<B: Backend>(
    values: Tensor<B, 1>,
    seg: Tensor<B, 1, Int>,
    k: usize,
) -> Tensor<B, 1> {
    let [n] = values.dims();
    let device = values.device();
    // One-hot [k, n] from seg, then a mat-vec: fine for the small k of data sources.
    let ids = Tensor::<B, 1, Int>::arange(0..k as i64, &device).reshape([k, 1]); // [k, 1]
    let one_hot = ids.equal(seg.reshape([1, n])).float(); // [k, n]
    one_hot.matmul(values.reshape([n, 1])).reshape([k])
}

/// out[k] = Σ_{t: seg_t = k} w_t ⟨U_t, V_t⟩ for `u`, `v` [n, d], `seg` [n] (ids in 0..k),
/// `w` [n]: per-source sums of weighted row dot products.
pub fn segment_row_dot<B: Backend>(
    u: Tensor<B, 2>,
    v: Tensor<B, 2>,
    seg: Tensor<B, 1, Int>,
    w: Tensor<B, 1>,
    k: usize,
) -> Tensor<B, 1> {
    let [n, _d] = u.dims();
    let rows = (u * v).sum_dim(1).reshape([n]); // [n]
    segment_sum(rows * w, seg, k)
}

/// out[k] = Σ_{t: seg_t = k} w_t ⟨table[rows_t], V_t⟩ for `table` [vocab, d], `rows` [n],
/// `v` [n, d]: the embedding's gather form of `segment_row_dot`.
pub fn segment_gather_row_dot<B: Backend>(
    table: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    v: Tensor<B, 2>,
    seg: Tensor<B, 1, Int>,
    w: Tensor<B, 1>,
    k: usize,
) -> Tensor<B, 1> {
    segment_row_dot(table.select(0, rows), v, seg, w, k) // gathered [n, d]
}

/// G[k] = Σ_{t: seg_t = k} δ_t ⊗ a_t for `delta` [n, out], `a` [n, inp], `seg` [n] → [k, out, inp]:
/// per-source weight gradients of a linear layer y = W a (W [out, inp]).
pub fn segment_accumulate<B: Backend>(
    delta: Tensor<B, 2>,
    a: Tensor<B, 2>,
    seg: Tensor<B, 1, Int>,
    k: usize,
) -> Tensor<B, 3> {
    let [n, _out] = delta.dims();
    let [_, inp] = a.dims();
    let device = delta.device();
    let ids = Tensor::<B, 1, Int>::arange(0..k as i64, &device).reshape([k, 1]); // [k, 1]
    let one_hot = ids.equal(seg.reshape([1, n])).float(); // [k, n]
                                                          // [k, out, n] @ [1, n, inp]: source k's rows of δ, masked, times a.
    let masked = delta.transpose().unsqueeze::<3>() * one_hot.reshape([k, 1, n]); // [k, out, n]
    masked.matmul(a.reshape([1, n, inp]))
}

/// `segment_accumulate` as one product per run of equal `seg` (a source's tokens are
/// contiguous in a step, so a run is at least a sequence): Σ over runs of x[run]ᵀ y[run] into
/// its source's slot, the same multiply-adds as the layer's weight gradient. Reads `seg` on
/// the host.
pub fn segment_accumulate_runs<B: Backend>(
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    seg: Tensor<B, 1, Int>,
    k: usize,
) -> Tensor<B, 3> {
    let [n, p] = x.dims();
    let [_, q] = y.dims();
    let device = x.device();
    let seg: Vec<i64> = seg
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("seg as i64");
    let mut sums: Vec<Option<Tensor<B, 2>>> = vec![None; k];
    let mut start = 0;
    while start < n {
        let s = seg[start];
        let end = start + seg[start..].iter().take_while(|&&v| v == s).count();
        let part = x
            .clone()
            .slice(start..end) // [run, p]
            .transpose()
            .matmul(y.clone().slice(start..end)); // [p, run] @ [run, q] → [p, q]
        let slot = &mut sums[s as usize];
        *slot = Some(match slot.take() {
            Some(acc) => acc + part,
            None => part,
        });
        start = end;
    }
    let sums = sums
        .into_iter()
        .map(|sum| sum.unwrap_or_else(|| Tensor::zeros([p, q], &device)))
        .collect();
    Tensor::stack(sums, 0) // [k, p, q]
}

/// out[k, rows_t] += v_t for every token t with seg_t = k: per-source gradients of an
/// embedding table of `table_rows` rows, `rows` [n], `v` [n, d] → [k, table_rows, d]. One
/// scatter-add into a [k · table_rows, d] buffer at index seg_t · table_rows + rows_t.
pub fn segment_scatter_rows<B: Backend>(
    rows: Tensor<B, 1, Int>,
    v: Tensor<B, 2>,
    seg: Tensor<B, 1, Int>,
    k: usize,
    table_rows: usize,
) -> Tensor<B, 3> {
    let [_, d] = v.dims();
    let index = seg * table_rows as i64 + rows; // [n]
    Tensor::<B, 2>::zeros([k * table_rows, d], &v.device())
        .select_assign(0, index, v, IndexingUpdateOp::Add)
        .reshape([k, table_rows, d])
}

/// (dots [k], gram [k, k]) of a buffer `g` [k, p] and a vector `v` [p]: dots_i = ⟨g_i, v⟩ and
/// gram_ij = ⟨g_i, g_j⟩.
///
/// Elementwise products and sums, not matmul: burn 0.21's wgpu matmul on lavapipe gave a Gram
/// entry of a [3, 1000] buffer 0.6% off (1064.16 against 1058.02 from (g_0 · g_0).sum()), which
/// a reference must not be. Memory k² · p: for checking, not for production.
pub fn multi_dot<B: Backend>(g: Tensor<B, 2>, v: Tensor<B, 1>) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [k, p] = g.dims();
    let dots = (g.clone() * v.reshape([1, p])).sum_dim(1).reshape([k]); // [k]
    let gram = (g.clone().reshape([k, 1, p]) * g.reshape([1, k, p]))
        .sum_dim(2)
        .reshape([k, k]); // [k, k]
    (dots, gram)
}

/// Per-token cross-entropy of `logits` [n, vocab] against `targets` [n], and its per-source
/// sums and token counts for `seg` [n] → (loss [n], sums [k], counts [k]).
pub fn per_source_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    seg: Tensor<B, 1, Int>,
    k: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let [n, _vocab] = logits.dims();
    let device = logits.device();
    let loss = cross_entropy_per_token(logits, targets);
    let sums = segment_sum(loss.clone(), seg.clone(), k);
    let counts = segment_sum(Tensor::ones([n], &device), seg, k);
    (loss, sums, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let device = Default::default();
        // Row 0: logits [0, ln 3] → p = [1/4, 3/4], target 1 → −ln 0.75.
        // Row 1: logits [0, 0] → p = [1/2, 1/2], target 0 → ln 2.
        let logits = Tensor::<B, 2>::from_floats([[0.0, 3f32.ln()], [0.0, 0.0]], &device);
        let targets = Tensor::<B, 1, Int>::from_ints([1, 0], &device);
        let loss: Vec<f32> = cross_entropy_per_token(logits, targets)
            .into_data()
            .to_vec()
            .unwrap();
        assert!((loss[0] - (-(0.75f32).ln())).abs() < 1e-6);
        assert!((loss[1] - 2f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn segment_sum_handles_empty_segments() {
        let device = Default::default();
        let values = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
        let seg = Tensor::<B, 1, Int>::from_ints([2, 0, 2, 0], &device);
        let out: Vec<f32> = segment_sum(values, seg, 4).into_data().to_vec().unwrap();
        assert_eq!(out, vec![6.0, 0.0, 4.0, 0.0]);
    }

    /// Hand computation: rows (1,2)·(3,4) = 11, (0,1)·(5,6) = 6, (2,2)·(1,1) = 4 with weights
    /// 1, 0.5, 2 and sources 1, 0, 1 → out = [3, 11 + 8 = 19, 0].
    #[test]
    fn segment_row_dot_matches_hand_computation() {
        let device = Default::default();
        let u = Tensor::<B, 2>::from_floats([[1.0, 2.0], [0.0, 1.0], [2.0, 2.0]], &device);
        let v = Tensor::<B, 2>::from_floats([[3.0, 4.0], [5.0, 6.0], [1.0, 1.0]], &device);
        let seg = Tensor::<B, 1, Int>::from_ints([1, 0, 1], &device);
        let w = Tensor::<B, 1>::from_floats([1.0, 0.5, 2.0], &device);
        let out: Vec<f32> = segment_row_dot(u, v, seg, w, 3)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(out, vec![3.0, 19.0, 0.0]);
    }

    /// Hand computation: tokens 0 and 2 are source 1, token 1 is source 0, source 2 is empty.
    /// multi_dot: ⟨(1,2,0), (3,1,2)⟩ = 5, ⟨(0,1,1), (3,1,2)⟩ = 3; Gram [[5, 2], [2, 2]].
    #[test]
    fn segment_accumulate_and_multi_dot_match_hand_computation() {
        let device = Default::default();
        let delta = Tensor::<B, 2>::from_floats([[1.0, 2.0], [5.0, 0.0], [0.0, 1.0]], &device);
        let a = Tensor::<B, 2>::from_floats([[1.0, 0.0], [1.0, 1.0], [2.0, 3.0]], &device);
        let seg = Tensor::<B, 1, Int>::from_ints([1, 0, 1], &device);
        let g: Vec<f32> = segment_accumulate(delta, a, seg, 3)
            .into_data()
            .to_vec()
            .unwrap();
        // G[0] = [5, 0]ᵀ[1, 1] = [[5, 5], [0, 0]]; G[1] = [[1, 0], [2, 0]] + [[0, 0], [2, 3]].
        assert_eq!(
            g,
            vec![5.0, 5.0, 0.0, 0.0, 1.0, 0.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0]
        );
        let buffer = Tensor::<B, 2>::from_floats([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]], &device);
        let v = Tensor::<B, 1>::from_floats([3.0, 1.0, 2.0], &device);
        let (dots, gram) = multi_dot(buffer, v);
        assert_eq!(dots.into_data().to_vec::<f32>().unwrap(), vec![5.0, 3.0]);
        assert_eq!(
            gram.into_data().to_vec::<f32>().unwrap(),
            vec![5.0, 2.0, 2.0, 2.0]
        );
    }
}
