"""Agreement between attribution methods and the further-training gold standard.

Every metric compares, for each test instance, the gold-standard row (one value per
left-out training instance) with a method's row for the same training instances, and
the per-instance values are then summarised as mean ± standard error over test instances.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from fimo.errors import InputError, check_choice
from fimo.io import write_text

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
    """Row-wise cosine similarity of two (T, L) arrays, shape (T,); NaN for a zero-norm row."""
    a, b = _pair(a, b)
    return _row_correlation(a, b)


def spearman_rows(a, b) -> np.ndarray:
    """Row-wise Spearman rank correlation of two (T, L) arrays, shape (T,).

    Ties get average ranks (the Pearson correlation of ``scipy.stats.rankdata`` ranks);
    a constant row (or a row with a NaN) gives NaN.
    """
    a, b = _pair(a, b)
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    return _row_correlation(ra, rb)


def mean_sem(x) -> tuple[float, float, int]:
    """NaN-aware (mean, standard error of the mean, number of finite values).

    The SEM is ``std(ddof=1) / sqrt(n)`` (NaN when n == 1); ``(nan, nan, 0)`` when no
    value is finite.
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
}


def agreement_by_checkpoint(
    gold,
    scores: Mapping[str, object],
    metrics: Sequence[str] = ("cosine", "spearman"),
    centred: Sequence[bool] = (True,),
) -> list[dict]:
    """Agreement of each method with the gold standard at each checkpoint.

    ``gold`` is a :class:`fimo.further.gold.GoldStandard`; ``scores`` maps a method name to
    its :class:`fimo.scores.Scores`, which must cover the gold standard's test and left-out
    instances (else InputError). Returns one dict per (method, checkpoint, metric, centred)
    with keys ``method, checkpoint, step, epoch, metric, centred, mean, sem, n``: mean ± SEM
    over test instances of the per-instance metric.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(centred, bool):
        centred = (centred,)
    for name in metrics:
        check_choice("metric", name, list(METRICS))
    flags = [bool(c) for c in centred]
    golds = {flag: np.asarray(gold.mean(flag), dtype=np.float64) for flag in dict.fromkeys(flags)}
    steps = np.asarray(gold.steps)
    epochs = np.asarray(gold.epochs)

    rows: list[dict] = []
    for method, sc in scores.items():
        values = np.asarray(sc.select(test=gold.test, train=gold.left_out).values, dtype=np.float64)
        for flag in flags:
            g = golds[flag]
            for c in range(g.shape[0]):
                for name in metrics:
                    mean, sem, n = mean_sem(METRICS[name](g[c], values))
                    rows.append(
                        {
                            "method": str(method),
                            "checkpoint": c,
                            "step": int(steps[c]),
                            "epoch": float(epochs[c]),
                            "metric": name,
                            "centred": flag,
                            "mean": mean,
                            "sem": sem,
                            "n": n,
                        }
                    )
    return rows


def _cell(key: str, value) -> str:
    if key == "centred":
        return "true" if value else "false"
    if key in ("epoch", "mean", "sem"):
        return repr(float(value))
    if key in ("checkpoint", "step", "n"):
        return str(int(value))
    return str(value)


def write_metrics_csv(path, rows: Iterable[Mapping]) -> Path:
    """Write agreement rows to a CSV (header ``method,checkpoint,...,n``), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, row in enumerate(rows):
        missing = [k for k in COLUMNS if k not in row]
        if missing:
            raise InputError(f"write_metrics_csv: row {i} lacks the columns {missing}")
        writer.writerow([_cell(k, row[k]) for k in COLUMNS])
    return write_text(path, buf.getvalue())


_BOOLS = {"true": True, "false": False}


def read_metrics_csv(path) -> list[dict]:
    """Read a CSV written by :func:`write_metrics_csv`, restoring the column types."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise InputError(
                f"{path}: not a fimo metrics CSV; expected the header {','.join(COLUMNS)}, "
                f"got {','.join(header or [])!r}"
            )
        rows = []
        for line, rec in enumerate(reader, start=2):
            if not rec:
                continue
            if len(rec) != len(COLUMNS):
                raise InputError(f"{path}:{line}: expected {len(COLUMNS)} fields, got {len(rec)}")
            raw = dict(zip(COLUMNS, rec, strict=True))
            try:
                centred = _BOOLS[raw["centred"].strip().lower()]
                rows.append(
                    {
                        "method": raw["method"],
                        "checkpoint": int(raw["checkpoint"]),
                        "step": int(raw["step"]),
                        "epoch": float(raw["epoch"]),
                        "metric": raw["metric"],
                        "centred": centred,
                        "mean": float(raw["mean"]),
                        "sem": float(raw["sem"]),
                        "n": int(raw["n"]),
                    }
                )
            except (KeyError, ValueError) as exc:
                raise InputError(f"{path}:{line}: cannot read the row {rec!r} ({exc})") from None
    return rows
