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
from fimo.evaluate.formatting import gold_name, label
from fimo.evaluate.narrative import by_method
from fimo.io import atomic_write

MARKERS = "osD^vP*Xhp<>"
DPI = 120
#: more checkpoints than this per line: markers thinned, bands lighter
DENSE_CHECKPOINTS = 30
#: a largest-to-smallest epoch ratio above this puts the epochs on a log axis
LOG_EPOCH_SPAN = 100.0
#: ``FIMO_FIGURES=0`` skips the figures of ``fimo run`` and ``fimo report`` (batch runs, CI)
FIGURES_ENV = "FIMO_FIGURES"


def figures_wanted(environ=None) -> bool:
    """Whether to draw the figures: yes unless ``FIMO_FIGURES`` is ``0`` (or ``off``, ``no``,
    ``false``). Drawing them costs seconds per run whatever its size (half of a tiny run's
    time), which sweeps of many small runs and test suites can skip; ``fimo report RUN``
    draws them later from the run's files.

    >>> figures_wanted({}), figures_wanted({"FIMO_FIGURES": "0"}), figures_wanted({"FIMO_FIGURES": "1"})
    (True, False, True)
    >>> figures_wanted({"FIMO_FIGURES": "maybe"})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: FIMO_FIGURES: got 'maybe'; use 1 to draw the figures or 0 to skip them
    """
    import os

    text = (os.environ if environ is None else environ).get(FIGURES_ENV, "1").strip().lower()
    if text in ("", "1", "on", "yes", "true"):
        return True
    if text in ("0", "off", "no", "false"):
        return False
    raise InputError(f"{FIGURES_ENV}: got {text!r}; use 1 to draw the figures or 0 to skip them")


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


#: matplotlib's default colour cycle, C0 to C9
N_COLOURS = 10


def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: f"C{j % N_COLOURS}" for j, m in enumerate(methods)}


def _linestyle(j: int) -> str:
    """Solid for the first ten methods, dash-dotted for those that share a colour with them.

    >>> _linestyle(9), _linestyle(10)
    ('-', '-.')
    """
    return "-" if j < N_COLOURS else "-."


def _methods(rows: Iterable[Mapping], key: str = "method") -> list[str]:
    return list(dict.fromkeys(str(r[key]) for r in rows))


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
    """One line per method (±1 SEM band) and the noise ceiling, on an epoch axis that is
    logarithmic when the checkpoints span more than two orders of magnitude.

    With many checkpoints the markers are thinned to a few per line (spaced along the
    curve) and the bands made lighter, so that crowded lines stay apart; methods beyond
    the ten colours of the cycle are drawn dash-dotted. The legend sits outside the axes,
    to the right, where it hides no curve.
    """
    dense = max((len(rs) for rs in groups.values()), default=0) > DENSE_CHECKPOINTS
    crowded = dense or len(groups) > 5
    epochs = []
    for k, (method, rs) in enumerate(groups.items()):
        x = np.array([float(r["epoch"]) for r in rs])
        y = np.array([float(r["mean"]) for r in rs])
        s = np.array([float(r["sem"]) for r in rs])
        s = np.where(np.isfinite(s), s, 0.0)
        ax.plot(
            x,
            y,
            marker=MARKERS[k % len(MARKERS)],
            markersize=4,
            markevery=0.08 if dense else None,
            linestyle=_linestyle(k),
            linewidth=1.2 if dense else 1.5,
            label=method,
            color=colors[method],
        )
        ax.fill_between(
            x, y - s, y + s, color=colors[method], alpha=0.1 if crowded else 0.2, linewidth=0
        )
        epochs.extend(x)
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
    if epochs and min(epochs) > 0 and max(epochs) / min(epochs) > LOG_EPOCH_SPAN:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    if legend:
        n = len(ax.get_legend_handles_labels()[1])
        ax.legend(
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncols=1 if n <= 16 else 2,
        )


