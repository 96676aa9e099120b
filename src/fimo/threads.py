"""How many torch threads final training and the methods compute on: all usable cores when
the machine is idle, fewer (down to one) when other processes hold cores, unless the user chose.

torch's intra-op threads wait for one another at every operation. When another process holds
a core, the thread that shares it loses its time slice and the others wait for it: issue 17
measured ``fimo run adult``'s final training at 267 s instead of 30 s on 2 threads beside one
busy process (docs/benchmarks.md, *Threads under load*). One thread per free core avoids it;
a thread too few costs at most the parallel speed-up (1.5× on 2 cores), a thread too many can
cost ten times.

The choice is made once, when a run (or ``fimo attribute``) starts, from what runs at that
moment: on Linux, the other processes' runnable threads in ``/proc``, sampled over 0.2 s and
weighted by the share of a core the scheduler gives each against one of ours
(:func:`runnable_now`): a job at nice 19 in our session leaves us nearly the whole core, one
started from another session (its own autogroup) or at nice 0 does not. Elsewhere (macOS,
Windows) it is the one-minute load average less what this process itself may have added to
it, which lags a minute behind and counts every job alike. The choice and how it was measured
are recorded in the run's manifest. Further training does not use it: it computes every shard
on one thread (:mod:`fimo.further.threads`), because its results must not depend on the
thread count bit for bit. Final training does not either: unless the user chose a count it
trains on one thread (:func:`final_training_threads`), because a hundred epochs carry a
rounding difference into the weights, and a final model trained again (after its file was
damaged) must come out bit for bit the same for the gold standard to be reused. The methods'
results depend on the chosen count only by float rounding.

An explicit count wins: ``run.threads`` in the configuration (``--threads``), else the
environment variable ``FIMO_THREADS``, else ``OMP_NUM_THREADS`` (torch's own).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from fimo.errors import InputError
from fimo.further.threads import available_cores, torch_threads

#: the environment variable that fixes the thread count (a whole number ≥ 1)
ENV_VARIABLE = "FIMO_THREADS"
#: Linux's process table; without it (macOS, Windows) the load average is read instead
PROC = Path("/proc")
#: the runnable-now figure is the mean of this many passes over the process table, spread
#: over WINDOW seconds: a busy process is runnable in nearly every pass, a short command in few
SNAPSHOTS = 5
WINDOW = 0.2


def threads_for(cores: int, load: float, chosen: int | None = None) -> int:
    """The torch thread count for ``cores`` usable cores when other processes keep ``load``
    of them busy (their load average): one thread per core they leave free, a core counting
    as free when they use less than half of it; at least one. ``chosen`` (the user's count)
    wins.

    >>> [threads_for(2, load) for load in (0.0, 0.4, 0.6, 1.0, 3.7)]
    [2, 2, 1, 1, 1]
    >>> threads_for(8, 2.2), threads_for(8, 0.1), threads_for(2, 3.7, chosen=2)
    (6, 8, 2)
    """
    if chosen is not None:
        return chosen
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def own_load(cpu_seconds: float, threads: int) -> float:
    """An upper bound on what this process added to the one-minute load average: a process
    that used ``cpu_seconds`` of CPU adds at most that over 60 s, and never more than its
    ``threads`` running at once.

    >>> own_load(3.0, 2), own_load(600.0, 2)
    (0.05, 2)
    """
    return min(cpu_seconds / 60.0, threads)


def cfs_weight(nice: float) -> float:
    """The weight Linux's scheduler gives a thread at ``nice``, relative to nice 0: a factor
    1.25 per step of nice. The kernel's table (``sched_prio_to_weight``) holds 1024 times
    these values, rounded to integers (15 for nice 19, 88,761 for -20): the approximation is
    within 2 % of every entry, and only ratios of weights are used here.

    >>> round(1024 * cfs_weight(19)), round(1024 * cfs_weight(10)), round(1024 * cfs_weight(-5))
    (15, 110, 3125)
    """
    return 1.25**-nice


def cores_taken(others: Iterable[float], ours: float = 0.0) -> float:
    """The cores that runnable threads at nice values ``others`` take from threads of ours
    at nice ``ours``, in the load average's unit (an equal thread counts one busy core), for
    :func:`threads_for`.

    A thread of weight w (:func:`cfs_weight`) that shares a core with one of ours (weight u)
    keeps w / (w + u) of it. Beside an equal thread that is one half, and one half is already
    too much: torch's threads wait for the slowest at every operation, and the one that shares
    a core runs in slices, which collapsed rather than halved (issue 17: 9× slower). So each
    thread counts its share relative to an equal thread's half, 2 w / (w + u), and at most 1
    (a thread holds one core whatever its priority, and leaving it that core costs no more).
    Equal threads count 1 each, as in the load average (beside one busy process 2 cores give
    1 thread, as before); a thread at nice 19 beside ours at 0 keeps 1.4 % of a core and
    counts 0.03 (2 cores give 2 threads); nice 5 counts 0.49, the last step below the half
    at which :func:`threads_for` gives a core up.

    >>> cores_taken([0]), cores_taken([0, 0, 0]), cores_taken([-10]), cores_taken([19], ours=19)
    (1.0, 3.0, 1.0, 1.0)
    >>> [round(cores_taken([nice]), 3) for nice in (19, 10, 5, 3)]
    [0.028, 0.194, 0.494, 0.677]
    >>> threads_for(2, cores_taken([0])), threads_for(2, cores_taken([19, 19, 19]))
    (1, 2)
    """
    u = cfs_weight(ours)
    return sum(min(1.0, 2 * cfs_weight(n) / (cfs_weight(n) + u)) for n in others)


class Runnable(NamedTuple):
    """A runnable thread: its nice, the scheduling group it competes in (an autogroup, a CPU
    cgroup, or the thread alone) and that group's nice.

    >>> Runnable(19, "/autogroup-7", 0).group_nice
    0
    """

    nice: float
    group: str
    group_nice: float


def nices_as_met(others: Sequence[Runnable], ours: Runnable) -> list[float]:
    """The nice at which each of ``others`` competes with a thread of ours (``ours``), for
    :func:`cores_taken`.

    Linux shares a core among scheduling groups first, by the groups' weights, and within a
    group among its threads by their nice. Autogroups are such groups (one per terminal
    session, when ``/proc/sys/kernel/sched_autogroup_enabled`` is 1), and so are CPU cgroups
    (containers, systemd units). A thread in our group competes at its own nice; a thread in
    another group with the group's weight, shared among the group's runnable threads by their
    nice, against our group's weight. So a job at nice 19 started from another session keeps
    its autogroup's nice-0 weight against us and counts a full core: this machine measured one
    taking as much CPU as a nice-0 loop beside it, and a nice-19 loop in the same session 2 %
    of that.

    >>> ours = Runnable(0, "session 1", 0)
    >>> nices_as_met([Runnable(19, "session 1", 0), Runnable(19, "session 2", 0)], ours)
    [19, 0.0]
    >>> [round(nice, 2) for nice in nices_as_met([Runnable(19, "session 2", 0)] * 3, ours)]
    [4.92, 4.92, 4.92]
    >>> nices_as_met([Runnable(0, "session 2", 10)], Runnable(19, "session 1", 0))
    [29.0]
    """
    shared = collections.Counter()
    for thread in others:
        shared[thread.group] += cfs_weight(thread.nice)
    met = []
    for thread in others:
        if thread.group == ours.group:
            met.append(thread.nice)
            continue
        group_weight = (
            cfs_weight(thread.group_nice) * cfs_weight(thread.nice) / shared[thread.group]
        )
        met.append(ours.nice - math.log(group_weight / cfs_weight(ours.group_nice), 1.25))
    return met


def runnable_now(snapshots: int = SNAPSHOTS, window: float = WINDOW) -> float:
    """The cores the other processes' runnable threads take from ours now (:func:`cores_taken`
    of :func:`nices_as_met`): the mean of ``snapshots`` passes over Linux's process table
    spread over ``window`` seconds. Threads the table does not show but the kernel counts as
    running (``/proc/loadavg``: other containers, other users' processes under ``hidepid``)
    count as nice 0, each in a group of its own. OSError without ``/proc`` (macOS, Windows).

    >>> 0.0 <= runnable_now(snapshots=2, window=0.01) < 10_000
    True
    """
    proc, groups = PROC, {}
    if not (proc / "loadavg").is_file():
        raise FileNotFoundError(f"{proc / 'loadavg'}: no Linux process table here")
    autogroups = _read(proc / "sys/kernel/sched_autogroup_enabled", "0").strip() == "1"
    nice = float(os.getpriority(os.PRIO_PROCESS, 0))
    ours = Runnable(nice, *(_group(proc / "self", autogroups) or ("this thread", nice)))
    figures = []
    for i in range(snapshots):
        if i:
            time.sleep(window / (snapshots - 1))
        others = _snapshot(proc, autogroups, groups)
        figures.append(cores_taken(nices_as_met(others, ours), ours.nice))
    return sum(figures) / len(figures)


def _snapshot(proc: Path, autogroups: bool, groups: dict) -> list[Runnable]:
    """The runnable threads of other processes in one pass over ``proc`` (``groups`` keeps
    each process's scheduling group for the next pass), and one nice-0 thread for each that
    ``/proc/loadavg`` counts as running beyond those the pass saw (this process's included)."""
    me, others, seen = str(os.getpid()), [], 0
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        for tid, nice in _runnable_threads(f"{proc}/{pid}/task"):
            seen += 1
            if pid == me:
                continue
            if pid not in groups:
                groups[pid] = _group(proc / pid, autogroups)
            group = groups[pid] or (f"thread {pid}/{tid}", nice)  # the root group: on its own
            others.append(Runnable(nice, *group))
    running = int(_read(proc / "loadavg").split()[3].split("/")[0])
    return others + [Runnable(0.0, f"unseen {i}", 0.0) for i in range(running - seen)]


def _runnable_threads(tasks: str) -> Iterator[tuple[str, float]]:
    """(thread id, nice) of each runnable thread in a process's ``tasks`` folder; none when
    the process ended or may not be read while we looked (a race or a permission, not an
    error). Paths are strings here: this runs for every thread on the machine."""
    try:
        tids = os.listdir(tasks)
    except OSError:
        return
    for tid in tids:
        try:
            fields = _read(f"{tasks}/{tid}/stat").rpartition(")")[2].split()
            state, nice = fields[0], float(fields[16])  # the name before ")" may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        if state == "R":
            yield tid, nice


def _group(process: Path, autogroups: bool) -> tuple[str, float] | None:
    """The scheduling group ``process`` competes in and its nice: its CPU cgroup when it is
    not the root one (at the default weight, a nice-0 thread's: other cgroups' weights are
    not read), else its autogroup when autogroups are on; None: the root group, where each
    thread competes on its own. A process that cannot be read counts as a group of its own
    at nice 0, like a thread the table does not show."""
    try:
        cgroup = _cpu_cgroup(_read(process / "cgroup"))
        if cgroup != "/":
            return f"cgroup {cgroup}", 0.0
        words = _read(process / "autogroup").split() if autogroups else []
        if len(words) == 3:  # "/autogroup-7 nice 0"
            return words[0], float(words[2])
    except (OSError, ValueError):
        return f"unread {process.name}", 0.0
    return None


def _cpu_cgroup(text: str) -> str:
    """The CPU cgroup's path in a ``/proc/<pid>/cgroup`` text: the version-1 line of the
    ``cpu`` controller, else the version-2 line (``0::``), else the root.

    >>> _cpu_cgroup("2:cpu,cpuacct:/docker/7\\n1:memory:/x\\n"), _cpu_cgroup("0::/user.slice\\n")
    ('/docker/7', '/user.slice')
    """
    unified = "/"
    for line in text.splitlines():
        number, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
        if number == "0" and not controllers:
            unified = path
    return unified


def _read(path: Path | str, missing: str | None = None) -> str:
    """The text of a small file under /proc; ``missing`` when given and the file is not there."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except FileNotFoundError:
        if missing is None:
            raise
        return missing


def load_average_now() -> float:
    """The one-minute load average less what this process may have added to it
    (:func:`own_load`), where there is no ``/proc``; 0 where there is no load average either
    (Windows).

    >>> load_average_now() >= 0.0
    True
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - own_load(time.process_time(), torch.get_num_threads()))


def others_now(snapshots: int = SNAPSHOTS) -> tuple[float, str]:
    """The cores other processes keep busy now and how that was measured: ``"runnable now"``
    (:func:`runnable_now`) where there is a ``/proc``, else ``"load average"``
    (:func:`load_average_now`).

    >>> others_now(snapshots=1)[1] in ("runnable now", "load average")
    True
    """
    try:
        return runnable_now(snapshots), "runnable now"
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows), or not Linux's
        return load_average_now(), "load average"


def chosen_threads(setting: int = 0, environ=None) -> tuple[int, str] | None:
    """The user's thread count and where it came from: ``setting`` (``run.threads``; 0:
    none), else the environment's ``FIMO_THREADS``, else ``OMP_NUM_THREADS`` (torch's own
    variable, when it is a whole number); None when none gives one.

    >>> chosen_threads(3, {"FIMO_THREADS": "1"}), chosen_threads(0, {"FIMO_THREADS": "1"})
    ((3, 'run.threads'), (1, 'FIMO_THREADS'))
    >>> chosen_threads(0, {"OMP_NUM_THREADS": "1"}), chosen_threads(0, {}) is None
    ((1, 'OMP_NUM_THREADS'), True)
    >>> chosen_threads(0, {"FIMO_THREADS": "two"})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: FIMO_THREADS: got 'two'; must be a whole number ≥ 1 (or unset: ...
    """
    if setting < 0:
        raise InputError(f"run.threads: got {setting}; must be ≥ 1 (or 0: chosen from the load)")
    if setting:
        return setting, "run.threads"
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_VARIABLE, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise InputError(
                f"{ENV_VARIABLE}: got {text!r}; must be a whole number ≥ 1 "
                "(or unset: fimo chooses from the cores and the load)"
            )
        return int(text), ENV_VARIABLE
    omp = environ.get("OMP_NUM_THREADS", "").strip()  # OpenMP's lists ("4,2") are not a count
    return (int(omp), "OMP_NUM_THREADS") if omp.isdigit() and int(omp) >= 1 else None


@dataclass(frozen=True)
class ThreadChoice:
    """The torch thread count chosen for final training and the methods, and what it was
    chosen from (the manifest's ``torch_threads``).

    >>> ThreadChoice(2, "load", 2, 0.3, "runnable now").threads
    2
    """

    threads: int
    #: "load", "run.threads", "FIMO_THREADS", "OMP_NUM_THREADS" or "final training: one thread"
    chosen_by: str
    cores: int
    #: the cores other processes kept busy when the choice was made (:func:`others_now`)
    load_of_others: float
    #: how that was measured: "runnable now" (Linux's /proc) or "load average"
    measured_by: str

    def as_dict(self) -> dict:
        """The record for the manifest.

        >>> ThreadChoice(1, "FIMO_THREADS", 2, 0.3, "runnable now").as_dict()
        {'threads': 1, 'chosen_by': 'FIMO_THREADS', 'cores': 2, 'load_of_others': 0.3,
         'measured_by': 'runnable now'}
        """
        return asdict(self)

    def describe(self) -> str:
        """One line for the console.

        >>> ThreadChoice(1, "load", 2, 3.7, "runnable now").describe()
        'torch threads: 1 of 2 cores (other processes keep 3.7 busy, runnable now; set
         FIMO_THREADS to choose)'
        """
        if self.chosen_by.startswith("final training"):
            return f"final training: {self.threads} torch thread (the same weights under any load)"
        if self.chosen_by != "load":
            return f"torch threads: {self.threads} of {self.cores} cores ({self.chosen_by})"
        return (
            f"torch threads: {self.threads} of {self.cores} cores (other processes keep "
            f"{self.load_of_others:.1f} busy, {self.measured_by}; set {ENV_VARIABLE} to choose)"
        )


def choose_threads(setting: int = 0) -> ThreadChoice:
    """The thread count for this machine as it is now (:func:`threads_for` of
    :func:`others_now`), or the user's (:func:`chosen_threads`: ``setting``, i.e.
    ``run.threads``, then the environment). With the user's count the others' load is only
    recorded, from one pass (no wait).

    >>> choose_threads(1)
    ThreadChoice(threads=1, chosen_by='run.threads', ...)
    >>> choose_threads().threads >= 1
    True
    """
    cores, chosen = available_cores(), chosen_threads(setting)
    others, measured_by = others_now(SNAPSHOTS if chosen is None else 1)
    count, by = chosen or (None, "load")
    return ThreadChoice(threads_for(cores, others, count), by, cores, round(others, 2), measured_by)


def final_training_threads(choice: ThreadChoice) -> ThreadChoice:
    """The count final training uses: the user's when chosen, else one thread whatever the
    load (the same weights on every run of a recipe on a machine; no collapse under load).

    >>> final_training_threads(ThreadChoice(2, "load", 2, 0.0, "runnable now")).threads
    1
    >>> final_training_threads(ThreadChoice(2, "FIMO_THREADS", 2, 0.0, "runnable now")).threads
    2
    """
    if choice.chosen_by != "load":
        return choice
    return replace(choice, threads=1, chosen_by="final training: one thread")


@contextlib.contextmanager
def applied(choice: ThreadChoice, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """torch computes on ``choice.threads`` inside the block and on its former count after;
    ``say`` gets :meth:`ThreadChoice.describe` when the count differs from torch's.

    >>> before = torch.get_num_threads()
    >>> with applied(ThreadChoice(before + 1, "run.threads", 2, 0.0, ""), say=print):
    ...     torch.get_num_threads() == before + 1
    torch threads: ... (run.threads)
    True
    >>> torch.get_num_threads() == before
    True
    """
    if say is not None and choice.threads != torch.get_num_threads():
        say(choice.describe())
    with torch_threads(choice.threads):
        yield
