"""Scores with a checkpoint axis (n_checkpoints, n_test, n_train) and their evaluation.

The reference for every table is the same evaluation with ordinary (n_test, n_train) Scores:
a stack of matrices must give, at each gold checkpoint, exactly what the matrix of that step
alone gives there.
"""

from __future__ import annotations

import numpy as np
import pytest

from fimo.errors import InputError
from fimo.evaluate import compute
from fimo.evaluate.metrics import cosine_rows, method_values
from fimo.evaluate.tables import read_table
from fimo.experiments.outputs import compare_run, rebuild_report
from fimo.scores import Scores
from test_evaluate import make_gold
from test_report import make_run_dir


def stacked(gold, rng, extra_steps=(3, 1000)):
    """A 3-D Scores over a shuffled superset of the gold's instances, holding matrices at the
    gold's steps and at ``extra_steps``; also the (T, L) matrix at each gold step."""
    steps = np.array(sorted({*map(int, gold.steps), *extra_steps}))
    train = rng.permutation(np.concatenate([gold.left_out, [100, 101]]))
    test = rng.permutation(np.concatenate([gold.test, [200]]))
    values = rng.normal(size=(len(steps), len(test), len(train)))
    rows = [list(test).index(int(t)) for t in gold.test]
    cols = [list(train).index(int(i)) for i in gold.left_out]
    per_step = {int(s): values[k][np.ix_(rows, cols)] for k, s in enumerate(steps)}
    return Scores(values, test, train, "uq", {"a": 1}, "loss", steps), per_step


def test_scores_stack_checks_select_at_and_round_trip(tmp_path):
    v = np.arange(12.0).reshape(2, 2, 3)
    s = Scores(v, test=[5, 6], train=[1, 2, 3], method="u", steps=[4, 8])
    assert s.shape == (2, 2, 3) and s.steps.tolist() == [4, 8]
    sub = s.select(test=[6], train=[3, 1])
    np.testing.assert_array_equal(sub.values, v[:, [1]][:, :, [2, 0]])
    assert sub.steps.tolist() == [4, 8]
    at = s.at(8)
    assert at.steps is None and at.settings["step"] == 8
    np.testing.assert_array_equal(at.values, v[1])
    with pytest.raises(InputError, match="no matrix at step 5"):
        s.at(5)
    back = Scores.load(s.save(tmp_path / "u.npz"))
    np.testing.assert_array_equal(back.values, v)
    assert back.steps.tolist() == [4, 8] and back.test.tolist() == [5, 6]
    flat = Scores(v[0], [5, 6], [1, 2, 3], "g")
    assert Scores.load(flat.save(tmp_path / "g.npz")).steps is None
    assert flat.at(123) is flat  # no checkpoint axis: the same matrix at every step


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        (None, "needs steps="),
        ([4], "1 steps for 2 checkpoints"),
        ([8, 4], "increase strictly"),
        ([4, 4], "increase strictly"),
        ([-1, 4], "whole numbers"),
        ([1.5, 4], "whole numbers"),
    ],
)
def test_scores_stack_rejects_bad_steps(steps, match):
    with pytest.raises(InputError, match=match):
        Scores(np.zeros((2, 1, 1)), [0], [0], "u", steps=steps)


def test_scores_matrix_rejects_steps_and_other_shapes():
    with pytest.raises(InputError, match="no steps"):
        Scores(np.zeros((1, 1)), [0], [0], "u", steps=[3])
    with pytest.raises(InputError, match="3-D"):
        Scores(np.zeros((1, 1, 1, 1)), [0], [0], "u", steps=[3])
    with pytest.raises(InputError, match=r"expected \(\.\.\., 1, 2\)"):
        Scores(np.zeros((2, 1, 1)), [0], [0, 1], "u", steps=[1, 2])


def test_method_values_picks_each_gold_step_and_names_a_missing_one():
    gold = make_gold(S=3, C=3, T=4, L=5, seed=1)
    s, per_step = stacked(gold, np.random.default_rng(2))
    got = method_values(gold, s)
    assert got.shape == (3, 4, 5)
    for c, step in enumerate(gold.steps):
        np.testing.assert_array_equal(got[c], per_step[int(step)])
    short = Scores(s.values[:2], s.test, s.train, "uq", steps=s.steps[:2])  # 3 and 10 only
    with pytest.raises(InputError, match=r"no matrix at the gold standard's step\(s\) \[20, 30\]"):
        method_values(gold, short)


