"""Summaries in words, a rich table for the terminal, and the self-contained HTML report.

Everything here reads the rows made by the evaluation (:mod:`fimo.evaluate.metrics`,
:mod:`~fimo.evaluate.seeds`, :mod:`~fimo.evaluate.calibration`, ...); no number is
hard-coded. The page has inline CSS, images as data URIs, no script and no link outside
itself, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fimo.evaluate.metrics import ALL_METRICS
from fimo.evaluate.plots import by_method as _by_method
from fimo.evaluate.plots import label, plot_agreement, png_data_uri
from fimo.io import write_text

__all__ = [
    "headline",
    "plot_agreement",
    "rich_summary_table",
    "summary",
    "summary_sentences",
    "write_report",
]


# -- formatting --------------------------------------------------------------------------------
def _available(rows: Iterable[Mapping]) -> list[tuple[str, bool]]:
    """(metric, centred) pairs present in ``rows``: centred first, then known metrics first."""
    pairs = {(str(r["metric"]), bool(r["centred"])) for r in rows}
    order = list(ALL_METRICS)
    return sorted(
        pairs,
        key=lambda p: (not p[1], order.index(p[0]) if p[0] in order else len(order), p[0]),
    )


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _epoch(e) -> str:
    return f"{float(e):g}"


def _fixed(x, digits: int) -> str:
    text = f"{float(x):.{digits}f}"
    # a value that rounds to zero is shown as 0.00, not -0.00
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _num(mean, sem=None, digits: int = 2) -> str:
    """'0.91 ± 0.01' (or '0.91' without a finite SEM; 'n/a' for a NaN mean)."""
    if not _finite(mean):
        return "n/a"
    text = _fixed(mean, digits)
    if sem is not None and _finite(sem):
        text += f" ± {_fixed(sem, digits)}"
    return text


def _num3(mean, sem=None) -> str:
    return _num(mean, sem, 3)


def _sci(x) -> str:
    return f"{float(x):.3g}" if _finite(x) else "n/a"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# -- summaries of the agreement table ----------------------------------------------------------
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

    >>> # summary(rows)[0]["method"]   # the method with the highest peak cosine
    """
    out = []
    for method, rs in _by_method(rows, metric, centred).items():
        finite = [r for r in rs if _finite(r["mean"])]
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


def _best(entries: list[dict], which: str) -> tuple[dict | None, float]:
    """The entry with the largest finite mean at ``which`` ('first' or 'last')."""
    good = [e for e in entries if _finite(e[which]["mean"])]
    if not good:
        return None, math.nan
    best = max(good, key=lambda e: e[which]["mean"])
    return best, best[which]["mean"]


