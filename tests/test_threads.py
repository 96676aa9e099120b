"""Further training computes every shard on one torch thread (fimo.further.threads): in this
process and in worker processes, whatever this process's own thread count, and a run with one
worker and a run with two give the same gold standard bit for bit, with the count recorded in
the manifest."""

import json
import os

import numpy as np
import pytest
import tomli_w
import torch

from fimo import ArrayDataset, FurtherSettings, Task
from fimo.errors import InputError
from fimo.experiments.config import load_config, with_overrides
from fimo.experiments.pipeline import run
from fimo.further.runner import LocalExecutor
from fimo.further.store import plan_shards
from fimo.further.threads import THREADS_PER_WORKER, torch_threads
from fimo.io import read_npz


def threads_seen(task, settings, shard, left_out, test, on_step=None):
    """A stand-in for compute_shard: the torch thread count the shard was computed on."""
    return torch.get_num_threads()


def small_task() -> Task:
    data = ArrayDataset(torch.randn(12, 3, generator=torch.Generator().manual_seed(0)),
                        torch.zeros(12, 1))  # fmt: skip
    return Task(torch.nn.Linear(3, 1), data, data, loss="mse")


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_are_computed_on_one_thread_and_the_caller_keeps_its_own(workers):
    seen = []
    with torch_threads(2):
        LocalExecutor(workers).run(
            small_task(), FurtherSettings(batch_size=4), plan_shards([0, 1], 3, 2), [3, 7, 9],
            [0], on_result=lambda shard, threads: seen.append(threads), compute=threads_seen,
        )  # fmt: skip
        assert torch.get_num_threads() == 2
    assert THREADS_PER_WORKER == 1 and seen == [1] * 4


def process_seen(task, settings, shard, left_out, test, on_step=None):
    """A stand-in for compute_shard: the process the shard was computed in."""
    return os.getpid()


def test_a_single_shard_is_computed_here_and_two_in_workers():
    def pids(n_left_out):
        seen = []
        LocalExecutor(workers=2).run(
            small_task(), FurtherSettings(batch_size=4), plan_shards([0], n_left_out, 2),
            [3, 7, 9][:n_left_out], [0], on_result=lambda shard, pid: seen.append(pid),
            compute=process_seen,
        )  # fmt: skip
        return seen

    assert pids(2) == [os.getpid()]  # one shard: no worker to start
    two = pids(3)
    assert len(two) == 2 and os.getpid() not in two


def test_threads_can_be_chosen_for_a_benchmark_and_are_checked():
    seen = []
    with torch_threads(1):
        LocalExecutor(threads=2).run(
            small_task(), FurtherSettings(batch_size=4), plan_shards([0], 3, 3), [3, 7, 9],
            [0], on_result=lambda shard, threads: seen.append(threads), compute=threads_seen,
        )  # fmt: skip
        assert torch.get_num_threads() == 1
    assert seen == [2]
    with pytest.raises(InputError, match="threads: got 0"):
        LocalExecutor(threads=0)


TINY = {
    "name": "tiny",
    "data": {"dataset": "diabetes", "n_test": 8},
    "training": {"epochs": 1},
    "further": {"seeds": 2, "left_out": 4, "left_out_per_shard": 2, "epochs": 1,
                "batch_size": 128, "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
}  # fmt: skip


def test_one_worker_and_two_give_the_same_gold_standard_and_record_the_threads(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(TINY))
    golds, records = [], []
    with torch_threads(2):  # the process's own count must not reach the shards
        for workers in (1, 2):
            out = tmp_path / f"workers-{workers}"
            run(with_overrides(load_config(config), workers=workers), out, quiet=True)
            golds.append(read_npz(out / "further/gold.npz"))
            records.append(json.loads((out / "manifest.json").read_text())["gold_standard"])
    for key in ("loss_full", "loss_without", "steps"):
        np.testing.assert_array_equal(golds[0][key], golds[1][key], err_msg=key)
    assert np.abs(golds[0]["loss_without"] - golds[0]["loss_full"][..., None]).max() > 0
    assert [(r["workers"], r["threads_per_worker"]) for r in records] == [(1, 1), (2, 1)]


# -- run.workers = 0: chosen from the free cores and the work -----------------------------------
def _four_instances():
    """Four random instances of three features and binary labels: data for a task that is
    only counted, never trained."""
    return ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))


def test_auto_workers_counts_the_work_and_caps_by_cores_shards_and_memory():
    from fimo.further.threads import WORKERS_WORTH_FLOP, auto_workers, further_flop, instance_flop

    # every instance of every batch of every run, by hand
    assert further_flop([5, 5, 3], 7, 32, 6000.0) == 13 * 7 * 32 * 6000
    # a step per instance: 3 forward passes; 2 per multiply-add; a convolution at every position
    data = ArrayDataset(torch.randn(4, 1, 6, 6), torch.randint(0, 2, (4,)))
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, bias=False), torch.nn.Flatten(), torch.nn.Linear(32, 2, bias=False)
    )
    assert instance_flop(Task(conv, data, data)) == 3 * 2 * (2 * 9 * 16 + 32 * 2)
    assert instance_flop(Task(conv, data, data)) > 6 * sum(p.numel() for p in conv.parameters())

    # a forward pass the counter cannot follow: 6 per parameter instead
    uncountable = Task(torch.nn.Linear(3, 2), _four_instances(), _four_instances())

    def fails(inputs):
        raise RuntimeError("not under a FLOP counter")

    uncountable.forward = fails
    assert instance_flop(uncountable) == 6 * (3 * 2 + 2)
    long, short = 2 * WORKERS_WORTH_FLOP, WORKERS_WORTH_FLOP / 2
    assert auto_workers(4, 10, short) == 1
    assert [auto_workers(c, 10, long) for c in (1, 2, 4)] == [1, 2, 4]
    assert auto_workers(4, 3, long) == 3  # no idle worker
    assert auto_workers(4, 10, long, bytes_per_worker=100, bytes_free=250) == 2
    assert auto_workers(4, 10, long, bytes_per_worker=100, bytes_free=50) == 1


@pytest.mark.parametrize(("threshold", "expected"), [(None, 1), (0.0, 2)])
def test_a_run_left_to_choose_starts_workers_only_for_long_work(
    tmp_path, monkeypatch, threshold, expected
):
    """TINY is seconds of work: in this process. With the threshold at 0 it counts as long:
    one worker per free core (two, with the cores made free here), recorded in the manifest.
    (The executor is replaced by one computing here: that workers give the same numbers is
    the test above.)"""
    import fimo.experiments.pipeline as pipeline
    import fimo.further.threads as further_threads
    from fimo.further.runner import make_executor
    from fimo.threads import ThreadChoice

    if threshold is not None:
        monkeypatch.setattr(further_threads, "WORKERS_WORTH_FLOP", threshold)
    asked = []

    def in_process(name, workers, address):  # the count asked for; computed here, cheaply
        asked.append(workers)
        return make_executor(name, 1, address)

    monkeypatch.setattr(pipeline, "make_executor", in_process)
    monkeypatch.setattr(
        pipeline, "choose_threads", lambda setting: ThreadChoice(2, "load", 2, 0.0, "test")
    )
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(TINY))
    out = tmp_path / "run"
    run(with_overrides(load_config(config), workers=None), out, quiet=True)
    assert load_config(config).run.workers == 0  # the default leaves it to fimo
    assert asked == [expected]
    record = json.loads((out / "manifest.json").read_text())["gold_standard"]
    assert (record["workers"], record["workers_chosen_by"]) == (expected, "free cores and work")
