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
    spearman_rows,
    summary,
    summary_sentences,
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
    assert list(METRICS) == [
        "cosine", "spearman", "pearson", "top5_helpful", "top10_helpful", "top5_harmful",
        "top10_harmful", "sign",
    ]  # fmt: skip
    assert METRICS["cosine"] is cosine_rows and METRICS["spearman"] is spearman_rows


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
    path = write_table(tmp_path, "by_checkpoint", rows, parquet=False)[0]
    text = path.read_text()
    assert text.splitlines()[0] == "method,checkpoint,step,epoch,metric,centred,mean,sem,n"
    assert ",true," in text and ",false," in text
    back = read_table(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back, strict=True):
        assert list(b) == list(COLUMNS)
        for k in COLUMNS:
            assert type(a[k]) is type(b[k]), k
            if isinstance(a[k], float) and math.isnan(a[k]):
                assert math.isnan(b[k])
            else:
                assert a[k] == b[k], k  # repr precision: exact


def test_read_table_rejects_other_files(tmp_path):
    p = tmp_path / "by_checkpoint.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="header"):
        read_table(p)


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

    from fimo.terminal import rich_summary_table

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


# == the metrics added for the report (issue 4) ================================================
import itertools  # noqa: E402

import torch  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

import fimo  # noqa: E402
from fimo.data import ArrayDataset  # noqa: E402
from fimo.evaluate import (  # noqa: E402
    ALL_METRICS,
    calibration,
    constant_rows,
    describe,
    fit_scale,
    most_influential,
    noise_floor,
    pearson_rows,
    seed_count_study,
    seed_counts,
    sign_agreement_rows,
    sorted_curve,
    sorted_score_curves,
    spearman_brown,
    top_k_overlap_rows,
)
from fimo.evaluate.tables import SCHEMAS, have_pandas, read_table, write_table  # noqa: E402


def test_pearson_rows_matches_scipy_and_constant_rows_are_nan():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(5, 7))
    b = rng.normal(size=(5, 7))
    b[1] = 3.0  # constant method row
    a[2] = -1.5  # constant gold row
    got = pearson_rows(a, b)
    for t in (0, 3, 4):
        assert got[t] == pytest.approx(pearsonr(a[t], b[t]).statistic, abs=1e-12)
    assert np.isnan(got[1]) and np.isnan(got[2])
    assert constant_rows(a).tolist() == [False, False, True, False, False]


def brute_overlap(a, b, k):
    """Expected |top-k(a) ∩ top-k(b)| / k over every order of tied values (exhaustive)."""

    def tops(x):
        out = []
        for perm in itertools.permutations(range(len(x))):
            # a random tie-break: sort by value, then by the permutation's position
            order = sorted(range(len(x)), key=lambda i: (-x[i], perm[i]))
            out.append(frozenset(order[:k]))
        return out

    ta, tb = tops(a), tops(b)
    return np.mean([len(p & q) / k for p in ta for q in tb])


def test_top_k_overlap_without_ties_is_the_set_overlap():
    rng = np.random.default_rng(12)
    a = rng.normal(size=(6, 20))
    b = a + rng.normal(scale=0.7, size=(6, 20))
    for k in (1, 5, 10):
        got = top_k_overlap_rows(a, b, k)
        harm = top_k_overlap_rows(a, b, k, which="harmful")
        for t in range(6):
            top_a, top_b = set(np.argsort(-a[t])[:k]), set(np.argsort(-b[t])[:k])
            assert got[t] == pytest.approx(len(top_a & top_b) / k)
            low_a, low_b = set(np.argsort(a[t])[:k]), set(np.argsort(b[t])[:k])
            assert harm[t] == pytest.approx(len(low_a & low_b) / k)


