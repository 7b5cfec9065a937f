"""Golden numbers of the mixers' unit tests, computed in plain Python from the update rules in
docs/design.md, independently of the Rust code. The Rust tests (src/mixer/*.rs) read
tests/golden/mixers.json; this script is where those numbers come from.

    python3 tests/golden/mixers.py           # check: recompute and compare with mixers.json
    python3 tests/golden/mixers.py --write   # rewrite mixers.json

.ci/run runs the check, so a number in mixers.json that this script no longer prints fails CI.
"""
import json
import math
import os
import sys

from ado import weights_after_six_updates

HERE = os.path.dirname(os.path.abspath(__file__))
JSON = os.path.join(HERE, "mixers.json")


def softmax(z):
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def floor(p, eps):
    """p <- (1 - K eps) p + eps."""
    return [(1 - len(p) * eps) * x + eps for x in p]


def fastmix():
    """One update from uniform logits: s = (2, 0, -1), model lr 0.01, mixer lr 0.1 (Adam step
    1, betas (0.9, 0.95), eps 1e-8), floor 0.05."""
    s, lr_model, lr_mix = [2.0, 0.0, -1.0], 0.01, 0.1
    p = softmax([0.0, 0.0, 0.0])
    h = [-lr_model * x for x in s]
    mean_h = sum(a * b for a, b in zip(p, h))
    g = [a * (b - mean_h) for a, b in zip(p, h)]
    # Adam's first step: m_hat = g, v_hat = g^2.
    z = [-lr_mix * x / (math.sqrt(x * x) + 1e-8) for x in g]
    return floor(softmax(z), 0.05)


def tikmix():
    """I = (3, 1, -1) normalised by its population std, tau 0.5, blend 0.5, floor 0.05."""
    influence, tau, blend = [3.0, 1.0, -1.0], 0.5, 0.5
    mean = sum(influence) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in influence) / 3)
    p_new = softmax([x / std / tau for x in influence])
    base = [(1 - blend) / 3 + blend * x for x in p_new]
    return floor(base, 0.05)


def odm():
    """K = 4 after 9 updates: R = (1, 0, 0, 0), p = 1/4, mean losses (2, 1, 1, 1), a = 0.9."""
    k, a = 4, 0.9
    rewards, p, losses = [1.0, 0.0, 0.0, 0.0], [0.25] * 4, [2.0, 1.0, 1.0, 1.0]
    rewards = [a * r + (1 - a) * l / q for r, l, q in zip(rewards, losses, p)]

    def eps(t):
        return min(1 / k, math.sqrt(math.log(k) / (k * t)))

    soft = softmax([eps(9) * r for r in rewards])
    return [(1 - k * eps(10)) * x + eps(10) for x in soft]


def doremi():
    """alpha = (0.5, 0.3, 0.2), excess lambda = (0.1, 0.4, 0), eta = 1, smoothing c = 1e-3."""
    alpha, lam, c = [0.5, 0.3, 0.2], [0.1, 0.4, 0.0], 1e-3
    new = softmax([math.log(a) + l for a, l in zip(alpha, lam)])
    return [(1 - c) * x + c / 3 for x in new]


def stump_predict(xs, zs, pool):
    """A depth-1 regression tree fitted by brute force over every split (each feature, each
    midpoint between sorted distinct values) by squared error; its predictions on `pool`."""
    best = None
    for f in range(len(xs[0])):
        values = sorted(set(x[f] for x in xs))
        for lo, hi in zip(values, values[1:]):
            t = (lo + hi) / 2
            left = [z for x, z in zip(xs, zs) if x[f] <= t]
            right = [z for x, z in zip(xs, zs) if x[f] > t]
            ml, mr = sum(left) / len(left), sum(right) / len(right)
            sse = sum((z - ml) ** 2 for z in left) + sum((z - mr) ** 2 for z in right)
            if best is None or sse < best[0] - 1e-15:
                best = (sse, f, t, ml, mr)
    _, f, t, ml, mr = best
    return [ml if w[f] <= t else mr for w in pool]


def tikmix_m():
    """One tree (depth 1, learning rate 1, base mean(z) = 0) on the standardised one-step
    drops of four measured mixtures; the mean of the two candidates predicted best (lowest),
    for a pool in two orders."""
    xs = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.8, 0.2]]
    d = [-3.0, -1.0, -2.0, -2.6]
    mean = sum(d) / len(d)
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / len(d))
    zs = [(x - mean) / std for x in d]
    chosen = []
    for pool in ([[0.9, 0.1], [0.3, 0.7], [0.1, 0.9]], [[0.1, 0.9], [0.9, 0.1], [0.3, 0.7]]):
        pred = stump_predict(xs, zs, pool)
        top = sorted(range(len(pool)), key=lambda i: (pred[i], i))[:2]
        chosen.append([sum(pool[i][j] for i in top) / 2 for j in range(2)])
    return chosen


def golden():
    return {
        "fastmix_one_update": fastmix(),
        "tikmix_one_update": tikmix(),
        "odm_one_update": odm(),
        "doremi_one_update": doremi(),
        "tikmix_m_choice_by_pool_order": tikmix_m(),
        "ado_after_six_updates": weights_after_six_updates(),
    }


def flat(v):
    return [x for row in v for x in flat(row)] if isinstance(v, list) else [v]


def main():
    numbers = golden()
    if sys.argv[1:] == ["--write"]:
        with open(JSON, "w") as f:
            json.dump(numbers, f, indent=2)
            f.write("\n")
        print(f"wrote {JSON}")
        return
    with open(JSON) as f:
        held = json.load(f)
    bad = [
        name
        for name in sorted(set(numbers) | set(held))
        if name not in numbers
        or name not in held
        or len(flat(numbers[name])) != len(flat(held[name]))
        or any(abs(a - b) > 1e-15 for a, b in zip(flat(numbers[name]), flat(held[name])))
    ]
    for name in bad:
        print(f"{name}: script {numbers.get(name)} vs mixers.json {held.get(name)}")
    if bad:
        sys.exit(1)
    print(f"{len(numbers)} golden cases match tests/golden/mixers.json")


main()
