"""`unrolled` for every training instance against one gold-standard seed, per seed.

For each preset (``adult``: 32,561 training instances, 100 test instances, 2 checkpoints;
``diabetes``: 397 training instances, 45 test instances, 50 checkpoints) the script builds the
preset's task and final model, then times, in one process and one after the other:

(a) one gold-standard seed as a run computes it: the full run and 40 left-out runs
    (``further_train_seed``, the fused MLP path), scores for 40 training instances;
(b) ``unrolled_seed`` for the same seed: first-order scores for **all** training instances
    at every checkpoint (``mode="auto"``: reverse sweep or forward tangents, whichever has
    fewer vectors), once per engine in ``--engines``: ``auto`` (the presets' MLPs take the
    fused adjoint, :mod:`fimo.further.fused_adjoint`) and ``generic`` (``torch.func``);

and prints the times, the ratio (b)/(a) per engine, the ratio generic/fused and the largest
difference between the two engines' scores. The dtype is the gold standard's (float32). The
final model is trained with the preset's recipe unless ``--final-epochs`` shortens it (the
timing hardly depends on it); ``--cache DIR`` keeps the trained weights between runs;
``--max-steps`` shortens further training (the ratio is per step; on Adult, checkpoints at
half and all of the steps keep the shape of its two epochs).

    .venv/bin/python benchmarks/unrolled.py [--presets adult diabetes] [--final-epochs 5]

The ratio is of CPU time (``time.process_time``), which a shared machine's load disturbs far
less than the wall time (both are printed, with the load average).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import DTYPES, choose_left_out
from fimo.further.adjoint import unrolled_seed
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.training import train_final


def final_task(preset: str, final_epochs: int | None, cache: Path | None):
    """The preset's task with its final model (trained, or loaded from ``cache``)."""
    config = load_config(preset)
    train, test = load_data(config)
    task = build_task(config, train, test)
    if final_epochs is not None:
        config.training.epochs = final_epochs
    path = None if cache is None else cache / f"{preset}-{config.training.epochs}.pt"
    if path is not None and path.exists():
        task.model.load_state_dict(torch.load(path))
    else:
        t0 = time.perf_counter()
        train_final(task, config.training)
        print(
            f"  final training ({config.training.epochs} epochs): {time.perf_counter() - t0:.0f} s"
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(task.model.state_dict(), path)
    task.to(dtype=DTYPES[config.gold.dtype])
    return config, task


def bench(
    preset: str, final_epochs: int | None, cache: Path | None, max_steps=None, engines=("auto",)
) -> None:
    config, task = final_task(preset, final_epochs, cache)
    settings = config.further
    if max_steps is not None:  # a shorter run with the same shape: checkpoints at T/2 and T
        settings = FurtherSettings(
            **{**settings.as_dict(), "max_steps": max_steps, "record_steps": [max_steps // 2]}
        )
    test = np.arange(config.data.n_test)
    left_out = choose_left_out(len(task.train), config.gold.left_out, config.gold.left_out_seed)
    warm = FurtherSettings(**{**settings.as_dict(), "max_steps": 2, "record_steps": []})
    further_train_seed(task, warm, 0, left_out, test)
    for engine in engines:
        unrolled_seed(task, FurtherSettings(**{**warm.as_dict(), "engine": engine}), 0, test[:2])

    wall, cpu = time.perf_counter(), time.process_time()
    gold = further_train_seed(task, settings, 0, left_out, test)
    wall_gold, t_gold = time.perf_counter() - wall, time.process_time() - cpu
    timed = {}
    for engine in engines:
        wall, cpu = time.perf_counter(), time.process_time()
        one = unrolled_seed(
            task, FurtherSettings(**{**settings.as_dict(), "engine": engine}), 0, test
        )
        timed[engine] = (one, time.perf_counter() - wall, time.process_time() - cpu)
    C, T, n = one.values.shape
    print(
        f"{preset}: n = {n} training, {T} test instances, {C} checkpoints after "
        f"{one.steps[-1]} steps; {config.gold.dtype}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  gold-standard seed (1 + {len(left_out)} runs): CPU {t_gold:7.1f} s, wall {wall_gold:7.1f} s"
    )
    for engine, (one, wall_unrolled, t_unrolled) in timed.items():
        print(
            f"  unrolled seed, all {n} instances ({one.mode} mode, engine {engine}): "
            f"CPU {t_unrolled:7.1f} s, wall {wall_unrolled:7.1f} s, "
            f"ratio (CPU time) {t_unrolled / t_gold:.1f}x a gold-standard seed"
        )
    print(
        f"  the gold standard for all {n} instances would take {(1 + n) / (1 + len(left_out)):.0f}x "
        "a gold-standard seed"
    )
    if {"auto", "generic"} <= timed.keys():
        fused, generic = timed["auto"][0].values, timed["generic"][0].values
        print(
            f"  fused adjoint: {timed['generic'][2] / timed['auto'][2]:.2f}x faster than "
            f"torch.func (CPU time); scores differ by at most "
            f"{np.abs(fused - generic).max() / np.abs(generic).max():.1e} of the largest"
        )
    one = timed[engines[0]][0]
    diff = gold.loss_without - gold.loss_full[..., None]
    u = one.values[:, :, left_out]
    for c in range(C if C <= 4 else 0):
        a, b = u[c].ravel(), diff[c].ravel()
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        print(
            f"  step {one.steps[c]}: cosine with this seed's {len(left_out)} removals "
            f"(scheme {settings.scheme}) {cos:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["adult", "diabetes"])
    parser.add_argument("--final-epochs", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["auto", "generic"],
        choices=["auto", "generic"],
        help="the adjoint's engines to time: auto (fused for MLPs) and generic (torch.func)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps (checkpoints "
        "at half of it and at the end: the shape of adult's two epochs, shorter)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.presets:
        bench(preset, args.final_epochs, args.cache, args.max_steps, tuple(args.engines))


if __name__ == "__main__":
    main()
