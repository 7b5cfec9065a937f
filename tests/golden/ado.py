"""ADO's golden numbers (src/mixer/ado.rs `updates_match_the_python_reference`): the ADO
update (power-law fit on an epsilon grid, credit, preference, smoothing, floor) in plain
Python. Imported by tests/golden/mixers.py, which writes and checks tests/golden/mixers.json.
"""
import math

EPS_GRID = 32


def fit(points):
    xs = [math.log(n) for n, _ in points]
    count = len(points)
    x_mean = sum(xs) / count
    sxx = sum((x - x_mean) ** 2 for x in xs)
    if count < 2 or sxx <= 0:
        return None
    min_loss = min(l for _, l in points)
    best = None
    for j in range(EPS_GRID):
        eps = min_loss * j / EPS_GRID
        ys = [math.log(l - eps) for _, l in points]
        y_mean = sum(ys) / count
        sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
        slope = sxy / sxx
        alpha = max(-slope, 0.0)
        if slope > 0:
            beta = sum(l - eps for _, l in points) / count
        else:
            beta = math.exp(y_mean - slope * x_mean)
        sse = sum((l - (eps + beta * n ** -alpha)) ** 2 for n, l in points)
        if best is None or sse < best[0]:
            best = (sse, eps, beta, alpha)
    return best[1:]


def rate(law, n):
    eps, beta, alpha = law
    return alpha * (beta * n ** -alpha) / n


def weights_after_six_updates():
    k = 4
    gamma1, s, gamma2, min_points, floor = 0.9, 0.5, 0.9, 4, 0.05
    prior = [0.25] * k
    credit, smoothed, weights = prior[:], prior[:], prior[:]
    history = [[] for _ in range(k)]
    tokens = [0] * k
    for update in range(1, 7):
        for i in range(k):
            tokens[i] += 1000 * (i + 1)
        t = update * 1000.0
        losses = [2.0 + 30.0 * t ** -0.6, 2.5 + 5.0 * t ** -0.3, 3.0, 1.0 + 10.0 * t ** -0.4]
        for i in range(k):
            history[i].append((float(tokens[i]), losses[i]))
        credit = [gamma1 * h + (1 - gamma1) * p for h, p in zip(credit, weights)]
        if any(len(h) < min_points for h in history):
            continue
        rates = []
        for h in history:
            law = fit(h)
            rates.append(0.0 if law is None else rate(law, h[-1][0]))
        pref = [mu * c ** s * r for mu, c, r in zip(prior, credit, rates)]
        total = sum(pref)
        rho = [p / total for p in pref]
        smoothed = [gamma2 * a + (1 - gamma2) * b for a, b in zip(smoothed, rho)]
        total = sum(smoothed)
        weights = [(1 - k * floor) * (x / total) + floor for x in smoothed]
    return weights
