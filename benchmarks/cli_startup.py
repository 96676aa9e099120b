"""How fast the ``fimo`` command answers when it has no heavy work to do.

Times, in fresh processes, ``fimo --help``, ``fimo presets``, a refused argument
(``fimo run --seeds two``), a refused second run on a locked directory and ``fimo verify`` of a
directory that is not a run, beside ``python -c "import torch"`` (what each of them paid
before torch was imported only by the commands that need it). Prints the best of ``--repeats``
wall-clock times per command, and the machine's load (``uptime``) before and after.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall_time(argv: list[str], expected: int) -> float:
    """Seconds for one run of ``argv`` in a fresh process (its exit code must be ``expected``)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{argv}: exit {done.returncode}, expected {expected}\n{done.stderr}")
    return elapsed


def cases(locked: Path, empty: Path) -> list[tuple[str, list[str], int]]:
    """``(label, argv, expected exit code)`` of each command timed."""
    fimo = [sys.executable, "-m", "fimo.cli"]
    return [
        ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
        ('python -c "import numpy"', [sys.executable, "-c", "import numpy"], 0),
        ("fimo --help", [*fimo, "--help"], 0),
        ("fimo presets", [*fimo, "presets"], 0),
        ("fimo run --seeds two (refused)", [*fimo, "run", "--seeds", "two"], 2),
        ("fimo run on a locked directory", [*fimo, "run", "diabetes", "--out", str(locked)], 2),
        ("fimo verify (not a run)", [*fimo, "verify", str(empty)], 2),
    ]


def hold_lock(folder: Path) -> subprocess.Popen:
    """A process that holds the run lock of ``folder`` until it is ended."""
    code = (
        "import sys, time\n"
        "from fimo.experiments.rundir import run_lock\n"
        "with run_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(3600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    return holder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (best kept)")
    args = parser.parse_args()
    print("load before:", os.popen("uptime").read().strip())
    with tempfile.TemporaryDirectory() as folder:
        locked, empty = Path(folder) / "locked", Path(folder) / "empty"
        empty.mkdir()
        holder = hold_lock(locked)
        try:
            for label, argv, expected in cases(locked, empty):
                best = min(wall_time(argv, expected) for _ in range(args.repeats))
                print(f"{label:<34} {best:6.2f} s  (best of {args.repeats})", flush=True)
        finally:
            holder.kill()
            holder.wait()
    print("load after: ", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
