#!/usr/bin/env python3
"""Ranks the training sources of finished runs by their mean standardised mixer signal.

For each run directory given: at every mixer update logged in metrics.jsonl that carries a
per-source signal `s` (fastmix's <g_val, g_k>), the signal is standardised across the sources
measured at that update (z = (s - mean) / sd), and z is averaged per source over the updates
from step FROM on (default 0). Prints one line per run, sources from the highest mean to the
lowest. Used in docs/results/mixing.md ("Which sources help, measured").

    python3 benches/signal_ranking.py [--from STEP] RUN_DIR...
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def updates(run: Path):
    """(step, {source: signal or None}) for every logged update with a signal."""
    with open(run / "metrics.jsonl") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            signal = row.get("mixer", {}).get("s")
            if signal:
                yield row["step"], signal


def mean_standardised(run: Path, start: int) -> dict:
    sums, counts = {}, {}
    for step, signal in updates(run):
        if step < start:
            continue
        measured = {k: v for k, v in signal.items() if v is not None}
        if len(measured) < 2:
            continue
        mean = statistics.mean(measured.values())
        sd = statistics.pstdev(measured.values()) or 1.0
        for k, v in measured.items():
            sums[k] = sums.get(k, 0.0) + (v - mean) / sd
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", type=int, default=0)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            print(f"{run}: no metrics.jsonl", file=sys.stderr)
            return 1
        means = mean_standardised(run, args.start)
        ranked = sorted(means, key=lambda k: -means[k])
        print(run, " ".join(f"{k}{means[k]:+.2f}" for k in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
