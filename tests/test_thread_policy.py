"""fimo.threads: final training and the methods compute on one torch thread per core the other
processes leave free (at least one), unless run.threads or FIMO_THREADS say otherwise; the
choice is recorded in the manifest, torch's former count comes back afterwards, and the scores
do not depend on it beyond float rounding."""

import json

import numpy as np
import pytest
import tomli_w
import torch

import fimo.experiments.pipeline as pipeline
import fimo.threads as threads_module
from fimo import ArrayDataset, Task
from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.attribute import attribute
from fimo.experiments.config import Config, load_config, with_overrides
from fimo.further.threads import torch_threads
from fimo.methods import get_method
from fimo.models import mlp
from fimo.threads import ThreadChoice, applied, choose_threads, chosen_threads, threads_for


@pytest.mark.parametrize(
    "cores, load, chosen, expected",
    [
        (2, 0.0, None, 2),  # idle: every core
        (2, 0.49, None, 2),  # a core used less than half by others still counts as free
        (2, 0.51, None, 1),
        (2, 1.0, None, 1),
        (2, 3.7, None, 1),  # more jobs than cores: still one thread
        (1, 0.0, None, 1),
        (8, 2.2, None, 6),
        (8, 2.6, None, 5),
        (8, 0.0, None, 8),
        (8, 20.0, None, 1),
        (2, 3.7, 2, 2),  # the user's count wins, loaded or not
        (2, 0.0, 1, 1),
        (2, 0.0, 4, 4),  # even above the cores: the user may know better
    ],
)
def test_policy_table(cores, load, chosen, expected):
    assert threads_for(cores, load, chosen) == expected


