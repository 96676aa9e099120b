"""The CPU time of one seed's group shard against its single-instance shard, on adult-groups.

The preset's further training (Adult, 32,561 training instances, MLP 128-128, SGD lr 1e-4 for
2 epochs in batches of 128 under ``drop``, float32, the first 100 test instances), one seed,
one torch thread, through :func:`fimo.further.runner.compute_shard` as ``fimo run`` computes
it: the single-instance shard (the preset's 40 left-out instances) and one group shard of 50
random groups per fraction α (drawn with seed 0, as the preset's). The model is the preset's
at initialisation: the cost of a step does not depend on the weights, and the preset's final
model takes 100 epochs to train. CPU time (user + system of this process), with the load
average beside it: on a shared machine, compare the ratios within one run.

    .venv/bin/python benchmarks/group_shards.py [--alphas 0.5,0.01] [--seeds 0] [--repeat 1]

By step count a group shard of α = 0.5 costs about 0.6–0.85 of the single shard: each of its
50 runs takes half the steps under ``drop``, while the 40 single runs each join the stack at
their instance's batch (on average halfway through the first epoch) and then take every step.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import choose_left_out
from fimo.further.groups import random_groups
from fimo.further.runner import LeftOutRuns, compute_shard
from fimo.further.store import Shard


def cpu_seconds(fn) -> float:
    """CPU time (this process) that ``fn()`` takes."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="0.5,0.01", help="group fractions, comma-separated")
    parser.add_argument("--seeds", default="0", help="seeds, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="times each shard is computed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config("adult-groups")
    train, test = load_data(config)
    task = build_task(config, train, test)
    settings, n = config.further, len(train)
    left_out = choose_left_out(n, config.gold.left_out, config.gold.left_out_seed)
    test_rows = np.arange(config.data.n_test)
    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f}; CPU seconds per shard, one seed, one thread")
    for _ in range(args.repeat):
        for seed in (int(s) for s in args.seeds.split(",")):
            single = cpu_seconds(
                lambda seed=seed: compute_shard(
                    task, settings, Shard(seed, 0, len(left_out)), left_out, test_rows
                )
            )
            line = f"seed {seed}: single shard ({len(left_out)} left out) {single:.2f} s"
            for alpha in alphas:
                runs = LeftOutRuns(left_out, random_groups(n, 50, alpha, seed=0))
                shard = Shard(seed, 0, 50, group=True)
                took = cpu_seconds(
                    lambda shard=shard, runs=runs: compute_shard(
                        task, settings, shard, runs, test_rows
                    )
                )
                line += f"; 50 groups of α = {alpha}: {took:.2f} s ({took / single:.2f}×)"
            print(f"{line}; load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
