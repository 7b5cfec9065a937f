//! Gradient-boosted regression trees (squared loss), small and deterministic: the regressor of
//! TiKMiX-M and of DeMix's mixture search, where the data are tens to hundreds of mixtures of a
//! handful of sources. Exact greedy splits over sorted feature values; no sampling, so the same
//! data give the same model.
//!
//! Written here rather than taken from a crate: the maintained Rust GBDT crates are built for
//! large tabular data (binning, threads, file formats), add build time, and are not bit-for-bit
//! deterministic across thread counts; what we need fits in this file.

/// Boosting hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GbtParams {
    pub(crate) trees: usize,
    pub(crate) max_depth: usize,
    /// Shrinkage applied to each tree's output.
    pub(crate) learning_rate: f64,
    /// Fewest training rows in a leaf.
    pub(crate) min_leaf: usize,
}

impl Default for GbtParams {
    fn default() -> Self {
        GbtParams {
            trees: 100,
            max_depth: 3,
            learning_rate: 0.1,
            min_leaf: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf(f64),
    /// Rows with x[feature] <= threshold go left.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Tree {
    /// nodes[0] is the root.
    nodes: Vec<Node>,
}

impl Tree {
    fn predict(&self, x: &[f64]) -> f64 {
        let mut at = 0;
        loop {
            match self.nodes[at] {
                Node::Leaf(value) => return value,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => at = if x[feature] <= threshold { left } else { right },
            }
        }
    }
}

/// A fitted ensemble: prediction = base + learning_rate · Σ trees.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gbt {
    base: f64,
    learning_rate: f64,
    trees: Vec<Tree>,
}

impl Gbt {
    /// Fits rows `x` (each of the same length) to targets `y`. Empty data give the zero model.
    pub(crate) fn fit(x: &[Vec<f64>], y: &[f64], params: GbtParams) -> Gbt {
        assert_eq!(x.len(), y.len(), "one target per row");
        let n = y.len();
        let base = if n == 0 {
            0.0
        } else {
            y.iter().sum::<f64>() / n as f64
        };
        let mut model = Gbt {
            base,
            learning_rate: params.learning_rate,
            trees: Vec::new(),
        };
        if n == 0 {
            return model;
        }
        let mut prediction = vec![base; n];
        let mut residual = vec![0.0; n];
        for _ in 0..params.trees {
            for i in 0..n {
                residual[i] = y[i] - prediction[i];
            }
            let mut nodes = Vec::new();
            let rows: Vec<usize> = (0..n).collect();
            grow(x, &residual, rows, 0, params, &mut nodes);
            let tree = Tree { nodes };
            if matches!(tree.nodes[..], [Node::Leaf(v)] if v.abs() < 1e-300) {
                // Nothing left to explain.
                break;
            }
            for i in 0..n {
                prediction[i] += params.learning_rate * tree.predict(&x[i]);
            }
            model.trees.push(tree);
        }
        model
    }

