"""`kill -9` while scores are written and while the report is written: the restarted run ends
with exactly the numbers, scores and metrics of a run that was never stopped.

The killed process stops itself (SIGSTOP) just before it renames a named file into place
(``FIMO_TEST_STOP_AT``, a hook for tests in ``fimo.io.atomic_write``), so the kill lands at
that exact moment: the temporary file is written, the final name not yet taken. To stay fast,
the killed runs continue a copy of the finished reference run whose scores, metrics and report
were removed (kills during final and further training: tests/test_faults.py).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fimo.io import STOP_AT_ENV, checksum_matches, read_npz


def fimo_run(config_path: Path, out: Path, stop_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(STOP_AT_ENV, None)
    if stop_at is not None:
        env[STOP_AT_ENV] = stop_at
    return subprocess.Popen(
        [sys.executable, "-m", "fimo.cli", "run", str(config_path), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Wait until ``proc`` has stopped itself (state T in /proc), failing if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}: {proc.stderr.read()}"
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "T":
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never reached the stop point")


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def kill_at(config_path: Path, out: Path, half_done: str) -> str:
    """Start a run that stops just before ``half_done`` takes its final name, check that moment,
    kill it with SIGKILL and return what it printed to stderr."""
    proc = fimo_run(config_path, out, f"*/{half_done}")
    wait_until_stopped(proc)
    name = Path(half_done).name
    assert list(out.glob(f"{Path(half_done).parent}/.{name}.*.tmp"))  # written in full...
    assert not (out / half_done).exists()  # ...but not renamed into place
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return " ".join(err.split())


def test_kill_9_again_and_again_then_a_restart_gives_the_same_results(
    config_path, reference, tmp_path
):
    out = tmp_path / "killed"
    shutil.copytree(reference, out)
    for name in ("scores", "metrics"):
        shutil.rmtree(out / name)
    (out / "report.html").unlink()

    # 1. between a file's rename and its checksum's: grad_dot.npz is in place, unchecked
    kill_at(config_path, out, "scores/grad_dot.npz.sha256")
    assert (out / "scores/grad_dot.npz").exists()
    assert checksum_matches(out / "scores/grad_dot.npz") is None
    # 2. while scoring: an unchecked file is recomputed, never trusted; grad_cos is written
    #    but not yet in place
    err = kill_at(config_path, out, "scores/grad_cos.npz")
    assert f"{out / 'scores/grad_dot.npz'} is damaged or incomplete" in err
    assert checksum_matches(out / "scores/grad_dot.npz") is True
    # 3. while writing the report: the metrics tables are written, report.html is not
    kill_at(config_path, out, "report.html")
    assert (out / "metrics/by_checkpoint.csv").exists()

    again = fimo_run(config_path, out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    got, want = files(out), files(reference)
    assert not [n for n in got if n.endswith(".tmp")]  # the killed runs' leftovers are gone
    assert sorted(got) == sorted(want)
    for name in ("scores/grad_dot.npz", "scores/grad_cos.npz"):
        a, b = read_npz(out / name), read_npz(reference / name)
        for key in ("scores", "test", "train"):
            np.testing.assert_array_equal(a[key], b[key])
        assert checksum_matches(out / name) is True
    gold, ref = read_npz(out / "further/gold.npz"), read_npz(reference / "further/gold.npz")
    for key in ("loss_full", "loss_without", "steps", "left_out", "test", "seeds"):
        np.testing.assert_array_equal(gold[key], ref[key])
    metrics = sorted(n for n in want if n.startswith("metrics/"))
    assert "metrics/by_checkpoint.csv" in metrics
    for name in metrics:
        assert got[name] == want[name], name  # byte for byte, checksums included
