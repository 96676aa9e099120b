"""How the number of further-training seeds limits what can be measured.

Two views:

- :func:`seed_count_study` (PAPER.md §6, the paper's Figs 3 and 7): average the seeds in
  non-overlapping windows of k, score every window's gold standard against each method,
  average over windows and test instances, and take the best checkpoint for each k.
- :func:`noise_floor`: how well the gold standard agrees with itself. The seeds are split
  into two halves of ``h = S // 2`` seeds; the agreement of the two half means, per test
  instance and averaged over splits, is the *split-half* agreement ``r_h``. The
  Spearman–Brown formula ``ρ_S = m r_h / (1 + (m − 1) r_h)``, ``m = S / h``, estimates the
  agreement of two independent gold standards of S seeds each, and ``sqrt(ρ_S)`` the
  agreement that a perfect, noise-free method would reach with the S-seed gold standard: the
  *ceiling* drawn next to the methods. Both follow from a model in which each seed adds
  independent noise of the same size to the true attribution; the formula is applied to the
  mean of ``r_h`` over test instances, and its SEM is carried through by the delta method.
  The model fits the centred gold standard; without centring, most of the seed noise is a
  shift shared by every left-out instance, so the ceiling is only drawn for the centred view.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from fimo.errors import InputError
from fimo.evaluate.metrics import (
    PreparedRows,
    check_metrics,
    gold_flat,
    method_values,
    nanmean,
    per_test_values,
    summarise,
)

#: the seed counts of the paper's seed-count study; the number of seeds S is always added
SEED_COUNTS = (1, 2, 5, 10, 20, 50, 100)
#: the metrics for which a split-half agreement and its Spearman–Brown correction are made
NOISE_METRICS = ("cosine", "spearman", "pearson")


def seed_counts(n_seeds: int, counts: Sequence[int] | None = None) -> list[int]:
    """The window sizes k of the seed-count study for ``n_seeds`` seeds.

    >>> seed_counts(16)
    [1, 2, 5, 10, 16]
    >>> seed_counts(1)
    [1]
    """
    if n_seeds < 1:
        raise InputError(f"seed-count study: needs at least one seed; got {n_seeds}")
    counts = SEED_COUNTS if counts is None else counts
    bad = [k for k in counts if int(k) < 1]
    if bad:
        raise InputError(f"seed-count study: window sizes must be at least 1; got {bad}")
    return sorted({int(k) for k in counts if int(k) <= n_seeds} | {int(n_seeds)})


def seed_count_study(
    gold,
    scores: Mapping[str, object],
    metrics: Sequence[str] = ("cosine", "spearman"),
    centred: Sequence[bool] = (True, False),
    counts: Sequence[int] | None = None,
) -> list[dict]:
    """Agreement with gold standards made of k seeds, for each window size k.

    For each k in :func:`seed_counts` the S seeds are cut into ``S // k`` non-overlapping
    windows (``GoldStandard.windows``); each window's mean is scored against each method,
    per test instance, and averaged over the windows; the rows hold the mean ± SEM over test
    instances of that average, at every checkpoint. ``best`` marks, per (method, k, metric,
    centred), the checkpoint with the largest mean: the paper's "max over epochs", whose SEM
    is the one taken at that checkpoint.

    Columns: ``method, k, windows, checkpoint, step, epoch, metric, centred, mean, sem, n,
    best``.


    Two seeds: the method's cosine with each seed alone (1 and 0.5, averaged over the two
    windows of k = 1) and with their mean (k = 2):

    >>> from fimo.further.gold import GoldStandard
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((2, 1, 1)),
    ...     loss_without=[[[[1.0, 0.0, -1.0]]], [[[1.0, -1.0, 0.0]]]],  # seeds 0 and 1
    ...     steps=[10], epochs=[1.0], left_out=[4, 5, 6], test=[0], seeds=[0, 1])
    >>> from fimo.scores import Scores
    >>> s = Scores([[1.0, 0.0, -1.0]], test=[0], train=[4, 5, 6], method="m")
    >>> rows = seed_count_study(gold, {"m": s}, metrics=["cosine"], centred=True)
    >>> [(r["k"], r["windows"], round(r["mean"], 4), r["best"]) for r in rows]
    [(1, 2, 0.75, True), (2, 1, 0.866, True)]
    """
    metrics = check_metrics(metrics)
    flags = [bool(c) for c in ((centred,) if isinstance(centred, bool) else centred)]
    S = len(gold.seeds)
    values = {name: method_values(gold, sc) for name, sc in scores.items()}
    rows: list[dict] = []
    for k in seed_counts(S, counts):
        window_means = _window_agreement(gold, k, values, metrics, flags)
        for flag in flags:
            for method in values:
                for name in metrics:
                    mean, sem, n = summarise(window_means[flag, method, name])
                    finite = np.flatnonzero(np.isfinite(mean))
                    best = int(finite[np.argmax(mean[finite])]) if finite.size else -1
                    for c in range(len(gold.steps)):
                        rows.append(
                            {
                                "method": str(method),
                                "k": k,
                                "windows": S // k,
                                "checkpoint": c,
                                "step": int(gold.steps[c]),
                                "epoch": float(gold.epochs[c]),
                                "metric": name,
                                "centred": flag,
                                "mean": float(mean[c]),
                                "sem": float(sem[c]),
                                "n": int(n[c]),
                                "best": c == best,
                            }
                        )
    return rows


def _window_agreement(gold, k: int, values: dict, metrics, flags) -> dict:
    """Per (centred, method, metric), (C, T): each method's agreement with the means of
    the windows of k seeds, averaged over the windows. Computed a block of checkpoints at a
    time (:meth:`~fimo.further.gold.GoldStandard.blocks`), so the windows' means, (S // k,
    C, T, L), are never held whole."""
    C, T = len(gold.steps), len(gold.test)
    out = {(f, m, n): np.empty((C, T)) for f in flags for m in values for n in metrics}
    start = 0
    for part in gold.blocks():
        here = slice(start, start + len(part.steps))
        start = here.stop
        adjusted = np.asarray(part.windows(k, centred=False), dtype=np.float64)
        flat = gold_flat(part, adjusted)  # (W, n, T)
        for flag in flags:
            windows = adjusted - adjusted.mean(axis=-1, keepdims=True) if flag else adjusted
            windows = PreparedRows(windows, undefined=flat)  # ranked once for all methods
            for method, v in values.items():
                per = per_test_values(windows, v if v.ndim == 2 else v[here], metrics)
                for name in metrics:  # (W, n, T), averaged over the windows
                    out[flag, method, name][here] = nanmean(per[name], axis=0)
    return out


def _splits(S: int, h: int, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` splits of S seeds into two halves of h; all distinct ones if fewer exist."""
    total = math.comb(S, h) * math.comb(S - h, h) // 2
    if total <= n_splits:
        out, seen = [], set()
        for a in itertools.combinations(range(S), h):
            rest = [s for s in range(S) if s not in a]
            for b in itertools.combinations(rest, h):
                key = frozenset((a, b))
                if key not in seen:
                    seen.add(key)
                    out.append((np.array(a), np.array(b)))
        return out
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(S)
        out.append((np.sort(perm[:h]), np.sort(perm[h : 2 * h])))
    return out


