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
- ``seed limit``, ``± SE``, ``seed limit, median``: the agreement of ``unrolled`` with the
  gold standard as the number of seeds grows without bound (the disattenuated cosine), per
  test instance ⟨E u, E g⟩ / (‖E u‖ ‖E g‖) with every product estimated from pairs of
  *different* seeds (U-statistics: unbiased, no shared seed noise; ``unrolled``'s unused
  seeds count too), then the mean over test instances with its standard error (subsampling
  3/4 of the seeds), and the median over test instances (a per-test ratio of noisy products
  can exceed 1 or blow up where a test instance has little signal; the median is robust to
  those). Test instances whose estimated squared norms are not positive are left out;
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


def cross_sum(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Σ over seed pairs s ≠ s' of ⟨x_s, y_s'⟩ (``y`` = ``x`` when None), over the last axis.

    ``x``, ``y``: per-seed values (S, ..., L) on the same seeds; shape (...,). Pairs of one seed
    with itself are left out because they share that seed's noise.
    """
    y = x if y is None else y
    return (x.sum(0) * y.sum(0)).sum(-1) - (x * y).sum(-1).sum(0)


def seed_limit_per_test(gold_seeds: np.ndarray, paired: np.ndarray, unpaired: np.ndarray):
    """Per test instance, ``unrolled``'s cosine with the gold standard at infinitely many seeds.

    ``gold_seeds``: the centred per-seed gold standard (S, C, T, L); ``paired``: ``unrolled`` on
    the same S seeds; ``unpaired``: on other seeds (S', C, T, L), S' ≥ 0. Every product is an
    average over pairs of *different* seeds, which is unbiased for the product of the two
    seed-limit means (U-statistics): the numerator over all paired s ≠ s' and all unpaired
    pairs, the two squared norms over all pairs of distinct seeds (``unrolled``'s over its
    S + S' seeds). The ratio is the disattenuated cosine; (C, T), NaN where an estimated
    squared norm is not positive (a test instance without signal at that seed count).
    """
    S, N = len(gold_seeds), len(unpaired)
    cross = cross_sum(paired, gold_seeds)
    if N:
        cross = cross + (unpaired.sum(0) * gold_seeds.sum(0)).sum(-1)
    cross = cross / (S * (S - 1) + N * S)
    every_u = np.concatenate([paired, unpaired]) if N else paired
    u_norm = cross_sum(every_u) / (len(every_u) * (len(every_u) - 1))
    g_norm = cross_sum(gold_seeds) / (S * (S - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((u_norm > 0) & (g_norm > 0), cross / np.sqrt(u_norm * g_norm), np.nan)


def seed_limit(gold, paired: np.ndarray, unpaired: np.ndarray, subsamples: int = 100):
    """The seed-limit cosine (mean and median over test instances) and the mean's standard error.

    The standard error comes from ``subsamples`` draws of 3/4 of the seeds without
    replacement (paired and unpaired alike), scaled to all seeds by the delete-d jackknife's
    factor √(m / (S − m)). Returns three arrays of shape (C,).
    """
    gold_seeds = centre(gold.adjusted())
    per_test = seed_limit_per_test(gold_seeds, paired, unpaired)
    S, N = len(gold_seeds), len(unpaired)
    m, mn = 3 * S // 4, 3 * N // 4
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(subsamples):
        a, b = rng.permutation(S)[:m], rng.permutation(N)[:mn]
        draws.append(mean_over_test(seed_limit_per_test(gold_seeds[a], paired[a], unpaired[b])))
    se = np.std(draws, axis=0) * np.sqrt(m / (S - m))
    with np.errstate(all="ignore"):
        median = np.nanmedian(per_test, axis=-1)
    return mean_over_test(per_test), se, median


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
    limit, limit_se, limit_median = seed_limit(gold, per_seed[:S], per_seed[S:])
    cols["seed limit"], cols["± SE"], cols["seed limit, median"] = limit, limit_se, limit_median
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
    for name in ("seed limit", "seed limit, median"):
        v = cols[name]
        print(f"{name}: {np.nanmin(v):.3f}–{np.nanmax(v):.3f}, ≥ 0.95 at {int((v >= 0.95).sum())}")
    low = cols["seed limit"] + 2 * cols["± SE"]
    print(f"seed limit + 2 SE ≥ 0.95 at {int((low >= 0.95).sum())} of {len(low)} checkpoints")
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
