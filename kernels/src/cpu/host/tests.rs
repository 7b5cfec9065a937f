//! The host loops against hand computations, finite differences and libm.

use super::*;

/// Lengths around the 8 partial sums and the parallel blocks: the same value as one f64
/// running sum, to f32 rounding.
#[test]
fn dot_matches_a_running_sum() {
    for n in [
        0,
        1,
        7,
        8,
        9,
        1000,
        FLAT_BLOCK - 3,
        FLAT_BLOCK + 5,
        3 * FLAT_BLOCK + 17,
    ] {
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.021)
            .collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let got = dot(&a, &b) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "n {n}: {got} vs {want}"
        );
    }
}

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
fn rope_rotates_each_pair_and_minus_sin_undoes_it() {
    let (seq, head_dim) = (3, 4);
    let angles: Vec<f32> = (0..seq * 2).map(|i| 0.3 * i as f32).collect();
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let x: Vec<f32> = (0..2 * seq * head_dim).map(|i| i as f32 - 7.0).collect();
    let y = rope(&x, seq, head_dim, &cos, &sin);
    // Row 4 is position 1; its first pair is (x[16], x[18]) rotated by angle[2].
    let (a, b, t) = (x[16], x[18], angles[2]);
    assert!((y[16] - (a * t.cos() - b * t.sin())).abs() < 1e-5);
    assert!((y[18] - (a * t.sin() + b * t.cos())).abs() < 1e-5);
    let minus_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
    let back = rope(&y, seq, head_dim, &cos, &minus_sin);
    for (a, b) in back.iter().zip(&x) {
        assert!((a - b).abs() < 1e-4);
    }
}

/// Central differences of Σ dy ⊙ f(inputs) against the analytic gradient.
fn check_gradient(
    inputs: &[f32],
    analytic: &[f32],
    objective: impl Fn(&[f32]) -> f64,
    tolerance: f64,
) {
    for j in 0..inputs.len() {
        let (mut plus, mut minus) = (inputs.to_vec(), inputs.to_vec());
        plus[j] += 1e-2;
        minus[j] -= 1e-2;
        let numeric = (objective(&plus) - objective(&minus)) / 2e-2;
        let got = analytic[j] as f64;
        assert!((numeric - got).abs() < tolerance, "{j}: {numeric} vs {got}");
    }
}

fn weighted(values: &[f32], dy: &[f32]) -> f64 {
    values
        .iter()
        .zip(dy)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

#[test]
fn rms_norm_gradients_match_finite_differences() {
    let d = 5;
    let x: Vec<f32> = (0..3 * d)
        .map(|i| ((i * 7 % 9) as f32 - 4.0) * 0.4)
        .collect();
    let gain: Vec<f32> = (0..d).map(|i| 0.5 + 0.3 * i as f32).collect();
    let dy: Vec<f32> = (0..3 * d)
        .map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.5)
        .collect();
    let (y, r) = rms_norm(&x, &gain, 1e-5);
    // Row 0 by hand.
    let ms = x[..d].iter().map(|v| v * v).sum::<f32>() / d as f32;
    assert!((y[1] - x[1] / (ms + 1e-5).sqrt() * gain[1]).abs() < 1e-6);
    let (dx, dgain) = rms_norm_backward(&x, &gain, &r, &dy);
    check_gradient(
        &x,
        &dx,
        |x| weighted(&rms_norm(x, &gain, 1e-5).0, &dy),
        2e-3,
    );
    check_gradient(
        &gain,
        &dgain,
        |g| weighted(&rms_norm(&x, g, 1e-5).0, &dy),
        2e-3,
    );
}

#[test]
fn fast_exp_is_within_one_ulp() {
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
    // Every 997th f32 bit pattern from −104 to 89 (2,246,630 values, both signs).
    let (lowest, highest) = ((-104.0f32).to_bits(), 89.0f32.to_bits());
    let mut worst = 0;
    let mut checked = 0usize;
    for bits in (0..highest)
        .step_by(997)
        .chain((1u32 << 31..lowest).step_by(997))
    {
        let x = f32::from_bits(bits);
        let want = (x as f64).exp() as f32;
        if want.is_normal() {
            worst = worst.max(ulps(fast_exp(x), want));
            checked += 1;
        }
    }
    assert!(
        checked > 2_000_000,
        "only {checked} normal results compared"
    );
    assert!(worst <= 1, "{worst} ulps");
    assert_eq!(fast_exp(0.0), 1.0);
    assert_eq!(fast_exp(-200.0), 0.0);
    assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(fast_exp(89.0), f32::INFINITY);
    assert!(fast_exp(f32::NAN).is_nan());
}

#[test]
fn erf_is_within_its_bound_of_libm() {
    for i in -4000..=4000 {
        let x = i as f32 * 1e-3;
        assert!(
            (erf(x) - libm::erff(x)).abs() < 1e-6,
            "{x}: {} vs {}",
            erf(x),
            libm::erff(x)
        );
    }
}

#[test]
fn gelu_matches_its_definition_and_gradient() {
    let x: Vec<f32> = (0..41).map(|i| (i as f32 - 20.0) * 0.2).collect();
    let y = gelu(&x);
    // Φ(1) = 0.841344746
    assert!((y[25] - 0.841_344_7).abs() < 1e-6, "{}", y[25]);
    assert_eq!(y[20], 0.0);
    let dy: Vec<f32> = (0..41).map(|i| 1.0 + (i % 3) as f32).collect();
    check_gradient(
        &x,
        &gelu_backward(&x, &dy),
        |x| weighted(&gelu(x), &dy),
        2e-3,
    );
}

#[test]
fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
    let mut param = vec![1.0f32, -2.0, 0.5];
    let grad = [0.3f32, -0.1, 2.0];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let c = AdamWStep {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        lr: 0.01,
        bias1: 0.1,
        bias2: 0.05,
        decay: 1.0 - 0.01 * 0.1,
        grad_scale: 0.5,
    };
    adamw(&mut param, &grad, &mut m, &mut v, c);
    // Step 1: m̂ = g, v̂ = g², so the update is sign(g) (up to eps).
    let decay = c.decay as f32;
    let want = [decay - 0.01, -2.0 * decay + 0.01, 0.5 * decay - 0.01];
    for (p, w) in param.iter().zip(want) {
        assert!((p - w).abs() < 1e-6, "{param:?}");
    }
    assert!((m[2] - 0.1).abs() < 1e-7 && (v[2] - 0.05).abs() < 1e-7);
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
