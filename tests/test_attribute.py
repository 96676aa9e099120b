"""`fimo attribute`: every training instance scored for chosen test instances, from the final
model alone; the numbers are the method's own, the picks an argsort's, the page shows them
decoded, a rerun reuses what is saved, and bad input stops at the door with one line."""

import functools
import shutil

import numpy as np
import pytest
import tomli_w
import torch

import fimo
import fimo.methods.unrolled_quadratic as uq_module
from fimo.cli import main
from fimo.evaluate.examples import describe
from fimo.evaluate.report import describe_html
from fimo.experiments.attribute import attribute
from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import from_dict
from fimo.experiments.rundir import RunDir
from fimo.further.adjoint import unrolled_seed
from fimo.further.engine import FurtherSettings
from fimo.methods.unrolled import unrolled_estimate
from fimo.methods.unrolled_quadratic import unrolled_quadratic
from fimo.scores import Scores

#: 40 Concrete instances, batches of 16: one further-training epoch is 3 steps
TINY = {
    "name": "tiny",
    "data": {"dataset": "concrete", "n_train": 40, "n_test": 5},
    "model": {"hidden": [6]},
    "training": {"epochs": 20, "batch_size": 16, "lr": 0.1},
    "further": {"epochs": 1, "batch_size": 16, "lr": 0.05, "seeds": 1, "left_out": 4},
}
FURTHER = {"epochs": 1, "batch_size": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def config():
    return from_dict(TINY)


@pytest.fixture(scope="module")
def run(config, tmp_path_factory):
    """The default method on test instances 0 and 3 (the final model trained once here)."""
    out = tmp_path_factory.mktemp("attribute") / "run"
    return out, attribute(config, [3, 0], top=4, out=out)


def final_task(config, out):
    """The configuration's task with the weights the run saved (float32, as the run's)."""
    train, test = load_data(config)
    task = build_task(config, train, test)
    RunDir(out).load_final(task.model)
    return task


def test_scores_are_the_methods_own_for_every_training_instance(config, run):
    out, result = run
    task = final_task(config, out)
    direct = unrolled_quadratic(task, [3, 0], range(40), further=FURTHER, steps=[3])
    assert result.step == 3  # all of further training: 1 epoch of ceil(40 / 16) steps
    assert result.scores.test.tolist() == [3, 0] and result.scores.train.tolist() == list(range(40))
    np.testing.assert_allclose(result.scores.values, direct.at(3).values, rtol=1e-6, atol=1e-12)
    assert np.abs(result.scores.values).max() > 0


def test_top_lists_are_an_argsort_of_each_row(run):
    _, result = run
    for j, t in enumerate([3, 0]):
        row = result.scores.values[j]
        by_score = sorted(range(40), key=lambda i: (-row[i], i))
        assert result.helpful(t) == by_score[:4]
        harmful = [r["train"] for r in result.top if r["test"] == t and r["direction"] == "harmful"]
        assert harmful == sorted(range(40), key=lambda i: (row[i], i))[:4]
        assert [r["rank"] for r in result.top if r["test"] == t] == [1, 2, 3, 4] * 2


def test_the_page_shows_the_picks_decoded(config, run):
    out, result = run
    page = (out / "attribution.html").read_text()
    assert result.page == out / "attribution.html"
    train, test = load_data(config)
    for row in result.top:
        assert describe_html(describe(train, row["train"])) in page
        assert f"#{row['train']}</td>" in page
    assert describe_html(describe(test, 3)) in page and "Test instance #0" in page
    assert "<script" not in page and "http" not in page  # self-contained


def test_unrolled_gives_the_seed_mean_and_its_standard_error(config, run):
    out, _ = run
    result = attribute(config, [1], method="unrolled", seeds=3, steps=5, top=2, out=out)
    task = final_task(config, out)
    # 5 steps run into a second epoch: the same runs as 2 epochs, read after step 5
    longer = dict(FURTHER, epochs=2, record_steps=[5])
    est = unrolled_estimate(task, [1], range(40), further=longer, seeds=3, steps=[5])
    np.testing.assert_allclose(result.scores.values, est.mean[0], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(result.sem.values, est.sem[0], rtol=1e-5, atol=1e-12)
    assert np.all(result.sem.values > 0)
    for row in result.top:
        assert row["sem"] == pytest.approx(est.sem[0, 0, row["train"]], rel=1e-5)


def test_unrolled_differentiates_the_horizon_alone(config, run, tmp_path, monkeypatch):
    """`--steps 5` crosses an epoch end at step 3, a checkpoint of the runs: only step 5's
    cotangents are carried, and only through the 5 steps before it."""
    import fimo.further.adjoint as adjoint

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    original, live = adjoint._optimizer_vjp, []

    def counted(*args):  # (…, lam, lam_state): the cotangents come last but one
        live.append(len(next(iter(args[-2].values()))))
        return original(*args)

    monkeypatch.setattr(adjoint, "_optimizer_vjp", counted)
    result = attribute(config, [1, 4], method="unrolled", seeds=1, steps=5, top=2, out=out)
    assert live == [2] * 5  # 2 test instances, steps 5 … 1 (3 + 2 more with step 3 too)
    task = final_task(config, out)
    longer = dict(FURTHER, epochs=2, record_steps=[5])
    every = unrolled_estimate(task, [1, 4], range(40), further=longer, seeds=1)
    assert every.steps.tolist() == [3, 5, 6]
    np.testing.assert_allclose(result.scores.values, every.mean[1], rtol=1e-5, atol=1e-12)


def test_a_rerun_reuses_the_scores_and_a_changed_horizon_recomputes(config, run, monkeypatch):
    out, first = run
    calls = []

    @functools.wraps(unrolled_quadratic)  # the same signature: attribute reads it
    def counted(*args, **kwargs):
        calls.append(kwargs["steps"])
        return unrolled_quadratic(*args, **kwargs)

    monkeypatch.setattr(uq_module, "unrolled_quadratic", counted)
    weights = (out / "model" / "final.pt").stat().st_mtime_ns
    again = attribute(config, [3, 0], top=4, out=out)
    assert calls == [] and again.reused
    np.testing.assert_array_equal(again.scores.values, first.scores.values)
    shorter = attribute(config, [3, 0], top=4, steps=2, out=out)
    assert calls == [[2]] and not shorter.reused
    task = final_task(config, out)
    direct = unrolled_quadratic(task, [3, 0], range(40), further=FURTHER, steps=[2]).at(2)
    np.testing.assert_allclose(shorter.scores.values, direct.values, rtol=1e-6, atol=1e-12)
    assert (out / "model" / "final.pt").stat().st_mtime_ns == weights  # not trained again
    # a damaged file is recomputed, with a warning
    RunDir(out).attribution_file("unrolled_quadratic").write_bytes(b"cut short")
    with pytest.warns(RuntimeWarning, match="damaged"):
        attribute(config, [3, 0], top=4, steps=2, out=out)
    assert calls == [[2], [2]]


def test_the_python_entry_takes_a_task():
    x = torch.linspace(-1, 1, 16).reshape(8, 2)
    data = fimo.ArrayDataset(x, x.sum(1))
    task = fimo.Task(torch.nn.Linear(2, 1), data, data, loss="mse")
    result = fimo.attribute(task, [2], further={"lr": 0.1, "batch_size": 4}, steps=3, top=8)
    direct = unrolled_quadratic(task, [2], range(8), steps=[3], lr=0.1)
    np.testing.assert_allclose(result.scores.values, direct.at(3).values, rtol=1e-6)
    assert result.page is None and len(result.helpful(2)) == 8


# -- bad input: exit 2, one line, before any work ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--test", "0,a"], "error: --test: got '0,a'; expected dataset indices such as 0,5,9"),
        (["--test", "2,-1"], "error: --test: got -1; test instances are dataset indices ≥ 0, e.g. 0,5,9"),
        (["--test", "0,0"], "error: --test: got [0, 0]; an index appears more than once"),
        (["--test", "103"], "error: --test: got 103, but there are only 103 test instances (0 to 102)"),
        (["--method", "unroled"], "error: --method: got 'unroled' (did you mean 'unrolled'?); allowed:"),
        (["--steps", "0"], "error: --steps: got 0; must be a whole number ≥ 1"),
        (["--method", "grad_dot", "--steps", "4"],
         "error: --steps: 'grad_dot' has no further-training horizon; leave --steps out, or use a "
         "method that has one: unrolled, unrolled_quadratic"),
        (["--method", "unrolled", "--seeds", "0"], "error: --seeds: got 0; must be a whole number ≥ 1"),
        (["--seeds", "2"],
         "error: --seeds: 'unrolled_quadratic' has no seeds; leave --seeds out, or use a method "
         "that has them: unrolled"),
        (["--top", "0"], "error: --top: got 0; must be a whole number ≥ 1"),
        (["--steps", "x"], "error: Invalid value for '--steps'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tiny_toml, tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["attribute", str(tiny_toml), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.strip().startswith(message)
    assert not (out / "model").exists() and not (out / "config.toml").exists()


def test_a_foreign_out_directory_is_refused(tiny_toml, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["attribute", str(tiny_toml), "--out", str(tmp_path), "--quiet"]) == 2
    assert "is not a fimo run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_command_prints_a_table_per_test_instance(tiny_toml, run, capsys):
    out, result = run
    argv = ["attribute", str(tiny_toml), "--out", str(out), "--test", "3,0", "--top", "4"]
    assert main(argv) == 0  # computes (an earlier test left another horizon's scores) or reuses
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("Test instance #") == 2
    best = result.helpful(3)[0]
    assert f"#{best}" in printed
    page = out / "attribution.html"
    assert f"Attribution: {page} (unrolled_quadratic, saved scores reused)" in printed


def test_a_further_training_the_default_cannot_model_is_refused_first(tmp_path, capsys):
    path = tmp_path / "adam.toml"
    path.write_text(tomli_w.dumps({**TINY, "further": {**TINY["further"], "optimizer": "adam"}}))
    out = tmp_path / "run"
    assert main(["attribute", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "further.optimizer = 'adam' is not supported" in err
    assert not out.exists()


def test_bad_further_settings_for_a_task_are_named():
    x = torch.zeros(4, 2)
    task = fimo.Task(torch.nn.Linear(2, 1), fimo.ArrayDataset(x, x.sum(1)),
                     fimo.ArrayDataset(x, x.sum(1)), loss="mse")  # fmt: skip
    with pytest.raises(fimo.errors.InputError, match=r"^further: got \{'lrr': 0.1\}; give a"):
        fimo.attribute(task, [0], further={"lrr": 0.1})
    with pytest.raises(fimo.errors.InputError, match=r"^--test: got 4, but there are only 4"):
        fimo.attribute(task, [4])


def test_the_command_prints_the_methods_cost_estimate(
    tiny_toml, run, tmp_path, monkeypatch, capsys
):
    import fimo.methods.cost as cost

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    readings = iter(range(10**6))  # a clock that advances 1 s at each reading
    monkeypatch.setattr(cost, "now", lambda: float(next(readings)))
    monkeypatch.setattr(cost, "ANNOUNCE_AFTER", 0.0)
    argv = ["attribute", str(tiny_toml), "--out", str(out), "--test", "2", "--method", "unrolled"]
    assert main([*argv, "--seeds", "2", "--steps", "5"]) == 0
    captured = capsys.readouterr()
    printed = " ".join(captured.err.split())  # above the progress bar, on stderr
    assert (
        "unrolled: about 10 s for unrolled: 2 seed(s) × 5 reverse steps carrying 1 cotangents "
        "(checkpoint × test) (1 s each)" in printed
    )


def test_the_page_shows_every_stored_method_newest_first(config, run, tmp_path):
    from fimo.evaluate.attribution import score_text

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    shutil.rmtree(out / "attribution")
    first = attribute(config, [2, 4], method="grad_dot", top=3, out=out)
    second = attribute(config, [1], method="unrolled", seeds=2, steps=5, top=2, out=out)
    # another model's scores and a damaged file are left out, each with a note
    foreign = Scores(np.ones((1, 40)), [0], range(40), "cg", {"attribute": {"final_model": "x"}})
    foreign.save(RunDir(out).attribution_file("cg"))
    (out / "attribution" / "trak.npz").write_bytes(b"cut short")
    last = attribute(config, [3, 0], top=4, out=out)  # unrolled_quadratic, the default
    page = (out / "attribution.html").read_text()
    assert "<title>fimo attribute: unrolled_quadratic, unrolled, grad_dot</title>" in page
    assert "left out: cg.npz was made for another final model or data" in page
    assert "left out: trak.npz is damaged or unreadable" in page
    sections = page.split("<h2 id=")[1:]
    assert [s.split("'")[1] for s in sections] == ["unrolled_quadratic", "unrolled", "grad_dot"]
    for section, result in zip(sections, (last, second, first), strict=True):
        tests = [int(t) for t in result.scores.test]
        assert [int(p.split("</h3>")[0]) for p in section.split("Test instance #")[1:]] == tests
        for row in result.top:  # the stored scores' own picks, with the standard error
            assert f"#{row['train']}</td><td class='num'>" in section
            assert score_text(row["score"], row["sem"]) in section
    assert "horizon: 5 steps" in sections[1] and "seeds: [0, 1]" in sections[1]
    assert "±" in sections[1] and "±" not in sections[0] + sections[2]


def test_unrolled_resumes_at_the_next_seed(config, run, tmp_path, unrolled_seeds):

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    computed, stop_at = unrolled_seeds.computed, unrolled_seeds.stop_at
    stop_at[:] = [1]
    with pytest.raises(KeyboardInterrupt):
        attribute(config, [2], method="unrolled", seeds=2, out=out, quiet=True)
    assert computed == [0] and (out / "attribution/unrolled.partial/state.npz").is_file()
    computed.clear()
    result = attribute(config, [2], method="unrolled", seeds=2, out=out, quiet=True)
    assert computed == [1] and not (out / "attribution/unrolled.partial").exists()
    task = final_task(config, out)  # the seeds' mean, computed directly
    seeds = [unrolled_seed(task, FurtherSettings(**FURTHER), s, [2]).values[-1] for s in (0, 1)]
    np.testing.assert_allclose(result.scores.values, np.mean(seeds, 0), rtol=1e-5, atol=1e-12)
