"""Figures of an evaluation, drawn with matplotlib's Agg backend (no display, no pyplot state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as
PNG and SVG, and :func:`png_data_uri` embeds it in a page. The files carry no date or
software version, so the same numbers give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.io import atomic_write

METRIC_LABELS = {
    "cosine": "cosine similarity",
    "spearman": "Spearman rank correlation",
    "pearson": "Pearson correlation",
    "top5_helpful": "top-5 overlap, most helpful",
    "top10_helpful": "top-10 overlap, most helpful",
    "top5_harmful": "top-5 overlap, most harmful",
    "top10_harmful": "top-10 overlap, most harmful",
    "sign": "sign agreement",
}
MARKERS = "osD^vP*Xhp<>"
DPI = 120


def label(metric: str) -> str:
    """The readable name of a metric ("cosine similarity" for "cosine").

    >>> label("top5_helpful")
    'top-5 overlap, most helpful'
    """
    return METRIC_LABELS.get(metric, metric)


def gold_name(centred: bool) -> str:
    """'centred' or 'adjusted-only' (the gold standard of paper eq. 13 or eq. 17).

    >>> gold_name(False)
    'adjusted-only'
    """
    return "centred" if centred else "adjusted-only"


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, panel_w: float, panel_h: float, top: float, bottom: float, cols: int = 4):
    """A figure for ``n`` panels in rows of ``cols`` with fixed margins (in inches).

    Fixed margins instead of constrained layout: the layout of many panels is the slowest
    part of drawing them, and these panels all have the same labels.
    """
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    width, height = panel_w * cols, panel_h * rows + top + bottom
    fig = _figure(width, height, layout=None)
    fig.subplots_adjust(
        left=0.55 / width,
        right=1 - 0.15 / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.28,
        hspace=0.42,
    )
    return fig, rows, cols


def _colors(methods: Sequence[str]) -> dict[str, str]:
    cycle = [f"C{j}" for j in range(10)]
    return {m: cycle[j % len(cycle)] for j, m in enumerate(methods)}


def _methods(rows: Iterable[Mapping], key: str = "method") -> list[str]:
    return list(dict.fromkeys(str(r[key]) for r in rows))


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


def _ceiling(noise, metric: str, centred: bool) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(epochs, ceiling, seeds) of the noise-floor rows for one metric, or None.

    Only for the centred gold standard: without centring, most of the seed noise is a shift
    shared by every left-out instance (the full run's own noise), which a method that ignores
    such shifts does not see, so the ceiling would not bound it.
    """
    if not noise or not centred:
        return None
    rs = [
        r
        for r in noise
        if r["metric"] == metric
        and bool(r["centred"]) == bool(centred)
        and r["estimate"] == "ceiling"
    ]
    rs.sort(key=lambda r: int(r["checkpoint"]))
    y = np.array([float(r["mean"]) for r in rs])
    if not rs or not np.isfinite(y).any():
        return None
    return np.array([float(r["epoch"]) for r in rs]), y, int(rs[0]["seeds"])


def _draw_agreement(ax, groups, colors, ceiling=None, legend=True) -> None:
    for k, (method, rs) in enumerate(groups.items()):
        x = np.array([float(r["epoch"]) for r in rs])
        y = np.array([float(r["mean"]) for r in rs])
        s = np.array([float(r["sem"]) for r in rs])
        s = np.where(np.isfinite(s), s, 0.0)
        ax.plot(
            x, y, marker=MARKERS[k % len(MARKERS)], markersize=4, label=method, color=colors[method]
        )
        ax.fill_between(x, y - s, y + s, color=colors[method], alpha=0.2, linewidth=0)
    if ceiling is not None:
        x, y, seeds = ceiling
        ax.plot(
            x,
            y,
            linestyle="--",
            color="0.35",
            linewidth=1.2,
            label=f"noise ceiling ({seeds} seeds)",
        )
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.0), max(hi, 0.0))
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small", loc="best")