def summary_sentences(rows, metrics: Sequence[str] | None = None) -> list[str]:
    """Plain-English sentences describing which method agrees best, per metric and centring.

    ``metrics`` limits the metrics described (default: every metric in ``rows``).

    >>> # summary_sentences(rows, metrics=["cosine"])[0]
    """
    rows = list(rows)
    sentences: list[str] = []
    pairs = [p for p in _available(rows) if metrics is None or p[0] in metrics]
    both = len({c for _, c in pairs}) > 1
    for metric, centred in pairs:
        entries = summary(rows, metric, centred)
        if not entries:
            continue
        start = len(sentences)
        name = metric
        lead = "Against the uncentred gold standard: " if both and not centred else ""
        first_best, _ = _best(entries, "first")
        last_best, _ = _best(entries, "last")
        e_first = entries[0]["first"]["epoch"]
        e_last = entries[0]["last"]["epoch"]
        single = len(entries) == 1
        verb = "agrees with the gold standard" if single else "agrees best with the gold standard"

        if first_best is None and last_best is None:
            msg = f"No finite {name} values were computed."
            sentences.append(lead + _lower_first(msg) if lead else msg)
            continue
        if first_best is None:
            head = f"At the first checkpoint (epoch {_epoch(e_first)}) no {name} is defined"
        else:
            f = first_best["first"]
            head = (
                f"At the first checkpoint (epoch {_epoch(f['epoch'])}), "
                f"{first_best['method']} {verb} ({name} {_num(f['mean'], f['sem'])})"
            )
        same_checkpoint = all(e["first"]["checkpoint"] == e["last"]["checkpoint"] for e in entries)
        if same_checkpoint:
            sentences.append(
                head.replace("At the first checkpoint", "At the only checkpoint") + "."
            )
        else:
            if last_best is None:
                tail = f"at the last (epoch {_epoch(e_last)}) no {name} is defined"
            else:
                last = last_best["last"]
                tail = (
                    f"at the last (epoch {_epoch(last['epoch'])}), "
                    f"{last_best['method']} ({_num(last['mean'], last['sem'])})"
                )
            sentences.append(f"{head}; {tail}.")

        peaks = [e for e in entries if e["peak"] is not None]
        if peaks and not same_checkpoint:
            top = peaks[0]
            p = top["peak"]
            where = (
                "at the first checkpoint"
                if p["checkpoint"] == top["first"]["checkpoint"]
                else "at the last checkpoint"
                if p["checkpoint"] == top["last"]["checkpoint"]
                else f"at epoch {_epoch(p['epoch'])}"
            )
            sentences.append(
                f"The highest {name} overall is {top['method']}'s {_num(p['mean'], p['sem'])}, "
                f"reached {where}."
            )
        if len(entries) > 1 and last_best is not None:
            ranked = sorted(
                (e for e in entries if _finite(e["last"]["mean"])),
                key=lambda e: -e["last"]["mean"],
            )
            order = ", ".join(f"{e['method']} ({_num(e['last']['mean'])})" for e in ranked)
            when = "at the only checkpoint" if same_checkpoint else "at the last checkpoint"
            sentences.append(f"Ranking by {name} {when}: {order}.")
        if lead:
            sentences[start:] = [lead + _lower_first(x) for x in sentences[start:]]
    return sentences


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
    if not (_finite(sa) and _finite(sb)):
        return False
    return abs(float(a["mean"]) - float(b["mean"])) <= 2.0 * math.hypot(sa, sb)


