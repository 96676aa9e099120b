"""At which checkpoints does one method agree better than others (issue 13's check)?

Reads a finished run's ``metrics/by_checkpoint.csv`` (centred agreement, mean over test
instances) and, for cosine and Spearman, counts the checkpoints where ``--method`` is above
every method of ``--over``, with the smallest and the mean margin over the best of them, and
lists the checkpoints where it is not:

    python benchmarks/beats.py runs/diabetes
    python benchmarks/beats.py runs/concrete --method unrolled_quadratic --over grad_dot,cg
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def by_step(run: Path, metric: str) -> dict[str, dict[int, float]]:
    """{method: {step: centred mean agreement}} for one metric of a run."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with open(run / "metrics" / "by_checkpoint.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["centred"] == "true" and row["metric"] == metric:
                out[row["method"]][int(row["step"])] = float(row["mean"])
    return out


def margins(table: dict[str, dict[int, float]], method: str, over: list[str]) -> dict[int, float]:
    """{step: method's agreement minus the best of ``over``} at the steps all of them have.

    >>> margins({"a": {1: .5, 2: .4}, "b": {1: .3, 2: .6}, "c": {1: .1}}, "a", ["b", "c"])
    {1: 0.2}
    """
    steps = set(table[method]).intersection(*(table[m] for m in over))
    return {s: table[method][s] - max(table[m][s] for m in over) for s in sorted(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--method", default="unrolled_quadratic")
    parser.add_argument("--over", default="grad_dot,cg", help="comma-separated methods")
    args = parser.parse_args()
    for metric in ("cosine", "spearman"):
        table = by_step(args.run, metric)
        over = [m for m in args.over.split(",") if m in table]
        if args.method not in table or not over:
            print(f"{metric}: {args.run} has no {args.method} or none of {args.over}")
            continue
        gap = margins(table, args.method, over)
        wins = sum(v > 0 for v in gap.values())
        print(
            f"{metric}: {args.method} above {', '.join(over)} at {wins} of {len(gap)} "
            f"checkpoints; margin over the best: min {min(gap.values()):.3f}, "
            f"mean {sum(gap.values()) / len(gap):.3f}"
        )
        for step, v in gap.items():
            if v <= 0:
                cells = ", ".join(f"{m} {table[m][step]:.3f}" for m in [args.method, *over])
                print(f"  step {step}: {cells}")


if __name__ == "__main__":
    main()
