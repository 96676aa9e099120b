"""The report of a run: the summary in words, the page, the files, `fimo report`.

Runs are made by hand (a GoldStandard and Scores written where `fimo run` writes them), so
the numbers are known and the tests take seconds. `make_run_dir` is shared with
test_compare.py and test_report_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import fimo
from fimo.cli import main
from fimo.errors import InputError
from fimo.evaluate import headline
from fimo.evaluate.metrics import COLUMNS
from fimo.evaluate.tables import read_table
from fimo.experiments.config import Config, DataConfig, MethodsConfig
from fimo.experiments.outputs import rebuild_report
from fimo.further.gold import GoldStandard
from fimo.io import fingerprint, write_json, write_text
from fimo.scores import Scores

FIGURES = (
    "cosine",
    "agreement_centred",
    "agreement_adjusted",
    "seed_count",
    "calibration",
    "sorted_scores",
)
TABLES = ("by_checkpoint", "seed_count", "noise_floor", "calibration", "sorted_curves", "examples")


def make_gold(S=4, C=3, T=8, L=12, noise=0.3, seed=0) -> GoldStandard:
    """A gold standard with a known true attribution ``truth`` (C, T, L) plus seed noise.

    Left-out instances are Adult training indices; test instances the first T.
    """
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(1, T, L)) * np.linspace(1.0, 0.6, C)[:, None, None]
    full = 0.5 + 0.01 * rng.normal(size=(S, C, T))
    without = full[..., None] + 1e-3 * (truth[None] + noise * rng.normal(size=(S, C, T, L)))
    return GoldStandard(
        loss_full=full,
        loss_without=without,
        steps=[10 * (c + 1) for c in range(C)],
        epochs=[0.5 * (c + 1) for c in range(C)],
        left_out=np.arange(L) * 997 + 3,
        test=np.arange(T),
        seeds=np.arange(S),
    )


def make_scores(gold: GoldStandard, seed=1) -> dict[str, Scores]:
    """'close': the centred truth at the first checkpoint plus a little noise (and a scale);
    'far': mostly noise. Both cover the left-out instances in a shuffled order."""
    rng = np.random.default_rng(seed)
    mean = gold.mean(True)
    order = rng.permutation(len(gold.left_out))
    close = 250.0 * (mean[0] + 0.1 * np.abs(mean[0]).mean() * rng.normal(size=mean[0].shape))
    far = 0.3 * mean[-1] / np.abs(mean[-1]).mean() + rng.normal(size=mean[0].shape)
    return {
        name: Scores(values[:, order], gold.test, gold.left_out[order], name, {"fingerprint": name})
        for name, values in (("grad_dot", close), ("grad_cos", far))
    }


def make_run_dir(path: Path, S=4, C=3, T=8, L=12, seed=0, methods=("grad_dot", "grad_cos")):
    """A run directory as `fimo run` leaves it, without the metrics, plots and report."""
    gold = make_gold(S, C, T, L, seed=seed)
    scores = make_scores(gold, seed + 1)
    path.mkdir(parents=True, exist_ok=True)
    config = Config(
        name="handmade",
        data=DataConfig(dataset="adult", n_test=T),
        methods=MethodsConfig(names=list(methods), train="left_out"),
    )
    write_text(path / "config.toml", config.to_toml())
    gold.save(path / "further" / "gold.npz")
    for name in methods:
        scores[name].save(path / "scores" / f"{name}.npz")
    manifest = {
        "fimo_version": fimo.__version__,
        "fingerprints": {
            "data": "d" * 16,
            "gold_standard": fingerprint(gold.loss_without),
            "scores": {name: name for name in methods},
        },
        "model": {"test_accuracy": 0.85, "test_loss": 0.32},
    }
    write_json(path / "manifest.json", manifest)
    return gold, {name: scores[name] for name in methods}


@pytest.fixture(scope="module")
def built(handmade_report):
    """A hand-made run with its report rebuilt once (conftest: shared with other modules)."""
    return handmade_report


# -- files ---------------------------------------------------------------------------------------
def test_rebuild_writes_every_table_figure_and_the_report(built):
    path = built[0]
    for name in TABLES:
        assert (path / "metrics" / f"{name}.csv").is_file(), name
    for name in FIGURES:
        png = (path / "plots" / f"{name}.png").read_bytes()
        svg = (path / "plots" / f"{name}.svg").read_text()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in svg, name
        assert "Matplotlib v" not in svg and "<dc:date>" not in svg  # reproducible bytes
    assert (path / "report.html").is_file()
    # the contract table: exact columns; every metric, both views, every checkpoint
    text = (path / "metrics" / "by_checkpoint.csv").read_text()
    assert text.splitlines()[0] == "method,checkpoint,step,epoch,metric,centred,mean,sem,n"
    rows = read_table(path / "metrics" / "by_checkpoint.csv")
    assert len(rows) == 2 * 2 * 3 * 8  # methods × views × checkpoints × metrics
    assert list(rows[0]) == list(COLUMNS)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["evaluation"]["settings"]["seed_counts"] == [1, 2, 4]
    assert "metrics/by_checkpoint.csv" in manifest["evaluation"]["tables"]
    assert manifest["fingerprints"]["data"] == "d" * 16  # the rest is kept


def test_metrics_match_a_direct_computation(built):
    path, gold, scores, _ = built
    rows = read_table(path / "metrics" / "by_checkpoint.csv")
    centred = gold.mean(True)
    values = scores["grad_dot"].select(test=gold.test, train=gold.left_out).values
    for c in range(3):
        cos = [
            np.dot(centred[c, t], values[t])
            / np.linalg.norm(centred[c, t])
            / np.linalg.norm(values[t])
            for t in range(8)
        ]
        (row,) = [
            r
            for r in rows
            if r["method"] == "grad_dot"
            and r["metric"] == "cosine"
            and r["centred"]
            and r["checkpoint"] == c
        ]
        assert row["mean"] == pytest.approx(np.mean(cos), rel=1e-12)
        assert row["sem"] == pytest.approx(np.std(cos, ddof=1) / np.sqrt(8), rel=1e-9)


def test_figures_are_reused_when_nothing_changed(built, tmp_path, monkeypatch):
    import shutil

    from fimo.evaluate.plots import plot_sorted_curves
    from fimo.experiments import outputs

    monkeypatch.setenv("FIMO_FIGURES", "1")
    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    before = {n: (path / "plots" / f"{n}.png").stat().st_mtime_ns for n in FIGURES}
    rebuild_report(path)  # same inputs: the files are kept
    assert {n: (path / "plots" / f"{n}.png").stat().st_mtime_ns for n in FIGURES} == before
    # other scores: drawn again (one cheap figure stands in for all of them here)
    drawn = []

    def one_figure(ev):
        drawn.append(ev)
        return {"sorted_scores": plot_sorted_curves(ev.rows["sorted_curves"])}

    monkeypatch.setattr(outputs, "evaluation_figures", one_figure)
    sc = Scores.load(path / "scores" / "grad_cos.npz")
    Scores(-sc.values, sc.test, sc.train, sc.method, sc.settings).save(
        path / "scores" / "grad_cos.npz"
    )
    rebuild_report(path)
    assert len(drawn) == 1
    assert json.loads((path / "plots" / "fingerprint.json").read_text())["figures"] == [
        "sorted_scores"
    ]
    rebuild_report(path)  # and reused again
    assert len(drawn) == 1


def test_fimo_figures_0_draws_none_removes_stale_ones_and_says_how_to_draw_them(
    built, tmp_path, monkeypatch
):
    import shutil

    from fimo.experiments import outputs

    monkeypatch.setenv("FIMO_FIGURES", "0")
    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    rebuild_report(path)  # the same numbers: the figures on disk are theirs, and are kept
    assert sorted(p.stem for p in (path / "plots").glob("*.png")) == sorted(FIGURES)

    monkeypatch.setattr(outputs, "evaluation_figures", lambda ev: pytest.fail("drawn"))
    sc = Scores.load(path / "scores" / "grad_cos.npz")
    Scores(-sc.values, sc.test, sc.train, sc.method, sc.settings).save(
        path / "scores" / "grad_cos.npz"
    )
    rebuild_report(path)  # other numbers: nothing drawn, and the old figures removed
    assert list((path / "plots").iterdir()) == []
    text = (path / "report.html").read_text()
    assert data_uris(text) == []
    assert text.count("figure was not drawn: FIMO_FIGURES=0") == len(FIGURES)
    # the tables are still rewritten for the new numbers
    rows = read_table(path / "metrics" / "by_checkpoint.csv")
    old = read_table(built[0] / "metrics" / "by_checkpoint.csv")
    flipped = [r["mean"] for r in rows if r["method"] == "grad_cos" and r["metric"] == "cosine"]
    before = [r["mean"] for r in old if r["method"] == "grad_cos" and r["metric"] == "cosine"]
    assert flipped == pytest.approx([-m for m in before])


def test_fimo_figures_refuses_a_value_it_does_not_know_before_writing(built, tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    (path / "metrics" / "by_checkpoint.csv").unlink()
    monkeypatch.setenv("FIMO_FIGURES", "sometimes")
    with pytest.raises(InputError, match="FIMO_FIGURES: got 'sometimes'"):
        rebuild_report(path)
    assert not (path / "metrics" / "by_checkpoint.csv").exists()  # nothing written


# -- the page ------------------------------------------------------------------------------------
def data_uris(text: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    ]


def test_report_is_self_contained_and_complete(built):
    path, _, _, ev = built
    text = (path / "report.html").read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r"(src|href)=['\"](?!data:|#)", text)  # nothing outside the page
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    for section in ("Summary", "Agreement over further training", "Every metric", "Noise floor",
                    "Number of seeds", "Calibration", "Sorted scores",
                    "Most influential training instances", "Settings", "Fingerprints"):  # fmt: skip
        assert f">{section}</h2>" in text, section
    # six figures (PNG), decodable and not blank
    from matplotlib.image import imread

    images = data_uris(text)
    assert len(images) == len(FIGURES)
    for blob in images:
        pixels = imread(io.BytesIO(blob), format="png")
        assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.02
    for sentence in headline(ev):
        assert sentence.replace("'", "&#x27;").replace("≈", "≈") in text
    # settings, fingerprints, notes from the manifest
    assert "d" * 16 in text and "test accuracy 0.8500" in text
    assert "n_test" in text and "left_out" in text


def test_examples_show_decoded_adult_rows(built):
    path, gold, _, ev = built
    text = (path / "report.html").read_text()
    train, _ = fimo.data.load_adult()
    for t in gold.test[:3]:
        assert f"Test instance #{t}" in text
    picked = {r["train"] for r in ev.rows["examples"]}
    assert picked <= set(gold.left_out.tolist())
    i = min(picked)
    raw = dict(zip(train.info["raw_columns"], train.info["raw"][i], strict=True))
    # the categories are shown as words, and the label by its name
    assert raw["education"] in text and raw["occupation"] in text
    assert ev.descriptions["train"][i]["label"] in ("<=50K", ">50K")
    assert "&lt;=50K" in text or "&gt;50K" in text


def test_report_without_data_or_config_still_works(tmp_path):
    path = tmp_path / "bare"
    make_run_dir(path)
    (path / "config.toml").unlink()
    (path / "manifest.json").unlink()
    ev = rebuild_report(path)
    text = (path / "report.html").read_text()
    assert "config.toml is missing" in text
    assert "shown by index only" in text
    assert set(ev.scores) == {"grad_dot", "grad_cos"}


def test_scores_not_in_the_run_or_stale_are_left_out_with_a_note(tmp_path):
    from fimo.experiments.rundir import load_run

    path = tmp_path / "stale"
    _, scores = make_run_dir(path)
    extra = scores["grad_cos"]
    Scores(extra.values, extra.test, extra.train, "trak", {"fingerprint": "x"}).save(
        path / "scores" / "trak.npz"
    )
    sc = scores["grad_cos"]
    Scores(sc.values, sc.test, sc.train, sc.method, {"fingerprint": "old"}).save(
        path / "scores" / "grad_cos.npz"
    )
    run = load_run(path)
    assert list(run.scores) == ["grad_dot"]
    assert "scores/trak.npz is not one of this run's methods; left out." in run.notes
    assert any("another fingerprint (old)" in n for n in run.notes)


# -- the summary in words ---------------------------------------------------------------------------
class FakeEvaluation:
    """Just what `headline` reads."""

    def __init__(self, gold, rows):
        self.gold = gold
        self.rows = rows


def agreement_rows(spec, metric="cosine", centred=True):
    """spec: {method: [(mean, sem, n) per checkpoint]} -> by_checkpoint rows."""
    return [
        {"method": m, "checkpoint": c, "step": 10 * (c + 1), "epoch": 0.5 * (c + 1),
         "metric": metric, "centred": centred, "mean": mean, "sem": sem, "n": n}
        for m, vals in spec.items()
        for c, (mean, sem, n) in enumerate(vals)
    ]  # fmt: skip


def empty_tables(rows):
    return {"by_checkpoint": rows, "noise_floor": [], "seed_count": [], "calibration": []}


def test_headline_says_which_method_is_best_at_which_amount_of_further_training():
    gold = make_gold(S=1, C=3, T=8)
    rows = agreement_rows(
        {
            "A": [(0.90, 0.01, 8), (0.80, 0.01, 8), (0.60, 0.01, 8)],
            "B": [(0.50, 0.01, 8), (0.81, 0.01, 8), (0.75, 0.01, 8)],
        }
    )
    rows += agreement_rows({"A": [(0.8, 0.01, 8)] * 3, "B": [(0.7, 0.01, 8)] * 3}, "spearman")
    out = headline(FakeEvaluation(gold, empty_tables(rows)))
    assert out[0].startswith("The gold standard averages 1 seed of further training for 12")
    assert out[1] == (
        "Which method agrees best with the centred gold standard depends on how much further "
        "training the question is about: A at epoch 0.5 (cosine up to 0.900 ± 0.010); "
        "B from epoch 1 to 1.5 (cosine up to 0.810 ± 0.010) (within two standard errors of A "
        "at epoch 1)."
    )
    # the reference checkpoint is the first at one epoch or later: epoch 1
    assert out[2] == (
        "Ranking at epoch 1 by cosine: B 0.810 ± 0.010, A 0.800 ± 0.010; "
        "by Spearman rank correlation: A 0.800 ± 0.010, B 0.700 ± 0.010."
    )
    assert any("single seed" in s for s in out)


def test_headline_single_winner_noise_seeds_calibration_and_undefined(built):
    ev = built[3]
    out = headline(ev)
    text = " ".join(out)
    assert "grad_dot agrees best with the centred gold standard at every checkpoint" in text
    assert "grad_cos" in text
    floor = next(s for s in out if s.startswith("Noise floor"))
    assert "two halves of 2 seeds" in floor and "Spearman–Brown" in floor
    assert any(s.startswith("Seeds: with gold standards of 1 seed") for s in out)
    (scale,) = [r["value"] for r in ev.rows["calibration"] if r["method"] == "grad_dot"
                and r["centred"] and r["epoch"] == 1.0 and r["quantity"] == "pooled_scale"]  # fmt: skip
    # "close" is 250 × the truth at epoch 0.5, with noise
    assert scale == pytest.approx(0.8 / 250, rel=0.1)
    assert any(s.startswith("Magnitudes at epoch 1") and f"grad_dot {scale:.3g}" in s for s in out)
    # an undefined value is reported with its count, not hidden
    rows = agreement_rows({"A": [(0.9, 0.01, 6)] * 3})
    short = headline(FakeEvaluation(make_gold(S=1, C=3, T=8), empty_tables(rows)))
    assert short[-1] == (
        "Some values are undefined because a score vector is constant (see the n counts in the "
        "tables): the cosine is missing for A for up to 2 of 8 test instances."
    )


# -- the command ---------------------------------------------------------------------------------
def test_cli_report(built, tmp_path, capsys):
    import shutil

    path = tmp_path / "cli"
    shutil.copytree(built[0], path)
    (path / "report.html").unlink()
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "grad_dot" in out and f"Report: {path / 'report.html'}" in out.replace("\n", "")
    assert (path / "report.html").is_file()
    assert main(["report", str(path), "--examples", "5,2", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    text = (path / "report.html").read_text()
    assert "Test instance #5" in text and "Test instance #0" not in text
    assert main(["report", str(path), "--examples", "5,x"]) == 2
    assert "--examples: got '5,x'" in capsys.readouterr().err
    assert main(["report", str(path), "--examples", "99"]) == 2
    assert "not in the gold standard" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) <= 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no gold standard here" in capsys.readouterr().err


def test_headline_uses_what_was_computed():
    rows = agreement_rows({"A": [(0.7, 0.01, 8)] * 3, "B": [(0.5, 0.01, 8)] * 3}, "spearman")
    out = headline(FakeEvaluation(make_gold(S=1, C=3, T=8), empty_tables(rows)))
    assert out[1].startswith(
        "A agrees best with the centred gold standard at every checkpoint: spearman 0.700"
    )
    assert out[2] == "Ranking at epoch 1 by spearman: A 0.700 ± 0.010, B 0.500 ± 0.010."
