"""Tests for fimo.evaluate: metrics against independent computations, CSV, plot and report."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from fimo.errors import InputError
from fimo.evaluate import (
    METRICS,
    agreement_by_checkpoint,
    cosine_rows,
    mean_sem,
    plot_agreement,
    read_metrics_csv,
    rich_summary_table,
    spearman_rows,
    summary,
    summary_sentences,
    write_metrics_csv,
    write_report,
)
from fimo.evaluate.metrics import COLUMNS
from fimo.further.gold import GoldStandard
from fimo.scores import Scores


# -- row-wise metrics --------------------------------------------------------------------------
def test_cosine_rows_matches_explicit_loop():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 9))
    b = rng.normal(size=(6, 9))
    b[2] = -3.0 * a[2]  # anti-parallel
    got = cosine_rows(a, b)
    want = np.array(
        [
            float(np.dot(a[t], b[t]) / (np.linalg.norm(a[t]) * np.linalg.norm(b[t])))
            for t in range(6)
        ]
    )
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[2] == pytest.approx(-1.0)


def test_cosine_rows_zero_norm_is_nan():
    a = np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.array([[2.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    got = cosine_rows(a, b)
    assert got[0] == pytest.approx(1.0)
    assert np.isnan(got[1]) and np.isnan(got[2])


def test_cosine_rows_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        cosine_rows(np.zeros((2, 3)), np.zeros((2, 4)))


def test_spearman_rows_matches_scipy_with_ties_and_constant_row():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, 8))
    b = rng.normal(size=(7, 8))
    a[1] = [1, 1, 2, 2, 3, 3, 3, 4]  # ties in a
    b[1] = [5, 4, 4, 2, 2, 2, 0, 1]  # ties in b
    a[2] = np.round(a[2])  # more ties
    a[3] = -(b[3] ** 3)  # strictly decreasing function of b: rho = -1
    b[4] = 2.5  # constant row
    got = spearman_rows(a, b)
    for t in range(7):
        if t == 4:
            assert np.isnan(got[t])
            continue
        want = spearmanr(a[t], b[t]).statistic
        assert got[t] == pytest.approx(want, abs=1e-12), t
    assert got[3] == pytest.approx(-1.0)


def test_spearman_rows_is_rank_invariant():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 10))
    b = rng.normal(size=(4, 10))
    np.testing.assert_allclose(spearman_rows(a, b), spearman_rows(np.exp(a), b**3), atol=1e-12)


def test_mean_sem_with_nans_matches_numpy():
    x = np.array([0.3, np.nan, -1.2, 2.5, np.inf, 0.7, np.nan])
    finite = np.array([0.3, -1.2, 2.5, 0.7])
    mean, sem, n = mean_sem(x)
    assert n == 4
    assert mean == pytest.approx(np.mean(finite))
    assert sem == pytest.approx(np.std(finite, ddof=1) / np.sqrt(4))
    assert mean == pytest.approx(np.nanmean(np.where(np.isinf(x), np.nan, x)))


def test_mean_sem_edge_cases():
    m, s, n = mean_sem([np.nan, np.nan])
    assert math.isnan(m) and math.isnan(s) and n == 0
    m, s, n = mean_sem([])
    assert math.isnan(m) and math.isnan(s) and n == 0
    m, s, n = mean_sem([np.nan, 4.0])
    assert (m, n) == (4.0, 1) and math.isnan(s)


def test_metrics_registry():
    assert METRICS == {"cosine": cosine_rows, "spearman": spearman_rows}


# -- agreement with a gold standard ------------------------------------------------------------
class CountingGold(GoldStandard):
    calls: list

    def mean(self, centred: bool = True) -> np.ndarray:
        self.calls.append(centred)
        return super().mean(centred)


def make_gold(S=3, C=2, T=4, L=5, seed=0) -> CountingGold:
    rng = np.random.default_rng(seed)
    g = CountingGold(
        loss_full=rng.normal(size=(S, C, T)),
        loss_without=rng.normal(size=(S, C, T, L)),
        steps=[10 * (c + 1) for c in range(C)],
        epochs=[float(c + 1) for c in range(C)],
        left_out=[11, 3, 27, 8, 15][:L],
        test=[40, 2, 33, 7][:T],
        seeds=list(range(S)),
    )
    g.calls = []
    return g


def superset_scores(gold: GoldStandard, name: str, rng, values_for=None) -> Scores:
    """A Scores covering a shuffled superset of the gold's test and left-out indices."""
    train = rng.permutation(np.concatenate([gold.left_out, [100, 101, 102]]))
    test = rng.permutation(np.concatenate([gold.test, [200, 201]]))
    values = rng.normal(size=(len(test), len(train)))
    if values_for is not None:  # place a (T, L) matrix at the gold's positions
        for ti, t in enumerate(gold.test):
            for li, i in enumerate(gold.left_out):
                values[list(test).index(t), list(train).index(i)] = values_for[ti, li]
    return Scores(values, test=test, train=train, method=name)