def plot_agreement(
    rows, metric: str = "cosine", centred: bool = True, path=None, noise: Sequence | None = None
):
    """Mean agreement against further-training epochs, one line per method, ±1 SEM band.

    ``noise`` (the rows of :func:`fimo.evaluate.noise_floor`) adds the noise ceiling as a
    dashed line. Returns a matplotlib Figure drawn with the Agg backend. If ``path`` is
    given the figure is saved there atomically (PNG, or SVG for a ``.svg`` path).

    >>> # plot_agreement(rows, "cosine", True, path="plots/cosine.png", noise=floor)
    """
    rows = list(rows)
    groups = by_method(rows, metric, centred)
    if not groups:
        have = sorted({(str(r["metric"]), bool(r["centred"])) for r in rows})
        shown = ", ".join(f"{m} ({gold_name(c)})" for m, c in have)
        raise InputError(
            f"plot_agreement: no rows for metric={metric!r}, centred={centred}; "
            f"available: {shown or 'none'}"
        )
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    _draw_agreement(ax, groups, _colors(list(groups)), _ceiling(noise, metric, centred))
    ax.set_xlabel("further-training epochs")
    ax.set_ylabel(f"{label(metric)} with the gold standard")
    ax.set_title(
        f"Agreement with the {gold_name(centred)} gold standard (mean ± SEM over test instances)",
        fontsize="medium",
    )
    if path is not None:
        fmt = "svg" if str(path).endswith(".svg") else "png"
        data = figure_bytes(fig, (fmt,))[fmt]
        atomic_write(path, lambda p: p.write_bytes(data))
    return fig


def plot_agreement_grid(rows, centred: bool = True, noise: Sequence | None = None):
    """Small multiples: one panel per metric present in ``rows``, one line per method.

    >>> # plot_agreement_grid(rows, centred=True, noise=floor)
    """
    from fimo.evaluate.metrics import ALL_METRICS

    rows = [r for r in rows if bool(r["centred"]) == bool(centred)]
    present = {str(r["metric"]) for r in rows}
    metrics = [m for m in ALL_METRICS if m in present] + sorted(present - set(ALL_METRICS))
    if not metrics:
        raise InputError(f"plot_agreement_grid: no rows for the {gold_name(centred)} gold standard")
    fig, nrows, cols = _grid(len(metrics), 3.2, 2.45, top=0.55, bottom=0.8)
    colors = _colors(_methods(rows))
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, cols, j + 1)
        _draw_agreement(
            ax, by_method(rows, metric, centred), colors, _ceiling(noise, metric, centred), False
        )
        ax.set_title(label(metric), fontsize="small")
        ax.tick_params(labelsize="small")
        if j // cols == nrows - 1:
            ax.set_xlabel("further-training epochs", fontsize="small")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:  # the noise-ceiling line may be missing from the first panel
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles, labels, loc="lower center", ncols=min(len(labels), 6), bbox_to_anchor=(0.5, 0.0)
    )
    fig.suptitle(
        f"Agreement with the {gold_name(centred)} gold standard, every metric "
        "(mean ± SEM over test instances)",
        fontsize="medium",
        y=1 - 0.12 / fig.get_figheight(),
        va="top",
    )
    return fig


