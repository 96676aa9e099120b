"""What the report says, computed from an evaluation's rows: sentences and table contents.

Everything here reads the rows made by the evaluation (:mod:`fimo.evaluate.metrics`,
:mod:`~fimo.evaluate.seeds`, :mod:`~fimo.evaluate.calibration`, ...) and returns plain data:
sentences as strings, tables as dicts of rows. No number is hard-coded and nothing here
knows HTML; :mod:`fimo.evaluate.report` lays the content out as a page and
:mod:`fimo.terminal` as a terminal table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from fimo.evaluate.formatting import (
    epoch_text,
    gold_name,
    is_finite,
    join_words,
    label,
    lower_first,
    mean_sem_text,
    plural,
    sci,
)
from fimo.evaluate.metrics import ALL_METRICS

__all__ = [
    "additivity_sentence",
    "by_method",
    "calibration_table",
    "example_groups",
    "ft_lds_sentences",
    "ft_lds_table",
    "group_attribution_table",
    "headline",
    "metric_table",
    "noise_table",
    "seed_table",
    "summary",
    "summary_sentences",
    "views",
]


def _num3(mean, sem=None) -> str:
    return mean_sem_text(mean, sem, 3)


# -- reading the agreement table ---------------------------------------------------------------
def by_method(rows, metric: str, centred: bool) -> dict[str, list[Mapping]]:
    """Rows of one metric and centring, grouped by method (first-seen order), by checkpoint.

    >>> by_method([{"method": "a", "metric": "cosine", "centred": True, "checkpoint": 0,
    ...             "epoch": 1.0}], "cosine", True)["a"][0]["epoch"]
    1.0
    """
    out: dict[str, list[Mapping]] = {}
    for row in rows:
        if row["metric"] == metric and bool(row["centred"]) == bool(centred):
            out.setdefault(str(row["method"]), []).append(row)
    for rs in out.values():
        rs.sort(key=lambda r: (int(r["checkpoint"]), float(r["epoch"])))
    return out


def views(rows: Iterable[Mapping]) -> list[tuple[str, bool]]:
    """The (metric, centred) pairs present in ``rows``: centred first, then known metrics
    in their usual order, then any others by name.

    >>> views([{"metric": "spearman", "centred": False}, {"metric": "cosine", "centred": False},
    ...        {"metric": "sign", "centred": True}])
    [('sign', True), ('cosine', False), ('spearman', False)]
    """
    pairs = {(str(r["metric"]), bool(r["centred"])) for r in rows}
    order = list(ALL_METRICS)
    return sorted(
        pairs,
        key=lambda p: (not p[1], order.index(p[0]) if p[0] in order else len(order), p[0]),
    )


def _point(row: Mapping) -> dict:
    return {
        "checkpoint": int(row["checkpoint"]),
        "step": int(row["step"]),
        "epoch": float(row["epoch"]),
        "mean": float(row["mean"]),
        "sem": float(row["sem"]),
        "n": int(row["n"]),
    }


def summary(rows, metric: str = "cosine", centred: bool = True) -> list[dict]:
    """Per method: the agreement at the first and last checkpoints and at its peak.

    Each entry is ``{"method", "first", "last", "peak"}`` where the last three are dicts
    with ``checkpoint, step, epoch, mean, sem, n`` (``peak`` is the checkpoint with the
    largest mean; ``None`` if every mean is NaN). Sorted by peak mean, descending.

    >>> rows = [{"method": m, "checkpoint": c, "step": 5 * c, "epoch": c + 1.0, "metric": "cosine",
    ...          "centred": True, "mean": v, "sem": 0.01, "n": 4}
    ...         for m, c, v in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.9), ("b", 1, 0.2))]
    >>> [(e["method"], e["peak"]["epoch"], e["last"]["mean"]) for e in summary(rows)]
    [('b', 1.0, 0.2), ('a', 2.0, 0.7)]
    """
    out = []
    for method, rs in by_method(rows, metric, centred).items():
        finite = [r for r in rs if is_finite(r["mean"])]
        peak = max(finite, key=lambda r: float(r["mean"])) if finite else None
        out.append(
            {
                "method": method,
                "first": _point(rs[0]),
                "last": _point(rs[-1]),
                "peak": _point(peak) if peak is not None else None,
            }
        )
    out.sort(key=lambda s: -s["peak"]["mean"] if s["peak"] else math.inf)
    return out


# -- sentences about the agreement table alone -------------------------------------------------
def _best(entries: list[dict], which: str) -> dict | None:
    """The entry with the largest finite mean at ``which`` ('first' or 'last')."""
    good = [e for e in entries if is_finite(e[which]["mean"])]
    return max(good, key=lambda e: e[which]["mean"]) if good else None


def summary_sentences(rows, metrics: Sequence[str] | None = None) -> list[str]:
    """Plain-English sentences describing which method agrees best, per metric and centring.

    ``metrics`` limits the metrics described (default: every metric in ``rows``).

    >>> rows = [{"method": m, "checkpoint": c, "step": 5 * c, "epoch": c + 1.0, "metric": "cosine",
    ...          "centred": True, "mean": v, "sem": 0.01, "n": 4}
    ...         for m, c, v in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.9), ("b", 1, 0.2))]
    >>> summary_sentences(rows)[0]
    'At the first checkpoint (epoch 1), b agrees best with the gold standard (cosine 0.90 ± 0.01); at the last (epoch 2), a (0.70 ± 0.01).'
    """
    rows = list(rows)
    sentences: list[str] = []
    pairs = [p for p in views(rows) if metrics is None or p[0] in metrics]
    both = len({c for _, c in pairs}) > 1
    for metric, centred in pairs:
        entries = summary(rows, metric, centred)
        if not entries:
            continue
        lead = "Against the uncentred gold standard: " if both and not centred else ""
        mine = _metric_sentences(entries, metric)
        sentences += [lead + lower_first(x) for x in mine] if lead else mine
    return sentences


def _metric_sentences(entries: list[dict], name: str) -> list[str]:
    """The sentences of :func:`summary_sentences` for one metric and centring."""
    first_best, last_best = _best(entries, "first"), _best(entries, "last")
    if first_best is None and last_best is None:
        return [f"No finite {name} values were computed."]
    verb = (
        "agrees with the gold standard"
        if len(entries) == 1
        else "agrees best with the gold standard"
    )
    if first_best is None:
        e_first = entries[0]["first"]["epoch"]
        head = f"At the first checkpoint (epoch {epoch_text(e_first)}) no {name} is defined"
    else:
        f = first_best["first"]
        head = (
            f"At the first checkpoint (epoch {epoch_text(f['epoch'])}), "
            f"{first_best['method']} {verb} ({name} {mean_sem_text(f['mean'], f['sem'])})"
        )
    same_checkpoint = all(e["first"]["checkpoint"] == e["last"]["checkpoint"] for e in entries)
    if same_checkpoint:
        out = [head.replace("At the first checkpoint", "At the only checkpoint") + "."]
    elif last_best is None:
        e_last = entries[0]["last"]["epoch"]
        out = [f"{head}; at the last (epoch {epoch_text(e_last)}) no {name} is defined."]
    else:
        last = last_best["last"]
        out = [
            f"{head}; at the last (epoch {epoch_text(last['epoch'])}), "
            f"{last_best['method']} ({mean_sem_text(last['mean'], last['sem'])})."
        ]
    peaks = [e for e in entries if e["peak"] is not None]
    if peaks and not same_checkpoint:
        out.append(_peak_sentence(peaks[0], name))
    if len(entries) > 1 and last_best is not None:
        ranked = sorted(
            (e for e in entries if is_finite(e["last"]["mean"])), key=lambda e: -e["last"]["mean"]
        )
        order = ", ".join(f"{e['method']} ({mean_sem_text(e['last']['mean'])})" for e in ranked)
        when = "at the only checkpoint" if same_checkpoint else "at the last checkpoint"
        out.append(f"Ranking by {name} {when}: {order}.")
    return out


def _peak_sentence(top: dict, name: str) -> str:
    p = top["peak"]
    if p["checkpoint"] == top["first"]["checkpoint"]:
        where = "at the first checkpoint"
    elif p["checkpoint"] == top["last"]["checkpoint"]:
        where = "at the last checkpoint"
    else:
        where = f"at epoch {epoch_text(p['epoch'])}"
    return (
        f"The highest {name} overall is {top['method']}'s {mean_sem_text(p['mean'], p['sem'])}, "
        f"reached {where}."
    )


# -- the headline of a full evaluation ---------------------------------------------------------
def _cell_rows(rows, metric: str, centred: bool) -> dict[tuple[str, int], Mapping]:
    return {
        (str(r["method"]), int(r["checkpoint"])): r
        for r in rows
        if r["metric"] == metric and bool(r["centred"]) == centred
    }


def _tied(a: Mapping, b: Mapping) -> bool:
    """Whether two rows' means are within two combined standard errors."""
    sa, sb = float(a["sem"]), float(b["sem"])
    if not (is_finite(sa) and is_finite(sb)):
        return False
    return abs(float(a["mean"]) - float(b["mean"])) <= 2.0 * math.hypot(sa, sb)


