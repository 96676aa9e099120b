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
and every product rebuilt its batch's Jacobians. It prints how many curvature instances trip
the old check and whether ``factors()`` holds the factors after the fix.

    .venv/bin/python benchmarks/curvature_factors.py --preset adult [--methods cg lissa]
        [--time-limit 900] [--depth 100] [--max-iter 20] [--step-repeats 5]

``--held-steps N,O,P`` times one LiSSA step over held factors of that shape (random numbers,
``--k`` vectors, minibatches of ``--batch`` rows drawn with replacement): the rows' factors
gathered (fimo before 2026-12-02) against every held factor weighted by its draw count (fimo
since, for a minibatch of at least half the instances), interleaved, the least of
``--step-repeats``; the mnist preset's shape is ``180,9,38058`` with 50 vectors.

    .venv/bin/python benchmarks/curvature_factors.py --held-steps 180,9,38058 --k 50

Each call runs in a forked child process (wall and CPU seconds of the call alone; both paths
start from the same state). ``--time-limit`` kills a call after that many seconds and prints
"> limit" (a lower bound; the ratio then too). ``--depth`` (LiSSA) and ``--max-iter`` (CG, the
generalised IF) override the preset's to time both paths at fewer iterations; the seconds of
one LiSSA step and of one full product (all the test vectors) with each tolerance, the least of
``--step-repeats``, are printed last, so the full settings' time can be extrapolated.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from unittest import mock

import numpy as np
import torch

from fimo.data import ArrayDataset
from fimo.methods import curvature, influence
from fimo.methods.common import hessian_subset
from fimo.models import mlp
from fimo.task import Task

#: The tolerance's scale since 2026-12-01 (max(max p, max |λ|) for cross-entropy).
NEW_SCALE = curvature.CurvatureOperator._rounding_scale


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


def tripped(op, scale=old_scale) -> int:
    """Instances whose output Hessian a tolerance of ``scale`` (the old one by default) takes
    for negative curvature."""
    count = 0
    with mock.patch.object(curvature.CurvatureOperator, "_rounding_scale", scale):
        for start in range(0, op.count, 100):
            x, y = op.inputs[start : start + 100], op.targets[start : start + 100]
            _, W = op._gn_factor(x, y)
            if W is not None:
                vals = torch.linalg.eigvalsh(W)
                tol = scale(op, op.outputs(op.theta, x), vals)[:, 0] * vals.shape[1]
                count += int((vals[:, 0] < -tol * torch.finfo(vals.dtype).eps).sum())
    return count


def child_call(fn, limit: float | None):
    """``(wall s, CPU s, result)`` of ``fn()`` in a forked child process, or ``None`` when it
    had not returned after ``limit`` seconds (the child is then killed).

    Each call starts from the parent's state, so the before and after calls pay the same
    one-off work (the damping base memoised on the task, the operator's factors).
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def run():
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        send.send((time.perf_counter() - wall, time.process_time() - cpu, out))

    child = context.Process(target=run)
    child.start()
    send.close()
    try:
        result = receive.recv() if receive.poll(limit) else None
    except EOFError:
        child.join()
        raise RuntimeError(f"the timed child died (exit code {child.exitcode})") from None
    if result is None:
        child.kill()
    child.join()
    return result


def step_seconds(task, samples: int, vectors: int, batch: int, repeats: int) -> dict:
    """Seconds of one LiSSA step (``vectors`` vectors times the curvature of a minibatch of
    ``batch`` of the ``samples`` curvature instances) and of one full product (a CG iteration
    on all the systems), with the old tolerance and the new: the least of ``repeats``, after
    one untimed product of each (which builds the factors, if any)."""
    subset = hessian_subset(len(task.train), samples, 0)
    V = torch.randn(vectors, task.num_params, generator=torch.Generator().manual_seed(0))
    out = {}
    for label, scale in (("before", old_scale), ("after", NEW_SCALE)):
        with mock.patch.object(curvature.CurvatureOperator, "_rounding_scale", scale):
            op = curvature.gnvp(task, data_indices=subset)
            gen = torch.Generator().manual_seed(0)
            for kind in ("lissa step", "full product"):
                times = []
                for _ in range(repeats + 1):
                    rows = torch.randint(op.count, (batch,), generator=gen)
                    rows = rows if kind == "lissa step" else None
                    times.append(timed(lambda op=op, rows=rows: op.matmat(V, rows=rows))[0])
                out[label, kind] = min(times[1:])
    return out


def preset_task(name: str, final_epochs: int):
    """The preset's task after ``final_epochs`` epochs of its final training, in float32."""
    from dataclasses import replace

    from fimo.experiments.build import build_task, load_data
    from fimo.experiments.config import load_config
    from fimo.training import train_final

    config = load_config(name)
    train, test = load_data(config)
    task = build_task(config, train, test)
    train_final(task, replace(config.training, epochs=final_epochs))
    task.to(dtype=torch.float32)
    return config, task.with_cached_trunk()


def describe_factors(task, samples: int) -> str:
    """How many curvature instances trip the old check and the new one, and whether the
    factors of all of them are held after the fix (if not, why not)."""
    op = curvature.gnvp(task, data_indices=hessian_subset(len(task.train), samples, 0))
    old, new = tripped(op), tripped(op, NEW_SCALE)
    held = op.factors()
    if held is not None:
        state = f"held, A of shape {tuple(held.shape)}"
    else:
        state = "None (" + ("not PSD" if new else "larger than the memory budget") + ")"
    return (
        f"{old} of {op.count} curvature instances trip the old check, {new} the new; "
        f"factors() after the fix: {state}"
    )


