"""`fimo compare`: matrices made elsewhere, converted once and scored like fimo's own."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from fimo.cli import main
from fimo.evaluate.tables import read_table
from fimo.experiments.outputs import compare_run, rebuild_report
from fimo.scores import Scores


@pytest.fixture(scope="module")
def base(handmade_report):
    """A hand-made run with its report built once (conftest); each test works on a copy."""
    path, gold, scores, _ = handmade_report
    return path, gold, scores


@pytest.fixture
def run(base, tmp_path):
    path, gold, scores = base
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    return copy, gold, scores


def rows_of(path, method):
    return [r for r in read_table(path / "metrics" / "by_checkpoint.csv") if r["method"] == method]


def same_numbers(a, b, rtol=1e-9):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert (x["checkpoint"], x["metric"], x["centred"]) == (
            y["checkpoint"],
            y["metric"],
            y["centred"],
        )
        assert x["n"] == y["n"]
        np.testing.assert_allclose(x["mean"], y["mean"], rtol=rtol, atol=1e-12)


def test_dattri_layout_harmful_sign_gives_grad_dots_numbers(run, capsys):
    path, gold, scores = run
    own = scores["grad_dot"].select(test=gold.test, train=gold.left_out).values
    np.save(path.parent / "dattri.npy", -own.T * 7.0)  # (train, test), positive = harmful
    code = main(["compare", str(path), "--scores", str(path.parent / "dattri.npy"),
                 "--name", "if_dattri", "--orientation", "dattri", "--sign", "harmful"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Saved" in out and "if_dattri" in out and "Report:" in out
    saved = Scores.load(path / "scores" / "if_dattri.npz")
    np.testing.assert_allclose(saved.values, 7.0 * own)
    assert (
        saved.train.tolist() == gold.left_out.tolist() and saved.test.tolist() == gold.test.tolist()
    )
    assert saved.settings["origin"] == "external" and saved.settings["source"] == "dattri.npy"
    # a positive multiple of grad_dot: every scale-free metric is grad_dot's
    same_numbers(rows_of(path, "if_dattri"), rows_of(path, "grad_dot"))
    text = (path / "report.html").read_text()
    assert "if_dattri" in text
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["evaluation"]["external_scores"]["if_dattri"]["source"] == "dattri.npy"
    # it stays in the report when the report is rebuilt
    rebuild_report(path)
    assert rows_of(path, "if_dattri")


def test_kronfluence_pt_with_a_key_and_shuffled_train_indices(run, tmp_path):
    path, gold, scores = run
    own = scores["grad_cos"].select(test=gold.test, train=gold.left_out).values
    order = np.random.default_rng(3).permutation(len(gold.left_out))
    torch.save({"all_modules": torch.tensor(own[:, order]), "other": torch.zeros(2)},
               tmp_path / "kron.pt")  # fmt: skip
    (tmp_path / "train.txt").write_text(" ".join(str(i) for i in gold.left_out[order]))
    sc, ev = compare_run(path, tmp_path / "kron.pt", "kfac_kron", "kronfluence",
                         train_indices=tmp_path / "train.txt", key="all_modules")  # fmt: skip
    np.testing.assert_allclose(sc.select(train=gold.left_out).values, own)
    same_numbers(rows_of(path, "kfac_kron"), rows_of(path, "grad_cos"))
    assert "kfac_kron" in ev.scores


def test_a_matrix_over_the_whole_training_set(run, tmp_path):
    """TRAK-style (train, target) over all 32561 Adult training instances: the columns are
    recognised as the whole training set, and the left-out ones are picked out."""
    path, gold, scores = run
    own = scores["grad_dot"].select(test=gold.test, train=gold.left_out).values
    full = np.zeros((32561, len(gold.test)), dtype=np.float32)
    full[gold.left_out] = own.T
    np.savez(tmp_path / "trak.npz", scores=full)
    sc, _ = compare_run(path, tmp_path / "trak.npz", "trak_lib", "trak")
    assert sc.shape == (len(gold.test), 32561)
    same_numbers(rows_of(path, "trak_lib"), rows_of(path, "grad_dot"), rtol=1e-5)  # float32


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda g: np.zeros((len(g.test), len(g.left_out))), ["--orientation", "train,test"],
         "the other orientation would fit: check --orientation"),
        (lambda g: np.zeros((len(g.test), 5)), ["--orientation", "test,train"],
         "12 (the left-out instances) or 32561 (the whole training set) columns"),
        (lambda g: np.zeros((3, 12)), ["--orientation", "test,train"], "needs 8 test rows"),
        (lambda g: np.zeros((len(g.test), len(g.left_out))),
         ["--orientation", "test,train", "--name", "grad_dot"], "built-in method's name"),
        (lambda g: np.zeros((len(g.test), len(g.left_out))),
         ["--orientation", "test,train", "--name", "../x"], "--name: got '../x'"),
        (lambda g: np.zeros((len(g.test), len(g.left_out))),
         ["--orientation", "test,train", "--sign", "positive"], "--sign: got 'positive'"),
        (lambda g: np.full((len(g.test), len(g.left_out)), np.nan),
         ["--orientation", "test,train"], "NaN or infinite"),
        (lambda g: np.zeros(len(g.test)), ["--orientation", "test,train"], "expected a 2-D"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_clear_line(run, tmp_path, capsys, make, args, message):
    path, gold, _ = run
    np.save(tmp_path / "m.npy", make(gold))
    argv = ["compare", str(path), "--scores", str(tmp_path / "m.npy")]
    if "--name" not in args:
        argv += ["--name", "ext"]
    assert main(argv + args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert not (path / "scores" / "ext.npz").exists()


def test_other_test_indices_must_cover_the_gold_standard(run, tmp_path, capsys):
    path, gold, _ = run
    np.save(tmp_path / "m.npy", np.ones((3, len(gold.left_out))))
    (tmp_path / "test.txt").write_text("0 1 2")
    code = main(["compare", str(path), "--scores", str(tmp_path / "m.npy"), "--name", "ext",
                 "--orientation", "test,train", "--test-indices", str(tmp_path / "test.txt")])  # fmt: skip
    assert code == 2
    assert "not the gold standard's [3, 4, 5, 6, 7]" in " ".join(capsys.readouterr().err.split())


def test_safetensors(run, tmp_path, capsys):
    path, gold, scores = run
    if importlib.util.find_spec("safetensors") is None:
        (tmp_path / "m.safetensors").write_bytes(b"\0" * 16)
        code = main(["compare", str(path), "--scores", str(tmp_path / "m.safetensors"),
                     "--name", "ext", "--orientation", "test,train"])  # fmt: skip
        assert code == 2
        assert "needs the safetensors package" in capsys.readouterr().err
        return
    from safetensors.numpy import save_file

    own = scores["grad_dot"].select(test=gold.test, train=gold.left_out).values
    save_file({"scores": own}, str(tmp_path / "m.safetensors"))
    sc, _ = compare_run(path, tmp_path / "m.safetensors", "ext", "test,train")
    np.testing.assert_allclose(sc.values, own)


def test_an_external_name_cannot_overwrite_fimos_own_scores(run, tmp_path):
    from fimo.errors import InputError

    path, gold, scores = run
    sc = scores["grad_cos"]
    Scores(sc.values, sc.test, sc.train, "mine", {"fingerprint": "f"}).save(
        path / "scores" / "mine.npz"
    )
    np.save(tmp_path / "m.npy", np.ones((len(gold.test), len(gold.left_out))))
    with pytest.raises(InputError, match="computed by fimo"):
        compare_run(path, tmp_path / "m.npy", "mine", "test,train")