def _best_by_checkpoint(rows, metric: str, centred: bool, checkpoints) -> list[tuple]:
    """Per checkpoint: (checkpoint, best row, runner-up row or None)."""
    cells = _cell_rows(rows, metric, centred)
    methods = list(dict.fromkeys(m for m, _ in cells))
    out = []
    for c in checkpoints:
        ranked = sorted(
            (
                cells[(m, c)]
                for m in methods
                if (m, c) in cells and is_finite(cells[(m, c)]["mean"])
            ),
            key=lambda r: -float(r["mean"]),
        )
        if ranked:
            out.append((c, ranked[0], ranked[1] if len(ranked) > 1 else None))
    return out


def headline(ev) -> list[str]:
    """The report's summary in words, derived from an evaluation's numbers.

    Which method agrees best with the centred gold standard at which amount of further
    training; the ranking at the reference checkpoint; the noise ceiling; what more seeds
    would bring; the adjusted-only view; the magnitudes; undefined values.

    >>> import numpy as np, fimo
    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> without = np.array([[[[1.0, 2.0, 4.0]]]] * 2)  # 2 seeds alike; centred: [-4, -1, 5] / 3
    >>> gold = GoldStandard(loss_full=np.zeros((2, 1, 1)), loss_without=without, steps=[5],
    ...                     epochs=[1.0], left_out=[0, 1, 2], test=[7], seeds=[0, 1])
    >>> ev = fimo.evaluate(gold, Scores(np.array([[-4.0, -1.0, 5.0]]), [7], [0, 1, 2], "a"),
    ...                    frames=False, seed_counts=[1, 2])
    >>> headline(ev)[:2]  # doctest: +NORMALIZE_WHITESPACE
    ['The gold standard averages 2 seeds of further training for 3 left-out training
      instances and 1 test instances, recorded at 1 checkpoint (epoch 1).',
     "a's cosine similarity with the centred gold standard is 1.000 at epoch 1."]
    """
    from fimo.evaluate.curves import reference_checkpoint

    gold = ev.gold
    rows = ev.rows["by_checkpoint"]
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    epochs = [float(e) for e in gold.epochs]
    ref = reference_checkpoint(gold)
    out = [_scope_sentence(gold)]
    if not methods:
        out.append("No method was scored, so there is nothing to compare.")
        return out
    # the paper's view: cosine against the centred gold standard (else what was computed)
    pairs = views(rows)
    metric, centred = ("cosine", True) if ("cosine", True) in pairs else pairs[0]
    best = _best_by_checkpoint(rows, metric, centred, range(len(epochs)))
    if not best:
        out.append(f"No {label(metric)} is defined (every score vector is constant).")
    else:
        out.append(_leader_sentence(best, methods, metric, centred, len(epochs)))
        out.extend(_ranking_sentence(rows, methods, metric, centred, ref, epochs[ref]))
    out.extend(_noise_sentences(ev, ref, rows))
    out.extend(_seed_sentences(ev))
    out.extend(_adjusted_sentences(rows, ref, epochs))
    out.extend(_calibration_sentences(ev, ref, epochs))
    out.extend(_undefined_sentences(rows, len(gold.test)))
    return out