def test_the_setting_beats_the_environment_which_beats_the_policy():
    both = {"FIMO_THREADS": "1", "OMP_NUM_THREADS": "3"}
    assert chosen_threads(3, both) == (3, "run.threads")
    assert chosen_threads(0, both) == (1, "FIMO_THREADS")
    assert chosen_threads(0, {"FIMO_THREADS": " 2 "}) == (2, "FIMO_THREADS")
    assert chosen_threads(0, {"FIMO_THREADS": "", "OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    for ignored in ("", "4,2", "0"):  # not a count of ours to check: OpenMP reads it
        assert chosen_threads(0, {"OMP_NUM_THREADS": ignored}) is None
    assert chosen_threads(0, {}) is None
    for bad in ("0", "-1", "1.5", "auto"):
        with pytest.raises(InputError, match=f"FIMO_THREADS: got '{bad}'; must be a whole"):
            chosen_threads(0, {"FIMO_THREADS": bad})
    with pytest.raises(InputError, match=r"run.threads: got -1; must be ≥ 1"):
        chosen_threads(-1, {})


def test_run_threads_and_the_command_lines_threads_are_checked_at_the_door(tmp_path, capsys):
    assert with_overrides(Config(), threads=3).run.threads == 3
    assert with_overrides(Config(), threads=None).run.threads == 0  # 0: from the load
    with pytest.raises(InputError, match=r"run.threads: got -1; must be ≥ 1 \(or 0"):
        with_overrides(Config(), threads=-1)
    assert main(["run", "concrete", "--threads", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "run.threads: got -1" in capsys.readouterr().err


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine whose load average the test sets; this process has used 6 CPU
    seconds (0.1 of the load is its own)."""
    state = {"load": 0.0}
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(threads_module.time, "process_time", lambda: 6.0)
    monkeypatch.delenv("FIMO_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return state


def test_the_choice_reads_the_cores_and_the_load_less_this_process(machine, monkeypatch):
    machine["load"] = 0.55  # 0.45 of it from others: the second core counts as free
    assert choose_threads() == ThreadChoice(2, "load", 2, 0.45)
    machine["load"] = 3.8
    assert choose_threads() == ThreadChoice(1, "load", 2, 3.7)
    assert choose_threads(2) == ThreadChoice(2, "run.threads", 2, 3.7)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == ThreadChoice(2, "OMP_NUM_THREADS", 2, 3.7)
    monkeypatch.setenv("FIMO_THREADS", "1")
    assert choose_threads() == ThreadChoice(1, "FIMO_THREADS", 2, 3.7)


def test_applied_sets_the_count_restores_it_and_says_so_only_when_it_changes():
    said = []
    with torch_threads(2):
        with pytest.raises(RuntimeError), applied(ThreadChoice(1, "load", 2, 3.0), said.append):
            assert torch.get_num_threads() == 1
            raise RuntimeError  # restored on the way out of an error too
        assert torch.get_num_threads() == 2
        with applied(ThreadChoice(2, "load", 2, 0.0), said.append):
            assert torch.get_num_threads() == 2
    assert said == [
        "torch threads: 1 of 2 cores (other processes keep 3.0 busy; set FIMO_THREADS to choose)"
    ]


#: 40 Concrete instances: a run of a few seconds
TINY = {
    "name": "tiny",
    "data": {"dataset": "concrete", "n_train": 40, "n_test": 4},
    "model": {"hidden": [6]},
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.1},
    "further": {"seeds": 1, "left_out": 2, "epochs": 1, "batch_size": 16, "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
}


def test_a_run_trains_and_scores_on_the_chosen_threads_and_records_them(
    tmp_path, machine, monkeypatch
):
    seen = {}

    def recording(name, real):
        def wrapper(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pipeline, "train_final", recording("final", pipeline.train_final))
    monkeypatch.setattr(pipeline, "_run_method", recording("method", pipeline._run_method))
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(TINY))
    machine["load"] = 3.1  # others hold both cores
    with torch_threads(2):
        pipeline.run(load_config(config), tmp_path / "run", quiet=True)
        assert torch.get_num_threads() == 2
    assert seen == {"final": 1, "method": 1}
    record = json.loads((tmp_path / "run/manifest.json").read_text())["torch_threads"]
    assert record == {"threads": 1, "chosen_by": "load", "cores": 2, "load_of_others": 3.0}
    # idle: the methods take both cores, final training still one thread (the same weights
    # under any load), so a final model trained again is the same bit for bit
    machine["load"] = 0.0
    seen.clear()
    with torch_threads(1):
        pipeline.run(load_config(config), tmp_path / "idle", quiet=True)
    assert seen == {"final": 1, "method": 2}
    loaded = torch.load(tmp_path / "run/model/final.pt", weights_only=True)
    idle = torch.load(tmp_path / "idle/model/final.pt", weights_only=True)
    assert all(torch.equal(loaded[k], idle[k]) for k in loaded)
    machine["load"] = 3.1
    seen.clear()
    pipeline.run(with_overrides(load_config(config), threads=2), tmp_path / "two", quiet=True)
    assert seen == {"final": 2, "method": 2}  # the user's count: final training too


def regression_task() -> Task:
    """Large enough for torch to split its products over two threads (64-wide layers,
    2,000 training instances)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 20, generator=g)
    y = x[:, :1] - x[:, 1:2] ** 2 + 0.1 * torch.randn(2000, 1, generator=g)
    data = ArrayDataset(x, y)
    return Task(mlp(20, 1, hidden=(64, 64), seed=0), data, ArrayDataset(x[:30], y[:30]), "mse")


@pytest.mark.parametrize(
    "name, n_test, settings",
    [("grad_dot", 30, {}), ("cg", 3, {"damping": 1.0, "max_iter": 20, "hessian_samples": 300})],
)
def test_scores_agree_on_one_thread_and_two(name, n_test, settings):
    task, test, train = regression_task(), np.arange(n_test), np.arange(2000)
    values = []
    for threads in (1, 2):
        with torch_threads(threads):
            values.append(get_method(name)(task, test, train, **settings).values)
    scale = np.abs(values[0]).max()
    assert scale > 0
    assert np.abs(values[0] - values[1]).max() <= 1e-6 * scale


def test_attribute_records_the_threads_it_computed_on():
    x = torch.linspace(-1, 1, 16).reshape(8, 2)
    data = ArrayDataset(x, x.sum(1))
    task = Task(torch.nn.Linear(2, 1), data, data, loss="mse")
    result = attribute(task, [0], method="grad_dot", threads=1, quiet=True)
    record = result.scores.settings["attribute"]["torch_threads"]
    assert record["threads"] == 1 and record["chosen_by"] == "run.threads"