def test_every_table_of_a_stack_equals_the_matrix_of_each_step():
    """Each table row of a 3-D Scores at checkpoint c equals the row of an ordinary Scores
    holding the matrix of c's step; and the cosine equals a plain row-wise computation."""
    gold = make_gold(S=4, C=3, T=4, L=5, seed=3)
    s, per_step = stacked(gold, np.random.default_rng(4))
    options = {
        "seed_counts": [1, 2, 4],
        "curve_steps": [10, 30],
        "example_step": 20,
        "example_k": 2,
    }
    ev = compute(gold, {"uq": s}, frames=False, **options)
    by_step = {
        step: compute(
            gold, {"uq": Scores(m, gold.test, gold.left_out, "uq")}, frames=False, **options
        )
        for step, m in per_step.items()
        if step in set(gold.steps.tolist())
    }
    key = {
        "by_checkpoint": ("checkpoint", "metric", "centred"),
        "seed_count": ("k", "checkpoint", "metric", "centred"),
        "calibration": ("checkpoint", "centred", "quantity"),
    }
    for table, fields in key.items():
        for c, step in enumerate(gold.steps.tolist()):
            mine = [r for r in ev.rows[table] if r["checkpoint"] == c]
            ref = [r for r in by_step[step].rows[table] if r["checkpoint"] == c]
            assert len(mine) == len(ref) > 0, table
            for a, b in zip(mine, ref, strict=True):
                assert [a[f] for f in fields] == [b[f] for f in fields]
                value = "value" if table == "calibration" else "mean"
                np.testing.assert_allclose(a[value], b[value], rtol=1e-12, equal_nan=True)
    # the cosine rows by hand: centred gold mean against the matrix of the same step
    mean = gold.mean(True)
    for c, step in enumerate(gold.steps.tolist()):
        want = np.mean(cosine_rows(mean[c], per_step[step]))
        got = next(
            r["mean"]
            for r in ev.rows["by_checkpoint"]
            if r["checkpoint"] == c and r["metric"] == "cosine" and r["centred"]
        )
        assert abs(got - want) < 1e-12
    # examples at step 20 rank by the step-20 matrix
    ex = [r for r in ev.rows["examples"] if r["source"] == "uq"]
    ref = [r for r in by_step[20].rows["examples"] if r["source"] == "uq"]
    assert [(r["train"], r["score"]) for r in ex] == [(r["train"], r["score"]) for r in ref]
    # one sorted curve per drawn checkpoint, each that of its step's matrix
    for c, step in ((0, 10), (2, 30)):
        mine = [
            r["value"]
            for r in ev.rows["sorted_curves"]
            if r["source"] == "uq" and r["step"] == step
        ]
        ref = [r["value"] for r in by_step[step].rows["sorted_curves"] if r["source"] == "uq"]
        np.testing.assert_allclose(mine, ref, rtol=1e-12)
        assert {r["checkpoint"] for r in ev.rows["sorted_curves"] if r["step"] == step} == {c}


def test_evaluation_refuses_a_stack_without_a_gold_step():
    gold = make_gold(S=2, C=2, T=3, L=5, seed=5)
    s = Scores(np.zeros((1, 3, 5)), gold.test, gold.left_out, "uq", steps=[10])  # no step 20
    with pytest.raises(InputError, match=r"step\(s\) \[20\]"):
        compute(gold, {"uq": s}, frames=False)


def test_run_directory_report_with_a_stack(tmp_path):
    """A run whose method holds one matrix per checkpoint: the report is built, and the file
    tables hold, at each checkpoint, the agreement of that step's matrix."""
    path = tmp_path / "run"
    gold, _ = make_run_dir(path, S=4, C=3, T=8, L=12)
    rng = np.random.default_rng(6)
    mats = rng.normal(size=(3, 8, 12))
    Scores(
        mats, gold.test, gold.left_out, "grad_cos", {"fingerprint": "grad_cos"}, "", gold.steps
    ).save(path / "scores" / "grad_cos.npz")
    rebuild_report(path)
    assert (path / "report.html").is_file()
    rows = read_table(path / "metrics" / "by_checkpoint.csv")
    mean = gold.mean(True)
    for c in range(3):
        got = next(
            r["mean"]
            for r in rows
            if r["method"] == "grad_cos" and r["checkpoint"] == c
            and r["metric"] == "cosine" and r["centred"]
        )  # fmt: skip
        assert abs(got - np.mean(cosine_rows(mean[c], mats[c]))) < 1e-12
    curves = read_table(path / "metrics" / "sorted_curves.csv")
    assert {r["step"] for r in curves if r["source"] == "grad_cos"} <= set(gold.steps.tolist())
    assert {r["step"] for r in curves if r["source"] == "grad_dot"} == {None}


def test_compare_refuses_a_stack_and_names_the_way_in(tmp_path):

    path = tmp_path / "run"
    gold, _ = make_run_dir(path, S=2, C=2, T=8, L=12)
    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 12)))
    with pytest.raises(InputError, match=r"expected a 2-D score matrix.*steps=\.\.\..*fimo report"):
        compare_run(path, tmp_path / "stack.npy", "mine", "test,train")
    # the way in it names: an external Scores with steps in scores/, then the report
    mats = np.random.default_rng(7).normal(size=(2, 8, 12))
    Scores(mats, gold.test, gold.left_out, "mine", {"origin": "external"}, "", gold.steps).save(
        path / "scores" / "mine.npz"
    )
    ev = rebuild_report(path)
    assert "mine" in ev.scores and ev.scores["mine"].steps.tolist() == gold.steps.tolist()
    got = [
        r["mean"]
        for r in ev.rows["by_checkpoint"]
        if r["method"] == "mine" and r["metric"] == "cosine" and r["centred"]
    ]
    want = [np.mean(cosine_rows(gold.mean(True)[c], mats[c])) for c in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