def _scope_sentence(gold) -> str:
    S, C, T, L = len(gold.seeds), len(gold.steps), len(gold.test), len(gold.left_out)
    epochs = [float(e) for e in gold.epochs]
    return (
        f"The gold standard averages {S} {plural(S, 'seed')} of further training for "
        f"{L} left-out training instances and {T} test instances, recorded at {C} "
        f"{plural(C, 'checkpoint')} "
        + (
            f"from epoch {epoch_text(epochs[0])} to epoch {epoch_text(epochs[-1])}."
            if C > 1
            else f"(epoch {epoch_text(epochs[0])})."
        )
    )


def _leader_sentence(best: list[tuple], methods: list[str], metric, centred, C: int) -> str:
    """Which method agrees best at which checkpoints (``best`` from _best_by_checkpoint)."""
    view = gold_name(centred)
    groups: list[list[tuple]] = []  # consecutive checkpoints led by the same method
    for item in best:
        if groups and groups[-1][-1][1]["method"] == item[1]["method"]:
            groups[-1].append(item)
        else:
            groups.append([item])
    if len(methods) == 1:
        first, last = best[0][1], best[-1][1]
        return (
            f"{methods[0]}'s {label(metric)} with the {view} gold standard is "
            f"{_num3(first['mean'], first['sem'])} at epoch {epoch_text(first['epoch'])}"
            + (
                f" and {_num3(last['mean'], last['sem'])} at epoch {epoch_text(last['epoch'])}."
                if len(best) > 1
                else "."
            )
        )
    if len(groups) == 1:
        g = groups[0]
        where = "at every checkpoint" if len(g) == C else "wherever it is defined"
        first, last = g[0][1], g[-1][1]
        text = (
            f"{first['method']} agrees best with the {view} gold standard {where}: {metric} "
            f"{_num3(first['mean'], first['sem'])} at epoch {epoch_text(first['epoch'])}"
        )
        if len(g) > 1:
            text += f", {_num3(last['mean'], last['sem'])} at epoch {epoch_text(last['epoch'])}"
        return text + _tie_note(g) + "."
    parts = []
    for g in groups:
        lo, hi = epoch_text(g[0][1]["epoch"]), epoch_text(g[-1][1]["epoch"])
        span = f"at epoch {lo}" if lo == hi else f"from epoch {lo} to {hi}"
        top = max(g, key=lambda item: float(item[1]["mean"]))[1]
        parts.append(
            f"{g[0][1]['method']} {span} ({metric} up to {_num3(top['mean'], top['sem'])})"
            + _tie_note(g)
        )
    return (
        f"Which method agrees best with the {view} gold standard depends on how much "
        "further training the question is about: " + "; ".join(parts) + "."
    )


