"""How fast the ``fimo`` command answers when it has no heavy work to do.

Times, in fresh processes, ``fimo --help``, ``fimo presets``, a refused argument
(``fimo run --seeds two``), a refused setting (``fimo run diabetes --seeds 0``), a refused
second run on a locked directory and ``fimo verify`` of a directory that is not a run, beside
``python -c "import torch"`` (what each of them paid before torch was imported only by the
commands that need it). Prints, per command, the least of ``--repeats`` wall-clock times and
the least CPU time (user + system, which a loaded machine inflates less), and the machine's
load (``uptime``) before and after. The goal (issue 16): ``fimo --help``, ``fimo presets``
and a refusal under 1.5 s on an idle machine.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], expected: int) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one run of ``argv`` in a fresh process (its exit
    code must be ``expected``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expected:
        raise SystemExit(f"{argv}: exit {done.returncode}, expected {expected}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def cases(locked: Path, empty: Path) -> list[tuple[str, list[str], int]]:
    """``(label, argv, expected exit code)`` of each command timed."""
    fimo = [sys.executable, "-m", "fimo.cli"]
    return [
        ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
        ('python -c "import numpy"', [sys.executable, "-c", "import numpy"], 0),
        ("fimo --help", [*fimo, "--help"], 0),
        ("fimo presets", [*fimo, "presets"], 0),
        ("fimo run --seeds two (refused)", [*fimo, "run", "--seeds", "two"], 2),
        ("fimo run --seeds 0 (refused)", [*fimo, "run", "diabetes", "--seeds", "0"], 2),
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
                runs = [timed(argv, expected) for _ in range(args.repeats)]
                wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
                print(
                    f"{label:<34} {wall:6.2f} s wall {cpu:6.2f} s CPU  (least of {args.repeats})",
                    flush=True,
                )
        finally:
            holder.kill()
            holder.wait()
    print("load after: ", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