def plot_seed_count(seed_rows, metric: str = "cosine"):
    """Agreement at the best checkpoint against the number of seeds averaged (log scale),
    one panel per gold-standard view, one line per method with ±1 SEM error bars.

    >>> # plot_seed_count(seed_count_study(gold, scores))
    """
    rows = [r for r in seed_rows if r["metric"] == metric and r["best"]]
    if not rows:
        raise InputError(f"plot_seed_count: no best-checkpoint rows for metric={metric!r}")
    flags = sorted({bool(r["centred"]) for r in rows}, reverse=True)
    fig = _figure(4.6 * len(flags) + 0.4, 4.0)
    methods = _methods(rows)
    colors = _colors(methods)
    ks = sorted({int(r["k"]) for r in rows})
    for j, flag in enumerate(flags):
        ax = fig.add_subplot(1, len(flags), j + 1)
        for m_i, method in enumerate(methods):
            rs = sorted(
                (r for r in rows if r["method"] == method and bool(r["centred"]) == flag),
                key=lambda r: int(r["k"]),
            )
            x = [int(r["k"]) for r in rs]
            y = np.array([float(r["mean"]) for r in rs])
            s = np.array([float(r["sem"]) for r in rs])
            ax.errorbar(
                x,
                y,
                yerr=np.where(np.isfinite(s), s, 0.0),
                marker=MARKERS[m_i % len(MARKERS)],
                markersize=4,
                capsize=3,
                color=colors[method],
                label=method,
            )
        if len(ks) > 1:
            ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("seeds averaged in the gold standard (k)")
        ax.set_ylabel(f"{label(metric)}, best checkpoint")
        ax.set_title(f"{gold_name(flag)} gold standard", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    return fig


def plot_sorted_curves(curve_rows, centred: bool = True):
    """Sorted-score curves: the gold standard at its checkpoints (grey, solid) and each
    method (coloured, dashed), unit-normalised, against the rank (most harmful first).

    >>> # plot_sorted_curves(sorted_score_curves(gold, scores))
    """
    rows = list(curve_rows)
    gold = [r for r in rows if r["source"] == "gold" and bool(r["centred"]) == bool(centred)]
    methods = _methods((r for r in rows if r["source"] != "gold"), key="source")
    if not gold and not methods:
        raise InputError("plot_sorted_curves: no curves")
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    positions = sorted({int(r["checkpoint"]) for r in gold})
    shades = np.linspace(0.0, 0.55, max(len(positions), 1))
    for shade, c in zip(shades, positions, strict=False):
        rs = sorted((r for r in gold if int(r["checkpoint"]) == c), key=lambda r: int(r["rank"]))
        ax.plot(
            [int(r["rank"]) for r in rs],
            [float(r["value"]) for r in rs],
            color=str(shade),
            linewidth=2.2,
            label=f"gold standard, epoch {float(rs[0]['epoch']):g}",
        )
    colors = _colors(methods)
    for method in methods:
        mine = [r for r in rows if r["source"] == method]
        # a method with a checkpoint axis has a curve per checkpoint (thinner when earlier)
        steps = sorted({r["step"] for r in mine if r["step"] is not None})
        for step in steps or [None]:
            rs = sorted((r for r in mine if r["step"] == step), key=lambda r: int(r["rank"]))
            label = method if step is None else f"{method}, epoch {float(rs[0]['epoch']):g}"
            ax.plot(
                [int(r["rank"]) for r in rs],
                [float(r["value"]) for r in rs],
                linestyle="--",
                color=colors[method],
                linewidth=1.5 if step is None or step == steps[-1] else 0.8,
                label=label,
            )
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.set_xlabel("rank among the left-out instances (most harmful first)")
    ax.set_ylabel("mean sorted score, unit ℓ2 norm")
    ax.set_title(
        f"Sorted scores (the {gold_name(centred)} gold standard and each method)",
        fontsize="medium",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def plot_calibration(gold, scores: Mapping[str, object], checkpoint: int, centred: bool = True):
    """Scatter of the gold standard against each method's scores at one checkpoint (all test
    instances pooled), with the least-squares line through the origin.

    >>> # plot_calibration(gold, scores, checkpoint=0)
    """
    from fimo.evaluate.calibration import fit_scale
    from fimo.evaluate.metrics import gold_flat, method_at, method_values

    if not scores:
        raise InputError("plot_calibration: no methods")
    adjusted = np.asarray(gold.mean(False), dtype=np.float64)
    flat = gold_flat(gold, adjusted)[checkpoint]
    adjusted = adjusted[checkpoint]
    g = adjusted - adjusted.mean(axis=-1, keepdims=True) if centred else adjusted
    g = g[~flat]
    names = list(scores)
    fig, nrows, cols = _grid(len(names), 3.3, 2.9, top=0.6, bottom=0.5)
    colors = _colors(names)
    for j, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, j + 1)
        m = method_at(method_values(gold, scores[name]), checkpoint)[~flat]
        fit = fit_scale(g, m)
        ax.scatter(  # thousands of points: a bitmap inside the SVG, not a path each
            m.ravel(), g.ravel(), s=6, alpha=0.45, color=colors[name], linewidths=0, rasterized=True
        )
        a = fit["pooled_scale"]
        if np.isfinite(a):
            lim = np.array([np.nanmin(m), np.nanmax(m)])
            ax.plot(lim, a * lim, color="0.2", linewidth=1.0)
        ax.axhline(0.0, color="0.7", linewidth=0.6, zorder=0)
        ax.axvline(0.0, color="0.7", linewidth=0.6, zorder=0)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        ax.tick_params(labelsize="x-small")
        ax.set_title(name, fontsize="small")
        ax.text(
            0.97,
            0.04,
            f"scale {a:.3g}\nR² {fit['pooled_r2']:.2f}",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize="x-small",
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9},
        )
        ax.set_xlabel(f"{name} score", fontsize="small")
        if j % cols == 0:
            ax.set_ylabel("gold standard", fontsize="small")
    fig.suptitle(
        f"Calibration at epoch {float(gold.epochs[checkpoint]):g} "
        f"({gold_name(centred)} gold standard; line: gold = scale × score)",
        fontsize="medium",
        y=1 - 0.1 / fig.get_figheight(),
        va="top",
    )
    return fig


