"""How many torch threads final training and the methods compute on: all usable cores when
the machine is idle, fewer (down to one) when other processes hold cores, unless the user chose.

torch's intra-op threads wait for one another at every operation. When another process holds
a core, the thread that shares it loses its time slice and the others wait for it: issue 17
measured ``fimo run adult``'s final training at 267 s instead of 30 s on 2 threads beside one
busy process (docs/benchmarks.md, *Threads under load*). One thread per free core avoids it;
a thread too few costs at most the parallel speed-up (1.5× on 2 cores), a thread too many can
cost ten times.

The choice is made once, when a run (or ``fimo attribute``) starts, from the one-minute load
average less what this process itself may have added to it; it is recorded in the run's
manifest. Further training does not use it: it computes every shard on one thread
(:mod:`fimo.further.threads`), because its results must not depend on the thread count bit
for bit. Final training does not either: unless the user chose a count it trains on one
thread (:func:`final_training_threads`), because a hundred epochs carry a rounding
difference into the weights, and a final model trained again (after its file was damaged)
must come out bit for bit the same for the gold standard to be reused. The methods' results
depend on the chosen count only by float rounding.

An explicit count wins: ``run.threads`` in the configuration (``--threads``), else the
environment variable ``FIMO_THREADS``, else ``OMP_NUM_THREADS`` (torch's own).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from fimo.errors import InputError
from fimo.further.threads import available_cores, torch_threads

#: the environment variable that fixes the thread count (a whole number ≥ 1)
ENV_VARIABLE = "FIMO_THREADS"


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

    >>> ThreadChoice(2, "load", 2, 0.3).threads
    2
    """

    threads: int
    #: "load", "run.threads", "FIMO_THREADS", "OMP_NUM_THREADS" or "final training: one thread"
    chosen_by: str
    cores: int
    load_of_others: float  # the one-minute load average less this process's own share

    def as_dict(self) -> dict:
        """The record for the manifest.

        >>> ThreadChoice(1, "FIMO_THREADS", 2, 0.3).as_dict()
        {'threads': 1, 'chosen_by': 'FIMO_THREADS', 'cores': 2, 'load_of_others': 0.3}
        """
        return asdict(self)

    def describe(self) -> str:
        """One line for the console.

        >>> ThreadChoice(1, "load", 2, 3.7).describe()
        'torch threads: 1 of 2 cores (other processes keep 3.7 busy; set FIMO_THREADS to choose)'
        """
        if self.chosen_by.startswith("final training"):
            return f"final training: {self.threads} torch thread (the same weights under any load)"
        if self.chosen_by != "load":
            return f"torch threads: {self.threads} of {self.cores} cores ({self.chosen_by})"
        return (
            f"torch threads: {self.threads} of {self.cores} cores (other processes keep "
            f"{self.load_of_others:.1f} busy; set {ENV_VARIABLE} to choose)"
        )


def choose_threads(setting: int = 0) -> ThreadChoice:
    """The thread count for this machine as it is now (:func:`threads_for`), or the user's
    (:func:`chosen_threads`: ``setting``, i.e. ``run.threads``, then the environment).

    >>> choose_threads(1)
    ThreadChoice(threads=1, chosen_by='run.threads', ...)
    >>> choose_threads().threads >= 1
    True
    """
    cores, chosen = available_cores(), chosen_threads(setting)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this system (Windows)
        load = 0.0
    others = max(0.0, load - own_load(time.process_time(), torch.get_num_threads()))
    count, by = chosen or (None, "load")
    return ThreadChoice(threads_for(cores, others, count), by, cores, round(others, 2))


def final_training_threads(choice: ThreadChoice) -> ThreadChoice:
    """The count final training uses: the user's when chosen, else one thread whatever the
    load (the same weights on every run of a recipe on a machine; no collapse under load).

    >>> final_training_threads(ThreadChoice(2, "load", 2, 0.0)).threads
    1
    >>> final_training_threads(ThreadChoice(2, "FIMO_THREADS", 2, 0.0)).threads
    2
    """
    if choice.chosen_by != "load":
        return choice
    return ThreadChoice(1, "final training: one thread", choice.cores, choice.load_of_others)


@contextlib.contextmanager
def applied(choice: ThreadChoice, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """torch computes on ``choice.threads`` inside the block and on its former count after;
    ``say`` gets :meth:`ThreadChoice.describe` when the count differs from torch's.

    >>> before = torch.get_num_threads()
    >>> with applied(ThreadChoice(before + 1, "run.threads", 2, 0.0), say=print):
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