    pub(crate) fn predict(&self, x: &[f64]) -> f64 {
        self.base + self.learning_rate * self.trees.iter().map(|t| t.predict(x)).sum::<f64>()
    }
}

/// Grows the subtree over `rows` into `nodes`; returns its index.
fn grow(
    x: &[Vec<f64>],
    residual: &[f64],
    rows: Vec<usize>,
    depth: usize,
    params: GbtParams,
    nodes: &mut Vec<Node>,
) -> usize {
    let mean = rows.iter().map(|&i| residual[i]).sum::<f64>() / rows.len() as f64;
    let at = nodes.len();
    nodes.push(Node::Leaf(mean));
    if depth >= params.max_depth || rows.len() < 2 * params.min_leaf.max(1) {
        return at;
    }
    let Some((feature, threshold)) = best_split(x, residual, &rows, params.min_leaf.max(1)) else {
        return at;
    };
    let (left_rows, right_rows): (Vec<usize>, Vec<usize>) =
        rows.iter().partition(|&&i| x[i][feature] <= threshold);
    let left = grow(x, residual, left_rows, depth + 1, params, nodes);
    let right = grow(x, residual, right_rows, depth + 1, params, nodes);
    nodes[at] = Node::Split {
        feature,
        threshold,
        left,
        right,
    };
    at
}

/// The (feature, threshold) with the largest drop in squared error, each side keeping at
/// least `min_leaf` rows; None when no split lowers the error.
// `feature` indexes the columns of rows of `x`, not `x` itself.
#[allow(clippy::needless_range_loop)]
fn best_split(
    x: &[Vec<f64>],
    residual: &[f64],
    rows: &[usize],
    min_leaf: usize,
) -> Option<(usize, f64)> {
    let n = rows.len();
    let total: f64 = rows.iter().map(|&i| residual[i]).sum();
    // Minimising SSE = maximising Σ_side (sum_side² / n_side).
    let parent_score = total * total / n as f64;
    let mut best: Option<(f64, usize, f64)> = None;
    let features = x[rows[0]].len();
    let mut order = rows.to_vec();
    for feature in 0..features {
        order.sort_by(|&a, &b| x[a][feature].total_cmp(&x[b][feature]).then(a.cmp(&b)));
        let mut left_sum = 0.0;
        for split in 1..n {
            left_sum += residual[order[split - 1]];
            let (lo, hi) = (x[order[split - 1]][feature], x[order[split]][feature]);
            if split < min_leaf || n - split < min_leaf || lo == hi {
                continue;
            }
            let right_sum = total - left_sum;
            let score =
                left_sum * left_sum / split as f64 + right_sum * right_sum / (n - split) as f64;
            // Ties keep the first (lowest feature, lowest threshold): deterministic.
            if score > parent_score * (1.0 + 1e-12) + 1e-300
                && best.is_none_or(|(s, _, _)| score > s * (1.0 + 1e-12))
            {
                best = Some((score, feature, 0.5 * (lo + hi)));
            }
        }
    }
    best.map(|(_, feature, threshold)| (feature, threshold))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn constant_targets_give_a_constant_model() {
        let x: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64]).collect();
        let model = Gbt::fit(&x, &[2.5; 10], GbtParams::default());
        assert!(model.trees.is_empty());
        assert_eq!(model.predict(&[100.0]), 2.5);
        assert_eq!(
            Gbt::fit(&[], &[], GbtParams::default()).predict(&[1.0]),
            0.0
        );
    }

    /// One stump on a step: the first tree splits at the midpoint 0.45 with leaf residuals
    /// ∓0.5 (mean 0.5), so after t trees the prediction is 0.5 ± 0.5 (1 − (1 − lr)^t).
    #[test]
    fn a_stump_learns_a_step_at_the_geometric_rate() {
        let x: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64 / 10.0]).collect();
        let y: Vec<f64> = x.iter().map(|r| f64::from(r[0] > 0.45)).collect();
        let params = GbtParams {
            trees: 20,
            max_depth: 1,
            learning_rate: 0.3,
            min_leaf: 1,
        };
        let model = Gbt::fit(&x, &y, params);
        assert_eq!(
            model.trees[0].nodes[0],
            Node::Split {
                feature: 0,
                threshold: 0.45,
                left: 1,
                right: 2
            }
        );
        let reached = 0.5 * (1.0 - 0.7f64.powi(20));
        assert!((model.predict(&[0.9]) - (0.5 + reached)).abs() < 1e-12);
        assert!((model.predict(&[0.1]) - (0.5 - reached)).abs() < 1e-12);
    }

    #[test]
    fn fits_a_smooth_function_of_two_features_out_of_sample() {
        let mut rng = Rng::new(7, 0);
        let f = |r: &[f64]| (r[0] - 0.3).powi(2) * 4.0 + 0.5 * r[1];
        let draw = |rng: &mut Rng, n: usize| -> Vec<Vec<f64>> {
            (0..n)
                .map(|_| vec![rng.next_f64(), rng.next_f64(), rng.next_f64()])
                .collect()
        };
        let train = draw(&mut rng, 300);
        let y: Vec<f64> = train.iter().map(|r| f(r)).collect();
        let model = Gbt::fit(&train, &y, GbtParams::default());
        let test = draw(&mut rng, 200);
        let truth: Vec<f64> = test.iter().map(|r| f(r)).collect();
        let mean = truth.iter().sum::<f64>() / truth.len() as f64;
        let variance = truth.iter().map(|t| (t - mean).powi(2)).sum::<f64>();
        let error: f64 = test
            .iter()
            .zip(&truth)
            .map(|(r, t)| (model.predict(r) - t).powi(2))
            .sum();
        assert!(
            error < 0.05 * variance,
            "out-of-sample R² = {}",
            1.0 - error / variance
        );
        // The third feature is irrelevant: while the signal is large, no tree's root uses it.
        assert!(model.trees[..20]
            .iter()
            .all(|t| !matches!(t.nodes[0], Node::Split { feature: 2, .. })));
    }

    #[test]
    fn leaves_keep_min_leaf_rows_and_fitting_is_deterministic() {
        let mut rng = Rng::new(3, 0);
        let x: Vec<Vec<f64>> = (0..40)
            .map(|_| vec![rng.next_f64(), rng.next_f64()])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| (r[0] * 9.0).sin() + r[1]).collect();
        let params = GbtParams {
            min_leaf: 5,
            ..GbtParams::default()
        };
        let model = Gbt::fit(&x, &y, params);
        assert_eq!(model, Gbt::fit(&x, &y, params));
        for tree in &model.trees {
            let mut rows_per_leaf = vec![0usize; tree.nodes.len()];
            for row in &x {
                let mut at = 0;
                while let Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } = tree.nodes[at]
                {
                    at = if row[feature] <= threshold {
                        left
                    } else {
                        right
                    };
                }
                rows_per_leaf[at] += 1;
            }
            for (node, rows) in tree.nodes.iter().zip(rows_per_leaf) {
                if matches!(node, Node::Leaf(_)) {
                    assert!(rows >= 5, "a leaf with {rows} rows");
                }
            }
        }
    }
}
