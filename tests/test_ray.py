"""Shards on a real local Ray cluster: same gold standard as locally; a killed worker's shard
is retried, and no shard is lost or written twice."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fimo.data import ArrayDataset
from fimo.further.engine import FurtherSettings
from fimo.further.runner import LocalExecutor, RayExecutor, compute_shard, gold_standard
from fimo.further.store import ShardStore
from fimo.models import mlp
from fimo.task import Task

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def small_task():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g)
    y = (X[:, 0] > 0).long()
    return Task(mlp(6, 2, hidden=(16,)), ArrayDataset(X, y), ArrayDataset(X[:10], y[:10]))


SETTINGS = FurtherSettings(lr=0.05, epochs=2, batch_size=32)
LEFT_OUT = np.array([1, 7, 20, 55, 150])


def die_once_then_compute(task, settings, shard, left_out, test):
    """Kill the worker process the first time it meets shard (seed 1, first chunk)."""
    marker = Path(os.environ["FIMO_TEST_MARKER"])
    if shard.seed == 1 and shard.start == 0 and not marker.exists():
        marker.write_text("killed once")
        os._exit(1)
    return compute_shard(task, settings, shard, left_out, test)


def test_ray_gives_the_local_gold_standard(cluster, tmp_path):
    task = small_task()
    local = gold_standard(task, SETTINGS, range(3), LEFT_OUT, range(10), left_out_per_shard=2)
    store = ShardStore(tmp_path / "further", "fp", {})
    remote = gold_standard(
        task, SETTINGS, range(3), LEFT_OUT, range(10), store=store,
        executor=RayExecutor(address=None), left_out_per_shard=2,
    )  # fmt: skip
    np.testing.assert_array_equal(remote.loss_full, local.loss_full)
    np.testing.assert_array_equal(remote.loss_without, local.loss_without)
    assert len(list((tmp_path / "further/shards").glob("*.npz"))) == 3 * 3


def test_killed_worker_loses_and_duplicates_nothing(cluster, tmp_path):
    marker = tmp_path / "marker"
    # workers must import this module and see the marker: restart the cluster with both
    ray.shutdown()
    env = {"FIMO_TEST_MARKER": str(marker), "PYTHONPATH": str(Path(__file__).parent)}
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
    )
    task = small_task()
    arrived = []
    store = ShardStore(tmp_path / "further", "fp", {})
    gold = gold_standard(
        task, SETTINGS, range(2), LEFT_OUT, range(10), store=store,
        executor=RayExecutor(address=None), left_out_per_shard=3,
        on_shard=lambda shard, reused: arrived.append(shard), compute=die_once_then_compute,
    )  # fmt: skip
    assert marker.read_text() == "killed once"  # the worker really died
    assert sorted(arrived) == sorted(set(arrived)) and len(arrived) == 2 * 2
    assert len(list((tmp_path / "further/shards").glob("*.npz"))) == 4
    local = gold_standard(
        task, SETTINGS, range(2), LEFT_OUT, range(10), executor=LocalExecutor(),
        left_out_per_shard=3,
    )  # fmt: skip
    np.testing.assert_array_equal(gold.loss_without, local.loss_without)