def _ranking_sentence(rows, methods, metric: str, centred: bool, ref: int, epoch) -> list[str]:
    """The ranking at the reference checkpoint, by the metric and by Spearman (or nothing
    with a single method)."""
    cells = _cell_rows(rows, metric, centred)
    ranked = sorted(
        (cells[(m, ref)] for m in methods if (m, ref) in cells),
        key=lambda r: -float(r["mean"]) if is_finite(r["mean"]) else math.inf,
    )
    if len(ranked) < 2:
        return []
    order = ", ".join(f"{r['method']} {_num3(r['mean'], r['sem'])}" for r in ranked)
    text = f"Ranking at epoch {epoch_text(epoch)} by {metric}: {order}"
    sp = _cell_rows(rows, "spearman", centred) if metric != "spearman" else {}
    sp_ranked = sorted(
        (sp[(m, ref)] for m in methods if (m, ref) in sp and is_finite(sp[(m, ref)]["mean"])),
        key=lambda r: -float(r["mean"]),
    )
    if sp_ranked:
        finite = [r["method"] for r in ranked if is_finite(r["mean"])]
        if [r["method"] for r in sp_ranked] == finite:
            text += "; Spearman rank correlation orders them the same way"
        else:
            text += "; by Spearman rank correlation: " + ", ".join(
                f"{r['method']} {_num3(r['mean'], r['sem'])}" for r in sp_ranked
            )
    return [text + "."]


def _tie_note(group: list[tuple]) -> str:
    """' (within two standard errors of X at epoch e)' for the checkpoints where the
    runner-up is that close (a rough rule: the SEMs are combined as if independent)."""
    tied: dict[str, list[str]] = {}
    for _, best, runner in group:
        if runner is not None and _tied(best, runner):
            tied.setdefault(runner["method"], []).append(epoch_text(best["epoch"]))
    if not tied:
        return ""
    parts = []
    for method, epochs in tied.items():
        everywhere = len(epochs) == len(group) and len(group) > 1
        parts.append(method if everywhere else f"{method} at epoch {join_words(epochs)}")
    return f" (within two standard errors of {join_words(parts)})"


def _noise_sentences(ev, ref: int, rows) -> list[str]:
    S = len(ev.gold.seeds)
    if S < 2:
        return [
            "With a single seed the gold standard's own noise cannot be measured; more seeds "
            "(--seeds) show how much of the disagreement is noise."
        ]
    floor = {
        (r["estimate"]): r
        for r in ev.rows["noise_floor"]
        if r["metric"] == "cosine" and r["centred"] and int(r["checkpoint"]) == ref
    }
    half, ceiling = floor.get("split_half"), floor.get("ceiling")
    if not half or not is_finite(half["mean"]):
        return []
    text = (
        f"Noise floor at epoch {epoch_text(half['epoch'])}: two halves of {half['seeds']} seeds "
        f"agree at cosine {_num3(half['mean'], half['sem'])}"
    )
    if ceiling and is_finite(ceiling["mean"]):
        text += (
            f"; stepped up to {S} seeds (Spearman–Brown), a perfect method would reach about "
            f"{_num3(ceiling['mean'])} against this gold standard"
        )
        cells = _cell_rows(rows, "cosine", True)
        top = max(
            (r for (m, c), r in cells.items() if c == ref and is_finite(r["mean"])),
            key=lambda r: float(r["mean"]),
            default=None,
        )
        if top is not None and float(ceiling["mean"]) > 0:
            share = 100.0 * float(top["mean"]) / float(ceiling["mean"])
            text += f", and {top['method']} reaches {share:.{1 if share >= 95 else 0}f}% of that"
    return [text + "."]


