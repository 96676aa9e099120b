"""Bad data from Python (the API and the `module:function` factories of a configuration): one
clear message each, exit code 2 from the CLI, and a run directory left as it was."""

import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from torch import nn

from fimo import ArrayDataset, FurtherSettings, Task, gold_standard
from fimo.cli import main
from fimo.data.base import check_indices, check_pair
from fimo.errors import InputError
from fimo.io import write_npz, write_text

NAN, INF = math.nan, math.inf


def data(n=12, d=3, classes=2, seed=0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, d, generator=g), torch.arange(n) % classes)


# -- datasets given from Python ----------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs, targets, message",
    [
        (torch.tensor([[0.0, 1.0], [NAN, 2.0]]), torch.tensor([0, 1]),
         "ArrayDataset: inputs contain NaN or infinite values (rows [1] ...); impute or drop them first"),
        (torch.zeros(3, 2), torch.tensor([0.5, INF, -INF]),
         "ArrayDataset: targets contain NaN or infinite values (rows [1, 2] ...); impute or drop them first"),
        (torch.zeros(3, 2), torch.tensor([0, 1]),
         "ArrayDataset: inputs have 3 rows but targets have 2; they must match"),
        (np.zeros((3, 2)), np.zeros(3),
         "ArrayDataset: inputs and targets must be torch tensors; got ndarray and ndarray "
         "(torch.as_tensor converts numpy arrays)"),
        (torch.zeros(2, 2), torch.tensor([True, False]),
         "ArrayDataset: targets have dtype torch.bool; expected real numbers (floats, or "
         "integer class indices for targets)"),
        (torch.tensor(1.0), torch.tensor(0),
         "ArrayDataset: inputs and targets need one row per instance; got shapes () and ()"),
    ],
)  # fmt: skip
def test_bad_arrays_are_named(inputs, targets, message):
    with pytest.raises(InputError) as info:
        ArrayDataset(inputs, targets)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "train, test, message",
    [
        (data(d=3), data(d=4),
         "data: train inputs have shape (12, 3) but test inputs (12, 4); every instance must "
         "have the same shape"),
        (data(), ArrayDataset(torch.zeros(4, 3), torch.zeros(4)),
         "data: train targets are class indices (torch.int64) but test targets are floats "
         "(torch.float32); use one kind for both"),
        (ArrayDataset(torch.zeros(4, 3), torch.zeros(4, 2)),
         ArrayDataset(torch.zeros(4, 3), torch.zeros(4, 3)),
         "data: train targets have shape (4, 2) but test targets (4, 3); every instance's "
         "target must have the same shape"),
        (data(), ArrayDataset(torch.zeros(2, 3), torch.tensor([0, -1])),
         "data: test labels include -1; class indices must be 0, 1, ..., k-1"),
        (data(), ArrayDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
         "data: the test set is empty"),
        ((torch.zeros(4, 3), torch.zeros(4)), data(),
         "data: train must be a fimo ArrayDataset; got tuple"),
    ],
)  # fmt: skip
def test_train_and_test_must_agree(train, test, message):
    with pytest.raises(InputError) as info:
        check_pair(train, test)
    assert str(info.value) == message