def test_agreement_by_checkpoint_matches_direct_computation():
    gold = make_gold()
    rng = np.random.default_rng(5)
    scores = {name: superset_scores(gold, name, rng) for name in ("grad_dot", "grad_cos")}
    rows = agreement_by_checkpoint(gold, scores, centred=(True, False))

    assert len(rows) == 2 * 2 * 2 * 2  # methods × centred × checkpoints × metrics
    assert all(list(r) == list(COLUMNS) for r in rows)
    assert sorted(gold.calls) == [False, True]  # gold.mean once per flag, not per method

    for r in rows:
        sc = scores[r["method"]]
        # direct: look every value up by dataset index
        m = np.array(
            [
                [sc.values[list(sc.test).index(t), list(sc.train).index(i)] for i in gold.left_out]
                for t in gold.test
            ]
        )
        diff = gold.loss_without - gold.loss_full[..., None]
        if r["centred"]:
            diff = diff - diff.mean(axis=-1, keepdims=True)
        g = diff.mean(axis=0)[r["checkpoint"]]
        if r["metric"] == "cosine":
            per = [
                np.dot(g[t], m[t]) / np.linalg.norm(g[t]) / np.linalg.norm(m[t]) for t in range(4)
            ]
        else:
            per = [spearmanr(g[t], m[t]).statistic for t in range(4)]
        assert r["mean"] == pytest.approx(np.mean(per), abs=1e-12)
        assert r["sem"] == pytest.approx(np.std(per, ddof=1) / 2.0, abs=1e-12)
        assert r["n"] == 4
        assert r["step"] == [10, 20][r["checkpoint"]]
        assert r["epoch"] == [1.0, 2.0][r["checkpoint"]]
        assert isinstance(r["step"], int) and isinstance(r["epoch"], float)
        assert isinstance(r["centred"], bool)


def test_agreement_perfect_method_gives_one_with_zero_sem():
    gold = make_gold(seed=3)
    rng = np.random.default_rng(4)
    exact = superset_scores(gold, "oracle", rng, values_for=gold.mean(True)[1])
    rows = agreement_by_checkpoint(gold, {"oracle": exact}, metrics=("cosine", "spearman"))
    at_last = [r for r in rows if r["checkpoint"] == 1]
    assert {r["metric"] for r in at_last} == {"cosine", "spearman"}
    for r in at_last:
        assert r["mean"] == pytest.approx(1.0, abs=1e-12)
        assert r["sem"] == pytest.approx(0.0, abs=1e-12)
        assert r["n"] == 4


def test_agreement_missing_left_out_raises():
    gold = make_gold()
    short = Scores(np.zeros((4, 4)), test=gold.test, train=gold.left_out[:4], method="short")
    with pytest.raises(InputError):
        agreement_by_checkpoint(gold, {"short": short})


def test_agreement_unknown_metric_raises():
    gold = make_gold()
    sc = Scores(np.ones((4, 5)), test=gold.test, train=gold.left_out, method="m")
    with pytest.raises(InputError, match="cosine"):
        agreement_by_checkpoint(gold, {"m": sc}, metrics=("cosin",))


# -- CSV ---------------------------------------------------------------------------------------
def sample_rows():
    gold = make_gold(seed=7)
    rng = np.random.default_rng(8)
    scores = {
        "grad_dot": superset_scores(gold, "grad_dot", rng, values_for=gold.mean(True)[0]),
        "random": superset_scores(gold, "random", rng),
    }
    return agreement_by_checkpoint(gold, scores, centred=(True, False))


def test_csv_round_trip(tmp_path):
    rows = sample_rows()
    rows[0] = {**rows[0], "sem": math.nan}
    path = write_metrics_csv(tmp_path / "metrics.csv", rows)
    text = path.read_text()
    assert text.splitlines()[0] == "method,checkpoint,step,epoch,metric,centred,mean,sem,n"
    assert ",true," in text and ",false," in text
    back = read_metrics_csv(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back, strict=True):
        assert list(b) == list(COLUMNS)
        for k in COLUMNS:
            assert type(a[k]) is type(b[k]), k
            if isinstance(a[k], float) and math.isnan(a[k]):
                assert math.isnan(b[k])
            else:
                assert a[k] == b[k], k  # repr precision: exact


