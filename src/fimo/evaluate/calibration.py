"""Calibration: how a method's scores map onto the gold standard's magnitudes.

Cosine and rank correlations ignore scale. Here the least-squares scale ``a`` (a line
through the origin, ``gold ≈ a · method``) says how large the gold standard's effects are
per unit of the method's score, and R² = 1 − Σ(gold − a·method)² / Σ(gold − row mean)²
how much of the gold standard's variance (within each test instance's row) the scaled
method explains. R² is negative when the scaled method fits worse than each row's mean.
For the centred gold standard, a per-test-instance R² equals the squared cosine; the
*pooled* fit, one scale for all test instances, also asks whether the magnitudes agree
across test instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fimo.evaluate.metrics import constant_rows, gold_flat, method_at, method_values, summarise

#: the quantities in the calibration table, in order
QUANTITIES = ("pooled_scale", "pooled_r2", "scale", "scale_median", "r2")


def fit_scale(gold_rows, values) -> dict[str, np.ndarray | float]:
    """Least-squares scales and R² of ``gold ≈ a · values`` for (T, L) arrays.

    Returns ``scale`` and ``r2`` per row (NaN for a constant or zero row) and
    ``pooled_scale``, ``pooled_r2`` for one scale shared by the valid rows.

    >>> fit = fit_scale(np.array([[2.0, -2.0, 0.0]]), np.array([[1.0, -1.0, 0.0]]))
    >>> fit["scale"].tolist(), fit["r2"].tolist(), fit["pooled_scale"]
    ([2.0], [1.0], 2.0)
    """
    g = np.asarray(gold_rows, dtype=np.float64)
    m = np.asarray(values, dtype=np.float64)
    valid = ~(constant_rows(g) | constant_rows(m))
    gm = np.einsum("tl,tl->t", g, m)
    mm = np.einsum("tl,tl->t", m, m)
    total = ((g - g.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    scale = np.full(len(g), np.nan)
    r2 = np.full(len(g), np.nan)
    ok = valid & (mm > 0) & (total > 0)
    scale[ok] = gm[ok] / mm[ok]
    resid = ((g - scale[:, None] * m) ** 2).sum(axis=1)
    r2[ok] = 1.0 - resid[ok] / total[ok]
    if ok.any():
        pooled = float(gm[ok].sum() / mm[ok].sum())
        pooled_resid = float(((g[ok] - pooled * m[ok]) ** 2).sum())
        pooled_r2 = 1.0 - pooled_resid / float(total[ok].sum())
    else:
        pooled, pooled_r2 = float("nan"), float("nan")
    return {
        "scale": scale,
        "r2": r2,
        "pooled_scale": pooled,
        "pooled_r2": pooled_r2,
        "n": int(ok.sum()),
    }


def calibration(
    gold, scores: Mapping[str, object], centred: Sequence[bool] = (True, False)
) -> list[dict]:
    """Calibration of each method against the gold standard, at every checkpoint.

    One row per (method, checkpoint, centred, quantity), columns ``method, checkpoint,
    step, epoch, centred, quantity, value, sem, n``. Quantities: ``pooled_scale`` and
    ``pooled_r2`` (one scale for all test instances; ``sem`` NaN), ``scale`` and ``r2``
    (per test instance, mean ± SEM), ``scale_median`` (per test instance, the median).
    ``n`` counts the test instances whose rows are not constant. A method with a checkpoint
    axis is fitted at each checkpoint with its matrix at the same step.


    A method whose scores are the gold standard's divided by 2 on one test instance and by 4
    on the other: each row is fitted exactly (R² 1), one pooled scale is not.

    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 1, 2)), loss_without=[[[[3.0, 0.0, -4.0], [0.0, 3.0, -4.0]]]],
    ...     steps=[10], epochs=[1.0], left_out=[4, 5, 6], test=[0, 1], seeds=[0])
    >>> s = Scores([[1.5, 0.0, -2.0], [0.0, 0.75, -1.0]], test=[0, 1], train=[4, 5, 6], method="m")
    >>> rows = calibration(gold, {"m": s}, centred=False)
    >>> {r["quantity"]: round(r["value"], 3) for r in rows}
    {'pooled_scale': 2.4, 'pooled_r2': 0.899, 'scale': 3.0, 'scale_median': 3.0, 'r2': 1.0}
    """
    flags = [bool(c) for c in ((centred,) if isinstance(centred, bool) else centred)]
    adjusted = np.asarray(gold.mean(False), dtype=np.float64)  # (C, T, L)
    flat = gold_flat(gold, adjusted)
    rows: list[dict] = []
    for method, sc in scores.items():
        values = method_values(gold, sc)
        for flag in flags:
            view = adjusted - adjusted.mean(axis=-1, keepdims=True) if flag else adjusted
            for c in range(len(gold.steps)):
                g = view[c].copy()
                g[flat[c]] = 0.0  # a constant row is left out of every fit
                fit = fit_scale(g, method_at(values, c))
                scale_mean, scale_sem, n = summarise(fit["scale"])
                r2_mean, r2_sem, _ = summarise(fit["r2"])
                finite = fit["scale"][np.isfinite(fit["scale"])]
                median = float(np.median(finite)) if finite.size else float("nan")
                base = {
                    "method": str(method),
                    "checkpoint": c,
                    "step": int(gold.steps[c]),
                    "epoch": float(gold.epochs[c]),
                    "centred": flag,
                }
                for quantity, value, sem in (
                    ("pooled_scale", fit["pooled_scale"], float("nan")),
                    ("pooled_r2", fit["pooled_r2"], float("nan")),
                    ("scale", float(scale_mean), float(scale_sem)),
                    ("scale_median", median, float("nan")),
                    ("r2", float(r2_mean), float(r2_sem)),
                ):
                    rows.append(
                        {
                            **base,
                            "quantity": quantity,
                            "value": float(value),
                            "sem": sem,
                            "n": int(n),
                        }
                    )
    return rows
