"""How many CPU threads torch uses for further training: one per worker process, always.

Two reasons, measured in docs/benchmarks.md (*Threads and a shared machine*):

- **Results depend on it.** torch may split a reduction or a large matrix product over its
  intra-op threads, and the parts are then added in another order, so the last bits of a
  gold standard can depend on the thread count. fimo resumes a run bit for bit; so the count
  is a constant, never taken from the machine's load or the worker count, and a shard comes
  out the same from ``--workers 1`` and ``--workers 2``.
- **A shared machine.** torch's threads wait for each other at every operation; when other
  processes hold the cores, a waiting thread loses its time slice and two threads ran many
  times slower than one (issue 17: 11× slower than idle with two threads, 1× with one).
  Parallelism comes instead from worker processes, which do not wait for each other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: torch's intra-op threads in every process that computes shards (in this process too).
THREADS_PER_WORKER = 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch computes on ``threads`` intra-op threads inside the block; the count it had is
    restored afterwards.

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system reports one).

    >>> available_cores() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this system (macOS, Windows)
        return max(1, os.cpu_count() or 1)
