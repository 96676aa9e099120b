"""How many CPU threads torch uses for further training (one per worker process, always), and
how many worker processes a run starts when the user leaves it to fimo.

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


#: further training estimated at more floating-point operations than this (about a minute of
#: one core on the project's machine, which runs stacked runs at 50-70 GFLOP/s) is spread
#: over worker processes under ``run.workers = 0``: starting a worker (importing torch,
#: building the task) costs seconds, which shorter work would not win back
WORKERS_WORTH_FLOP = 3e12


def further_flop(runs_per_shard, steps_per_shard: int, batch_size: int, instance_flop: float):
    """The floating-point operations of further training, about: ``instance_flop`` (a training
    step's, per instance: :func:`instance_flop`) for every instance of every batch of every
    run. An upper bound where runs share their first steps (``drop`` and ``mask`` skip them).

    >>> further_flop([3, 3], steps_per_shard=10, batch_size=4, instance_flop=600.0)
    144000.0
    """
    return float(sum(runs_per_shard)) * steps_per_shard * batch_size * instance_flop


def instance_flop(task) -> float:
    """A training step's floating-point operations per instance, about: three times the
    forward pass on one training instance as torch's ``FlopCounterMode`` counts it (matrix
    products and convolutions, so a convolution or a sequence counts every position), or 6
    per parameter where the forward pass cannot be counted.

    >>> from fimo import ArrayDataset, Task
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> instance_flop(Task(torch.nn.Linear(3, 2, bias=False), data, data))  # 3 x 2 x 3 x 2
    36.0
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            task.forward(task.train[[0]].inputs)
        forward = float(counter.get_total_flops())
    except Exception:  # a model the counter cannot follow: the parameter count instead
        forward = 0.0
    return 3.0 * forward if forward > 0 else 6.0 * task.num_params


def auto_workers(
    free_cores: int,
    shards: int,
    flop: float,
    bytes_per_worker: int = 0,
    bytes_free: int | None = None,
) -> int:
    """The worker processes for further training when ``run.workers = 0``: one per free core
    (and per shard to compute, and as many as the free memory holds at ``bytes_per_worker``
    each) when the work is long enough to repay their start (:data:`WORKERS_WORTH_FLOP`),
    else 1 (this process). Results are the same bit for bit with any count.

    >>> auto_workers(free_cores=2, shards=16, flop=1e9)  # seconds of work: here
    1
    >>> auto_workers(free_cores=2, shards=16, flop=1e14), auto_workers(8, 3, 1e14)
    (2, 3)
    >>> auto_workers(8, 16, 1e14, bytes_per_worker=2 * 2**30, bytes_free=5 * 2**30)
    2
    """
    if flop < WORKERS_WORTH_FLOP:
        return 1
    count = min(free_cores, shards)
    if bytes_free is not None and bytes_per_worker > 0:
        count = min(count, bytes_free // bytes_per_worker)
    return max(1, int(count))