def _best_by_checkpoint(rows, metric: str, centred: bool, checkpoints) -> list[tuple]:
    """Per checkpoint: (checkpoint, best row, runner-up row or None)."""
    cells = _cell_rows(rows, metric, centred)
    methods = list(dict.fromkeys(m for m, _ in cells))
    out = []
    for c in checkpoints:
        ranked = sorted(
            (cells[(m, c)] for m in methods if (m, c) in cells and _finite(cells[(m, c)]["mean"])),
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

    >>> # for sentence in headline(fimo.evaluate("runs/adult")): print(sentence)
    """
    from fimo.evaluate.curves import reference_checkpoint

    gold = ev.gold
    rows = ev.rows["by_checkpoint"]
    S, C, T, L = len(gold.seeds), len(gold.steps), len(gold.test), len(gold.left_out)
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    epochs = [float(e) for e in gold.epochs]
    ref = reference_checkpoint(gold)
    out = [
        f"The gold standard averages {S} seed{'s' if S != 1 else ''} of further training for "
        f"{L} left-out training instances and {T} test instances, recorded at {C} "
        f"checkpoint{'s' if C != 1 else ''} "
        + (
            f"from epoch {_epoch(epochs[0])} to epoch {_epoch(epochs[-1])}."
            if C > 1
            else f"(epoch {_epoch(epochs[0])})."
        )
    ]
    if not methods:
        out.append("No method was scored, so there is nothing to compare.")
        return out
    # the paper's view: cosine against the centred gold standard (else what was computed)
    pairs = _available(rows)
    metric, centred = ("cosine", True) if ("cosine", True) in pairs else pairs[0]
    view = "centred" if centred else "adjusted-only"
    best = _best_by_checkpoint(rows, metric, centred, range(C))
    if not best:
        out.append(f"No {label(metric)} is defined (every score vector is constant).")
    else:
        groups: list[list[tuple]] = []
        for item in best:
            if groups and groups[-1][-1][1]["method"] == item[1]["method"]:
                groups[-1].append(item)
            else:
                groups.append([item])
        if len(methods) == 1:
            m = methods[0]
            first, last = best[0][1], best[-1][1]
            out.append(
                f"{m}'s {label(metric)} with the {view} gold standard is "
                f"{_num3(first['mean'], first['sem'])} at epoch {_epoch(first['epoch'])}"
                + (
                    f" and {_num3(last['mean'], last['sem'])} at epoch {_epoch(last['epoch'])}."
                    if len(best) > 1
                    else "."
                )
            )
        elif len(groups) == 1:
            g = groups[0]
            m = g[0][1]["method"]
            where = "at every checkpoint" if len(g) == C else "wherever it is defined"
            first, last = g[0][1], g[-1][1]
            text = (
                f"{m} agrees best with the {view} gold standard {where}: {metric} "
                f"{_num3(first['mean'], first['sem'])} at epoch {_epoch(first['epoch'])}"
            )
            if len(g) > 1:
                text += f", {_num3(last['mean'], last['sem'])} at epoch {_epoch(last['epoch'])}"
            out.append(text + _tie_note(g) + ".")
        else:
            parts = []
            for g in groups:
                m = g[0][1]["method"]
                lo, hi = _epoch(g[0][1]["epoch"]), _epoch(g[-1][1]["epoch"])
                span = f"at epoch {lo}" if lo == hi else f"from epoch {lo} to {hi}"
                top = max(g, key=lambda item: float(item[1]["mean"]))[1]
                parts.append(
                    f"{m} {span} ({metric} up to {_num3(top['mean'], top['sem'])})" + _tie_note(g)
                )
            out.append(
                f"Which method agrees best with the {view} gold standard depends on how much "
                "further training the question is about: " + "; ".join(parts) + "."
            )
        # the ranking at the reference checkpoint, by the metric and by Spearman
        cells = _cell_rows(rows, metric, centred)
        ranked = sorted(
            (cells[(m, ref)] for m in methods if (m, ref) in cells),
            key=lambda r: -float(r["mean"]) if _finite(r["mean"]) else math.inf,
        )
        if len(ranked) > 1:
            order = ", ".join(f"{r['method']} {_num3(r['mean'], r['sem'])}" for r in ranked)
            text = f"Ranking at epoch {_epoch(epochs[ref])} by {metric}: {order}"
            sp = _cell_rows(rows, "spearman", centred) if metric != "spearman" else {}
            sp_ranked = sorted(
                (sp[(m, ref)] for m in methods if (m, ref) in sp and _finite(sp[(m, ref)]["mean"])),
                key=lambda r: -float(r["mean"]),
            )
            if sp_ranked:
                same = [r["method"] for r in sp_ranked] == [
                    r["method"] for r in ranked if _finite(r["mean"])
                ]
                if same:
                    text += "; Spearman rank correlation orders them the same way"
                else:
                    text += "; by Spearman rank correlation: " + ", ".join(
                        f"{r['method']} {_num3(r['mean'], r['sem'])}" for r in sp_ranked
                    )
            out.append(text + ".")
    out.extend(_noise_sentences(ev, ref, rows))
    out.extend(_seed_sentences(ev))
    out.extend(_adjusted_sentences(rows, ref, epochs))
    out.extend(_calibration_sentences(ev, ref, epochs))
    out.extend(_undefined_sentences(rows, T))
    return out


def _tie_note(group: list[tuple]) -> str:
    """' (within two standard errors of X at epoch e)' for the checkpoints where the
    runner-up is that close (a rough rule: the SEMs are combined as if independent)."""
    tied: dict[str, list[str]] = {}
    for _, best, runner in group:
        if runner is not None and _tied(best, runner):
            tied.setdefault(runner["method"], []).append(_epoch(best["epoch"]))
    if not tied:
        return ""
    parts = []
    for method, epochs in tied.items():
        everywhere = len(epochs) == len(group) and len(group) > 1
        parts.append(method if everywhere else f"{method} at epoch {_join(epochs)}")
    return f" (within two standard errors of {_join(parts)})"


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
    if not half or not _finite(half["mean"]):
        return []
    text = (
        f"Noise floor at epoch {_epoch(half['epoch'])}: two halves of {half['seeds']} seeds "
        f"agree at cosine {_num3(half['mean'], half['sem'])}"
    )
    if ceiling and _finite(ceiling["mean"]):
        text += (
            f"; stepped up to {S} seeds (Spearman–Brown), a perfect method would reach about "
            f"{_num3(ceiling['mean'])} against this gold standard"
        )
        cells = _cell_rows(rows, "cosine", True)
        top = max(
            (r for (m, c), r in cells.items() if c == ref and _finite(r["mean"])),
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
        if all((m, k) in by and _finite(by[(m, k)]["mean"]) for k in ks)
    ]
    if not complete:
        return []
    top = max(complete, key=lambda m: float(by[(m, ks[-1])]["mean"]))
    first, prev, last = by[(top, ks[0])], by[(top, ks[-2])], by[(top, ks[-1])]
    text = (
        f"Seeds: with gold standards of {ks[0]} seed{'s' if ks[0] != 1 else ''}, {top}'s best "
        f"cosine is {_num3(first['mean'], first['sem'])}; with all {ks[-1]}, "
        f"{_num3(last['mean'], last['sem'])}"
    )
    gain = float(last["mean"]) - float(prev["mean"])
    err = math.hypot(*(float(r["sem"]) if _finite(r["sem"]) else 0.0 for r in (last, prev)))
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
    at = [r for (m, c), r in adj.items() if c == ref and _finite(r["mean"])]
    if not at:
        return []
    top = max(at, key=lambda r: float(r["mean"]))
    text = (
        f"Against the adjusted-only gold standard (eq. 17, not centred), {top['method']} "
        f"agrees best at epoch {_epoch(epochs[ref])} (cosine {_num3(top['mean'], top['sem'])})"
    )
    c = cen.get((top["method"], ref))
    if c is not None and _finite(c["mean"]):
        text += f"; centred it reaches {_num3(c['mean'], c['sem'])}"
    return [text + "."]


def _calibration_sentences(ev, ref: int, epochs) -> list[str]:
    rows = [r for r in ev.rows["calibration"] if r["centred"] and int(r["checkpoint"]) == ref]
    by = {(r["method"], r["quantity"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    parts = []
    for m in methods:
        a, r2 = by.get((m, "pooled_scale")), by.get((m, "pooled_r2"))
        if a and _finite(a["value"]):
            parts.append(f"{m} {_sci(a['value'])} (R² {_num(r2['value'])})")
    if not parts:
        return []
    return [
        f"Magnitudes at epoch {_epoch(epochs[ref])}: the centred gold standard ≈ scale × "
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
        f"the tables): the cosine is missing for {_join(parts)} test instances."
    ]


# -- rich table for the CLI --------------------------------------------------------------------
def rich_summary_table(
    rows, metric: str = "cosine", centred: bool = True, also: str | None = "spearman"
):
    """A ``rich.table.Table``: per method, ``metric`` at the first and last checkpoints
    (± SEM), its peak (and epoch), and ``also`` (default Spearman) at the first and last.

    >>> # rich.console.Console().print(rich_summary_table(rows))
    """
    from rich.table import Table

    rows = list(rows)
    entries = summary(rows, metric, centred)
    other = {}
    if also and also != metric:
        other = {e["method"]: e for e in summary(rows, also, centred)}
    e_first = entries[0]["first"]["epoch"] if entries else math.nan
    e_last = entries[0]["last"]["epoch"] if entries else math.nan

    title = f"Agreement with the {'centred' if centred else 'uncentred'} gold standard"
    table = Table(title=title, caption="mean ± SEM over test instances")
    table.add_column("method", style="bold")
    table.add_column(f"{metric} first (epoch {_epoch(e_first)})", justify="right")
    table.add_column(f"{metric} last (epoch {_epoch(e_last)})", justify="right")
    table.add_column(f"{metric} peak (epoch)", justify="right")
    if other:
        table.add_column(f"{also} first", justify="right")
        table.add_column(f"{also} last", justify="right")
    for e in entries:
        peak = e["peak"]
        cells = [
            e["method"],
            _num(e["first"]["mean"], e["first"]["sem"], 3),
            _num(e["last"]["mean"], e["last"]["sem"], 3),
            f"{_num(peak['mean'], None, 3)} ({_epoch(peak['epoch'])})" if peak else "n/a",
        ]
        if other:
            o = other.get(e["method"])
            cells += (
                [
                    _num(o["first"]["mean"], o["first"]["sem"], 3),
                    _num(o["last"]["mean"], o["last"]["sem"], 3),
                ]
                if o
                else ["n/a", "n/a"]
            )
        table.add_row(*cells)
    return table


# -- HTML --------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 64rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1rem; margin-bottom: 0.4rem; }
.meta { color: #666; font-size: 0.9rem; }
.summary p { margin: 0.35rem 0; }
.summary { background: #f7f9fc; border-left: 4px solid #4a78b5; padding: 0.4rem 1rem; }
nav { font-size: 0.9rem; margin: 0.6rem 0 0; }
nav a { margin-right: 0.8rem; color: #2b5b99; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
td.best { font-weight: bold; background: #eef6ee; }
td.left, th.left { text-align: left; }
td.floor { color: #555; font-style: italic; }
.table-wrap { overflow-x: auto; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; display: block; margin: 0.4rem 0; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; vertical-align: middle; }
.pick { margin: 0 0 0.35rem; }
.pick .score { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.8rem; color: #444; }
.desc { color: #333; font-size: 0.8rem; }
.lab { font-weight: 600; }
small.n { color: #a33; }
details { margin: 0.4rem 0; }
summary { cursor: pointer; color: #2b5b99; }
dl { margin: 0.2rem 0 0.2rem 0; }
dl dl { margin-left: 1.2rem; border-left: 2px solid #eee; padding-left: 0.6rem; }
dt { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }
dd { margin: 0 0 0.3rem 1.2rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
ul.defs li { margin-bottom: 0.3rem; }
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    try:  # numpy scalars and arrays
        import numpy as np

        if isinstance(value, np.ndarray):
            return _scalar(value.tolist())
        if isinstance(value, np.generic):
            return _scalar(value.item())
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _definition_list(obj: Mapping) -> str:
    if not obj:
        return "<p class='meta'>(none)</p>"
    parts = ["<dl>"]
    for key, value in obj.items():
        parts.append(f"<dt>{_esc(key)}</dt>")
        if isinstance(value, Mapping):
            parts.append(f"<dd>{_definition_list(value)}</dd>")
        else:
            parts.append(f"<dd>{_esc(_scalar(value))}</dd>")
    parts.append("</dl>")
    return "".join(parts)


def _fingerprints(manifest: Mapping) -> list[tuple[str, str]]:
    """(dotted key, value) for every manifest entry under a key that names a fingerprint."""
    found: list[tuple[str, str]] = []

    def walk(obj, path: tuple[str, ...], inside: bool) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, (*path, str(k)), inside or "fingerprint" in str(k).lower())
        elif inside:
            shown = [p for p in path if p.lower() != "fingerprints"] or list(path)
            found.append((".".join(shown), _scalar(obj)))

    walk(manifest, (), False)
    return found


def _n_mark(row: Mapping, expected: int | None) -> str:
    if expected is None or int(row["n"]) >= expected:
        return ""
    return f" <small class='n'>n={int(row['n'])}</small>"


def _metric_table(
    rows, metric: str, centred: bool, expected: int | None = None, noise=None, caption=True
) -> str:
    groups = _by_method(rows, metric, centred)
    checkpoints: dict[int, float] = {}
    for rs in groups.values():
        for r in rs:
            checkpoints.setdefault(int(r["checkpoint"]), float(r["epoch"]))
    cols = sorted(checkpoints)
    cells: dict[tuple[str, int], Mapping] = {
        (m, int(r["checkpoint"])): r for m, rs in groups.items() for r in rs
    }
    best: dict[int, float] = {}
    for c in cols:
        means = [float(cells[(m, c)]["mean"]) for m in groups if (m, c) in cells]
        means = [v for v in means if math.isfinite(v)]
        if means and len(groups) > 1:
            best[c] = max(means)

    head = "".join(f"<th>epoch {_esc(_epoch(checkpoints[c]))}</th>" for c in cols)
    body = []
    for method in [s["method"] for s in summary(rows, metric, centred)]:
        tds = []
        for c in cols:
            r = cells.get((method, c))
            if r is None:
                tds.append("<td>–</td>")
                continue
            mean = float(r["mean"])
            cls = " class='best'" if c in best and math.isfinite(mean) and mean == best[c] else ""
            tip = f"n = {int(r['n'])} test instances, step {int(r['step'])}"
            tds.append(
                f"<td{cls} title='{_esc(tip)}'>{_esc(_num(mean, r['sem'], 3))}"
                f"{_n_mark(r, expected)}</td>"
            )
        body.append(f"<tr><td>{_esc(method)}</td>{''.join(tds)}</tr>")
    if noise and centred:  # see fimo.evaluate.plots._ceiling for why not uncentred
        ceil = {
            int(r["checkpoint"]): r
            for r in noise
            if r["metric"] == metric
            and bool(r["centred"]) == centred
            and r["estimate"] == "ceiling"
        }
        if ceil:
            tds = "".join(
                f"<td class='floor'>{_esc(_num(ceil[c]['mean'], ceil[c]['sem'], 3))}</td>"
                if c in ceil
                else "<td>–</td>"
                for c in cols
            )
            body.append(f"<tr><td class='floor'>noise ceiling</td>{tds}</tr>")
    title = ""
    if caption:
        text = (
            f"{label(metric)} with the {'centred' if centred else 'uncentred'} gold standard "
            f"(mean ± SEM over test instances; best per checkpoint in bold)"
        )
        title = f"<h3>{_esc(text[:1].upper() + text[1:])}</h3>"
    return (
        f"{title}<div class='table-wrap'><table>"
        f"<thead><tr><th>method</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _img(uri: str, alt: str) -> str:
    return f"<img class='plot' alt='{_esc(alt)}' src='{uri}'>"


def _simple_report(rows, title, settings, manifest, notes) -> list[str]:
    """The report of agreement rows alone (no seeds, noise floor or examples)."""
    pairs = _available(rows)
    parts = ["<h2>Summary</h2>"]
    sentences = summary_sentences(rows)
    if sentences:
        parts.append("".join(f"<p>{_esc(s)}</p>" for s in sentences))
    else:
        parts.append("<p>No agreement values to summarise.</p>")
    if ("cosine", True) in pairs:
        fig = plot_agreement(rows, "cosine", True)
        alt = "cosine similarity with the centred gold standard against further-training epochs"
        parts.append("<h2>Cosine similarity over further training</h2>")
        parts.append(_img(png_data_uri(fig), alt))
    parts.append("<h2>Agreement by checkpoint</h2>")
    if pairs:
        parts.extend(_metric_table(rows, metric, centred) for metric, centred in pairs)
    else:
        parts.append("<p>No rows.</p>")
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append("</ul>")
    parts.extend(_settings_sections(settings, manifest))
    return parts


def _settings_sections(settings, manifest) -> list[str]:
    parts = ["<h2 id='settings'>Settings</h2>", _definition_list(settings or {})]
    parts.append("<h2 id='fingerprints'>Fingerprints</h2>")
    prints = _fingerprints(manifest or {})
    if prints:
        parts.append("<div class='table-wrap'><table><thead><tr><th>what</th>")
        parts.append("<th>fingerprint</th></tr></thead><tbody>")
        parts.extend(
            f"<tr><td>{_esc(k)}</td><td><code>{_esc(v)}</code></td></tr>" for k, v in prints
        )
        parts.append("</tbody></table></div>")
    else:
        parts.append("<p class='meta'>The manifest records no fingerprints.</p>")
    return parts


def write_report(
    path,
    rows,
    *,
    title: str,
    settings: Mapping,
    manifest: Mapping,
    notes: Sequence[str] = (),
    evaluation=None,
    figures: Mapping[str, bytes] | None = None,
) -> Path:
    """Write one self-contained HTML report (inline CSS, plots as base64 PNGs), atomically.

    With ``rows`` alone: the summary sentences, a mean ± SEM table per metric (methods ×
    checkpoints), the centred cosine plot, the notes, the settings and the manifest's
    fingerprints. With an ``evaluation`` (:class:`fimo.evaluate.Evaluation`) the full report:
    the summary in words, agreement over further training with the noise ceiling, every
    metric, the noise floor, the seed-count study, calibration, sorted scores and the most
    influential training instances; ``figures`` maps figure names to PNG bytes already drawn
    (see :func:`fimo.evaluate.draw_figures`). Returns the path written.

    >>> # write_report("report.html", rows, title="adult", settings={}, manifest={})
    """
    rows = list(rows)
    parts: list[str] = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='meta'>Generated by fimo on "
        f"{_esc(datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'))}; "
        f"{len({r['method'] for r in rows})} methods, "
        f"{len({int(r['checkpoint']) for r in rows})} checkpoints.</p>",
    ]
    if evaluation is None:
        parts.extend(_simple_report(rows, title, settings, manifest, notes))
    else:
        from fimo.evaluate.report_sections import full_report

        parts.extend(full_report(evaluation, rows, settings, manifest, notes, figures))
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))
