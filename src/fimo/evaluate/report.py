"""Plots, summaries and a self-contained HTML report of method–gold-standard agreement.

Everything here reads the rows made by :func:`fimo.evaluate.metrics.agreement_by_checkpoint`
(or read back with :func:`~fimo.evaluate.metrics.read_metrics_csv`); no number is
hard-coded.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fimo.errors import InputError
from fimo.io import atomic_write, write_text

METRIC_LABELS = {"cosine": "cosine similarity", "spearman": "Spearman rank correlation"}


# -- selecting rows ----------------------------------------------------------------------------
def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _by_method(rows: Iterable[Mapping], metric: str, centred: bool) -> dict[str, list[Mapping]]:
    """Rows of one metric and centring, grouped by method (first-seen order), by checkpoint."""
    out: dict[str, list[Mapping]] = {}
    for row in rows:
        if row["metric"] == metric and bool(row["centred"]) == bool(centred):
            out.setdefault(str(row["method"]), []).append(row)
    for method in out:
        out[method].sort(key=lambda r: (int(r["checkpoint"]), float(r["epoch"])))
    return out


def _available(rows: Iterable[Mapping]) -> list[tuple[str, bool]]:
    """(metric, centred) pairs present in ``rows``: centred first, then known metrics first."""
    pairs = {(str(r["metric"]), bool(r["centred"])) for r in rows}
    order = list(METRIC_LABELS)
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


def _num(mean, sem=None, digits: int = 2) -> str:
    """'0.91 ± 0.01' (or '0.91' without a finite SEM; 'n/a' for a NaN mean)."""
    if not _finite(mean):
        return "n/a"
    text = _fixed(mean, digits)
    if sem is not None and _finite(sem):
        text += f" ± {_fixed(sem, digits)}"
    return text


def _fixed(x, digits: int) -> str:
    text = f"{float(x):.{digits}f}"
    # a value that rounds to zero is shown as 0.00, not -0.00
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


# -- plot --------------------------------------------------------------------------------------
def plot_agreement(rows, metric: str = "cosine", centred: bool = True, path=None):
    """Mean agreement against further-training epochs, one line per method, ±1 SEM band.

    Returns a matplotlib Figure drawn with the Agg backend (no display needed, and no
    global pyplot state is touched). If ``path`` is given the PNG is saved there atomically
    (dpi 120).
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    groups = _by_method(rows, metric, centred)
    if not groups:
        have = ", ".join(f"{m} ({'centred' if c else 'uncentred'})" for m, c in _available(rows))
        raise InputError(
            f"plot_agreement: no rows for metric={metric!r}, centred={centred}; "
            f"available: {have or 'none'}"
        )

    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "osD^vP*Xhp<>"
    for k, (method, rs) in enumerate(groups.items()):
        x = np.array([float(r["epoch"]) for r in rs])
        y = np.array([float(r["mean"]) for r in rs])
        s = np.array([float(r["sem"]) for r in rs])
        s = np.where(np.isfinite(s), s, 0.0)
        (line,) = ax.plot(x, y, marker=markers[k % len(markers)], markersize=5, label=method)
        ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, linewidth=0)

    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.0), max(hi, 0.0))
    ax.set_xlabel("further-training epochs")
    ax.set_ylabel(f"{_label(metric)} with the gold standard")
    ax.set_title(
        f"Agreement with the {'centred' if centred else 'uncentred'} gold standard "
        f"(mean ± SEM over test instances)",
        fontsize="medium",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")

    if path is not None:
        atomic_write(path, lambda p: _save_png(fig, p))
    return fig


def _save_png(fig, target) -> None:
    # metadata Software=None keeps the bytes free of the matplotlib version string/URL
    fig.savefig(target, format="png", dpi=120, metadata={"Software": None})


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    _save_png(fig, buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- summaries ---------------------------------------------------------------------------------
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


def summary_sentences(rows) -> list[str]:
    """Plain-English sentences describing which method agrees best, per metric and centring."""
    rows = list(rows)
    sentences: list[str] = []
    pairs = _available(rows)
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


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# -- rich table for the CLI --------------------------------------------------------------------
def rich_summary_table(
    rows, metric: str = "cosine", centred: bool = True, also: str | None = "spearman"
):
    """A ``rich.table.Table``: per method, ``metric`` at the first and last checkpoints
    (± SEM), its peak (and epoch), and ``also`` (default Spearman) at the first and last."""
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


# -- HTML report -------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1rem; margin-bottom: 0.4rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
td.best { font-weight: bold; background: #eef6ee; }
.table-wrap { overflow-x: auto; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; }
dl { margin: 0.2rem 0 0.2rem 0; }
dl dl { margin-left: 1.2rem; border-left: 2px solid #eee; padding-left: 0.6rem; }
dt { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }
dd { margin: 0 0 0.3rem 1.2rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
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
    if isinstance(value, (list, tuple)):
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


def _metric_table(rows, metric: str, centred: bool) -> str:
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
            tds.append(f"<td{cls} title='{_esc(tip)}'>{_esc(_num(mean, r['sem'], 3))}</td>")
        body.append(f"<tr><td>{_esc(method)}</td>{''.join(tds)}</tr>")
    caption = (
        f"{_label(metric)} with the {'centred' if centred else 'uncentred'} gold standard "
        f"(mean ± SEM over test instances; best per checkpoint in bold)"
    )
    caption = caption[:1].upper() + caption[1:]
    return (
        f"<h3>{_esc(caption)}</h3><div class='table-wrap'><table>"
        f"<thead><tr><th>method</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def write_report(
    path,
    rows,
    *,
    title: str,
    settings: Mapping,
    manifest: Mapping,
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML report (inline CSS, plot as a base64 PNG), atomically.

    It holds the title, the summary sentences, a mean ± SEM table per metric (methods ×
    checkpoints), the centred cosine plot, the notes, the settings and the manifest's
    fingerprints. Returns the path written.
    """
    rows = list(rows)
    pairs = _available(rows)
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
        "<h2>Summary</h2>",
    ]
    sentences = summary_sentences(rows)
    if sentences:
        parts.append("".join(f"<p>{_esc(s)}</p>" for s in sentences))
    else:
        parts.append("<p>No agreement values to summarise.</p>")

    if ("cosine", True) in pairs:
        fig = plot_agreement(rows, "cosine", True)
        alt = "cosine similarity with the centred gold standard against further-training epochs"
        parts.append("<h2>Cosine similarity over further training</h2>")
        parts.append(f"<img class='plot' alt='{_esc(alt)}' src='{_png_data_uri(fig)}'>")

    parts.append("<h2>Agreement by checkpoint</h2>")
    if pairs:
        parts.extend(_metric_table(rows, metric, centred) for metric, centred in pairs)
    else:
        parts.append("<p>No rows.</p>")

    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{_esc(n)}</li>" for n in notes)
        parts.append("</ul>")

    parts.append("<h2>Settings</h2>")
    parts.append(_definition_list(settings or {}))

    parts.append("<h2>Fingerprints</h2>")
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

    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))