def _seed_sentences(ev) -> list[str]:
    rows = [
        r for r in ev.rows["seed_count"] if r["metric"] == "cosine" and r["centred"] and r["best"]
    ]
    ks = sorted({int(r["k"]) for r in rows})
    if len(ks) < 2:
        return []
    by = {(r["method"], int(r["k"])): r for r in rows}
    complete = [
        m
        for m in dict.fromkeys(r["method"] for r in rows)
        if all((m, k) in by and is_finite(by[(m, k)]["mean"]) for k in ks)
    ]
    if not complete:
        return []
    top = max(complete, key=lambda m: float(by[(m, ks[-1])]["mean"]))
    first, prev, last = by[(top, ks[0])], by[(top, ks[-2])], by[(top, ks[-1])]
    text = (
        f"Seeds: with gold standards of {ks[0]} {plural(ks[0], 'seed')}, {top}'s best "
        f"cosine is {_num3(first['mean'], first['sem'])}; with all {ks[-1]}, "
        f"{_num3(last['mean'], last['sem'])}"
    )
    gain = float(last["mean"]) - float(prev["mean"])
    err = math.hypot(*(float(r["sem"]) if is_finite(r["sem"]) else 0.0 for r in (last, prev)))
    if gain > 2 * err and gain > 0.005:
        text += (
            f" — still rising from {ks[-2]} to {ks[-1]} seeds, so more seeds would likely "
            "raise the measured agreement"
        )
    else:
        text += f" — little change from {ks[-2]} to {ks[-1]} seeds"
    return [text + "."]


def _adjusted_sentences(rows, ref: int, epochs) -> list[str]:
    adj = _cell_rows(rows, "cosine", False)
    cen = _cell_rows(rows, "cosine", True)
    at = [r for (m, c), r in adj.items() if c == ref and is_finite(r["mean"])]
    if not at:
        return []
    top = max(at, key=lambda r: float(r["mean"]))
    text = (
        f"Against the adjusted-only gold standard (eq. 17, not centred), {top['method']} "
        f"agrees best at epoch {epoch_text(epochs[ref])} (cosine "
        f"{_num3(top['mean'], top['sem'])})"
    )
    c = cen.get((top["method"], ref))
    if c is not None and is_finite(c["mean"]):
        text += f"; centred it reaches {_num3(c['mean'], c['sem'])}"
    return [text + "."]


def _calibration_sentences(ev, ref: int, epochs) -> list[str]:
    rows = [r for r in ev.rows["calibration"] if r["centred"] and int(r["checkpoint"]) == ref]
    by = {(r["method"], r["quantity"]): r for r in rows}
    parts = []
    for m in dict.fromkeys(r["method"] for r in rows):
        a, r2 = by.get((m, "pooled_scale")), by.get((m, "pooled_r2"))
        if a and is_finite(a["value"]):
            parts.append(f"{m} {sci(a['value'])} (R² {mean_sem_text(r2['value'])})")
    if not parts:
        return []
    return [
        f"Magnitudes at epoch {epoch_text(epochs[ref])}: the centred gold standard ≈ scale × "
        f"score, with the least-squares scale (one for all test instances) "
        + "; ".join(parts)
        + "."
    ]


def _undefined_sentences(rows, T: int) -> list[str]:
    short = {}
    for r in rows:
        if r["metric"] == "cosine" and r["centred"] and int(r["n"]) < T:
            short[r["method"]] = max(short.get(r["method"], 0), T - int(r["n"]))
    if not short:
        return []
    parts = [f"{m} for up to {k} of {T}" for m, k in short.items()]
    return [
        "Some values are undefined because a score vector is constant (see the n counts in "
        f"the tables): the cosine is missing for {join_words(parts)} test instances."
    ]