def plot_agreement(
    rows, metric: str = "cosine", centred: bool = True, path=None, noise: Sequence | None = None
):
    """Mean agreement against further-training epochs, one line per method, ±1 SEM band.

    ``noise`` (the rows of :func:`fimo.evaluate.noise_floor`) adds the noise ceiling as a
    dashed line. Returns a matplotlib Figure drawn with the Agg backend. If ``path`` is
    given the figure is saved there atomically (PNG, or SVG for a ``.svg`` path).

    >>> rows = [{"method": "a", "checkpoint": c, "step": 5 * c, "epoch": e, "metric": "cosine",
    ...          "centred": True, "mean": m, "sem": 0.02, "n": 4}
    ...         for c, (e, m) in enumerate([(0.01, 0.4), (1.0, 0.6), (10.0, 0.7)])]
    >>> ax = plot_agreement(rows).axes[0]  # epochs 0.01 to 10: a log axis
    >>> ax.get_xscale(), [t.get_text() for t in ax.get_legend().get_texts()]
    ('log', ['a'])
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
    fig = _figure(8.6, 4.2)  # the legend takes the right-hand 1.6 inches
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

    >>> rows = [{"method": "a", "checkpoint": c, "step": 5 * c, "epoch": c + 1.0, "metric": m,
    ...          "centred": True, "mean": 0.5, "sem": 0.02, "n": 4}
    ...         for c in (0, 1) for m in ("sign", "cosine")]
    >>> [ax.get_title() for ax in plot_agreement_grid(rows).axes]
    ['cosine similarity', 'sign agreement']
    """
    from fimo.evaluate.metrics import ALL_METRICS

    rows = [r for r in rows if bool(r["centred"]) == bool(centred)]
    present = {str(r["metric"]) for r in rows}
    metrics = [m for m in ALL_METRICS if m in present] + sorted(present - set(ALL_METRICS))
    if not metrics:
        raise InputError(f"plot_agreement_grid: no rows for the {gold_name(centred)} gold standard")
    # the legend below the panels: as many entries a row as fit, and room for every row
    n_labels = len(_methods(rows)) + any(_ceiling(noise, m, centred) for m in metrics)
    legend_cols = max(1, min(n_labels, 6, int(3.2 * min(len(metrics), 4) // 2.0)))
    bottom = 0.55 + 0.25 * math.ceil(n_labels / legend_cols)
    fig, nrows, cols = _grid(len(metrics), 3.2, 2.45, top=0.55, bottom=bottom)
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
    fig.legend(handles, labels, loc="lower center", ncols=legend_cols, bbox_to_anchor=(0.5, 0.0))
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
    one panel per gold-standard view, one line per method with ±1 SEM error bars (dash-dotted
    past the ten colours of the cycle), and one legend below the panels, where it covers no
    line (with ten methods a legend inside an axes sits on the curves).

    >>> seeds = [{"method": "a", "k": k, "metric": "cosine", "centred": True, "best": True,
    ...           "mean": m, "sem": 0.01} for k, m in ((1, 0.5), (2, 0.6), (4, 0.65))]
    >>> [t.get_text() for t in plot_seed_count(seeds).axes[0].get_xticklabels()]
    ['1', '2', '4']
    """
    rows = [r for r in seed_rows if r["metric"] == metric and r["best"]]
    if not rows:
        raise InputError(f"plot_seed_count: no best-checkpoint rows for metric={metric!r}")
    flags = sorted({bool(r["centred"]) for r in rows}, reverse=True)
    methods = _methods(rows)
    legend_cols = min(len(methods), 5)
    fig = _figure(4.6 * len(flags) + 0.4, 4.0 + 0.25 * math.ceil(len(methods) / legend_cols))
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
                linestyle=_linestyle(m_i),
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
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, fontsize="small")
    return fig


def plot_sorted_curves(curve_rows, centred: bool = True):
    """Sorted-score curves: the gold standard at its checkpoints (grey, solid) and each
    method (coloured, dashed), unit-normalised, against the rank (most harmful first).

    >>> curves = [{"source": s, "checkpoint": 0, "epoch": 1.0, "centred": True, "rank": r,
    ...            "value": v, "step": 5 if s == "gold" else None}  # a: no checkpoint axis
    ...           for s in ("gold", "a") for r, v in enumerate((-0.8, 0.6))]
    >>> [line.get_label() for line in plot_sorted_curves(curves).axes[0].get_lines()][:2]
    ['gold standard, epoch 1', 'a']
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

    >>> import numpy as np
    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> gold = GoldStandard(loss_full=np.zeros((1, 1, 1)), loss_without=[[[[1.0, 2.0, 6.0]]]],
    ...                     steps=[5], epochs=[1.0], left_out=[0, 1, 2], test=[0], seeds=[0])
    >>> scores = {"a": Scores(np.array([[-1.0, 0.0, 1.0]]), [0], [0, 1, 2], "a")}
    >>> # centred gold [-2, -1, 3]: scale (2 + 3) / 2, R² 1 - 1.5 / 14
    >>> plot_calibration(gold, scores, checkpoint=0).axes[0].texts[0].get_text()
    'scale 2.5\\nR² 0.89'
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

    >>> import numpy as np, fimo
    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> gold = GoldStandard(loss_full=np.zeros((1, 1, 1)), loss_without=[[[[1.0, 2.0, 6.0]]]],
    ...                     steps=[5], epochs=[1.0], left_out=[0, 1, 2], test=[0], seeds=[0])
    >>> ev = fimo.evaluate(gold, Scores(np.array([[-1.0, 0.0, 1.0]]), [0], [0, 1, 2], "a"),
    ...                    frames=False)
    >>> sorted(evaluation_figures(ev))
    ['agreement_adjusted', 'agreement_centred', 'calibration', 'cosine', 'seed_count', 'sorted_scores']
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

    >>> from matplotlib.figure import Figure
    >>> data = figure_bytes(Figure(figsize=(1, 1)))
    >>> data["png"][:8], b"<dc:date>" in data["svg"]
    (b'\\x89PNG\\r\\n\\x1a\\n', False)
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

    >>> import tempfile, pathlib
    >>> from matplotlib.figure import Figure
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data = save_figure(Figure(figsize=(1, 1)), pathlib.Path(tmp) / "empty")
    ...     files = sorted(p.name for p in pathlib.Path(tmp).iterdir())
    >>> files, sorted(data)
    (['empty.png', 'empty.svg'], ['png', 'svg'])
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
