use super::*;

fn stats(deltas: Vec<f64>) -> SourceStats {
    SourceStats {
        step: 0,
        lr: 1e-3,
        train_loss: vec![None; 3],
        grad_dot_val: None,
        influence: None,
        excess_loss: None,
        candidate_delta: Some(deltas),
        tokens_seen: Vec::new(),
        target_loss: None,
    }
}

/// Golden numbers (tests/golden/mixers.py, `tikmix_m_choice_by_pool_order`: brute force
/// over every split of a depth-1 tree):
///     X = [[1,0],[0,1],[.5,.5],[.8,.2]]; d = [-3,-1,-2,-2.6]; z = (d - d.mean()) / d.std()
///     d.std() = 0.7533259586659682, z = [-1.1283, 1.5266, 0.1991, -0.5974]
///     SSE by split: w0 <= .25: 0.8928 (best; w1 > .75 is the same partition), w0 <= .65:
///     1.0220, w0 <= .9: 2.3025; leaves 1.5265636 (w0 <= .25) and -0.5088545.
/// One tree at learning rate 1 on base mean(z) = 0 predicts the pool (.9,.1), (.3,.7),
/// (.1,.9) as (-0.5089, -0.5089, 1.5266): top-2 = the first two, mean (0.6, 0.4).
#[test]
fn regression_and_choice_match_hand_computation() {
    let history = vec![vec![
        (vec![1.0, 0.0], -3.0),
        (vec![0.0, 1.0], -1.0),
        (vec![0.5, 0.5], -2.0),
        (vec![0.8, 0.2], -2.6),
    ]];
    let pool = vec![vec![0.9, 0.1], vec![0.3, 0.7], vec![0.1, 0.9]];
    let params = GbtParams {
        trees: 1,
        max_depth: 1,
        learning_rate: 1.0,
        min_leaf: 1,
    };
    let golden: Vec<Vec<f64>> =
        serde_json::from_value(crate::mixer::golden("tikmix_m_choice_by_pool_order")).unwrap();
    let chosen = regress_and_choose(&history, &pool, params, 2);
    assert!((chosen[0] - golden[0][0]).abs() < 1e-12 && (chosen[1] - golden[0][1]).abs() < 1e-12);
    // With (.1, .9) first in the pool, it falls in the w0 <= 0.25 leaf (worse) and is
    // never among the top 2.
    let pool = vec![vec![0.1, 0.9], vec![0.9, 0.1], vec![0.3, 0.7]];
    let chosen = regress_and_choose(&history, &pool, params, 2);
    assert!((chosen[0] - golden[1][0]).abs() < 1e-12 && (chosen[1] - golden[1][1]).abs() < 1e-12);
}

/// ΔL(w) = |w − w*|² with w* = (.6, .3, .1): the mixture moves toward w*.
fn run_on_quadratic(seed: u64, updates: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let best = [0.6, 0.3, 0.1];
    let mut mixer = TikMixM::new(TikMixMConfig::default(), &[1.0 / 3.0; 3], 0.02, seed);
    let mut trajectory = Vec::new();
    for _ in 0..updates {
        let deltas = mixer
            .candidates()
            .iter()
            .map(|w| w.iter().zip(best).map(|(a, b)| (a - b).powi(2)).sum())
            .collect();
        let update = mixer.update(&stats(deltas)).expect("an update");
        assert!((update.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(update.weights.iter().all(|&w| w >= 0.02 - 1e-12));
        assert_eq!(update.signal.as_ref().unwrap().1.len(), 3);
        trajectory.push(update.weights);
    }
    (trajectory, best.to_vec())
}

#[test]
fn finds_the_best_mixture_of_a_known_quadratic() {
    let (trajectory, best) = run_on_quadratic(1, 12);
    let last = trajectory.last().unwrap();
    let distance = |w: &[f64]| -> f64 {
        w.iter()
            .zip(&best)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let start = distance(&[1.0 / 3.0; 3]);
    assert!(
        distance(last) < 0.35 * start,
        "{last:?} is {} from w*, start {start}",
        distance(last)
    );
}

#[test]
fn deterministic_under_a_seed_and_the_history_is_bounded() {
    assert_eq!(run_on_quadratic(4, 10).0, run_on_quadratic(4, 10).0);
    assert_ne!(run_on_quadratic(4, 10).0, run_on_quadratic(5, 10).0);
    let mut mixer = TikMixM::new(TikMixMConfig::default(), &[0.5, 0.3, 0.2], 0.02, 0);
    for _ in 0..12 {
        let n = mixer.candidates().len();
        assert_eq!(n, 3 + TikMixMConfig::default().candidates);
        let deltas = (0..n).map(|i| (i % 5) as f64).collect();
        mixer.update(&stats(deltas)).unwrap();
    }
    assert_eq!(mixer.state.history.len(), TikMixMConfig::default().history);
}

#[test]
fn restored_state_continues_identically() {
    let mut a = TikMixM::new(TikMixMConfig::default(), &[1.0 / 3.0; 3], 0.02, 9);
    let deltas = |w: &[Vec<f64>]| w.iter().map(|w| w[0] - 2.0 * w[2] * w[1]).collect();
    let c = a.candidates();
    a.update(&stats(deltas(&c))).unwrap();
    let saved = serde_json::to_string(&a.state()).unwrap();
    let mut b = TikMixM::new(TikMixMConfig::default(), &[1.0 / 3.0; 3], 0.02, 0);
    b.restore(&serde_json::from_str(&saved).unwrap()).unwrap();
    let (ca, cb) = (a.candidates(), b.candidates());
    assert_eq!(ca, cb);
    assert_eq!(a.update(&stats(deltas(&ca))), b.update(&stats(deltas(&cb))));
    assert!(b.restore(&serde_json::json!({"base": [1.0]})).is_err());
}

/// The virtual step starts where its G_k were taken unless told otherwise: the probed step's
/// parameters with probed G_k, the updated ones with extra passes.
#[test]
fn virtual_step_starts_where_the_gradients_were_taken() {
    let mut config = TikMixMConfig::default();
    assert_eq!(config.virtual_step_from(), VirtualFrom::Probed);
    config.gradients = InfluenceFrom::ExtraPasses;
    assert_eq!(config.virtual_step_from(), VirtualFrom::Updated);
    config.validate().unwrap();
    config.virtual_from = Some(VirtualFrom::Probed);
    assert!(config.validate().is_err());
    config.gradients = InfluenceFrom::Probe;
    config.virtual_from = Some(VirtualFrom::Updated);
    assert_eq!(config.virtual_step_from(), VirtualFrom::Updated);
}