def test_top_k_overlap_with_ties_is_the_expected_overlap_over_tie_breaks():
    a = np.array([[3.0, 2.0, 2.0, 2.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0, 0.0, 5.0]])
    b = np.array([[2.0, 2.0, 9.0, 0.0, 0.0, 1.0], [4.0, 3.0, 3.0, 3.0, 0.0, 0.0]])
    for k in (1, 2, 3):
        got = top_k_overlap_rows(a, b, k)
        for t in range(2):
            assert got[t] == pytest.approx(brute_overlap(a[t], b[t], k), abs=1e-12), (k, t)
        # the column order does not matter
        perm = np.array([5, 0, 3, 1, 4, 2])
        np.testing.assert_allclose(top_k_overlap_rows(a[:, perm], b[:, perm], k), got)


def test_top_k_overlap_undefined_cases():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    assert np.isnan(top_k_overlap_rows(a, b, 3)).all()  # k >= L: everything is in the top k
    got = top_k_overlap_rows(a, b, 1)
    assert got[0] == 0.0 and np.isnan(got[1])  # constant row: NaN, not a chance value
    with pytest.raises(InputError):
        top_k_overlap_rows(a, b, 0)


def test_sign_agreement_matches_a_loop_and_skips_zeros():
    a = np.array([[1.0, -2.0, 0.0, 3.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    b = np.array([[2.0, -1.0, 5.0, -3.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    got = sign_agreement_rows(a, b)
    assert got[0] == pytest.approx(2 / 3)  # counted: 0, 1, 3; agree: 0, 1
    assert np.isnan(got[1])


def test_every_metric_is_nan_with_a_count_for_constant_rows():
    gold = make_gold(S=2, C=2, T=4, L=5, seed=21)
    # test instance 2: every left-out run gives the same loss change (a constant gold row)
    gold.loss_without[:, :, 2, :] = gold.loss_full[:, :, 2, None] + 0.125
    rng = np.random.default_rng(22)
    values = rng.normal(size=(4, 5))
    values[3] = 7.0  # the method cannot tell instance 3's training instances apart
    sc = Scores(values, test=gold.test, train=gold.left_out, method="m")
    rows = agreement_by_checkpoint(gold, {"m": sc}, metrics=None, centred=(True, False))
    assert {r["metric"] for r in rows} == set(ALL_METRICS)
    for r in rows:
        if r["metric"].startswith("top"):  # k >= L = 5: undefined everywhere
            assert r["n"] == 0 and math.isnan(r["mean"])
        else:
            assert r["n"] == 2, r  # test instances 0 and 1 only
            assert math.isfinite(r["mean"])
    # and the value is the mean over the two defined instances
    g = gold.mean(True)[0]
    want = np.mean([np.dot(g[t], values[t]) / np.linalg.norm(g[t]) / np.linalg.norm(values[t])
                    for t in (0, 1)])  # fmt: skip
    row = next(r for r in rows if r["metric"] == "cosine" and r["centred"] and r["checkpoint"] == 0)
    assert row["mean"] == pytest.approx(want, abs=1e-12)


# -- the seed-count study and the noise floor -------------------------------------------------
def test_seed_counts():
    assert seed_counts(1) == [1]
    assert seed_counts(4) == [1, 2, 4]
    assert seed_counts(16) == [1, 2, 5, 10, 16]
    assert seed_counts(100) == [1, 2, 5, 10, 20, 50, 100]
    assert seed_counts(150) == [1, 2, 5, 10, 20, 50, 100, 150]
    assert seed_counts(7, counts=[3]) == [3, 7]
    with pytest.raises(InputError):
        seed_counts(0)


def test_seed_count_study_matches_windows_computed_by_hand():
    gold = make_gold(S=5, C=3, T=4, L=5, seed=31)
    rng = np.random.default_rng(32)
    values = gold.mean(True)[1] + rng.normal(scale=0.5, size=(4, 5))
    sc = Scores(values, test=gold.test, train=gold.left_out, method="m")
    rows = seed_count_study(gold, {"m": sc}, metrics=("cosine",), centred=(True,))
    assert sorted({r["k"] for r in rows}) == [1, 2, 5]
    diff = gold.loss_without - gold.loss_full[..., None]
    diff = diff - diff.mean(-1, keepdims=True)
    for k in (1, 2, 5):
        W = 5 // k
        windows = diff[: W * k].reshape(W, k, *diff.shape[1:]).mean(1)  # (W, C, T, L)
        means = []
        for c in range(3):
            per = [np.mean([np.dot(windows[w, c, t], values[t]) / np.linalg.norm(windows[w, c, t])
                            / np.linalg.norm(values[t]) for w in range(W)]) for t in range(4)]  # fmt: skip
            r = next(r for r in rows if r["k"] == k and r["checkpoint"] == c)
            assert r["windows"] == W
            assert r["mean"] == pytest.approx(np.mean(per), abs=1e-12)
            assert r["sem"] == pytest.approx(np.std(per, ddof=1) / 2, abs=1e-12)
            means.append(np.mean(per))
        best = [r["checkpoint"] for r in rows if r["k"] == k and r["best"]]
        assert best == [int(np.argmax(means))]


def test_a_single_seed():
    gold = make_gold(S=1, C=2, T=3, L=5, seed=41)
    assert np.isnan(gold.sem()).all()
    sc = Scores(np.random.default_rng(1).normal(size=(3, 5)), gold.test, gold.left_out, "m")
    rows = seed_count_study(gold, {"m": sc})
    assert {r["k"] for r in rows} == {1} and {r["windows"] for r in rows} == {1}
    floor = noise_floor(gold)
    assert floor and all(math.isnan(r["mean"]) and r["n"] == 0 for r in floor)
    assert {r["splits"] for r in floor} == {0}
    # one test instance: a mean without a standard error
    one = make_gold(S=1, C=1, T=1, L=5, seed=42)
    sc1 = Scores(np.arange(5.0)[None], one.test, one.left_out, "m")
    (row,) = agreement_by_checkpoint(one, {"m": sc1}, metrics=("cosine",))
    assert row["n"] == 1 and math.isfinite(row["mean"]) and math.isnan(row["sem"])


def test_noise_floor_matches_every_split_by_hand():
    gold = make_gold(S=4, C=2, T=4, L=5, seed=51)
    floor = noise_floor(gold, metrics=("cosine",), centred=(True,))
    diff = gold.loss_without - gold.loss_full[..., None]
    splits = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    for c in range(2):
        per_test = []
        for t in range(4):
            vals = []
            for a, b in splits:
                ga, gb = diff[list(a), c, t].mean(0), diff[list(b), c, t].mean(0)
                ga, gb = ga - ga.mean(), gb - gb.mean()
                vals.append(np.dot(ga, gb) / np.linalg.norm(ga) / np.linalg.norm(gb))
            per_test.append(np.mean(vals))
        r = {x["estimate"]: x for x in floor if x["checkpoint"] == c}
        assert r["split_half"]["splits"] == 3 and r["split_half"]["seeds"] == 2
        assert r["split_half"]["mean"] == pytest.approx(np.mean(per_test), abs=1e-12)
        rh = np.mean(per_test)
        rho = 2 * rh / (1 + rh)
        assert r["spearman_brown"]["mean"] == pytest.approx(rho, abs=1e-12)
        assert r["spearman_brown"]["seeds"] == 4
        if rho > 0:
            assert r["ceiling"]["mean"] == pytest.approx(np.sqrt(rho), abs=1e-12)


def test_noise_floor_of_a_noiseless_gold_standard_is_one_and_random_splits_are_seeded():
    rng = np.random.default_rng(61)
    S, C, T, L = 16, 1, 3, 6
    truth = rng.normal(size=(C, T, L))
    full = rng.normal(size=(S, C, T))
    g = GoldStandard(full, full[..., None] + truth[None], [5], [1.0], np.arange(L), np.arange(T),
                     np.arange(S))  # fmt: skip
    floor = noise_floor(g, metrics=("cosine", "spearman"), splits=7, seed=3)
    assert all(r["mean"] == pytest.approx(1.0) for r in floor if r["centred"])
    assert {r["splits"] for r in floor} == {7}
    again = noise_floor(g, metrics=("cosine", "spearman"), splits=7, seed=3)
    assert [r["mean"] for r in floor] == [r["mean"] for r in again]


def test_spearman_brown():
    assert spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    assert spearman_brown(0.0, 2) == 0.0
    assert spearman_brown(1.0, 3) == pytest.approx(1.0)
    assert np.isnan(spearman_brown(-1.0, 2))


# -- calibration, sorted curves, examples -------------------------------------------------------
def test_fit_scale_matches_lstsq():
    rng = np.random.default_rng(71)
    g = rng.normal(size=(4, 9))
    m = rng.normal(size=(4, 9))
    fit = fit_scale(g, m)
    for t in range(4):
        a = np.linalg.lstsq(m[t][:, None], g[t], rcond=None)[0][0]
        resid = np.sum((g[t] - a * m[t]) ** 2)
        assert fit["scale"][t] == pytest.approx(a)
        assert fit["r2"][t] == pytest.approx(1 - resid / np.sum((g[t] - g[t].mean()) ** 2))
    a = np.linalg.lstsq(m.reshape(-1, 1), g.reshape(-1), rcond=None)[0][0]
    assert fit["pooled_scale"] == pytest.approx(a)
    total = np.sum((g - g.mean(1, keepdims=True)) ** 2)
    assert fit["pooled_r2"] == pytest.approx(1 - np.sum((g - a * m) ** 2) / total)


def test_calibration_of_a_scaled_oracle():
    gold = make_gold(S=3, C=2, T=4, L=5, seed=72)
    oracle = Scores(4.0 * gold.mean(True)[0], gold.test, gold.left_out, "oracle")
    rows = calibration(gold, {"oracle": oracle}, centred=(True,))
    at0 = {r["quantity"]: r for r in rows if r["checkpoint"] == 0}
    assert at0["pooled_scale"]["value"] == pytest.approx(0.25)
    assert at0["pooled_r2"]["value"] == pytest.approx(1.0)
    assert at0["r2"]["value"] == pytest.approx(1.0) and at0["r2"]["n"] == 4
    assert at0["scale_median"]["value"] == pytest.approx(0.25)
    # per test instance against the centred gold standard, R² is the squared cosine
    at1 = {r["quantity"]: r for r in rows if r["checkpoint"] == 1}
    cos = cosine_rows(gold.mean(True)[1], oracle.values)
    assert at1["r2"]["value"] == pytest.approx(np.mean(cos**2))


def test_sorted_score_curves_match_numpy():
    gold = make_gold(S=2, C=3, T=4, L=5, seed=81)
    sc = Scores(np.random.default_rng(82).normal(size=(4, 5)), gold.test, gold.left_out, "m")
    rows = sorted_score_curves(gold, {"m": sc}, steps=[10, 30])
    g = np.sort(gold.mean(True)[2], axis=1).mean(0)
    got = [r["value"] for r in rows if r["source"] == "gold" and r["step"] == 30]
    np.testing.assert_allclose(got, g / np.linalg.norm(g))
    m = np.sort(sc.values, axis=1).mean(0)
    got = [r["value"] for r in rows if r["source"] == "m"]
    np.testing.assert_allclose(got, m / np.linalg.norm(m))
    assert sorted({r["step"] for r in rows if r["source"] == "gold"}) == [10, 30]
    assert np.isnan(sorted_curve(np.zeros((2, 3)))).all()
    with pytest.raises(InputError, match="no checkpoint at step 11"):
        sorted_score_curves(gold, {"m": sc}, steps=[11])


def test_most_influential_orders_and_ranks():
    gold = make_gold(S=2, C=2, T=4, L=5, seed=91)
    g = gold.mean(True)[0]
    values = g.copy()
    values[:, [0, 1]] = values[:, [1, 0]]  # the method swaps two training instances
    sc = Scores(values, gold.test, gold.left_out, "m")
    rows = most_influential(gold, {"m": sc}, test=[gold.test[1]], k=2, step=10)
    assert {r["test"] for r in rows} == {int(gold.test[1])}
    gold_help = [r for r in rows if r["source"] == "gold" and r["direction"] == "helpful"]
    order = np.argsort(-g[1], kind="stable")
    assert [r["train"] for r in gold_help] == [int(gold.left_out[i]) for i in order[:2]]
    assert [r["gold_rank"] for r in gold_help] == [1, 2]
    harm = [r for r in rows if r["source"] == "m" and r["direction"] == "harmful"]
    assert harm[0]["score"] == pytest.approx(values[1].min())
    for r in rows:
        i = list(gold.left_out).index(r["train"])
        assert r["gold"] == pytest.approx(g[1, i])
    with pytest.raises(InputError, match="not in the gold standard"):
        most_influential(gold, {"m": sc}, test=[999])


def test_describe_tables_codes_units_and_regression():
    info = {
        "label_names": ("<=50K", ">50K"),
        "raw_columns": ("age", "education", "SEX", "PAY_0", "PAY_AMT1", "cement"),
        "raw": np.array([["39", "Bachelors", 1.0, -1.0, -1.0, 540.0]], dtype=object),
        "codes": {"SEX": {1: "male", 2: "female"}, "PAY_*": {-1: "paid duly"}},
        "units": {"cement": "kg/m³"},
    }
    ds = ArrayDataset(torch.zeros(1, 3), torch.tensor([1]), None, info)
    assert describe(ds, 0) == {
        "label": ">50K", "age": "39", "education": "Bachelors", "SEX": "male",
        "PAY_0": "paid duly", "PAY_AMT1": "-1", "cement": "540 kg/m³",
    }  # fmt: skip
    reg = ArrayDataset(torch.zeros(2, 2), torch.tensor([0.5, -1.0]), ("a", "b"),
                       {"target_mean": 30.0, "target_std": 10.0, "target_name": "strength",
                        "units": {"strength": "MPa"}})  # fmt: skip
    assert describe(reg, 0)["label"] == "35 MPa"
    with pytest.raises(InputError, match="outside the dataset"):
        describe(reg, 2)


def test_describe_adult_decodes_the_raw_row():
    train, test = fimo.data.load_adult()
    d = describe(train, 0)
    assert d["label"] == "<=50K"
    assert d["age"] == "39" and d["workclass"] == "State-gov" and d["education"] == "Bachelors"
    assert list(d)[1:] == list(train.info["raw_columns"])
    assert describe(test, 0)["age"] == "25"


def test_describe_images_text_and_plain_features():
    from matplotlib.image import imread

    images = ArrayDataset(torch.rand(2, 1, 8, 8), torch.tensor([3, 4]), None,
                          {"label_names": [str(d) for d in range(10)]})  # fmt: skip
    d = describe(images, 1)
    assert d["label"] == "4" and d["image"].startswith("data:image/png;base64,")
    import base64
    import io as _io

    pixels = imread(_io.BytesIO(base64.b64decode(d["image"].split(",", 1)[1])), format="png")
    assert pixels.shape[:2] == (64, 64) and pixels.std() > 0  # enlarged 8×, not blank
    flat = ArrayDataset(torch.rand(2, 12), torch.tensor([0, 1]), None, {"image_shape": (3, 2, 2)})
    assert "image" in describe(flat, 0)
    text = ArrayDataset(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1]), None,
                        {"text": ["a fresh infusion", "outnumber the hits"],
                         "label_names": ("rotten", "fresh")})  # fmt: skip
    assert describe(text, 0) == {"label": "rotten", "text": "a fresh infusion"}
    wide = torch.zeros(1, 40)
    wide[0, 30] = 2.5
    plain = describe(ArrayDataset(wide, torch.tensor([1])), 0)
    assert plain["x30"] == "2.5" and list(plain)[1] == "x30"  # non-zero features first
    assert plain["…"] == "24 more features"


# -- tables --------------------------------------------------------------------------------------
def test_every_table_round_trips_through_csv(tmp_path):
    gold = make_gold(S=4, C=2, T=4, L=5, seed=101)
    sc = Scores(np.random.default_rng(102).normal(size=(4, 5)), gold.test, gold.left_out, "m")
    ev = fimo.evaluate(gold, {"m": sc}, frames=False)
    assert ev.keys() == list(SCHEMAS)
    for name in SCHEMAS:
        rows = ev[name]
        assert isinstance(rows, list) and rows, name
        (csv_path, *rest) = write_table(tmp_path, name, rows, parquet=False)
        assert not rest
        back = read_table(csv_path)
        assert len(back) == len(rows)
        for a, b in zip(rows, back, strict=True):
            assert list(b) == list(SCHEMAS[name])
            for key in SCHEMAS[name]:
                if isinstance(a[key], float) and math.isnan(a[key]):
                    assert math.isnan(b[key])
                else:
                    assert a[key] == b[key], (name, key)
    # by_checkpoint keeps the contract's columns
    path = tmp_path / "by_checkpoint.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(read_table(path)) == len(ev.rows["by_checkpoint"])


def test_parquet_and_frames_when_available(tmp_path):
    gold = make_gold(S=2, C=1, T=3, L=5, seed=103)
    sc = Scores(np.random.default_rng(104).normal(size=(3, 5)), gold.test, gold.left_out, "m")
    ev = fimo.evaluate(gold, sc)
    if have_pandas():
        frame = ev["by_checkpoint"]
        assert list(frame.columns) == list(COLUMNS) and len(frame) == len(ev.rows["by_checkpoint"])
        assert ev.seed_count.shape[0] == len(ev.rows["seed_count"])
    else:
        assert isinstance(ev["by_checkpoint"], list)
        with pytest.raises(InputError, match="pandas"):
            fimo.evaluate(gold, sc, frames=True)["by_checkpoint"]
    stale = tmp_path / "examples.parquet"
    stale.write_bytes(b"old numbers")
    write_table(tmp_path, "examples", ev.rows["examples"], parquet=False)
    assert not stale.exists()  # never a stale Parquet next to a fresh CSV
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(InputError, match="pyarrow"):
            write_table(tmp_path, "examples", ev.rows["examples"], parquet=True)
    else:
        paths = write_table(tmp_path, "examples", ev.rows["examples"], parquet=True)
        assert pq.read_table(paths[1]).num_rows == len(ev.rows["examples"])


def test_fimo_evaluate_is_callable_and_a_package():
    import fimo.evaluate.metrics as metrics_module

    assert callable(fimo.evaluate) and fimo.evaluate.metrics is metrics_module
    assert fimo.evaluate.evaluate.__doc__ and "evaluate" in fimo.__all__
    gold = make_gold(S=2, C=1, T=3, L=5, seed=105)
    with pytest.raises(InputError, match="give scores"):
        fimo.evaluate(gold)
    with pytest.raises(InputError, match="do not cover"):
        fimo.evaluate(gold, Scores(np.zeros((3, 4)), gold.test, gold.left_out[:4], "short"))
    with pytest.raises(InputError, match="run directory"):
        fimo.evaluate(42)


# -- external matrices ---------------------------------------------------------------------------
def test_from_external_orientations_and_signs():
    m = np.arange(6.0).reshape(3, 2)  # 3 train × 2 test, as dattri or TRAK lay it out
    for orientation in ("train,test", "dattri", "trak"):
        s = Scores.from_external(m, orientation, "helpful", test=[5, 6], train=[1, 2, 3], name="x")
        np.testing.assert_array_equal(s.values, m.T)
        assert s.settings["orientation"] == "train,test" and s.settings["origin"] == "external"
    for orientation in ("test,train", "kronfluence", "captum"):
        s = Scores.from_external(m.T, orientation, "harmful", test=[5, 6], train=[1, 2, 3])
        np.testing.assert_array_equal(s.values, -m.T)
    s = Scores.from_external(torch.tensor(m.T, dtype=torch.bfloat16), "test,train")
    assert s.values.dtype == np.float32 and s.test.tolist() == [0, 1]
    with pytest.raises(InputError, match="other orientation would fit"):
        Scores.from_external(m, "test,train", test=[5, 6], train=[1, 2, 3])
    with pytest.raises(InputError, match="NaN or infinite"):
        Scores.from_external(np.array([[np.nan, 1.0]]), "test,train")
    with pytest.raises(InputError, match="orientation"):
        Scores.from_external(m, "rows,cols")
    with pytest.raises(InputError, match="sign"):
        Scores.from_external(m, "train,test", sign="positive")


def test_load_matrix_formats(tmp_path):
    from fimo.scores import load_indices, load_matrix

    m = np.random.default_rng(111).normal(size=(3, 4))
    np.save(tmp_path / "a.npy", m)
    np.savez(tmp_path / "b.npz", influence=m, other=np.zeros(2))
    np.savez(tmp_path / "c.npz", first=m, second=m)
    torch.save({"all_modules": torch.tensor(m), "x": torch.zeros(1)}, tmp_path / "d.pt")
    torch.save(torch.tensor(m, dtype=torch.float16), tmp_path / "e.pt")
    np.testing.assert_array_equal(load_matrix(tmp_path / "a.npy"), m)
    np.testing.assert_array_equal(load_matrix(tmp_path / "b.npz"), m)
    with pytest.raises(InputError, match="--key"):
        load_matrix(tmp_path / "c.npz")
    np.testing.assert_array_equal(load_matrix(tmp_path / "c.npz", key="second"), m)
    np.testing.assert_array_equal(load_matrix(tmp_path / "d.pt", key="all_modules"), m)
    assert load_matrix(tmp_path / "e.pt").dtype == np.float32
    (tmp_path / "f.csv").write_text("1")
    with pytest.raises(InputError, match="unknown type"):
        load_matrix(tmp_path / "f.csv")
    (tmp_path / "g.safetensors").write_bytes(b"\0" * 16)
    import importlib.util

    if importlib.util.find_spec("safetensors") is None:
        with pytest.raises(InputError, match="needs the safetensors package"):
            load_matrix(tmp_path / "g.safetensors")
    (tmp_path / "i.txt").write_text("4, 2\n9 7\n")
    assert load_indices(tmp_path / "i.txt").tolist() == [4, 2, 9, 7]
    (tmp_path / "j.txt").write_text("1 1")
    with pytest.raises(InputError, match="more than once"):
        load_indices(tmp_path / "j.txt")


def test_prepared_gold_rows_give_the_same_numbers_as_each_metric_row_by_row():
    from fimo.evaluate.metrics import METRICS, PreparedRows, per_test_values

    rng = np.random.default_rng(3)
    gold = rng.normal(size=(3, 4, 5, 7)).round(1)  # (windows, checkpoints, T, L), with ties
    gold[0, 1, 2] = 0.25  # a constant gold row
    gold[2, 3, 4, 1] = np.nan  # a non-finite one
    values = rng.normal(size=(5, 7)).round(1)
    values[3] = 1.0  # a constant method row
    undefined = np.zeros((4, 5), dtype=bool)
    undefined[2, 0] = True
    names = list(METRICS)
    prepared = PreparedRows(gold, undefined=undefined)
    for got in (
        per_test_values(prepared, values, names),
        per_test_values(gold, values, names, undefined),
    ):
        for name in names:
            want = np.array(
                METRICS[name](
                    gold.reshape(-1, 7), np.broadcast_to(values, gold.shape).reshape(-1, 7)
                )
            )
            want = want.reshape(3, 4, 5)
            want[:, :, 3] = np.nan
            want[:, 2, 0] = np.nan
            want[0, 1, 2] = np.nan
            want[2, 3, 4] = np.nan
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert prepared._ranks is not None  # ranked once, kept for the next method
