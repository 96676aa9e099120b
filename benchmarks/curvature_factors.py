"""Gauss-Newton products through per-instance Jacobian factors against a pass per vector.

Times LiSSA (minibatch products), CG (full-data products) and Arnoldi (one vector at a time)
on an MLP with fimo's default (the factors of all the data held, `CurvatureOperator.factors`)
and with the factors switched off (every product a pass through the model, vmap'd over the
vectors: fimo before 2026-11-24), in one process, and prints the ratio. The scores of both
agree to float32 rounding (checked here too).

    .venv/bin/python benchmarks/curvature_factors.py [--n 927] [--d 8] [--classes 1]
        [--k 103] [--depth 200] [--threads 1]

Defaults are the Concrete preset's shapes (MLP 8-128-128-1, 927 instances, 103 test vectors).

``--preset adult`` (or ``credit``, ``mnist``) instead trains the preset's model for
``--final-epochs`` epochs of its final-training recipe and times CG, LiSSA and the generalised
influence function with the preset's settings, before and after the tolerance of the
cross-entropy's output Hessian was made relative to max p (2026-12-01): before, one confident
prediction whose zero eigenvalue rounded below −C·eps·max|λ| made ``factors()`` return None
and every product went through the model. It prints how many instances tripped the old check.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import torch

from fimo.data import ArrayDataset
from fimo.methods import curvature, influence
from fimo.models import mlp
from fimo.task import Task


def make_task(n: int, d: int, classes: int, k: int) -> Task:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + k, d, generator=g)
    if classes == 1:
        y, loss = X[:, :1].sin() + 0.1 * torch.randn(n + k, 1, generator=g), "mse"
    else:
        y, loss = torch.randint(classes, (n + k,), generator=g), "cross_entropy"
    model = mlp(d, classes, hidden=(128, 128), seed=0)
    return Task(model, ArrayDataset(X[:n], y[:n]), ArrayDataset(X[n:], y[n:]), loss=loss)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def old_scale(self, out, vals):
    """The tolerance's scale before 2026-12-01: the largest |eigenvalue| alone."""
    return vals.abs().amax(-1, keepdim=True)


def tripped(op) -> int:
    """Instances whose output Hessian the old tolerance took for negative curvature."""
    with mock.patch.object(curvature.CurvatureOperator, "_rounding_scale", old_scale):
        count = 0
        for start in range(0, op.count, 500):
            x, y = op.inputs[start : start + 500], op.targets[start : start + 500]
            _, W = op._gn_factor(x, y)
            if W is not None:
                vals = torch.linalg.eigvalsh(W)
                C = vals.shape[1]
                tol = vals.abs().amax(1) * C * torch.finfo(vals.dtype).eps
                count += int((vals[:, 0] < -tol).sum())
    return count


def preset_comparison(name: str, final_epochs: int, methods: list[str]) -> None:
    """CG, LiSSA and the generalised IF on a preset, with the old tolerance and the new."""
    from dataclasses import replace

    from fimo.experiments.build import build_task, load_data
    from fimo.experiments.config import load_config
    from fimo.methods.common import hessian_subset
    from fimo.training import train_final

    config = load_config(name)
    train, test = load_data(config)
    task = build_task(config, train, test)
    train_final(task, replace(config.training, epochs=final_epochs))
    task.to(dtype=torch.float32)
    test_idx, train_idx = range(config.data.n_test), range(len(task.train))
    samples = config.methods.settings["cg"]["hessian_samples"]
    op = curvature.gnvp(task, data_indices=hessian_subset(len(task.train), samples, 0))
    print(f"{name}: P = {task.num_params}, {samples} curvature instances, {config.data.n_test} test; "
          f"{tripped(op)} instances trip the old check; final training {final_epochs} epochs")  # fmt: skip
    print(f"{'method':12s} {'before (s)':>11s} {'after (s)':>10s} {'ratio':>7s}")
    for method in methods:
        settings = config.methods.settings.get(method, {})
        run = getattr(influence, method)

        def go(run=run, settings=settings):
            return run(task.with_cached_trunk(), test_idx, train_idx, **settings)

        with mock.patch.object(curvature.CurvatureOperator, "_rounding_scale", old_scale):
            slow, old = timed(go)
        fast, new = timed(go)
        diff = np.abs(old.values - new.values).max() / np.abs(old.values).max()
        print(f"{method:12s} {slow:11.1f} {fast:10.1f} {slow / fast:6.2f}x   (max diff {diff:.1e})",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["adult", "credit", "mnist"])
    parser.add_argument("--final-epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["cg", "lissa", "generalized"])
    parser.add_argument("--n", type=int, default=927)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--k", type=int, default=103)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--rank", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.preset:
        preset_comparison(args.preset, args.final_epochs, args.methods)
        return
    task = make_task(args.n, args.d, args.classes, args.k)
    test, train = range(args.k), range(args.n)
    runs = {
        "lissa": lambda: influence.lissa(task, test, train, depth=args.depth, scale=10.0),
        "cg": lambda: influence.cg(task, test, train, max_iter=50),
        "arnoldi": lambda: influence.arnoldi(task, test, train, rank=args.rank),
    }
    print(f"MLP {args.d}-128-128-{args.classes}, P = {task.num_params}, n = {args.n}, "
          f"k = {args.k}, {args.threads} thread(s)")  # fmt: skip
    print(f"{'method':10s} {'per vector (s)':>15s} {'factors (s)':>12s} {'ratio':>7s}")
    for name, run in runs.items():
        with mock.patch.object(curvature.CurvatureOperator, "factors", lambda self: None), \
                mock.patch.object(curvature, "FACTOR_VECTORS", 10**9):  # fmt: skip
            slow, old = timed(run)
        fast, new = timed(run)
        scale = np.abs(old.values).max()
        agree = np.abs(old.values - new.values).max() / scale
        print(f"{name:10s} {slow:15.2f} {fast:12.2f} {slow / fast:6.2f}x   (max diff {agree:.1e})")


if __name__ == "__main__":
    main()
