"""Run times that survive resumes: each shard, the final model and each method's scores
record what computing them took, and the manifest adds them up over every invocation."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import fimo.further.runner as runner
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import run
from fimo.further.engine import SeedResult
from fimo.further.store import Shard, ShardStore, assemble
from fimo.io import read_npz

TINY = {
    "name": "tiny",
    "data": {"dataset": "diabetes", "n_test": 8},
    "training": {"epochs": 1},
    "further": {"seeds": 2, "left_out": 4, "epochs": 1, "batch_size": 128, "lr": 0.05,
                "left_out_per_shard": 2},
    "methods": {"names": ["grad_dot", "grad_cos"], "train": "left_out"},
}  # fmt: skip
#: seconds each shard sleeps besides its work, so that its time is well above the clock's grain
NAP = 0.3
OLD = Path(__file__).parent / "data" / "run-19e9dbc"


@pytest.fixture
def napping_shards(monkeypatch):
    """Every shard computed naps NAP seconds; the shard whose number is in ``.stop_at``
    raises KeyboardInterrupt instead (an interrupted run). ``.computed`` counts them."""
    original = runner.compute_shard
    state = type("State", (), {"computed": 0, "stop_at": None})()

    def napping(*args, **kwargs):
        if state.computed == state.stop_at:
            state.stop_at = None
            raise KeyboardInterrupt
        state.computed += 1
        time.sleep(NAP)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "compute_shard", napping)
    return state


def shard_seconds(out: Path) -> list[tuple[float, float]]:
    """(wall, cpu) as each shard file of the run records them."""
    found = []
    for path in sorted((out / "further/shards").glob("*.npz")):
        data = read_npz(path)
        found.append((float(data["wall_seconds"]), float(data["cpu_seconds"])))
    return found


def test_an_interrupted_run_reports_the_work_of_every_shard(napping_shards, tmp_path, monkeypatch):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(tomli_w.dumps(TINY))
    out = tmp_path / "run"
    napping_shards.stop_at = 3  # 2 seeds x 2 chunks: stopped before the last shard
    with pytest.raises(KeyboardInterrupt):
        run(load_config(config_file), out, quiet=True)
    assert len(shard_seconds(out)) == 3
    result = run(load_config(config_file), out, quiet=True)  # the resume: one shard left
    assert napping_shards.computed == 4
    manifest = json.loads((out / "manifest.json").read_text())
    work = manifest["work_seconds"]["further_training"]
    recorded = shard_seconds(out)
    assert len(recorded) == 4 and all(wall >= NAP for wall, _ in recorded)
    assert work["shards"] == 4 and work["shards_without_time"] == 0
    assert work["wall"] == pytest.approx(sum(w for w, _ in recorded), abs=1e-3)
    assert work["cpu"] == pytest.approx(sum(c for _, c in recorded), abs=1e-3)
    # this invocation computed one shard of four: the work counts all four
    assert work["wall"] > manifest["timings_seconds"]["further_training"]
    last = manifest["timings_seconds"]["further_training"]
    assert result.timings["further_training"] == pytest.approx(last, abs=1e-3)
    # the final model and the methods recorded theirs with them
    trained = json.loads((out / "model/seconds.json").read_text())
    assert manifest["work_seconds"]["final_training"] == trained and trained["wall"] > 0
    methods = manifest["work_seconds"]["methods"]
    for name, sc in result.scores.items():
        assert methods["by_method"][name] == {
            "wall": sc.settings["seconds"],
            "cpu": sc.settings["cpu_seconds"],
        }
    assert methods["wall"] == pytest.approx(
        sum(sc.settings["seconds"] for sc in result.scores.values())
    )
    # started again when finished: gold.npz is read whole, no shard's arrays are, and the
    # shards' work is still counted
    loaded = []
    original_load = ShardStore.load
    monkeypatch.setattr(
        ShardStore, "load", lambda self, sh: loaded.append(sh) or original_load(self, sh)
    )
    again = run(load_config(config_file), out, quiet=True)
    assert napping_shards.computed == 4 and loaded == []
    np.testing.assert_array_equal(again.gold.loss_without, result.gold.loss_without)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["work_seconds"]["further_training"] == work


def test_shards_without_a_time_load_and_count_as_unknown(tmp_path):
    store = ShardStore(tmp_path, "abc", {})
    rng = np.random.default_rng(0)
    made = {
        Shard(0, 0, 2): SeedResult(rng.normal(size=(2, 3)), rng.normal(size=(2, 3, 2)),
                                   np.array([5, 10]), np.array([1.0, 2.0])),
        Shard(0, 2, 4): SeedResult(rng.normal(size=(2, 3)), rng.normal(size=(2, 3, 2)),
                                   np.array([5, 10]), np.array([1.0, 2.0]),
                                   seconds={"wall": 3.0, "cpu": 2.5}),
    }  # fmt: skip
    for shard, result in made.items():
        store.save(shard, result)
    old = read_npz(store.path(Shard(0, 0, 2)))
    assert "wall_seconds" not in old  # as shards were written before they recorded a time
    fresh = ShardStore(tmp_path, "abc", {})
    loaded = {shard: fresh.load(shard) for shard in made}
    assert loaded[Shard(0, 0, 2)].seconds is None
    assert loaded[Shard(0, 2, 4)].seconds == {"wall": 3.0, "cpu": 2.5}
    gold = assemble(loaded, [0], np.arange(4), np.arange(3), {})
    for shard, result in made.items():  # the arrays are those written, bit for bit
        np.testing.assert_array_equal(
            gold.loss_without[0, ..., shard.start : shard.stop], result.loss_without
        )
    assert fresh.work_seconds(list(made)) == {
        "wall": 3.0, "cpu": 2.5, "shards": 2, "shards_without_time": 1,
    }  # fmt: skip


def test_a_run_made_before_times_were_recorded_reports_them_unknown(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(OLD, out)
    run(load_config(out / "config.toml"), out, quiet=True)
    work = json.loads((out / "manifest.json").read_text())["work_seconds"]
    assert work["final_training"] is None
    assert work["further_training"] == {
        "wall": 0.0, "cpu": 0.0, "shards": 2, "shards_without_time": 2,
    }  # fmt: skip
    methods = work["methods"]
    assert methods["methods"] == 2 and methods["methods_without_cpu_time"] == 2
    assert work["total"]["cpu"] == 0.0