# -- the contents of the report's tables -------------------------------------------------------
def metric_table(rows, metric: str, centred: bool, noise=None) -> dict:
    """One metric's agreement as a methods × checkpoints table.

    Returns ``{"epochs": [...], "rows": [{"method", "cells", "best"}], "ceiling"}``: one
    entry per column in ``epochs``; ``cells`` holds each checkpoint's row (None where the
    method has none), ``best`` marks the largest finite mean of each column (only when
    there are several methods); methods come in :func:`summary` order. ``ceiling`` is the
    noise ceiling's row per column when ``noise`` (noise-floor rows) has one for this
    metric and the gold standard is centred (without centring it bounds nothing), else None.

    >>> rows = [{"method": m, "checkpoint": c, "step": 5 * c, "epoch": c + 1.0, "metric": "cosine",
    ...          "centred": True, "mean": v, "sem": 0.01, "n": 4}
    ...         for m, c, v in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.9), ("b", 1, 0.2))]
    >>> t = metric_table(rows[1:], "cosine", True)  # a has no row at the first checkpoint
    >>> t["epochs"], [(r["method"], r["best"]) for r in t["rows"]], t["rows"][1]["cells"][0]
    ([1.0, 2.0], [('b', [True, False]), ('a', [False, True])], None)
    """
    groups = by_method(rows, metric, centred)
    epochs: dict[int, float] = {}
    for rs in groups.values():
        for r in rs:
            epochs.setdefault(int(r["checkpoint"]), float(r["epoch"]))
    cols = sorted(epochs)
    cells = {(m, int(r["checkpoint"])): r for m, rs in groups.items() for r in rs}
    best: dict[int, float] = {}
    for c in cols:
        means = [float(cells[(m, c)]["mean"]) for m in groups if (m, c) in cells]
        means = [v for v in means if math.isfinite(v)]
        if means and len(groups) > 1:
            best[c] = max(means)
    body = []
    for method in [s["method"] for s in summary(rows, metric, centred)]:
        mine = [cells.get((method, c)) for c in cols]
        body.append(
            {
                "method": method,
                "cells": mine,
                "best": [
                    r is not None and c in best and float(r["mean"]) == best[c]
                    for c, r in zip(cols, mine, strict=True)
                ],
            }
        )
    ceiling = None
    if noise and centred:
        ceil = {
            int(r["checkpoint"]): r
            for r in noise
            if r["metric"] == metric and bool(r["centred"]) and r["estimate"] == "ceiling"
        }
        ceiling = [ceil.get(c) for c in cols] if ceil else None
    return {"epochs": [epochs[c] for c in cols], "rows": body, "ceiling": ceiling}


#: the noise-floor estimates in the order the report lists them, with their row names
NOISE_ESTIMATES = {
    "split_half": "split-half ({seeds} vs {seeds} seeds)",
    "spearman_brown": "Spearman–Brown, {seeds} vs {seeds} seeds",
    "ceiling": "ceiling for a perfect method ({seeds} seeds)",
}


def noise_table(noise_rows, centred: bool) -> dict:
    """The noise floor of one view: a row per metric and estimate, a column per checkpoint.

    Returns ``{"epochs": [...], "rows": [{"name", "cells"}]}`` (``cells``: the row of each
    checkpoint or None); the columns are every checkpoint of ``noise_rows``.

    >>> floor = [{"checkpoint": 0, "epoch": 1.0, "metric": "cosine", "centred": True,
    ...           "estimate": "ceiling", "seeds": 4, "mean": 0.9, "sem": 0.01}]
    >>> t = noise_table(floor, True)
    >>> t["epochs"], t["rows"][0]["name"], t["rows"][0]["cells"][0]["mean"]
    ([1.0], 'cosine similarity: ceiling for a perfect method (4 seeds)', 0.9)
    """
    checkpoints = sorted({(int(r["checkpoint"]), float(r["epoch"])) for r in noise_rows})
    cells = {
        (r["metric"], bool(r["centred"]), r["estimate"], int(r["checkpoint"])): r
        for r in noise_rows
    }
    body = []
    for metric in dict.fromkeys(r["metric"] for r in noise_rows):
        for estimate, text in NOISE_ESTIMATES.items():
            any_row = next(
                (v for k, v in cells.items() if k[:3] == (metric, centred, estimate)), None
            )
            if any_row is None:
                continue
            body.append(
                {
                    "name": f"{label(metric)}: {text.format(seeds=any_row['seeds'])}",
                    "cells": [cells.get((metric, centred, estimate, c)) for c, _ in checkpoints],
                }
            )
    return {"epochs": [e for _, e in checkpoints], "rows": body}


def seed_table(seed_rows, metric: str, centred: bool) -> dict | None:
    """The seed-count study of one metric and view: per method, the best checkpoint's row
    for each number of seeds k.

    Returns ``{"ks", "windows", "rows": [{"method", "cells"}]}`` (``windows``: how many
    windows of k seeds each k has; ``cells``: a row per k or None), or None when no row
    of this metric and view is marked best.

    >>> seeds = [{"method": "a", "k": k, "windows": 4 // k, "metric": "cosine",
    ...           "centred": True, "best": True, "mean": m} for k, m in ((1, 0.5), (4, 0.8))]
    >>> t = seed_table(seeds, "cosine", True)
    >>> t["ks"], t["windows"], [r["mean"] for r in t["rows"][0]["cells"]]
    ([1, 4], [4, 1], [0.5, 0.8])
    """
    best = [
        r
        for r in seed_rows
        if r["best"] and r["metric"] == metric and bool(r["centred"]) == centred
    ]
    if not best:
        return None
    ks = sorted({int(r["k"]) for r in seed_rows if r["metric"] == metric})
    windows = {int(r["k"]): int(r["windows"]) for r in seed_rows}
    cells = {(r["method"], int(r["k"])): r for r in best}
    return {
        "ks": ks,
        "windows": [windows[k] for k in ks],
        "rows": [
            {"method": m, "cells": [cells.get((m, k)) for k in ks]}
            for m in dict.fromkeys(r["method"] for r in seed_rows)
        ],
    }


