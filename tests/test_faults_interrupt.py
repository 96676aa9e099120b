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


def pool_workers(pid: int) -> list[int]:
    """The spawned worker processes among the children of ``pid`` (multiprocessing starts
    each with ``--multiprocessing-fork``; the resource tracker it also starts is left out)."""
    found = []
    for child in children(pid):
        try:
            if b"--multiprocessing-fork" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def kill_driver_then_wait(proc: subprocess.Popen, sig: int, timeout: float = 120.0) -> list[int]:
    """Send the driver ``sig``; the ids of its child processes still alive ``timeout`` seconds
    after it ended (polled: usually none after a fraction of a second). Kills those before
    returning."""
    watched = children(proc.pid)
    proc.send_signal(sig)
    proc.wait()
    deadline = time.monotonic() + timeout
    while any(alive(c) for c in watched) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [c for c in watched if alive(c)]
    for c in left:  # clean up before failing
        os.kill(c, signal.SIGKILL)
    return left


@pytest.mark.parametrize(
    ("moment", "sig"),
    [("starting", signal.SIGKILL), ("computing", signal.SIGKILL), ("computing", signal.SIGTERM)],
)
def test_workers_end_when_their_driver_is_killed(tmp_path, moment, sig):
    """Killed (``kill -9``, or SIGTERM) while its two workers start (importing torch: the
    driver's death then comes before they could watch it) or while they compute shards, the
    driver takes its workers with it."""
    proc, out = start(tmp_path, "--workers", "2")
    if moment == "starting":
        wait_for(lambda: proc.poll() is not None or len(pool_workers(proc.pid)) >= 2, 300)
    else:
        shards = out / "further" / "shards"
        wait_for(lambda: proc.poll() is not None or len(list(shards.glob("*.npz"))) >= 2, 300)
    assert proc.poll() is None, proc.stderr.read()
    assert len(pool_workers(proc.pid)) == 2
    left = kill_driver_then_wait(proc, sig)
    assert not left, f"processes {left} outlived their driver"
