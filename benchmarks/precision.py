"""How much float32 rounding contributes to the Adult gold standard.

Runs the same small gold standard in float32 and float64 and prints, per checkpoint, the
root-mean-square float32 error relative to the adjusted differences, and the cosine of the
centred difference vectors per (seed, test instance).

    .venv/bin/python benchmarks/precision.py [--seeds 2] [--out /tmp/fimo-precision]
"""

from __future__ import annotations

import argparse

import numpy as np

from fimo.experiments.config import load_config, with_overrides
from fimo.experiments.pipeline import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="/tmp/fimo-precision")
    args = parser.parse_args()
    base = load_config("adult")
    gold = {}
    for dtype in ("float32", "float64"):
        config = with_overrides(base, seeds=args.seeds, dtype=dtype)
        result = run(config, f"{args.out}/{dtype}", quiet=True)
        gold[dtype] = result.gold
        print(f"{dtype}: further training {result.timings.get('further_training', 0):.1f} s")
    a, b = gold["float32"], gold["float64"]
    for c, epoch in enumerate(a.epochs):
        d32, d64 = a.adjusted()[:, c], b.adjusted()[:, c]
        rel = np.sqrt(((d32 - d64) ** 2).mean() / (d64**2).mean())
        x, y = a.centred()[:, c], b.centred()[:, c]
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        print(
            f"epoch {epoch:g}: float32 error {100 * rel:.1f}% of the rms adjusted difference; "
            f"centred cosine float32 vs float64 mean {np.nanmean(cos):.4f}, min {np.nanmin(cos):.4f}"
        )


if __name__ == "__main__":
    main()
