"""DataInf from layer factors against DataInf from formed per-instance gradients.

On the paper's Adult MLP (106-128-128-2, 30,466 parameters; ``--hidden 1024 1024`` for
1,161,218), trained as in ``methods.py`` (SGD, lr 0.05, batch 128, seed 0), this times
``datainf(ghost="always")`` and ``datainf(ghost="never")`` in one process, interleaved, the
minimum of ``--repeats`` (wall and CPU seconds), with the load average, and checks that the
two give the same scores:

    .venv/bin/python benchmarks/datainf_factors.py [--n-train 20000] [--n-test 200]
        [--hidden 128 128] [--epochs 3] [--repeats 2] [--threads 2]
        [--paths always never] [--hessian-samples M]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fimo.data import load_adult
from fimo.methods.datainf import datainf
from fimo.models import mlp
from fimo.task import Task
from fimo.training import TrainingSettings, train_final


def adult_task(hidden: list[int], n_train: int, n_test: int, epochs: int, seed: int = 0) -> Task:
    """The seeded Adult subsample and the MLP trained on it (float32)."""
    rng = np.random.default_rng(seed)
    train_all, test_all = load_adult()
    itr = np.sort(rng.choice(len(train_all), n_train, replace=False))
    ite = np.sort(rng.choice(len(test_all), n_test, replace=False))
    train, test = train_all[itr], test_all[ite]
    task = Task(mlp(train.inputs.shape[1], 2, hidden=tuple(hidden), seed=seed), train, test)
    train_final(task, TrainingSettings(lr=0.05, epochs=epochs, batch_size=128, seed=seed))
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=["always", "never"])
    parser.add_argument("--hessian-samples", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = adult_task(args.hidden, args.n_train, args.n_test, args.epochs)
    print(
        f"MLP {args.hidden} ({task.num_params:,} parameters), n = {args.n_train}, "
        f"k = {args.n_test}, m = {args.hessian_samples or args.n_train}, {args.threads} "
        f"threads; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    best: dict[str, tuple[float, float]] = {}
    values: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for path in args.paths:
            wall, cpu = time.perf_counter(), time.process_time()
            scores = datainf(
                task,
                range(args.n_test),
                range(args.n_train),
                ghost=path,
                hessian_samples=args.hessian_samples,
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"  ghost={path}: {wall:.2f} s wall, {cpu:.2f} s CPU "
                f"({scores.settings['gradients']}); load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            old = best.get(path, (np.inf, np.inf))
            best[path] = (min(old[0], wall), min(old[1], cpu))
            values[path] = scores.values
    for path, (wall, cpu) in best.items():
        print(f"ghost={path}: min {wall:.2f} s wall, {cpu:.2f} s CPU")
    if {"always", "never"} <= values.keys():
        a, b = values["always"], values["never"]
        cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        ratio = best["never"][0] / best["always"][0]
        print(
            f"formed / factors: {ratio:.1f}x wall, {best['never'][1] / best['always'][1]:.1f}x "
            f"CPU; largest relative difference {np.abs(a - b).max() / np.abs(b).max():.1e}, "
            f"cosine {cos:.6f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
