"""Agreement between attribution methods and the further-training gold standard.

Every metric compares, for each test instance, the gold-standard row (one value per
left-out training instance) with a method's row for the same training instances, and
the per-instance values are then summarised as mean ± standard error over test instances.

Metrics (all in [-1, 1] or [0, 1], larger = closer to the gold standard):

- ``cosine``: cosine similarity (the paper's main metric);
- ``spearman``: Spearman rank correlation (ties get average ranks, as in scipy);
- ``pearson``: Pearson correlation;
- ``top5_helpful``, ``top10_helpful``: the share of the gold standard's k most helpful
  instances (largest scores) that are among the method's k most helpful ones;
- ``top5_harmful``, ``top10_harmful``: the same for the k most harmful (smallest scores);
- ``sign``: the share of instances whose score has the gold standard's sign (instances
  where either score is exactly zero are not counted).

Undefined values are NaN and are left out of the mean; the ``n`` column says how many test
instances count. A row that does not tell training instances apart (a constant row; for the
gold standard, constant up to the rounding of the stored losses) gives NaN for every metric;
a top-k overlap is NaN when k is not smaller than the number of left-out instances (every
instance would be in the top k).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
from scipy.stats import rankdata

from fimo.errors import InputError, check_choice

#: the columns of the ``by_checkpoint`` table
COLUMNS = ("method", "checkpoint", "step", "epoch", "metric", "centred", "mean", "sem", "n")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(
            f"row-wise metrics need two 2-D arrays of the same shape (T, L); "
            f"got {a.shape} and {b.shape}"
        )
    return a, b


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (T, L) float arrays; NaN where either row has zero norm."""
    num = np.einsum("tl,tl->t", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out = np.full(a.shape[0], np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    # rounding can push |r| a hair over 1 for (anti)parallel rows
    return np.clip(out, -1.0, 1.0)


def cosine_rows(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two (T, L) arrays, shape (T,); NaN for a zero-norm row.

    >>> cosine_rows([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [-1.0, -1.0]]).round(6).tolist()
    [1.0, -1.0]
    """
    a, b = _pair(a, b)
    return _row_correlation(a, b)


def constant_rows(a) -> np.ndarray:
    """True for each row of a (T, L) array that is constant or holds a non-finite value.

    >>> constant_rows([[1.0, 1.0], [1.0, 2.0], [np.nan, 2.0]]).tolist()
    [True, False, True]
    """
    a = np.asarray(a, dtype=np.float64)
    if a.shape[-1] == 0:
        return np.ones(a.shape[:-1], dtype=bool)
    bad = ~np.isfinite(a).all(axis=-1)
    with np.errstate(invalid="ignore"):
        flat = np.ptp(np.where(np.isfinite(a), a, 0.0), axis=-1) == 0
    return bad | flat


def pearson_rows(a, b) -> np.ndarray:
    """Row-wise Pearson correlation of two (T, L) arrays, shape (T,); NaN for a constant row.

    >>> pearson_rows([[1.0, 2.0, 3.0]], [[10.0, 20.0, 31.0]]).round(4).tolist()
    [0.9996]
    """
    a, b = _pair(a, b)
    out = _row_correlation(a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True))
    out[constant_rows(a) | constant_rows(b)] = np.nan
    return out


def spearman_rows(a, b) -> np.ndarray:
    """Row-wise Spearman rank correlation of two (T, L) arrays, shape (T,).

    Ties get average ranks (the Pearson correlation of ``scipy.stats.rankdata`` ranks);
    a constant row (or a row with a NaN) gives NaN.

    >>> spearman_rows([[1.0, 2.0, 3.0]], [[1.0, 5.0, 4.0]]).round(6).tolist()
    [0.5]
    """
    a, b = _pair(a, b)
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    out = _row_correlation(ra, rb)
    out[constant_rows(a) | constant_rows(b)] = np.nan
    return out


def top_k_membership(a, k: int) -> np.ndarray:
    """For each row of a (T, L) array, the chance that each entry is among the k largest.

    1 above the k-th largest value, 0 below it; entries tied with it share the remaining
    places equally (the chance under a random order of the tied entries).

    >>> top_k_membership([[3.0, 1.0, 1.0, 0.0]], 2).tolist()
    [[1.0, 0.5, 0.5, 0.0]]
    """
    a = np.asarray(a, dtype=np.float64)
    kth = -np.sort(-a, axis=1)[:, k - 1 : k]
    greater = a > kth
    equal = a == kth
    n_greater = greater.sum(axis=1, keepdims=True)
    n_equal = np.maximum(equal.sum(axis=1, keepdims=True), 1)
    return greater + equal * (k - n_greater) / n_equal


def top_k_overlap_rows(a, b, k: int, which: str = "helpful") -> np.ndarray:
    """Row-wise share of ``a``'s k most helpful (or harmful) entries that ``b`` also ranks
    there, shape (T,).

    ``which="helpful"`` compares the k largest values, ``"harmful"`` the k smallest. Ties
    at the boundary count by their chance of being picked (:func:`top_k_membership`), so
    the result is the expected overlap under a random order of tied values and does not
    depend on the column order. NaN for a constant row and when ``k >= L``.

    >>> a = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    >>> top_k_overlap_rows(a, [[5.0, 1.0, 4.0, 2.0, 3.0]], k=2).tolist()
    [0.5]
    >>> top_k_overlap_rows(a, [[5.0, 1.0, 4.0, 2.0, 3.0]], k=2, which="harmful").tolist()
    [0.5]
    """
    check_choice("which", which, ["helpful", "harmful"])
    a, b = _pair(a, b)
    if k < 1:
        raise InputError(f"top-k overlap: k must be at least 1; got {k}")
    if k >= a.shape[1]:
        return np.full(a.shape[0], np.nan)
    if which == "harmful":
        a, b = -a, -b
    bad = constant_rows(a) | constant_rows(b)
    a = np.where(np.isfinite(a), a, 0.0)
    b = np.where(np.isfinite(b), b, 0.0)
    out = (top_k_membership(a, k) * top_k_membership(b, k)).sum(axis=1) / k
    out[bad] = np.nan
    return out


def sign_agreement_rows(a, b) -> np.ndarray:
    """Row-wise share of entries where ``a`` and ``b`` have the same sign, shape (T,).

    Entries where either is exactly zero are not counted; NaN when none is left, or for a
    row with a non-finite value.

    >>> sign_agreement_rows([[1.0, -2.0, 3.0, 0.0]], [[2.0, 1.0, 1.0, 5.0]]).round(4).tolist()
    [0.6667]
    """
    a, b = _pair(a, b)
    sa, sb = np.sign(a), np.sign(b)
    counted = (sa != 0) & (sb != 0)
    n = counted.sum(axis=1)
    agree = ((sa == sb) & counted).sum(axis=1)
    out = np.full(a.shape[0], np.nan)
    ok = n > 0
    out[ok] = agree[ok] / n[ok]
    out[~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))] = np.nan
    return out


def mean_sem(x) -> tuple[float, float, int]:
    """NaN-aware (mean, standard error of the mean, number of finite values).

    The SEM is ``std(ddof=1) / sqrt(n)`` (NaN when n == 1); ``(nan, nan, 0)`` when no
    value is finite.

    >>> mean_sem([1.0, 3.0, np.nan])
    (2.0, 1.0, 2)
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    sem = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return mean, sem, n


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": cosine_rows,
    "spearman": spearman_rows,
    "pearson": pearson_rows,
    "top5_helpful": partial(top_k_overlap_rows, k=5, which="helpful"),
    "top10_helpful": partial(top_k_overlap_rows, k=10, which="helpful"),
    "top5_harmful": partial(top_k_overlap_rows, k=5, which="harmful"),
    "top10_harmful": partial(top_k_overlap_rows, k=10, which="harmful"),
    "sign": sign_agreement_rows,
}
#: every metric, in the order tables and reports show them
ALL_METRICS: tuple[str, ...] = tuple(METRICS)


def check_metrics(metrics) -> tuple[str, ...]:
    """The metric names as a tuple, each checked against :data:`METRICS`.

    >>> check_metrics("cosine")
    ('cosine',)
    """
    if metrics is None:
        return ALL_METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    for name in metrics:
        check_choice("metric", name, list(METRICS))
    return tuple(metrics)


def gold_flat(gold, adjusted_mean: np.ndarray) -> np.ndarray:
    """True where a gold-standard row (``adjusted_mean[..., L]``) is constant up to rounding.

    A row counts as constant when its spread is at most 8 units of rounding of the largest
    stored test loss at that checkpoint (the centred view of such a row is rounding noise).
    ``adjusted_mean`` has shape (..., C, T, L), ``gold.loss_full`` (S, C, T).

    >>> from types import SimpleNamespace
    >>> gold = SimpleNamespace(loss_full=np.ones((2, 1, 2)))  # S = 2, C = 1, T = 2
    >>> gold_flat(gold, np.array([[[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]])).tolist()
    [[True, False]]
    """
    full = np.asarray(gold.loss_full)
    dtype = full.dtype if np.issubdtype(full.dtype, np.floating) else np.float64
    scale = np.abs(full).max(axis=0) if full.size else np.zeros(full.shape[1:])
    tol = 8 * np.finfo(dtype).eps * scale  # (C, T)
    a = np.asarray(adjusted_mean, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        spread = np.ptp(a, axis=-1) if a.shape[-1] else np.zeros(a.shape[:-1])
    return ~np.isfinite(a).all(axis=-1) | (spread <= tol)


class PreparedRows:
    """Gold rows (..., T, L) with what comparing them to many methods reuses: the rows as a
    (N, L) matrix, the mask of rows where a metric is undefined (constant, non-finite, or
    marked ``undefined`` (..., T)), and, computed once when first asked for, their centred
    ranks. Pass it to :func:`per_test_values` in place of the array.

    >>> rows = PreparedRows([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    >>> rows.flat.shape, rows.mask.tolist()  # the second row is constant
    ((2, 3), [False, True])
    >>> PreparedRows([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], undefined=[True, False]).mask.tolist()
    [True, True]
    """

    def __init__(self, gold_rows, undefined=None):
        rows = np.asarray(gold_rows, dtype=np.float64)
        self.shape, self.lead = rows.shape, rows.shape[:-1]
        self.flat = rows.reshape(-1, rows.shape[-1])
        mask = constant_rows(self.flat)
        if undefined is not None:
            mask = mask | np.broadcast_to(np.asarray(undefined, dtype=bool), self.lead).reshape(-1)
        self.mask = mask
        self._ranks = None

    def centred_ranks(self) -> np.ndarray:
        """Each row's ranks minus their mean (Spearman's correlation is their cosine).

        >>> PreparedRows([[10.0, 30.0, 20.0]]).centred_ranks().tolist()
        [[-1.0, 1.0, 0.0]]
        """
        if self._ranks is None:
            self._ranks = _centred_ranks(self.flat)
        return self._ranks


def _centred_ranks(x: np.ndarray) -> np.ndarray:
    r = rankdata(x, axis=-1) if x.shape[-1] else np.zeros_like(x)
    return r - r.mean(axis=-1, keepdims=True)


def per_test_values(
    gold_rows, values: np.ndarray, metrics: Sequence[str], undefined=None
) -> dict[str, np.ndarray]:
    """Each metric for every gold row against the method's rows.

    ``gold_rows`` has shape (..., T, L) (or is a :class:`PreparedRows`, whose ``undefined``
    then applies), ``values`` (T, L) or any shape that broadcasts to it; ``undefined``
    (..., T) marks gold rows to treat as constant. Returns ``{metric: array (..., T)}``; a
    constant method row gives NaN throughout. Spearman ranks the method's rows once at their
    own shape, and a PreparedRows ranks the gold rows once for every method.

    >>> per_test_values(np.array([[1.0, 2.0, 3.0]]), np.array([[3.0, 2.0, 1.0]]), ["spearman"])
    {'spearman': array([-1.])}
    """
    gold = gold_rows if isinstance(gold_rows, PreparedRows) else PreparedRows(gold_rows, undefined)
    values = np.asarray(values, dtype=np.float64)
    L = gold.shape[-1]
    a = gold.flat

    def spread(x):  # a method-shaped array as rows of the gold's shape
        return np.broadcast_to(x, gold.shape).reshape(-1, L)

    b = spread(values)
    mask = np.broadcast_to(constant_rows(values), gold.lead).reshape(-1) | gold.mask
    out = {}
    for name in metrics:
        if name == "spearman":
            if L == 0:
                v = np.full(a.shape[0], np.nan)
            else:
                v = _row_correlation(gold.centred_ranks(), spread(_centred_ranks(values)))
        else:
            v = np.array(METRICS[name](a, b), dtype=np.float64)
        v[mask] = np.nan
        out[name] = v.reshape(gold.lead)
    return out


def nanmean(x, axis: int) -> np.ndarray:
    """Mean of the finite values along ``axis``; NaN (and no warning) where there is none.

    >>> nanmean(np.array([[1.0, np.nan], [np.nan, np.nan]]), axis=1).tolist()
    [1.0, nan]
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


def summarise(per_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean, SEM and count over the last axis (test instances) of an array.

    >>> m, s, n = summarise(np.array([[1.0, 3.0], [np.nan, 2.0]]))
    >>> m.tolist(), n.tolist()
    ([2.0, 2.0], [2, 1])
    """
    x = np.asarray(per_test, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=-1)
    z = np.where(ok, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(axis=-1) / n
        dev = np.where(ok, x - mean[..., None], 0.0)
        sd = np.sqrt((dev**2).sum(axis=-1) / (n - 1))
        sem = sd / np.sqrt(n)
    mean = np.where(n > 0, mean, np.nan)
    sem = np.where(n > 1, sem, np.nan)
    return mean, sem, n


def method_values(gold, sc) -> np.ndarray:
    """A method's scores on the gold standard's test and left-out instances, float64: its
    (T, L) matrix, used at every checkpoint, or, for a method with a checkpoint axis, its
    (C, T, L) matrices at the gold standard's C checkpoint steps. Both broadcast against the
    gold standard's (..., C, T, L).

    A gold-standard step for which the method has no matrix raises :class:`InputError`.

    >>> from types import SimpleNamespace
    >>> from fimo.scores import Scores
    >>> gold = SimpleNamespace(test=np.array([0]), left_out=np.array([5, 6]), steps=[8])
    >>> s = Scores(np.arange(6.0).reshape(3, 1, 2), [0], [5, 6], "u", steps=[4, 8, 12])
    >>> method_values(gold, s).tolist()
    [[[2.0, 3.0]]]
    """
    sub = sc.select(test=gold.test, train=gold.left_out)
    if sub.steps is None:
        return np.asarray(sub.values, dtype=np.float64)
    steps = [int(s) for s in np.asarray(gold.steps)]
    where = {int(s): c for c, s in enumerate(sub.steps)}
    missing = [s for s in steps if s not in where]
    if missing:
        raise InputError(
            f"scores {sc.method!r} have no matrix at the gold standard's step(s) {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; they hold the steps "
            f"{sub.steps.tolist()[:8]}{' ...' if len(sub.steps) > 8 else ''}: compute them at "
            f"every checkpoint step of the gold standard ({steps[:8]}"
            f"{' ...' if len(steps) > 8 else ''})"
        )
    return np.asarray(sub.values[[where[s] for s in steps]], dtype=np.float64)


def method_at(values: np.ndarray, checkpoint: int) -> np.ndarray:
    """The (T, L) matrix of :func:`method_values` at a checkpoint position.

    >>> method_at(np.zeros((3, 2, 4)), 1).shape, method_at(np.zeros((2, 4)), 1).shape
    ((2, 4), (2, 4))
    """
    return values if values.ndim == 2 else values[checkpoint]


def agreement_by_checkpoint(
    gold,
    scores: Mapping[str, object],
    metrics: Sequence[str] = ("cosine", "spearman"),
    centred: Sequence[bool] = (True,),
) -> list[dict]:
    """Agreement of each method with the gold standard at each checkpoint.

    ``gold`` is a :class:`fimo.further.gold.GoldStandard`; ``scores`` maps a method name to
    its :class:`fimo.scores.Scores`, which must cover the gold standard's test and left-out
    instances (else InputError). ``metrics`` are names from :data:`METRICS` (``None``: all).
    Returns one dict per (method, checkpoint, metric, centred) with keys ``method,
    checkpoint, step, epoch, metric, centred, mean, sem, n``: mean ± SEM over test
    instances of the per-instance metric, ``n`` the number of test instances where it is
    defined. A method with a checkpoint axis is compared at each checkpoint with its matrix
    at the same step (:func:`method_values`), any other with its one matrix.

    Scores equal to the gold standard's at the second checkpoint agree fully there:

    >>> from fimo import GoldStandard, Scores
    >>> rng = np.random.default_rng(0)
    >>> gold = GoldStandard(rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 2, 4)),
    ...                     [5, 10], [0.5, 1.0], [0, 1, 2, 3], [0, 1], [0, 1, 2])
    >>> s = Scores(gold.mean(False)[1], [0, 1], [0, 1, 2, 3], "exact")
    >>> rows = agreement_by_checkpoint(gold, {"exact": s}, ["cosine"], centred=(False,))
    >>> [(r["step"], r["metric"], round(r["mean"], 6), r["n"]) for r in rows]
    [(5, 'cosine', 0.052906, 2), (10, 'cosine', 1.0, 2)]
    """
    metrics = check_metrics(metrics)
    if isinstance(centred, bool):
        centred = (centred,)
    flags = [bool(c) for c in centred]
    golds = {flag: np.asarray(gold.mean(flag), dtype=np.float64) for flag in dict.fromkeys(flags)}
    adjusted = golds[False] if False in golds else np.asarray(gold.mean(False), dtype=np.float64)
    flat = gold_flat(gold, adjusted)  # (C, T)
    steps = np.asarray(gold.steps)
    epochs = np.asarray(gold.epochs)

    prepared = {flag: PreparedRows(golds[flag], undefined=flat) for flag in flags}
    rows: list[dict] = []
    for method, sc in scores.items():
        values = method_values(gold, sc)
        for flag in flags:
            per = per_test_values(prepared[flag], values, metrics)
            stats = {name: summarise(per[name]) for name in metrics}
            for c in range(len(steps)):
                for name in metrics:
                    mean, sem, n = (stats[name][j][c] for j in range(3))
                    rows.append(
                        {
                            "method": str(method),
                            "checkpoint": c,
                            "step": int(steps[c]),
                            "epoch": float(epochs[c]),
                            "metric": name,
                            "centred": flag,
                            "mean": float(mean),
                            "sem": float(sem),
                            "n": int(n),
                        }
                    )
    return rows
