"""`unrolled` against the gold standard it is the first-order limit of (issue 13's check).

On a preset (default ``diabetes``) under the ``mask`` scheme, with the preset's final model,
left-out instances, test instances and further training, the script computes

- the gold standard on seeds 0 … S−1 (S = ``--seeds``, default 16), and its noise floor;
- ``unrolled`` (the left-out instances only, forward tangents) on the same seeds and on S
  seeds the gold standard did not use (S … 2S−1);
- with ``--drop``, the gold standard under ``drop`` too (same seeds), which ``unrolled``
  computes as ``mask``;

and prints, per checkpoint, the report's agreement (cosine of the method's scores with the
centred gold standard, per test instance, averaged over test instances):

- ``u(gold seeds)``: ``unrolled``'s mean over the gold standard's own seeds;
- ``ceiling``: the gold standard's noise ceiling (split-half, Spearman–Brown to S seeds,
  square root: what a perfect method would reach against S seeds);
- ``u(new seeds)``: ``unrolled``'s mean over the S unused seeds;
- ``gold half/half``: the gold standard's split-half agreement (S/2 seeds against the other
  S/2, over ``--splits`` random splits);
- ``u(new half)/gold half``: ``unrolled`` over S/2 unused seeds against a half of the gold
  standard, over the same splits (each half against each of the two ``unrolled`` halves);
- ``u/gold, seed limit``: the agreement of ``unrolled`` with the gold standard as the number of
  seeds grows without bound, estimated without seed noise from the paired per-seed values:
  per test instance, ``(<ū_A, ḡ_B> + <ū_B, ḡ_A>) / 2 / sqrt(<ū_A, ū_B> <ḡ_A, ḡ_B>)`` over random
  half splits A/B of the gold standard's seeds (ū, ḡ: half means of ``unrolled`` and of the
  centred gold standard; cross-half products have no shared seed noise). Test instances
  whose noise-free norms are not positive are left out of the mean;
- ``u/drop gold`` and ``drop/mask gold``: with ``--drop``, ``unrolled`` against the ``drop``
  gold standard, and the two gold standards against each other (both centred).

    nice .venv/bin/python benchmarks/unrolled_agreement.py [--preset diabetes] [--seeds 16]
        [--dtype float32] [--drop] [--cache DIR] [--every 1]

``--every k`` prints every k-th checkpoint (the summary lines cover all of them).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from fimo.evaluate.metrics import per_test_values, summarise
from fimo.evaluate.seeds import noise_floor
from fimo.experiments.pipeline import choose_left_out
from fimo.further.engine import FurtherSettings
from fimo.further.runner import gold_standard
from fimo.methods.unrolled import unrolled_estimate
from unrolled import final_task  # benchmarks/unrolled.py: the preset's task and final model


def agreement(gold_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-test cosine of ``values`` with ``gold_rows`` (both (C, T, L)), shape (C, T)."""
    return per_test_values(gold_rows, values, ["cosine"])["cosine"]


def mean_over_test(per_test: np.ndarray) -> np.ndarray:
    """The mean over test instances (NaN-aware), shape (C,)."""
    return summarise(per_test)[0]


def centre(x: np.ndarray) -> np.ndarray:
    """Minus the mean over the left-out instances (paper eq. 13)."""
    return x - x.mean(axis=-1, keepdims=True)


