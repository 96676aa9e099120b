"""Ctrl-C and termination: an interrupted run exits 130 with one line (so ``fimo run … && next``
stops), and worker processes end when their driver is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

LONG = {
    "name": "long",
    "data": {"dataset": "diabetes", "n_test": 8},
    "training": {"epochs": 1},
    "further": {"seeds": 400, "left_out": 4, "epochs": 2, "batch_size": 64, "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
}


def as_at_a_terminal() -> None:
    """In the child, before fimo starts: SIGINT delivered and not ignored, as for a command at
    a terminal (a shell's background job, such as a CI runner started with ``&``, ignores it,
    and its children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "long.toml"
    config.write_text(tomli_w.dumps(LONG))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fimo.cli", "run", str(config), "--out", str(out), "--quiet",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    return proc, out


def wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_during_further_training_exits_130_with_one_line(tmp_path):
    proc, out = start(tmp_path)
    wait_for(lambda: (out / "further" / "fingerprint.json").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.3)  # inside further training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines == ["interrupted; rerun the same command to continue (finished work is kept)"]
    assert not (out / "further" / "gold.npz").exists()  # it was stopped before the end


@pytest.mark.xfail(
    strict=False,
    reason="issue 16, open: one of two pool workers, idle on the call queue, outlived its "
    "killed driver in 4 of 4 tries on 2026-12-01 (load 7-20) although its parent-watch thread "
    "and PR_SET_PDEATHSIG were set; a one-worker pool ends as it should",
)
def test_workers_end_when_their_driver_is_killed(tmp_path):
    proc, out = start(tmp_path, "--workers", "2")
    # the pool's workers import torch and load the task: wait until both compute shards
    wait_for(lambda: proc.poll() is not None or len(list(out.glob("further/shards/*.npz"))) >= 2)
    assert proc.poll() is None, proc.stderr.read()
    workers = children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    start_time = time.monotonic()
    while any(alive(w) for w in workers) and time.monotonic() - start_time < 10:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their driver"
