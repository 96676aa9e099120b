"""The same configuration and seeds give bit-identical results: across two runs, across
``--executor local`` and ``--executor ray``, and between a run and `fimo report` rebuilding
its tables from the files."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from fimo.cli import main
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import run
from fimo.io import read_npz

TINY = {
    "name": "tiny",
    "data": {"dataset": "diabetes", "n_test": 8},
    "training": {"epochs": 1},
    # two shards per seed, so that the Ray run really spreads work over its workers
    "further": {"seeds": 2, "left_out": 4, "left_out_per_shard": 2, "epochs": 1,
                "batch_size": 128, "lr": 0.05},
    "methods": {"names": ["grad_dot", "grad_cos"], "train": "left_out"},
}  # fmt: skip
GOLD_KEYS = ("loss_full", "loss_without", "steps", "epochs", "left_out", "test", "seeds")


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def first(config_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "run"
    run(load_config(config_path), out, quiet=True)
    return out


def assert_same_results(a: Path, b: Path) -> None:
    """Gold standard, scores and final weights exactly equal; metrics tables byte for byte."""
    gold_a, gold_b = read_npz(a / "further/gold.npz"), read_npz(b / "further/gold.npz")
    for key in GOLD_KEYS:
        assert gold_a[key].dtype == gold_b[key].dtype, key
        np.testing.assert_array_equal(gold_a[key], gold_b[key], err_msg=key)
    for name in ("grad_dot", "grad_cos"):
        sa, sb = read_npz(a / f"scores/{name}.npz"), read_npz(b / f"scores/{name}.npz")
        for key in ("scores", "test", "train"):
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{name}: {key}")
    wa = torch.load(a / "model/final.pt", weights_only=True)
    wb = torch.load(b / "model/final.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and wa.keys() == wb.keys()
    tables = sorted(p.name for p in (a / "metrics").glob("*.csv"))
    assert "by_checkpoint.csv" in tables
    assert tables == sorted(p.name for p in (b / "metrics").glob("*.csv"))
    for name in tables:
        assert (a / "metrics" / name).read_bytes() == (b / "metrics" / name).read_bytes(), name


def test_two_runs_give_identical_results(first, config_path, tmp_path):
    second = tmp_path / "second"
    run(load_config(config_path), second, quiet=True)
    assert_same_results(first, second)


def test_a_rebuilt_report_gives_the_run_s_metrics_to_the_last_bit(first, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(first, rebuilt)
    for table in (rebuilt / "metrics").iterdir():
        table.unlink()
    assert main(["report", str(rebuilt), "--quiet"]) == 0
    assert_same_results(first, rebuilt)


def test_ray_and_local_executors_give_identical_results(first, config_path, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        code = main(["run", str(config_path), "--out", str(out), "--quiet",
                     "--executor", "ray", "--address", "local"])  # fmt: skip
        assert code == 0
    finally:
        ray.shutdown()
    assert len(list((out / "further/shards").glob("*.npz"))) == 2 * 2
    assert_same_results(first, out)