def half_splits(S: int, splits: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` random splits of range(S) into two halves of S // 2."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        order = rng.permutation(S)
        out.append((np.sort(order[: S // 2]), np.sort(order[S // 2 : 2 * (S // 2)])))
    return out


def split_columns(gold, new_seeds: np.ndarray, splits) -> tuple[np.ndarray, np.ndarray]:
    """(gold half against gold half, unrolled half of unused seeds against gold half), (C,).

    ``new_seeds``: unrolled's per-seed values on unused seeds, (S, C, T, L)."""
    adjusted = gold.adjusted()
    h = len(splits[0][0])
    u_halves = [new_seeds[:h].mean(0), new_seeds[h : 2 * h].mean(0)]
    gold_half, u_half = [], []
    for a, b in splits:
        ga, gb = centre(adjusted[a].mean(0)), centre(adjusted[b].mean(0))
        gold_half.append(agreement(ga, gb))
        u_half.append(np.nanmean([agreement(g, u) for g in (ga, gb) for u in u_halves], axis=0))
    return mean_over_test(np.nanmean(gold_half, 0)), mean_over_test(np.nanmean(u_half, 0))


def seed_limit(gold, paired: np.ndarray, splits) -> np.ndarray:
    """``unrolled``'s cosine with the gold standard at infinitely many seeds, (C,).

    ``paired``: ``unrolled``'s per-seed values on the gold standard's seeds, (S, C, T, L).
    Products of half means over disjoint seed halves are unbiased for the products of the
    seed-limit means, so their ratio estimates the seed-limit cosine without the
    attenuation (or the shared-noise inflation) of a finite number of seeds.
    """
    adjusted = gold.adjusted()
    cross, u_norm, g_norm = 0.0, 0.0, 0.0
    for a, b in splits:
        ga, gb = centre(adjusted[a].mean(0)), centre(adjusted[b].mean(0))
        ua, ub = paired[a].mean(0), paired[b].mean(0)
        cross = cross + ((ua * gb).sum(-1) + (ub * ga).sum(-1)) / 2
        u_norm = u_norm + (ua * ub).sum(-1)
        g_norm = g_norm + (ga * gb).sum(-1)
    product = u_norm * g_norm
    with np.errstate(invalid="ignore", divide="ignore"):
        per_test = np.where((u_norm > 0) & (g_norm > 0), cross / np.sqrt(product), np.nan)
    return mean_over_test(per_test)


def ceiling(gold) -> np.ndarray:
    """The noise ceiling of the centred cosine at each checkpoint, (C,)."""
    rows = noise_floor(gold, ["cosine"], centred=True)
    by_c = {r["checkpoint"]: r["mean"] for r in rows if r["estimate"] == "ceiling"}
    return np.array([by_c[c] for c in range(len(gold.steps))])


def _setup(preset: str, dtype: str | None, cache: Path | None, threads: int):
    """The preset's config, task (final model from ``cache``), test and left-out instances."""
    torch.set_num_threads(threads)
    config, task = final_task(preset, None, cache)
    if dtype is not None:
        task.to(dtype=getattr(torch, dtype))
    test = np.arange(config.data.n_test)
    left_out = choose_left_out(len(task.train), config.gold.left_out, config.gold.left_out_seed)
    return config, task, test, left_out


def _job(job: tuple):
    """One worker's share: a gold standard (``"gold"``, scheme, seeds) or ``unrolled``'s
    per-seed values on the left-out instances (``"unrolled"``, ``"mask"``, seeds)."""
    preset, dtype, cache, threads, kind, scheme, seeds = job
    config, task, test, left_out = _setup(preset, dtype, cache, threads)
    settings = FurtherSettings(**{**config.further.as_dict(), "scheme": scheme})
    if kind == "gold":
        return gold_standard(task, settings, seeds, left_out, test)
    est = unrolled_estimate(
        task, test, left_out, further=settings, seeds=seeds, keep=left_out, mode="forward"
    )
    return est.per_seed


def _compute(args, S: int):
    """The gold standard(s) and ``unrolled``'s per-seed values on 2S seeds, in worker processes."""
    started = time.perf_counter()
    jobs = [("gold", "mask", list(range(S)))]
    if args.drop:
        jobs.append(("gold", "drop", list(range(S))))
    chunks = np.array_split(np.arange(2 * S), max(1, args.workers - len(jobs)))
    jobs += [("unrolled", "mask", chunk.tolist()) for chunk in chunks if len(chunk)]
    common = (args.preset, args.dtype, args.cache, args.threads)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_job, [(*common, *job) for job in jobs]))
    print(f"  gold standard and unrolled: {time.perf_counter() - started:.0f} s", flush=True)
    drop = done[1] if args.drop else None
    per_seed = np.concatenate(done[len(jobs) - sum(1 for j in jobs if j[0] == "unrolled") :])
    return done[0], drop, per_seed


def _save(path: Path, gold, drop, per_seed: np.ndarray) -> None:
    """Pickle the gold standard(s) and the per-seed values, for ``--load``."""
    import pickle

    path.write_bytes(pickle.dumps((gold, drop, per_seed)))


def _load(path: Path):
    """What ``_save`` wrote (a file this script made: pickle runs code, load only your own)."""
    import pickle

    return pickle.loads(path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="diabetes")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None)
    parser.add_argument("--drop", action="store_true", help="also the drop gold standard")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None, help="keep the final weights here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="processes (gold, drop, unrolled)")
    parser.add_argument("--every", type=int, default=1, help="print every k-th checkpoint")
    parser.add_argument("--save", type=Path, default=None, help="keep the per-seed values here")
    parser.add_argument("--load", type=Path, default=None, help="reuse a --save file")
    args = parser.parse_args()
    started = time.perf_counter()
    config, _, test, left_out = _setup(args.preset, args.dtype, args.cache, args.threads)
    dtype = args.dtype or config.gold.dtype
    S = args.seeds
    print(
        f"{args.preset} (mask): {S} gold seeds × {len(left_out)} left out × {len(test)} test, "
        f"{dtype}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    if args.load is not None:
        gold, drop, per_seed = _load(args.load)
    else:
        gold, drop, per_seed = _compute(args, S)
        if args.save is not None:
            _save(args.save, gold, drop, per_seed)

    target = gold.mean(centred=True)
    cols = {
        "u(gold seeds)": mean_over_test(agreement(target, per_seed[:S].mean(0))),
        "ceiling": ceiling(gold),
        "u(new seeds)": mean_over_test(agreement(target, per_seed[S:].mean(0))),
    }
    cols["gold half/half"], cols["u(new half)/gold half"] = split_columns(
        gold, per_seed[S:], half_splits(S, args.splits)
    )
    cols["u/gold, seed limit"] = seed_limit(gold, per_seed[:S], half_splits(S, args.splits))
    if drop is not None:
        cols["u/drop gold"] = mean_over_test(agreement(drop.mean(True), per_seed[:S].mean(0)))
        cols["drop/mask gold"] = mean_over_test(agreement(target, drop.mean(True)))

    print()
    print("| step | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for c in range(0, len(gold.steps), args.every):
        print(f"| {gold.steps[c]} | " + " | ".join(f"{v[c]:.3f}" for v in cols.values()) + " |")
    first = cols["u(gold seeds)"]
    print()
    print(
        f"u(gold seeds): {first.min():.3f}–{first.max():.3f}, ≥ 0.95 at "
        f"{int((first >= 0.95).sum())} of {len(first)} checkpoints; "
        f"below the ceiling at {int((first < cols['ceiling']).sum())}"
    )
    print(
        "means over checkpoints: "
        + ", ".join(f"{name} {np.nanmean(v):.3f}" for name, v in cols.items())
    )
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