def evaluation_figures(ev) -> dict[str, object]:
    """Every figure of an evaluation, by name: ``cosine`` (with the noise ceiling),
    ``agreement_centred``, ``agreement_adjusted``, ``seed_count``, ``calibration``,
    ``sorted_scores``. A figure with nothing to draw is left out.

    >>> # for name, fig in evaluation_figures(fimo.evaluate("runs/adult")).items(): ...
    """
    from fimo.evaluate.curves import reference_checkpoint

    rows, noise = ev.rows["by_checkpoint"], ev.rows["noise_floor"]
    flags = {bool(r["centred"]) for r in rows}
    makers = {
        "cosine": lambda: plot_agreement(rows, "cosine", True, noise=noise),
        "agreement_centred": lambda: plot_agreement_grid(rows, True, noise=noise),
        "agreement_adjusted": lambda: plot_agreement_grid(rows, False, noise=noise),
        "seed_count": lambda: plot_seed_count(ev.rows["seed_count"], "cosine"),
        "calibration": lambda: plot_calibration(
            ev.gold, ev.scores, reference_checkpoint(ev.gold), True
        ),
        "sorted_scores": lambda: plot_sorted_curves(ev.rows["sorted_curves"], True),
    }
    wanted = {
        "cosine": any(r["metric"] == "cosine" and r["centred"] for r in rows),
        "agreement_centred": True in flags,
        "agreement_adjusted": False in flags,
        "seed_count": any(r["best"] and r["metric"] == "cosine" for r in ev.rows["seed_count"]),
        "calibration": bool(ev.scores),
        "sorted_scores": bool(ev.rows["sorted_curves"]),
    }
    return {name: make() for name, make in makers.items() if wanted[name]}


# -- saving ------------------------------------------------------------------------------------
def figure_bytes(fig, formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:
    """The figure encoded in each format, without dates or version strings.

    >>> # figure_bytes(fig)["png"][:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    """
    from matplotlib import rc_context

    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        if fmt == "png":
            fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        elif fmt == "svg":
            # text stays text (smaller, faster, editable); ids do not change between runs
            with rc_context({"svg.hashsalt": "fimo", "svg.fonttype": "none"}):
                fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        else:
            raise InputError(f"figure format: got {fmt!r}; allowed: 'png', 'svg'")
        out[fmt] = buf.getvalue()
    return out


def save_figure(fig, base, formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:
    """Write ``<base>.png`` and ``<base>.svg`` atomically; returns the encoded bytes.

    >>> # save_figure(fig, "runs/adult/plots/cosine")
    """
    base = Path(base)
    data = figure_bytes(fig, formats)
    for fmt, blob in data.items():
        atomic_write(base.with_name(f"{base.name}.{fmt}"), lambda p, b=blob: p.write_bytes(b))
    return data


def png_data_uri(png: bytes | object) -> str:
    """A ``data:image/png;base64,...`` URI from PNG bytes or a Figure.

    >>> png_data_uri(b"\\x89PNG")
    'data:image/png;base64,iVBORw=='
    """
    if not isinstance(png, bytes | bytearray):
        png = figure_bytes(png, ("png",))["png"]
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")
