"""Faults for real: a run killed with SIGKILL resumes to the same numbers; a second run on the
same directory stops at once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fimo.errors import InputError
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import run, run_lock
from fimo.io import checksum_path, read_npz, sha256_file

CONFIG = {
    "name": "faults",
    "data": {"dataset": "adult", "n_test": 8},
    "training": {"epochs": 1},
    "further": {"seeds": 3, "left_out": 4, "left_out_per_shard": 2, "epochs": 1,
                "batch_size": 4096, "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
}  # fmt: skip


def fimo_run(config_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fimo.cli", "run", str(config_path), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def faults_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "faults.toml"
    path.write_text(tomli_w.dumps(CONFIG))
    return path


@pytest.fixture(scope="module")
def faults_reference(faults_config):
    """One run of CONFIG never stopped, shared by both kills (they only read it)."""
    return run(load_config(faults_config), faults_config.parent / "reference", quiet=True)


@pytest.mark.parametrize("kill_after_shards", [0, 2])
def test_sigkill_then_restart_gives_the_same_numbers(
    tmp_path, faults_config, faults_reference, kill_after_shards
):
    config_path = faults_config
    out = tmp_path / "killed"
    shards = out / "further" / "shards"
    proc = fimo_run(config_path, out)
    if kill_after_shards == 0:  # during final training or the first shard
        assert wait_for(lambda: (out / "config.toml").exists())
    else:
        assert wait_for(lambda: len(list(shards.glob("*.npz"))) >= kill_after_shards)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "further" / "gold.npz").exists()
    finished = len(list(shards.glob("*.npz"))) if shards.exists() else 0

    again = fimo_run(config_path, out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    gold, ref = (
        read_npz(out / "further/gold.npz"),
        read_npz(faults_reference.out / "further/gold.npz"),
    )
    for key in ("loss_full", "loss_without", "steps", "left_out", "test", "seeds"):
        np.testing.assert_array_equal(gold[key], ref[key])
    scores = read_npz(out / "scores/grad_dot.npz")["scores"]
    np.testing.assert_array_equal(scores, faults_reference.scores["grad_dot"].values)
    assert len(list(shards.glob("*.npz"))) == 3 * 2
    assert finished <= 6
    # every shard on disk is whole: its bytes match the checksum written after it
    for path in shards.glob("*.npz"):
        assert checksum_path(path).read_text().split()[0] == sha256_file(path)


def test_second_run_on_the_same_directory_stops_at_once(tmp_path):
    out = tmp_path / "busy"
    with run_lock(out):
        start = time.monotonic()
        with pytest.raises(InputError, match=f"pid {os.getpid()}.*another --out"):
            run(load_config("adult"), out, quiet=True)
        assert time.monotonic() - start < 5
    # the lock is released with its holder: a later run may take it
    with run_lock(out):
        pass


def test_lock_of_a_killed_process_does_not_stick(tmp_path):
    out = tmp_path / "dead"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from fimo.experiments.pipeline import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match="in use"), run_lock(out):
        pass
    holder.kill()
    holder.wait()
    with run_lock(out):
        pass