def preset_comparison(name: str, final_epochs: int, methods: list[str], args) -> None:
    """CG, LiSSA and the generalised IF on a preset, with the old tolerance and the new, each
    call in a child process under ``args.time_limit``; LiSSA's depth and CG's iterations
    overridable (``args.depth``, ``args.max_iter``), with the per-step cost of both paths."""
    config, task = preset_task(name, final_epochs)
    samples = config.methods.settings["cg"]["hessian_samples"]
    print(f"{name}: P = {task.num_params}, {samples} curvature instances, "
          f"{config.data.n_test} test, {len(task.train)} scored; final training {final_epochs} "
          f"epochs; {args.threads} thread(s); load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(describe_factors(task, samples), flush=True)
    limit = args.time_limit
    test_idx, train_idx = range(config.data.n_test), range(len(task.train))
    print(f"{'method':12s} {'setting':>20s} {'before s (CPU)':>18s} {'after s (CPU)':>16s} "
          f"{'ratio wall (CPU)':>17s}  max rel diff  load")  # fmt: skip
    for method in methods:
        settings = dict(config.methods.settings.get(method, {}))
        if method == "lissa" and args.depth is not None:
            settings["depth"] = args.depth
        if method in ("cg", "generalized") and args.max_iter is not None:
            settings["max_iter"] = args.max_iter
        run = getattr(influence, method)

        def go(run=run, settings=settings):
            return run(task, test_idx, train_idx, **settings)

        with mock.patch.object(curvature.CurvatureOperator, "_rounding_scale", old_scale):
            before = child_call(go, limit)
        after = child_call(go, limit)
        setting = (
            f"depth {settings.get('depth', 1000)}"
            if method == "lissa"
            else f"max_iter {settings.get('max_iter', 100)}"
        )
        if after is not None and "iterations" in after[2].settings:  # CG: the iterations taken
            setting += f" ({max(after[2].settings['iterations'])})"
        cells = [
            f"> {limit:.0f}" if r is None else f"{r[0]:.1f} ({r[1]:.1f})" for r in (before, after)
        ]
        if before is not None and after is not None:
            ratio = f"{before[0] / after[0]:.2f}x ({before[1] / after[1]:.2f}x)"
            old, new = before[2].values, after[2].values
            diff = f"{np.abs(old - new).max() / np.abs(old).max():.1e}"
        elif after is not None:
            ratio, diff = f"> {limit / after[0]:.2f}x", "-"
        else:
            ratio, diff = "-", "-"
        print(f"{method:12s} {setting:>20s} {cells[0]:>18s} {cells[1]:>16s} {ratio:>17s}  "
              f"{diff:>12s}  {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    if args.step_repeats:
        batch = config.methods.settings.get("lissa", {}).get("batch_size", 128)
        steps = child_call(
            lambda: step_seconds(task, samples, config.data.n_test, batch, args.step_repeats), None
        )[2]
        for kind in ("lissa step", "full product"):
            b, a = steps["before", kind], steps["after", kind]
            print(f"one {kind} ({config.data.n_test} vectors): before {b * 1e3:.1f} ms, "
                  f"after {a * 1e3:.1f} ms, {b / a:.2f}x (least of {args.step_repeats})")  # fmt: skip


def held_steps(shape: str, k: int, batch: int, repeats: int) -> None:
    """Interleaved timings of a held-factor minibatch product: gathered against weighted."""
    n, outputs, size = (int(v) for v in shape.split(","))
    g = torch.Generator().manual_seed(0)
    held = torch.randn(n, outputs, size, generator=g)
    V = torch.randn(k, size, generator=g)

    def gathered(rows):
        return curvature._factor_apply(held[rows].reshape(-1, size), V) / len(rows)

    def weighted(rows):
        return curvature._held_product(held, V, rows)

    times = {"gathered": [], "weighted": []}
    for _ in range(max(1, repeats)):
        rows = torch.randint(n, (batch,), generator=g)
        for name, product in (("gathered", gathered), ("weighted", weighted)):
            start = time.perf_counter()
            out = product(rows)
            times[name].append(time.perf_counter() - start)
        assert torch.allclose(out, gathered(rows), rtol=1e-4, atol=1e-4 * float(out.abs().max()))
    best = {name: min(t) for name, t in times.items()}
    print(f"held factors {n} x {outputs} x {size}, {k} vectors, minibatch {batch}: gathered "
          f"{best['gathered'] * 1e3:.1f} ms, weighted {best['weighted'] * 1e3:.1f} ms, "
          f"{best['gathered'] / best['weighted']:.2f}x (least of {repeats})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["adult", "credit", "mnist"])
    parser.add_argument("--final-epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=["cg", "lissa", "generalized"])
    parser.add_argument("--n", type=int, default=927)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--k", type=int, default=103)
    parser.add_argument("--depth", type=int, help="LiSSA's depth (200; a preset's own)")
    parser.add_argument("--max-iter", type=int, help="with --preset: CG's max_iter (preset's)")
    parser.add_argument("--time-limit", type=float, help="with --preset: seconds per call")
    parser.add_argument("--step-repeats", type=int, default=5, help="with --preset (0: skip)")
    parser.add_argument("--rank", type=int, default=30)
    parser.add_argument("--held-steps", metavar="N,O,P", help="time a held-factor minibatch")
    parser.add_argument("--batch", type=int, default=128, help="with --held-steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.held_steps:
        held_steps(args.held_steps, args.k, args.batch, args.step_repeats)
        return
    if args.preset:
        preset_comparison(args.preset, args.final_epochs, args.methods, args)
        return
    task = make_task(args.n, args.d, args.classes, args.k)
    depth = 200 if args.depth is None else args.depth
    test, train = range(args.k), range(args.n)
    runs = {
        "lissa": lambda: influence.lissa(task, test, train, depth=depth, scale=10.0),
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