def test_labels_outside_the_classes_are_named():
    test = ArrayDataset(torch.zeros(3, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(InputError) as info:
        Task(nn.Linear(3, 2), data(), test)
    assert str(info.value) == (
        "Task: test labels range over [0, 2] but the model has 2 outputs; labels must be in [0, 1]"
    )


def test_a_model_whose_output_does_not_fit_the_loss_is_named_in_one_line():
    with pytest.raises(InputError) as info:
        Task(nn.Linear(4, 2), data(d=3), data(d=3))
    message = str(info.value)
    assert message.startswith(
        "Task: the model's output does not fit the loss 'cross_entropy' on the training data "
        "(inputs (2, 3), targets (2,)): mat1 and mat2 shapes cannot be multiplied"
    )
    assert "\n" not in message
    regression = ArrayDataset(torch.zeros(5, 3), torch.zeros(5))
    with pytest.raises(InputError) as info:
        Task(nn.Linear(3, 4), regression, regression, loss="mse")
    assert str(info.value) == (
        "Task: the model gives 4 outputs per instance but the training targets have 1; they "
        "must match for the loss 'mse'"
    )


def test_a_loss_that_is_not_per_instance_or_not_finite_is_named():
    with pytest.raises(InputError, match=r"one value per instance, shape \(2,\); got \(\)"):
        Task(nn.Linear(3, 2), data(), data(), loss=lambda out, y: out.sum())
    broken = nn.Linear(3, 2)
    with torch.no_grad():
        broken.weight[0, 0] = NAN
    with pytest.raises(InputError) as info:
        Task(broken, data(), data())
    assert str(info.value) == (
        "Task: the loss is NaN or infinite on the first training instances at the model's "
        "current weights; check the model, its weights and the data"
    )


@pytest.mark.parametrize(
    "seeds, left_out, test, message",
    [
        ([0], [1, 1], [0], "left_out: index 1 appears more than once; each index may appear once"),
        ([0], [1, 12], [0], "left_out: index 12 is out of range; there are 12 training "
                            "instances (indices 0 to 11)"),
        ([0], [1, 2], [-1], "test: index -1 is out of range; there are 12 test instances "
                            "(indices 0 to 11)"),
        ([0], [0.5, 2], [0], "left_out: got [0.5, 2.0]; expected whole numbers (indices)"),
        ([0], np.ones(12, bool), [0], "left_out: got a boolean mask; give the positions "
                                      "instead (numpy.flatnonzero)"),
        ([0], [], [0], "left_out: got none; give at least one"),
        ([0, 0], [1, 2], [0], "seeds: got [0, 0]; a seed appears more than once"),
        ([-1], [1, 2], [0], "seeds: got [-1]; expected whole numbers ≥ 0"),
        (3, [1, 2], [0], "seeds: got 3; give a list of seeds, e.g. range(3)"),
    ],
)  # fmt: skip
def test_bad_indices_are_refused_before_any_training(seeds, left_out, test, message):
    task = Task(nn.Linear(3, 2), data(), data())
    with pytest.raises(InputError) as info:
        gold_standard(task, FurtherSettings(lr=0.1), seeds, left_out, test)
    assert str(info.value) == message


def test_check_indices_returns_the_positions_unchanged():
    assert check_indices("x", torch.tensor([4, 0, 2]), 5).tolist() == [4, 0, 2]
    assert check_indices("x", np.array([3.0, 1.0]), 5).dtype == np.int64


# -- the same through a configuration's factories, from the CLI ----------------------------------
FACTORIES = """
import torch
from torch import nn
from fimo import ArrayDataset


def _set(n, d, labels, seed):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randn(n, d, generator=g), torch.arange(n) % labels)


def good():
    return _set(40, 5, 2, 0), _set(10, 5, 2, 1)


def nan_inputs():
    x = torch.randn(40, 5)
    x[7, 2] = float("nan")
    return ArrayDataset(x, torch.arange(40) % 2), _set(10, 5, 2, 1)


def other_features():
    return _set(40, 5, 2, 0), _set(10, 4, 2, 1)


def extra_test_class():
    return _set(40, 5, 2, 0), _set(10, 5, 3, 1)


def arrays():
    return (torch.zeros(4, 5).numpy(), torch.zeros(4).numpy()), _set(10, 5, 2, 1)


def wrong_width(train, test):
    return nn.Linear(4, 2)
"""


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userpkg")
    (folder / "fimo_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    return folder


@pytest.fixture
def previous(tmp_path):
    """A run directory holding earlier results, which a refused run must leave as they were."""
    out = tmp_path / "run"
    write_text(out / "config.toml", 'name = "earlier"\n')
    write_npz(out / "scores" / "grad_dot.npz", scores=np.ones((2, 3)))
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.parametrize(
    "data_factory, model_factory, message",
    [
        ("nan_inputs", "", "ArrayDataset: inputs contain NaN or infinite values (rows [7] ...); "
                           "impute or drop them first"),
        ("other_features", "", "data.factory: train inputs have shape (40, 5) but test inputs "
                               "(10, 4); every instance must have the same shape"),
        ("extra_test_class", "", "Task: test labels range over [0, 2] but the model has 2 "
                                 "outputs; labels must be in [0, 1]"),
        ("arrays", "", "data.factory: train must be a fimo ArrayDataset; got tuple"),
        ("good", "wrong_width", "Task: the model's output does not fit the loss "
                                "'cross_entropy' on the training data (inputs (2, 5), targets "
                                "(2,)): mat1 and mat2 shapes cannot be multiplied (2x5 and 4x2)"),
    ],
)  # fmt: skip
def test_factories_giving_bad_data_exit_2_and_leave_the_run_as_it_was(
    factories, previous, tmp_path, monkeypatch, capsys, data_factory, model_factory, message
):
    monkeypatch.syspath_prepend(str(factories))
    config = {
        "name": "user",
        "data": {"factory": f"fimo_test_factories:{data_factory}", "n_test": 4},
        "model": {"factory": f"fimo_test_factories:{model_factory}" if model_factory else ""},
        "further": {"seeds": 1, "left_out": 2},
        "methods": {"names": ["grad_dot"], "train": "left_out"},
    }
    path = tmp_path / "user.toml"
    path.write_text(tomli_w.dumps(config))
    before = snapshot(previous)
    code = main(["run", str(path), "--out", str(previous), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert " ".join(err.split()) == f"error: {message}"
    assert len(err.strip().splitlines()) == 1
    assert snapshot(previous) == before


# -- paths in a configuration --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "/tmp/fimo-escape", "a/b", ".hidden", ".."])
def test_a_name_cannot_place_the_run_outside_runs(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = tmp_path / "escape.toml"
    path.write_text(tomli_w.dumps({"name": name}))
    assert main(["run", str(path), "--quiet"]) == 2
    assert " ".join(capsys.readouterr().err.split()) == (
        f"error: name: got {name!r}; the run directory is runs/<name>, so the name must be a "
        "plain word (letters, digits, '_', '-', '.'); rename it or pass --out"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.toml", "work"]
    assert list(work.iterdir()) == []
    assert not Path("/tmp/fimo-escape").exists()


# -- nothing is loaded in a way that could run code -------------------------------------------
def test_every_load_in_the_source_refuses_pickled_code():
    """torch.load only with weights_only=True, numpy.load only with allow_pickle=False, and no
    pickle.load at all (a new call site without them fails here)."""
    src = Path(__file__).parents[1] / "src" / "fimo"
    calls = []
    for file in sorted(src.rglob("*.py")):
        text = file.read_text(encoding="utf-8")
        for match in re.finditer(r"\b(torch\.load|np\.load|numpy\.load|pickle\.loads?)\(", text):
            end = text.find(")", match.end())
            calls.append(
                (file.relative_to(src).as_posix(), match.group(1), text[match.end() : end])
            )
    assert calls, "no load calls found: the pattern is out of date"
    for where, fn, args in calls:
        assert not fn.startswith("pickle"), f"{where}: {fn}"
        if fn == "torch.load":
            assert "weights_only=True" in args, f"{where}: torch.load({args})"
        else:
            assert "allow_pickle=False" in args, f"{where}: {fn}({args})"


def test_fimo_run_from_python_writes_runs_name_and_refuses_a_name_with_path_parts(
    config_path, tmp_path, monkeypatch
):
    import fimo
    from fimo.experiments.config import load_config

    monkeypatch.chdir(tmp_path)
    config = load_config(config_path)
    config.name = "../outside"
    with pytest.raises(InputError, match=r"^name: got '\.\./outside'; the run directory is"):
        fimo.run(config, quiet=True)
    assert not (tmp_path.parent / "outside").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(InputError, match=r"^override 'seed' is unknown \(did you mean 'seeds'\?\)"):
        fimo.run(str(config_path), quiet=True, seed=1)
    result = fimo.run(str(config_path), quiet=True, seeds=1)
    assert result.gold.loss_without.shape[0] == 1
    assert (tmp_path / "runs" / "tiny" / "manifest.json").is_file()