def test_read_metrics_csv_rejects_other_files(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="header"):
        read_metrics_csv(p)


# -- summaries ---------------------------------------------------------------------------------
def hand_rows():
    """Hand-made rows: A is best first, B best last, A peaks in the middle."""
    spec = {
        "A": [(0.91, 0.01), (0.95, 0.01), (0.80, 0.02)],
        "B": [(0.50, 0.03), (0.70, 0.03), (0.85, 0.02)],
    }
    rows = []
    for method, vals in spec.items():
        for c, (m, s) in enumerate(vals):
            for metric in ("cosine", "spearman"):
                rows.append(
                    {
                        "method": method,
                        "checkpoint": c,
                        "step": 100 * (c + 1),
                        "epoch": 0.5 * (c + 1),
                        "metric": metric,
                        "centred": True,
                        "mean": m if metric == "cosine" else m - 0.1,
                        "sem": s,
                        "n": 10,
                    }
                )
    return rows


def test_summary_first_last_peak():
    out = summary(hand_rows(), "cosine", True)
    assert [e["method"] for e in out] == ["A", "B"]  # peak 0.95 > 0.85
    a = out[0]
    assert (a["first"]["mean"], a["first"]["sem"], a["first"]["epoch"]) == (0.91, 0.01, 0.5)
    assert (a["last"]["mean"], a["last"]["epoch"]) == (0.80, 1.5)
    assert (a["peak"]["mean"], a["peak"]["epoch"]) == (0.95, 1.0)
    assert out[1]["peak"]["epoch"] == 1.5


def test_summary_sentences_are_derived_from_numbers():
    sentences = summary_sentences(hand_rows())
    assert sentences[0] == (
        "At the first checkpoint (epoch 0.5), A agrees best with the gold standard "
        "(cosine 0.91 ± 0.01); at the last (epoch 1.5), B (0.85 ± 0.02)."
    )
    assert any("spearman 0.81 ± 0.01" in s for s in sentences)
    assert any("A's 0.95 ± 0.01, reached at epoch 1" in s for s in sentences)


def test_rich_summary_table_renders():
    from rich.console import Console

    table = rich_summary_table(hand_rows())
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "0.910 ± 0.010" in text and "0.850 ± 0.020" in text
    assert "spearman first" in text
    assert table.columns[0].header == "method"
    assert len(table.columns) == 6


# -- plot and report ---------------------------------------------------------------------------
def test_plot_agreement_saves_png(tmp_path):
    rows = hand_rows()
    path = tmp_path / "sub" / "cosine.png"
    fig = plot_agreement(rows, metric="cosine", centred=True, path=path)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.0 <= hi
    assert ax.get_xlabel() == "further-training epochs"
    assert "cosine similarity with the gold standard" in ax.get_ylabel()
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["A", "B"]
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_plot_agreement_without_rows_raises():
    with pytest.raises(InputError):
        plot_agreement(hand_rows(), metric="cosine", centred=False)


def test_write_report_is_self_contained(tmp_path):
    rows = sample_rows()
    settings = {"model": {"hidden": [16, 8], "lr": 0.01}, "seeds": 3, "centred": True}
    manifest = {
        "fimo": "0.1.0",
        "fingerprints": {"data": "abc123def4567890", "gold": "0011223344556677"},
        "methods": {"grad_dot": {"fingerprint": "feedfacecafebeef"}},
    }
    path = write_report(
        tmp_path / "report.html",
        rows,
        title="Adult <MLP> & friends",
        settings=settings,
        manifest=manifest,
        notes=["seeds < 5: SEMs are rough"],
    )
    text = path.read_text()
    assert "data:image/png;base64," in text
    without_image = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "http" not in without_image.lower()
    assert "http" not in text  # nothing external at all
    for method in ("grad_dot", "random"):
        assert method in text
    assert "Adult &lt;MLP&gt; &amp; friends" in text and "<MLP>" not in text
    assert "seeds &lt; 5: SEMs are rough" in text
    for fp in ("abc123def4567890", "0011223344556677", "feedfacecafebeef"):
        assert fp in text
    assert "hidden" in text and "[16, 8]" in text
    for s in summary_sentences(rows):
        assert s.replace("'", "&#x27;") in text
    # one table per (metric, centred) present, columns labelled by epoch
    assert text.count("<table>") == 4 + 1  # 4 metric tables + fingerprints
    assert "epoch 1</th>" in text and "epoch 2</th>" in text
