"""The influence methods' last step with and without layer factors, on a wide MLP.

Every influence-type method ends with ``score_matrix``: a dense (k, P) test side, already
preconditioned, times the n per-instance training gradients. For an MLP fimo multiplies
it from each Linear layer's factors (``ghost="auto"``) instead of forming the n × P
gradients (``ghost="never"``). This script times both, in one process and interleaved, on a
random MLP ``--hidden`` wide (default 1024-1024: 1.16 M parameters, the large size of
``methods.py``), and the whole of EK-FAC (fit, damping base, scoring) with each, and checks
that the scores agree:

    .venv/bin/python benchmarks/ghost_scoring.py [--n-train 5000] [--n-test 50]
        [--hidden 1024 1024] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fimo.data.base import ArrayDataset
from fimo.methods import common, damping, ekfac
from fimo.models import mlp
from fimo.task import Task


def make_task(n_train: int, n_test: int, hidden: list[int], features: int = 106) -> Task:
    """A random MLP (features → hidden → 2 classes) on random data, float32."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n_train + n_test, features, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(len(X), generator=g) > 0).long()
    model = mlp(features, 2, hidden=tuple(hidden), seed=0)
    return Task(
        model, ArrayDataset(X[:n_train], y[:n_train]), ArrayDataset(X[n_train:], y[n_train:])
    )


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ekfac_with(task: Task, n_test: int, ghost: str):
    """EK-FAC with score_matrix (and the damping base) on one path; memo cleared."""
    task.__dict__.pop("_damping_bases", None)
    plan = damping.dense_ghost_plan
    original = common.score_matrix

    def scoring(*args, **kw):
        return original(*args, **{**kw, "ghost": ghost})

    ekfac.score_matrix = scoring
    if ghost == "never":
        damping.dense_ghost_plan = lambda task: None
    try:
        return ekfac.ekfac(task, range(n_test), range(len(task.train)), damping=None).values
    finally:
        ekfac.score_matrix, damping.dense_ghost_plan = original, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task(args.n_train, args.n_test, args.hidden)
    V = torch.randn(args.n_test, task.num_params, generator=torch.Generator().manual_seed(1))
    train = np.arange(args.n_train)
    print(
        f"MLP {args.hidden} ({task.num_params:,} parameters), n = {args.n_train}, "
        f"k = {args.n_test}, {args.threads} threads; load average {os.getloadavg()[0]:.1f}"
    )
    best: dict[str, float] = {}
    values: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, fn in (
            ("score_matrix, factors", lambda: common.score_matrix(task, train, V)),
            ("score_matrix, formed", lambda: common.score_matrix(task, train, V, ghost="never")),
            ("ekfac, factors", lambda: ekfac_with(task, args.n_test, "auto")),
            ("ekfac, formed", lambda: ekfac_with(task, args.n_test, "never")),
        ):
            seconds, out = timed(fn)
            best[name] = min(best.get(name, np.inf), seconds)
            values[name] = np.asarray(out)
    for what in ("score_matrix", "ekfac"):
        a, b = values[f"{what}, factors"], values[f"{what}, formed"]
        cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        fast, slow = best[f"{what}, factors"], best[f"{what}, formed"]
        print(
            f"{what}: factors {fast:.2f} s, formed {slow:.2f} s, ratio {slow / fast:.1f}x; "
            f"max relative difference {np.abs(a - b).max() / np.abs(b).max():.1e}, "
            f"cosine {cos:.6f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
