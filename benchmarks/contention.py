"""How fimo's further training and the paper's code behave when other processes share the cores.

torch's intra-op threads wait for each other at every operation; when other processes hold
the cores a waiting thread loses its time slice, and two threads can run many times slower
than one. This script measures it under a controlled load: each contender runs once on the
machine as it is ("idle"), then again with ``--hogs`` busy-loop processes (normal priority)
beside it, and the slowdown loaded/idle is printed with the load average (``uptime``) beside
each time.

1. the micro-benchmark: 1,000 SGD steps of the Concrete preset's MLP (8-128-128-1, batch 128)
   with torch on 1 and on 2 threads;
2. the gold standard of Adult (MLP 106-128-128-2, batch 128, SGD lr 1e-4, ``--seeds`` seeds ×
   (1 + ``--left-out``) runs × 1 epoch, float32) computed by
   - fimo as before issue 17: one process on torch's default threads (``--threads``),
   - fimo now: one torch thread per worker (docs/benchmarks.md, *Threads and a shared
     machine*), with 1 worker and with ``--workers`` worker processes (their start-up,
     about a second each, is included),
   - the paper's code (benchmarks/further_training.py, PAPER.md §2) on ``--threads`` threads
     and on 1;
3. the ``adult`` preset's final training (``--final-epochs`` of its 100 epochs) and two of its
   methods (Grad-Dot and CG, ``--n-test`` test instances, every training instance), on the
   threads :mod:`fimo.threads` chooses from the cores and the load when each call starts
   (the chosen count is printed beside the time) and on 2 threads as before.

    .venv/bin/python benchmarks/contention.py [--hogs 2] [--seeds 4] [--left-out 10]
    .venv/bin/python benchmarks/contention.py --only final [--final-epochs 5] [--n-test 20]

Target (issue 17): a loaded machine costs fimo at most about 2×.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from fimo.data import load_adult
from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import load_config
from fimo.further.engine import FurtherSettings
from fimo.further.runner import LocalExecutor, gold_standard
from fimo.further.threads import available_cores, torch_threads
from fimo.methods import get_method
from fimo.models import mlp
from fimo.task import Task
from fimo.threads import choose_threads
from fimo.training import train_final
from further_training import paper_gold  # benchmarks/ is on the path when run as a script


def hog() -> None:
    while True:
        pass


def load_average() -> float:
    return os.getloadavg()[0]


def sgd_steps(threads: int, steps: int = 1000) -> Callable[[], None]:
    """The micro-benchmark: ``steps`` SGD steps of Concrete's MLP on ``threads`` threads."""

    def run() -> None:
        torch.set_num_threads(threads)
        model = mlp(8, 1, hidden=(128, 128), seed=0)
        g = torch.Generator().manual_seed(0)
        X, Y = torch.randn(927, 8, generator=g), torch.randn(927, 1, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(steps):
            batch = torch.randint(927, (128,), generator=g)
            loss = torch.nn.functional.mse_loss(model(X[batch]), Y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def gold_contenders(args) -> dict[str, Callable[[], None]]:
    """The ways of computing the Adult gold standard, by label."""
    train, test = load_adult()
    task = Task(mlp(train.inputs.shape[1], 2), train, test)
    left_out = np.sort(np.random.default_rng(0).choice(len(train), args.left_out, replace=False))
    seeds, test_idx = list(range(args.seeds)), np.arange(100)
    settings = FurtherSettings(lr=1e-4, epochs=1)
    folder = tempfile.mkdtemp(prefix="fimo-contention-")

    def fimo(workers: int, threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(args.threads)  # the process's own count, as a user's
            executor = LocalExecutor(workers, threads=threads)
            gold_standard(task, settings, seeds, left_out, test_idx, executor=executor)

        return run

    def paper(threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            paper_gold(task, settings, seeds, left_out, test_idx, folder)

        return run

    threads = f"{args.threads} thread{'s' * (args.threads > 1)}"
    return {
        f"fimo before: 1 process × {threads}": fimo(1, args.threads),
        "fimo now: 1 worker × 1 thread": fimo(1, 1),
        f"fimo now: {args.workers} workers × 1 thread": fimo(args.workers, 1),
        f"paper's code, {threads}": paper(args.threads),
        "paper's code, 1 thread": paper(1),
    }


def final_contenders(args) -> dict[str, Callable[[], str | None]]:
    """The ``adult`` preset's final training and two of its methods, on the threads
    fimo.threads chooses when the call starts (returned, to be printed) and on 2 threads."""
    config = load_config("adult")
    config.training.epochs = args.final_epochs
    train, test = load_data(config)
    trained = build_task(config, train, test)
    train_final(trained, config.training)  # the methods' model, trained once
    test_idx, train_idx = np.arange(args.n_test), np.arange(len(train))

    def on_threads(threads: int | None, work: Callable[[], None]) -> Callable[[], str | None]:
        def run() -> str | None:
            count = choose_threads().threads if threads is None else threads
            with torch_threads(count):
                work()
            return f"{count} thread{'s' * (count > 1)}" if threads is None else None

        return run

    def final_training() -> None:
        train_final(build_task(config, train, test), config.training)

    def method(name: str) -> Callable[[], None]:
        settings = config.methods.settings.get(name, {})
        return lambda: get_method(name)(trained, test_idx, train_idx, **settings)

    work = {
        f"final training, {args.final_epochs} epochs": final_training,
        f"grad_dot, {args.n_test} × {len(train)}": method("grad_dot"),
        f"cg, {args.n_test} × {len(train)}": method("cg"),
    }
    contenders = {}
    for label, job in work.items():
        contenders[f"{label}: fimo.threads"] = on_threads(None, job)
        contenders[f"{label}: 2 threads"] = on_threads(2, job)
    return contenders


def timed(run: Callable[[], str | None]) -> tuple[float, float, str | None]:
    """(wall seconds, load average at the end, what ``run`` returned)."""
    start = time.perf_counter()
    note = run()
    return time.perf_counter() - start, load_average(), note


def measure(label: str, run: Callable[[], str | None], hogs: int, width: int = 40) -> None:
    """Time ``run`` as the machine is, then beside ``hogs`` busy processes; print a row (with
    what ``run`` returned each time, e.g. the threads it chose)."""
    idle, idle_load, idle_note = timed(run)
    busy = [mp.Process(target=hog, daemon=True) for _ in range(hogs)]
    for p in busy:
        p.start()
    try:
        time.sleep(0.5)
        loaded, loaded_load, loaded_note = timed(run)
    finally:
        for p in busy:
            p.terminate()
            p.join()
    notes = f"  chose {idle_note} / {loaded_note}" if idle_note else ""
    print(
        f"  {label:<{width}} {idle:8.2f} s (load {idle_load:4.1f}) {loaded:8.2f} s "
        f"(load {loaded_load:4.1f}) {loaded / idle:6.1f}×{notes}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--left-out", type=int, default=10)
    parser.add_argument("--final-epochs", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--only", choices=["micro", "gold", "final"])
    args = parser.parse_args()
    print(
        f"{available_cores()} cores; {args.hogs} busy processes beside the loaded runs; "
        f"load {load_average():.1f} at the start"
    )
    header = f"  {'':<40} {'idle':>8}   {'':11} {'loaded':>8}   {'':11} {'slowdown':>6}"
    if args.only in (None, "micro"):
        print("1,000 SGD steps, MLP 8-128-128-1, batch 128")
        print(header)
        for threads in (1, 2):
            measure(f"{threads} thread{'s' * (threads > 1)}", sgd_steps(threads), args.hogs)
    if args.only in (None, "gold"):
        print(
            f"gold standard, Adult MLP 106-128-128-2, {args.seeds} seeds × {1 + args.left_out} "
            "runs × 255 steps, float32"
        )
        print(header)
        for label, run in gold_contenders(args).items():
            measure(label, run, args.hogs)
    if args.only in (None, "final"):
        print("adult preset: final training and methods (MLP 106-128-128-2, float32)")
        print(f"  {'':<50} {'idle':>8}   {'':11} {'loaded':>8}   {'':11} {'slowdown':>6}")
        for label, run in final_contenders(args).items():
            measure(label, run, args.hogs, width=50)


if __name__ == "__main__":
    main()
