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
     and on 1.

    .venv/bin/python benchmarks/contention.py [--hogs 2] [--seeds 4] [--left-out 10]

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
from fimo.further.engine import FurtherSettings
from fimo.further.runner import LocalExecutor, gold_standard
from fimo.further.threads import available_cores
from fimo.models import mlp
from fimo.task import Task
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


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, load average at the end)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start, load_average()


def measure(label: str, run: Callable[[], None], hogs: int) -> None:
    """Time ``run`` as the machine is, then beside ``hogs`` busy processes; print a row."""
    idle, idle_load = timed(run)
    busy = [mp.Process(target=hog, daemon=True) for _ in range(hogs)]
    for p in busy:
        p.start()
    try:
        time.sleep(0.5)
        loaded, loaded_load = timed(run)
    finally:
        for p in busy:
            p.terminate()
            p.join()
    print(
        f"  {label:<40} {idle:8.2f} s (load {idle_load:4.1f}) {loaded:8.2f} s "
        f"(load {loaded_load:4.1f}) {loaded / idle:6.1f}×",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--left-out", type=int, default=10)
    parser.add_argument("--only", choices=["micro", "gold"])
    args = parser.parse_args()
    print(
        f"{available_cores()} cores; {args.hogs} busy processes beside the loaded runs; "
        f"load {load_average():.1f} at the start"
    )
    header = f"  {'':<40} {'idle':>8}   {'':11} {'loaded':>8}   {'':11} {'slowdown':>6}"
    if args.only != "gold":
        print("1,000 SGD steps, MLP 8-128-128-1, batch 128")
        print(header)
        for threads in (1, 2):
            measure(f"{threads} thread{'s' * (threads > 1)}", sgd_steps(threads), args.hogs)
    if args.only != "micro":
        print(
            f"gold standard, Adult MLP 106-128-128-2, {args.seeds} seeds × {1 + args.left_out} "
            "runs × 255 steps, float32"
        )
        print(header)
        for label, run in gold_contenders(args).items():
            measure(label, run, args.hogs)


if __name__ == "__main__":
    main()