def spearman_brown(r, m: float):
    """The Spearman–Brown prophecy: agreement at m times the seeds, from agreement ``r``.

    NaN where ``1 + (m − 1) r <= 0``.

    >>> round(float(spearman_brown(0.5, 2)), 4)
    0.6667
    """
    r = np.asarray(r, dtype=np.float64)
    den = 1.0 + (m - 1.0) * r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, m * r / den, np.nan)


def noise_floor(
    gold,
    metrics: Sequence[str] = NOISE_METRICS,
    centred: Sequence[bool] = (True, False),
    splits: int = 20,
    seed: int = 0,
) -> list[dict]:
    """The gold standard's agreement with itself over seeds, at every checkpoint.

    For each split of the seeds into two halves of ``h = S // 2`` (all distinct splits if
    there are at most ``splits`` of them, else ``splits`` random ones drawn with
    ``numpy.random.default_rng(seed)``), each metric compares the two half means per test
    instance; the rows hold, per (checkpoint, metric, centred), three ``estimate`` s:

    - ``split_half``: mean ± SEM over test instances of the split-averaged agreement
      (``seeds`` = h);
    - ``spearman_brown``: its Spearman–Brown step-up to S seeds (``seeds`` = S);
    - ``ceiling``: ``sqrt(spearman_brown)``, what a perfect method would reach.

    With a single seed there is nothing to split: every value is NaN with ``n = 0``.
    Columns: ``checkpoint, step, epoch, metric, centred, estimate, seeds, splits, mean, sem,
    n``.


    The two seeds' centred scores have cosine 0.5; stepped up to two seeds, 2/3; a perfect
    method's ceiling is its square root:

    >>> from fimo.further.gold import GoldStandard
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((2, 1, 1)),
    ...     loss_without=[[[[1.0, 0.0, -1.0]]], [[[1.0, -1.0, 0.0]]]],  # seeds 0 and 1
    ...     steps=[10], epochs=[1.0], left_out=[4, 5, 6], test=[0], seeds=[0, 1])
    >>> floor = noise_floor(gold, metrics=["cosine"], centred=True)
    >>> [(r["estimate"], r["seeds"], round(r["mean"], 4)) for r in floor]
    [('split_half', 1, 0.5), ('spearman_brown', 2, 0.6667), ('ceiling', 2, 0.8165)]
    """
    metrics = check_metrics(metrics)
    flags = [bool(c) for c in ((centred,) if isinstance(centred, bool) else centred)]
    S = len(gold.seeds)
    h = S // 2
    parts = _splits(S, h, splits, seed) if h >= 1 else []
    rows: list[dict] = []
    for flag in flags:
        per_split = _split_half_values(gold, parts, metrics, flag)
        for name in metrics:
            mean, sem, n = summarise(per_split[name])
            for c in range(len(gold.steps)):
                base = {
                    "checkpoint": c,
                    "step": int(gold.steps[c]),
                    "epoch": float(gold.epochs[c]),
                    "metric": name,
                    "centred": flag,
                }
                for estimate, seeds, value, err in _estimates(float(mean[c]), float(sem[c]), S, h):
                    rows.append(
                        {
                            **base,
                            "estimate": estimate,
                            "seeds": seeds,
                            "splits": len(parts),
                            "mean": value,
                            "sem": err,
                            "n": int(n[c]),
                        }
                    )
    return rows