#: the calibration quantities of one table cell, by the name the cell gives them
CALIBRATION_CELL = {
    "scale": "pooled_scale",
    "r2": "pooled_r2",
    "r2_per_test": "r2",
    "scale_median": "scale_median",
}


def calibration_table(calibration_rows, centred: bool) -> dict | None:
    """Calibration of one view as a methods × checkpoints table.

    Returns ``{"epochs", "rows": [{"method", "cells"}]}`` where a cell maps ``scale``,
    ``r2``, ``r2_per_test`` and ``scale_median`` to their calibration rows, or is None where
    the method has no pooled scale; None when no row has this view.

    >>> cal = [{"method": "a", "checkpoint": 0, "epoch": 1.0, "centred": True, "quantity": q,
    ...         "value": v} for q, v in (("pooled_scale", 2.0), ("pooled_r2", 0.5),
    ...                                  ("r2", 0.4), ("scale_median", 1.9))]
    >>> calibration_table(cal, True)["rows"][0]["cells"][0]["scale"]["value"]
    2.0
    """
    rows = [r for r in calibration_rows if bool(r["centred"]) == centred]
    if not rows:
        return None
    checkpoints = sorted({(int(r["checkpoint"]), float(r["epoch"])) for r in rows})
    cells = {(r["method"], int(r["checkpoint"]), r["quantity"]): r for r in rows}

    def cell(m: str, c: int) -> dict | None:
        if (m, c, "pooled_scale") not in cells:
            return None
        return {name: cells.get((m, c, q)) for name, q in CALIBRATION_CELL.items()}

    return {
        "epochs": [e for _, e in checkpoints],
        "rows": [
            {"method": m, "cells": [cell(m, c) for c, _ in checkpoints]}
            for m in dict.fromkeys(r["method"] for r in rows)
        ],
    }


def ft_lds_table(ft_rows, ceiling_rows=()) -> dict:
    """FT-LDS as a methods × checkpoints table with its noise ceiling, as
    :func:`metric_table` gives one (FT-LDS has one view: the adjusted difference).

    >>> ft = [{"method": "a", "checkpoint": 0, "step": 5, "epoch": 1.0, "metric": "ft_lds",
    ...        "mean": 0.4, "sem": 0.05, "n": 10}]
    >>> ceil = [{"checkpoint": 0, "epoch": 1.0, "estimate": "ceiling", "mean": 0.8, "sem": 0.02}]
    >>> t = ft_lds_table(ft, ceil)
    >>> t["epochs"], t["rows"][0]["cells"][0]["mean"], t["ceiling"][0]["mean"]
    ([1.0], 0.4, 0.8)
    """
    table = metric_table([{**r, "centred": False} for r in ft_rows], "ft_lds", False)
    ceiling = {float(r["epoch"]): r for r in ceiling_rows if r["estimate"] == "ceiling"}
    table["ceiling"] = [ceiling.get(e) for e in table["epochs"]] if ceiling else None
    return table


def ft_lds_sentences(ft_rows, ceiling_rows=()) -> list[str]:
    """What the FT-LDS table says: the best method at the last checkpoint against the
    ceiling there.

    >>> ft = [{"method": m, "checkpoint": 0, "step": 5, "epoch": 1.0, "metric": "ft_lds",
    ...        "mean": v, "sem": 0.05, "n": 10} for m, v in (("a", 0.4), ("b", 0.1))]
    >>> ceil = [{"checkpoint": 0, "epoch": 1.0, "estimate": "ceiling", "mean": 0.8, "sem": 0.02}]
    >>> ft_lds_sentences(ft, ceil)[0]
    'At epoch 1 (the last checkpoint), a has the highest FT-LDS, 0.400 ± 0.050 (the noise ceiling is 0.800 ± 0.020); the lowest is b, 0.100 ± 0.050.'
    """
    table = ft_lds_table(ft_rows, ceiling_rows)
    if not table["epochs"]:
        return []
    last = [(e["method"], e["cells"][-1]) for e in table["rows"] if e["cells"][-1] is not None]
    last = [(m, r) for m, r in last if is_finite(r["mean"])]
    if not last:
        return []
    last.sort(key=lambda mr: -float(mr[1]["mean"]))
    (top, r), ceiling = last[0], (table["ceiling"] or [None])[-1]
    text = (
        f"At epoch {epoch_text(table['epochs'][-1])} (the last checkpoint), {top} has the "
        f"highest FT-LDS, {_num3(r['mean'], r['sem'])}"
    )
    if ceiling is not None and is_finite(ceiling["mean"]):
        text += f" (the noise ceiling is {_num3(ceiling['mean'], ceiling['sem'])})"
    if len(last) > 1:
        low, lr = last[-1]
        text += f"; the lowest is {low}, {_num3(lr['mean'], lr['sem'])}"
    return [text + "."]


