"""The report's parts after the split: table contents as data, legible agreement plots.

The contents (fimo.evaluate.narrative) are checked against plain loops over the rows; the
plots by where matplotlib puts the legend and the axes once the figure is drawn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fimo.evaluate.narrative import metric_table, seed_table, summary
from fimo.evaluate.plots import (
    figure_bytes,
    plot_agreement,
    plot_agreement_grid,
    plot_seed_count,
)

METHODS = [f"method_{j:02d}" for j in range(13)]


def agreement_rows(methods, epochs, metrics=("cosine",), seed=0):
    """Agreement rows (random means, some NaN) and a noise-ceiling row per checkpoint."""
    rng = np.random.default_rng(seed)
    rows, noise = [], []
    for metric in metrics:
        for m in methods:
            for c, e in enumerate(epochs):
                mean = rng.uniform(-0.2, 0.9) if rng.random() > 0.05 else math.nan
                rows.append(
                    {
                        "method": m,
                        "checkpoint": c,
                        "step": 10 * (c + 1),
                        "epoch": float(e),
                        "metric": metric,
                        "centred": True,
                        "mean": mean,
                        "sem": 0.02,
                        "n": 8,
                    }
                )
        for c, e in enumerate(epochs):
            noise.append(
                {
                    "checkpoint": c,
                    "epoch": float(e),
                    "metric": metric,
                    "centred": True,
                    "estimate": "ceiling",
                    "seeds": 4,
                    "mean": 0.95,
                    "sem": 0.01,
                }
            )
    return rows, noise


# -- contents ------------------------------------------------------------------------------------
def test_metric_table_marks_the_best_of_each_checkpoint():
    rows, noise = agreement_rows(METHODS[:4], [0.5, 1.0, 2.0])
    rows = [r for r in rows if not (r["method"] == METHODS[1] and r["checkpoint"] == 2)]
    table = metric_table(rows, "cosine", True, noise)
    assert table["epochs"] == [0.5, 1.0, 2.0]
    # methods in the order of their peak (as the summary orders them)
    assert [r["method"] for r in table["rows"]] == [e["method"] for e in summary(rows)]
    for c in range(3):
        means = {r["method"]: r["mean"] for r in rows if r["checkpoint"] == c}
        finite = [v for v in means.values() if not math.isnan(v)]
        for entry in table["rows"]:
            cell = entry["cells"][c]
            if entry["method"] not in means:
                assert cell is None and not entry["best"][c]
                continue
            assert cell["mean"] == means[entry["method"]] or (
                math.isnan(cell["mean"]) and math.isnan(means[entry["method"]])
            )
            assert entry["best"][c] == (cell["mean"] == max(finite))
    assert [r["mean"] for r in table["ceiling"]] == [0.95] * 3
    # no ceiling against the adjusted-only gold standard
    adjusted = [dict(r, centred=False) for r in rows]
    assert metric_table(adjusted, "cosine", False, noise)["ceiling"] is None


def test_metric_table_with_one_method_marks_nothing():
    rows, _ = agreement_rows(METHODS[:1], [1.0, 2.0])
    table = metric_table(rows, "cosine", True)
    assert table["rows"][0]["best"] == [False, False] and table["ceiling"] is None


def test_seed_table_rows_follow_the_methods_and_the_ks():
    seeds = [
        {"method": m, "k": k, "windows": 8 // k, "metric": "cosine", "centred": True,
         "best": best, "mean": 0.1 * k + j, "sem": 0.01, "epoch": 1.0}
        for j, m in enumerate(("a", "b"))
        for k in (1, 2, 4, 8)
        for best in (True, False)
        if not (m == "b" and k == 8)
    ]  # fmt: skip
    table = seed_table(seeds, "cosine", True)
    assert table["ks"] == [1, 2, 4, 8] and table["windows"] == [8, 4, 2, 1]
    assert [r["method"] for r in table["rows"]] == ["a", "b"]
    assert [c["mean"] if c else None for c in table["rows"][1]["cells"]] == [
        pytest.approx(1.1),
        pytest.approx(1.2),
        pytest.approx(1.4),
        None,
    ]
    assert all(c["best"] for r in table["rows"] for c in r["cells"] if c)
    assert seed_table(seeds, "cosine", False) is None


# -- legible plots -------------------------------------------------------------------------------
def drawn(fig):
    figure_bytes(fig, ("png",))  # lays the figure out
    return fig.canvas.get_renderer()


@pytest.mark.parametrize(
    ("methods", "epochs"),
    [
        (METHODS[:3], [0.5, 1.0, 2.0]),
        (METHODS, list(np.geomspace(0.01, 10.0, 200))),
        (METHODS[:6], list(np.linspace(0.05, 10.0, 200))),
    ],
)
def test_agreement_legend_sits_beside_the_curves_and_inside_the_figure(methods, epochs):
    rows, noise = agreement_rows(methods, epochs)
    fig = plot_agreement(rows, "cosine", True, noise=noise)
    renderer = drawn(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    page = fig.bbox
    assert legend.x0 >= axes.x1  # right of the plotting area: it covers no curve
    assert page.x0 <= legend.x0 and legend.x1 <= page.x1  # not cut off
    assert page.y0 <= legend.y0 and legend.y1 <= page.y1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [*methods, "noise ceiling (4 seeds)"]
    # the plotting area keeps at least 60 % of the width
    assert axes.width >= 0.6 * page.width


def test_agreement_epoch_axis_is_logarithmic_beyond_two_orders_of_magnitude():
    scales = {}
    for lo, hi in ((0.5, 2.0), (0.1, 10.0), (0.099, 10.0), (0.01, 10.0)):
        rows, _ = agreement_rows(METHODS[:2], np.geomspace(lo, hi, 5))
        scales[(lo, hi)] = plot_agreement(rows).axes[0].get_xscale()
    assert scales == {
        (0.5, 2.0): "linear",
        (0.1, 10.0): "linear",  # exactly two orders of magnitude
        (0.099, 10.0): "log",
        (0.01, 10.0): "log",
    }


def test_crowded_agreement_lines_are_told_apart():
    rows, _ = agreement_rows(METHODS, list(np.linspace(0.1, 2.0, 200)))
    lines = plot_agreement(rows).axes[0].get_lines()[: len(METHODS)]
    assert all(line.get_markevery() == 0.08 for line in lines)  # thinned markers
    styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == len(METHODS)  # no two methods drawn alike
    few, _ = agreement_rows(METHODS[:2], [1.0, 2.0])
    assert all(line.get_markevery() is None for line in plot_agreement(few).axes[0].get_lines())


def test_grid_legend_rows_fit_below_the_panels():
    metrics = ("cosine", "spearman", "pearson", "sign")
    for methods in (METHODS[:2], METHODS):
        rows, noise = agreement_rows(methods, [0.5, 1.0, 2.0], metrics)
        fig = plot_agreement_grid(rows, True, noise=noise)
        renderer = drawn(fig)
        legend = fig.legends[0].get_window_extent(renderer)
        lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)  # with tick labels
        assert fig.bbox.y0 <= legend.y0 and legend.y1 <= lowest
        assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1
        assert len(fig.legends[0].get_texts()) == len(methods) + 1


@pytest.mark.parametrize("n_methods", [1, 10, 13])
def test_seed_count_legend_sits_below_both_panels(n_methods):
    """Ten methods' legend inside an axes covered the curves of docs/img/*-seeds.png."""
    methods = METHODS[:n_methods]
    rows = [
        {"method": m, "k": k, "metric": "cosine", "centred": c, "best": True,
         "mean": 0.3 + 0.05 * j + 0.02 * math.log(k), "sem": 0.01}
        for j, m in enumerate(methods) for k in (1, 2, 5, 10, 20, 50, 100) for c in (True, False)
    ]  # fmt: skip
    fig = plot_seed_count(rows)
    renderer = drawn(fig)
    assert len(fig.axes) == 2 and all(ax.get_legend() is None for ax in fig.axes)
    legend = fig.legends[0].get_window_extent(renderer)
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)  # with the x label
    assert fig.bbox.y0 <= legend.y0 and legend.y1 <= lowest  # below the panels, not cut off
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == methods
    lines = [c.lines[0] for c in fig.axes[0].containers]  # each error bar's data line
    styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(lines) == n_methods and len(styles) == n_methods  # no two methods drawn alike
    # past the ten colours a method shares its colour: it is told apart by its line too
    dashed = [line.get_linestyle() == "-." for line in lines]
    assert dashed == [j >= 10 for j in range(n_methods)]