def _split_half_values(gold, parts, metrics, centred: bool) -> dict[str, np.ndarray]:
    """Per metric, (C, T): the agreement of the two halves' means, averaged over the splits.

    All NaN when there is no split (a single seed).
    """
    C, T = len(gold.steps), len(gold.test)
    per_split = {name: np.empty((len(parts), C, T)) for name in metrics}
    start = 0
    for part in gold.blocks():  # a block of checkpoints at a time: (S, C, T, L) never whole
        here = slice(start, start + len(part.steps))
        start = here.stop
        adjusted = np.asarray(part.adjusted(), dtype=np.float64)  # (S, n, T, L)
        for j, (a, b) in enumerate(parts):
            ma, mb = adjusted[a].mean(axis=0), adjusted[b].mean(axis=0)  # (n, T, L)
            flat = gold_flat(part, ma) | gold_flat(part, mb)
            if centred:
                ma = ma - ma.mean(axis=-1, keepdims=True)
                mb = mb - mb.mean(axis=-1, keepdims=True)
            per = per_test_values(ma, mb, metrics, undefined=flat)
            for name in metrics:
                per_split[name][j, here] = per[name]
    empty = np.full((C, T), np.nan)
    return {name: nanmean(v, axis=0) if len(parts) else empty for name, v in per_split.items()}


def _estimates(r: float, sem: float, S: int, h: int) -> list[tuple[str, int, float, float]]:
    """(estimate, seeds, value, SEM) for the split-half agreement ``r`` of halves of h seeds,
    its Spearman–Brown step-up to S seeds and the ceiling (its square root); the SEMs carried
    through each transformation to first order."""
    m = S / h if h else math.nan
    rho = float(spearman_brown(r, m)) if h else math.nan
    d_rho = m / (1.0 + (m - 1.0) * r) ** 2 if h and math.isfinite(rho) else math.nan
    rho_sem = d_rho * sem
    ceiling = math.sqrt(rho) if math.isfinite(rho) and rho >= 0 else math.nan
    ceiling_sem = rho_sem / (2 * ceiling) if ceiling > 0 else math.nan
    return [
        ("split_half", h, r, sem),
        ("spearman_brown", S, rho, rho_sem),
        ("ceiling", S, ceiling, ceiling_sem),
    ]