def group_attribution_table(rows, checkpoint: int | None = None) -> dict | None:
    """The group attribution at one checkpoint (default: the last): a row per group with
    the measured effect (``gold``) and each method's predicted one.

    Returns ``{"epoch", "sources": [...], "rows": [{"name", "size", "cells"}]}`` (``cells``:
    the row of each source, or None), or None when there are no rows.

    >>> rows = [{"group": 0, "name": "a", "size": 3, "checkpoint": 0, "epoch": 1.0,
    ...          "source": s, "mean": v, "sem": 0.1, "seed_sem": 0.2} for s, v in
    ...         (("gold", 0.5), ("m", 2.0))]
    >>> t = group_attribution_table(rows)
    >>> t["sources"], t["rows"][0]["name"], [c["mean"] for c in t["rows"][0]["cells"]]
    (['gold', 'm'], 'a', [0.5, 2.0])
    """
    if not rows:
        return None
    if checkpoint is None:
        checkpoint = max(int(r["checkpoint"]) for r in rows)
    mine = [r for r in rows if int(r["checkpoint"]) == checkpoint]
    sources = list(dict.fromkeys(r["source"] for r in mine))
    cells = {(int(r["group"]), r["source"]): r for r in mine}
    groups = {int(r["group"]): r for r in mine}
    return {
        "epoch": float(mine[0]["epoch"]),
        "sources": sources,
        "rows": [
            {
                "name": groups[g]["name"],
                "size": int(groups[g]["size"]),
                "cells": [cells.get((g, s)) for s in sources],
            }
            for g in sorted(groups)
        ],
    }


def example_groups(example_rows) -> list[dict]:
    """The examples table grouped for display: per test instance (first-seen order), per
    source (the gold standard or a method), the most helpful and most harmful picks by rank.

    Returns ``[{"test", "sources": [{"source", "helpful", "harmful"}]}]``.

    >>> picks = [{"test": 3, "source": "gold", "direction": d, "rank": k, "train": t}
    ...          for d, k, t in (("helpful", 2, 8), ("helpful", 1, 5), ("harmful", 1, 9))]
    >>> g = example_groups(picks)[0]
    >>> g["test"], [r["train"] for r in g["sources"][0]["helpful"]]
    (3, [5, 8])
    """
    out = []
    for t in dict.fromkeys(int(r["test"]) for r in example_rows):
        mine = [r for r in example_rows if int(r["test"]) == t]
        sources = []
        for source in dict.fromkeys(r["source"] for r in mine):
            entry = {"source": source}
            for direction in ("helpful", "harmful"):
                entry[direction] = sorted(
                    (r for r in mine if r["source"] == source and r["direction"] == direction),
                    key=lambda r: int(r["rank"]),
                )
            sources.append(entry)
        out.append({"test": t, "sources": sources})
    return out


def additivity_sentence(rows) -> str:
    """What the additivity table says at its last checkpoint: how close the groups' measured
    effects are to the sums of their members' single effects, against the seed noise.

    >>> row = {"checkpoint": 0, "epoch": 2.0, "groups": 50, "cosine": 0.95, "cosine_se": 0.01,
    ...        "relative_gap": 0.3, "relative_gap_se": 0.02, "slope": 0.9, "slope_se": 0.03,
    ...        "noise_gap": 0.25}
    >>> print(additivity_sentence([row]))
    At epoch 2 (the last checkpoint), the measured effects of the 50 nested groups have cosine 0.950 ± 0.010 with the sums of their members' single effects; they are 0.300 ± 0.020 of their norm away from them (the seed noise alone would give 0.250), and the sums scaled by 0.900 ± 0.030 fit them best (1 when additive; below 1 when a group does less than its members one by one).
    """
    last = max(rows, key=lambda r: int(r["checkpoint"]))
    return (
        f"At epoch {epoch_text(last['epoch'])} (the last checkpoint), the measured effects of "
        f"the {int(last['groups'])} nested groups have cosine "
        f"{mean_sem_text(last['cosine'], last['cosine_se'], 3)} with the sums of their "
        f"members' single effects; they are "
        f"{mean_sem_text(last['relative_gap'], last['relative_gap_se'], 3)} of their norm away "
        f"from them (the seed noise alone would give {mean_sem_text(last['noise_gap'], None, 3)}"
        f"), and the sums scaled by {mean_sem_text(last['slope'], last['slope_se'], 3)} fit "
        "them best (1 when additive; below 1 when a group does less than its members one by "
        "one)."
    )
