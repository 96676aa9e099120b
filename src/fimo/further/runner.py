"""Driving the gold standard: shards, executors, memory budget.

A shard is (seed, chunk of left-out instances). The driver plans the shards, skips those
already in the store, hands the rest to an executor and writes each result as it arrives:

- ``LocalExecutor(workers=1)``: in this process (progress step by step), or in ``workers``
  processes (spawned); every shard is computed on one torch thread
  (:mod:`fimo.further.threads`: the results do not depend on the worker count or the load);
- ``RayExecutor(address)``: one Ray task per shard (a GPU per task when the task is on CUDA);
  a worker that dies has its shard retried by Ray; the driver writes results as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from fimo.data.base import check_indices
from fimo.errors import InputError
from fimo.further.engine import FurtherSettings, SeedResult, checked_groups, further_train_seed
from fimo.further.gold import GoldStandard
from fimo.further.lifeline import Lifeline, start_worker
from fimo.further.plan import Groups, steps_per_epoch
from fimo.further.ray_address import check_reachable, ray_endpoint
from fimo.further.store import Shard, ShardStore, assemble, plan_shards
from fimo.further.threads import THREADS_PER_WORKER, torch_threads
from fimo.task import Task

#: Bytes the stacked runs of one shard may take, by default.
DEFAULT_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class LeftOutRuns:
    """Every left-out run of a gold standard: one per index of ``left_out``, one per group.

    >>> runs = LeftOutRuns(np.array([3, 7]), checked_groups([[1, 2], [5]], n=10))
    >>> runs.left_out.tolist(), runs.groups.members.tolist(), runs.groups.offsets.tolist()
    ([3, 7], [1, 2, 5], [0, 2, 3])
    """

    left_out: np.ndarray
    groups: Groups


def compute_shard(
    task: Task, settings: FurtherSettings, shard: Shard, left_out, test, on_step=None
):
    """Further-train one shard: the seed's full run and its chunk of left-out runs (or, for a
    group shard, of group runs; ``left_out`` is then a :class:`LeftOutRuns`).

    >>> from fimo import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> settings = FurtherSettings(batch_size=4)  # 3 steps an epoch, 2 epochs
    >>> res = compute_shard(task, settings, Shard(seed=0, start=0, stop=2), [3, 7, 9], [0, 1])
    >>> res.loss_full.shape, res.loss_without.shape, res.steps.tolist()  # left out: 3 and 7
    ((2, 2), (2, 2, 2), [3, 6])
    >>> runs = LeftOutRuns(np.array([3, 7, 9]), checked_groups([[1, 2], [5]], n=10))
    >>> res = compute_shard(task, settings, Shard(0, 0, 2, group=True), runs, [0])
    >>> res.loss_without.shape, res.loss_without_group.shape  # the two groups' runs
    ((2, 1, 0), (2, 1, 2))
    """
    if isinstance(left_out, LeftOutRuns):
        if shard.group:
            groups = left_out.groups[shard.start : shard.stop]
            return further_train_seed(
                task, settings, shard.seed, [], test, on_step=on_step, groups=groups
            )
        left_out = left_out.left_out
    chunk = np.asarray(left_out)[shard.start : shard.stop]
    return further_train_seed(task, settings, shard.seed, chunk, test, on_step=on_step)


#: A training step's peak over the activations autograd saves for it: the backward pass
#: holds gradients of activations and the forward pass temporaries besides them. Measured on
#: a 3-layer BERT under LoRA (float32, batch 32 × 64 tokens, one thread): 1.9 for one run
#: through plain autograd, 3.2 per run for runs advanced together by vmap.
PEAK_OVER_SAVED = 3
#: A forward pass without gradients (the test set's) holds about this many of its largest
#: activations at a time: a layer's input and output.
LIVE_ACTIVATIONS = 2


def bytes_per_run(task: Task, settings: FurtherSettings, n_test: int) -> int:
    """A generous estimate of the memory one run takes while the runs advance together.

    Parameters, gradients, updates and optimizer state (two slots for Adam); a training
    step's activations, ``PEAK_OVER_SAVED`` times those autograd keeps for the backward
    pass of one batch, measured (:func:`saved_activations`: those of frozen layers count
    too, which is what a LoRA run mostly holds); and the test set's forward pass,
    ``LIVE_ACTIVATIONS`` times its largest activation.

    >>> from fimo import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")  # 4 float32 parameters
    >>> bytes_per_run(task, FurtherSettings(batch_size=4), n_test=10)  # 4·4·4 + 3·4·16 + 2·10·12
    496
    >>> bytes_per_run(task, FurtherSettings(batch_size=4, optimizer="adam"), n_test=10)
    528
    """
    task = task.with_cached_trunk()  # what the engine advances
    itemsize = next(iter(task.params().values())).element_size()
    slots = 4 + (2 if settings.optimizer in ("adam", "adamw") else int(settings.momentum > 0))
    total, largest = saved_activations(task)
    batch = min(settings.batch_size, len(task.train))
    step = PEAK_OVER_SAVED * batch * total
    return int(slots * task.num_params * itemsize + step + LIVE_ACTIVATIONS * n_test * largest)


def saved_activations(task: Task, probe: int = 2) -> tuple[float, float]:
    """(total, largest): bytes per training instance of the tensors autograd saves in the
    forward pass for the backward pass, and of the largest of them. Every saved tensor that is
    not a parameter or buffer of the model (nor a view of one) counts once; measured on
    ``probe`` instances in train mode (dropout masks count). Activations of frozen layers
    count as much as trainable ones: gradients flow through them to the layers below.

    >>> from fimo import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(6, 3), torch.zeros(6))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> saved_activations(task)  # per instance: its 3 inputs and its output's error, float32
    (16.0, 12.0)
    """
    probe = max(1, min(probe, len(task.train)))
    params = {k: v.detach().requires_grad_() for k, v in task.params().items()}
    owned = {t.untyped_storage().data_ptr() for t in [*params.values(), *task.frozen().values()]}
    seen: dict[tuple, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in owned:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            seen[key] = t.numel() * t.element_size()
        return t

    x, y = task.train.inputs[:probe], task.train.targets[:probe]
    with (
        torch.random.fork_rng(),
        task.train_mode(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        task.losses(params, x, y).sum()
    return sum(seen.values()) / probe, max(seen.values(), default=0) / probe


def runs_per_shard(task, settings, n_left_out: int, n_test: int, budget=DEFAULT_BUDGET) -> int:
    """How many left-out runs fit in one shard under ``budget`` bytes (with the full run).

    >>> import torch
    >>> from fimo import ArrayDataset, FurtherSettings, Task
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> one = bytes_per_run(task, FurtherSettings(batch_size=4), n_test=10)
    >>> runs_per_shard(task, FurtherSettings(batch_size=4), 50, 10, budget=6 * one)
    5
    """
    fit = int(budget // bytes_per_run(task, settings, n_test)) - 1
    if fit < 1:
        raise InputError(
            f"further.memory_budget_mb: {budget / 2**20:.0f} MiB does not hold two runs of this "
            f"model (about {bytes_per_run(task, settings, n_test) / 2**20:.0f} MiB each); "
            "raise the budget"
        )
    return max(1, min(n_left_out, fit))


@dataclass(frozen=True)
class ShardPlan:
    """The shards of a gold standard and the work in each.

    ``shards``: every (seed, chunk) pair, in order; ``per_shard``: left-out runs per chunk;
    ``steps_per_shard``: the optimizer steps a shard's runs take (they advance together).

    >>> from fimo.further.store import plan_shards
    >>> plan = ShardPlan(plan_shards([0], n_left_out=3, per_shard=2), 2, steps_per_shard=6)
    >>> [shard.name for shard in plan.shards]
    ['seed-00000_lo-00000-00002', 'seed-00000_lo-00002-00003']
    """

    shards: list[Shard]
    per_shard: int
    steps_per_shard: int


def plan_gold(
    task: Task,
    settings: FurtherSettings,
    seeds,
    n_left_out: int,
    n_test: int,
    per_shard: int | None = None,
    budget: int = DEFAULT_BUDGET,
    n_groups: int = 0,
) -> ShardPlan:
    """How :func:`gold_standard` splits the work: ``per_shard`` left-out runs per shard (by
    default as many as fit in ``budget`` bytes, :func:`runs_per_shard`).

    >>> import torch
    >>> from fimo import ArrayDataset, FurtherSettings, Task
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> plan = plan_gold(task, FurtherSettings(epochs=2, batch_size=4), [0, 1], 5, 10, 2)
    >>> [sh.name for sh in plan.shards[:3]], plan.steps_per_shard
    (['seed-00000_lo-00000-00002', 'seed-00000_lo-00002-00004', 'seed-00000_lo-00004-00005'], 6)
    """
    runs = max(n_left_out, n_groups)
    per_shard = per_shard or runs_per_shard(task, settings, runs, n_test, budget)
    steps = settings.epochs * steps_per_epoch(len(task.train), settings.batch_size)
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    return ShardPlan(plan_shards(seeds, n_left_out, per_shard, n_groups), per_shard, steps)


class LocalExecutor:
    """Shards in this process (``workers=1``, or a single shard to compute) or in a pool of
    at most ``workers`` spawned worker processes (one per shard), each computing on
    ``threads`` torch threads (:data:`fimo.further.threads.THREADS_PER_WORKER`
    by default; this process's own count is restored when the shards are done).

    >>> LocalExecutor(workers=2).workers, LocalExecutor.name, LocalExecutor().threads
    (2, 'local', 1)
    >>> LocalExecutor(workers=0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: workers: got 0; must be ≥ 1
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int = THREADS_PER_WORKER):
        if workers < 1:
            raise InputError(f"workers: got {workers}; must be ≥ 1")
        if threads < 1:
            raise InputError(f"threads: got {threads}; must be ≥ 1")
        self.workers, self.threads = workers, threads

    def run(self, task, settings, shards, left_out, test, on_result, on_step=None, compute=None):
        """Compute each shard (``compute``, by default :func:`compute_shard`) and hand each
        result to ``on_result(shard, result)`` as it arrives.

        >>> from fimo import ArrayDataset
        >>> from fimo.further.store import plan_shards
        >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
        >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
        >>> got = []
        >>> LocalExecutor().run(
        ...     task, FurtherSettings(batch_size=4), plan_shards([0, 1], 3, 2), [3, 7, 9], [0],
        ...     on_result=lambda shard, res: got.append((shard.seed, res.loss_without.shape)))
        >>> got  # (seed, (checkpoints, test, left-out runs of the shard))
        [(0, (2, 1, 2)), (0, (2, 1, 1)), (1, (2, 1, 2)), (1, (2, 1, 1))]
        """
        compute = compute or compute_shard
        shards = list(shards)
        if min(self.workers, len(shards)) <= 1:  # nothing to share: no process to start
            with torch_threads(self.threads):
                for shard in shards:
                    result = compute(task, settings, shard, left_out, test, on_step=on_step)
                    on_result(shard, result)
            return
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(
            min(self.workers, len(shards)),
            mp_context=mp.get_context("spawn"),
            initializer=start_worker,  # bound to this process before torch loads in it
            initargs=(Lifeline(), _init_worker, task, self.threads),
        ) as pool:
            futures = {
                pool.submit(_worker_compute, compute, settings, sh, left_out, test): sh
                for sh in shards
            }
            for future in cf.as_completed(futures):
                on_result(futures[future], future.result())


_WORKER_TASK: Task | None = None


def _init_worker(task: Task, threads: int) -> None:
    global _WORKER_TASK
    torch.set_num_threads(threads)
    _WORKER_TASK = task


def _worker_compute(compute, settings, shard, left_out, test):
    return compute(_WORKER_TASK, settings, shard, left_out, test)


class RayExecutor:
    """One Ray task per shard, on a running cluster (``address``) or a local one.

    ``address="auto"`` joins the cluster this machine belongs to; ``"ray://HOST:PORT"`` a
    remote one through Ray Client; ``None`` starts a local cluster (``num_cpus`` CPUs).
    Making one only checks that Ray is installed; Ray starts in :meth:`run`.

    >>> ex = RayExecutor(address=None, num_cpus=2)
    >>> ex.name, ex.address, ex.num_cpus, ex.retries
    ('ray', None, 2, 3)
    """

    name = "ray"

    def __init__(self, address: str | None = "auto", num_cpus: int | None = None, retries: int = 3):
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise InputError(
                "--executor ray needs Ray: pip install 'fimo[ray]' (or pip install ray)"
            ) from exc
        ray_endpoint(address)
        self.address, self.num_cpus, self.retries = address, num_cpus, retries

    def run(self, task, settings, shards, left_out, test, on_result, on_step=None, compute=None):
        """Start or join Ray, submit one task per shard and hand each result to
        ``on_result(shard, result)`` as it arrives (``on_step`` is not used: no live progress).

        Here with Ray replaced by an in-process stand-in (the example starts no cluster):

        >>> import sys, types
        >>> from unittest import mock
        >>> from fimo import ArrayDataset
        >>> from fimo.further.store import plan_shards
        >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
        >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
        >>> stand_in = types.SimpleNamespace(
        ...     is_initialized=lambda: True, put=lambda obj: obj, get=lambda ref: ref(),
        ...     wait=lambda refs, num_returns: (refs[:num_returns], refs[num_returns:]),
        ...     remote=lambda **options: lambda f: types.SimpleNamespace(
        ...         remote=lambda *args: lambda: f(*args)))
        >>> names = lambda task, settings, shard, left_out, test: shard.name
        >>> threads, got = torch.get_num_threads(), []
        >>> with mock.patch.dict(sys.modules, {"ray": stand_in}):
        ...     RayExecutor().run(task, None, plan_shards([0], 3, 2), [3, 7, 9], [0],
        ...                       lambda shard, result: got.append(result), compute=names)
        >>> torch.set_num_threads(threads)  # a Ray task runs on one thread
        >>> got
        ['seed-00000_lo-00000-00002', 'seed-00000_lo-00002-00003']
        """
        import ray

        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                _join_ray(ray, self.address)
        on_gpu = next(iter(task.params().values())).is_cuda
        remote = ray.remote(num_cpus=1, num_gpus=1 if on_gpu else 0, max_retries=self.retries)(
            _ray_compute
        )
        task_ref = ray.put(task)
        pending = {
            remote.remote(compute or compute_shard, task_ref, settings, sh, left_out, test): sh
            for sh in shards
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_result(pending.pop(ref), ray.get(ref))


def _join_ray(ray, address: str) -> None:
    """``ray.init(address)``; a cluster that cannot be joined is one line (Ray raises a
    ConnectionError, which would read as a file's error, or a ValueError)."""
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(
            f"run.address: cannot join the Ray cluster at {address!r} ({reason}); start one "
            "(ray start --head), correct --address, or use --address local"
        ) from None


def _ray_compute(compute, task, settings, shard, left_out, test):
    torch.set_num_threads(THREADS_PER_WORKER)
    return compute(task, settings, shard, left_out, test)


def make_executor(name: str = "local", workers: int = 1, address: str | None = "auto"):
    """The executor ``name`` (``"local"`` with ``workers`` processes, or ``"ray"`` at
    ``address``).

    >>> make_executor("local", workers=2).workers
    2
    """
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address)
    raise InputError(f"executor: got {name!r}; allowed: 'local', 'ray'")


#: the largest seed (torch and numpy take seeds as 64-bit integers)
MAX_SEED = 2**63 - 1


def check_request(
    task: Task, seeds, left_out, test, groups=None
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Seeds, left-out and test indices checked against the task: whole numbers, in range,
    each once, at least one of each (InputError otherwise); with ``groups``, ``left_out`` may
    be empty.

    >>> import torch
    >>> from fimo import ArrayDataset, Task
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> seeds, left_out, test = check_request(task, range(2), [4, 1], range(3))
    >>> seeds, left_out.tolist(), test.tolist()
    ([0, 1], [4, 1], [0, 1, 2])
    """
    left_out = check_indices("left_out", left_out, len(task.train), "training instances")
    test = check_indices("test", test, len(task.test), "test instances")
    if isinstance(seeds, int):
        raise InputError(f"seeds: got {seeds}; give a list of seeds, e.g. range({seeds})")
    seeds = list(seeds)
    if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in seeds):
        raise InputError(f"seeds: got {seeds[:5]}; expected whole numbers ≥ 0")
    too_large = [s for s in seeds if s > MAX_SEED]
    if too_large:
        raise InputError(f"seeds: got {too_large[0]}; a seed must be at most 2**63 - 1")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds: got {seeds[:8]}; a seed appears more than once")
    wanted = [("seeds", seeds), ("test", test)]
    if groups is None or len(groups) == 0:
        wanted.append(("left_out", left_out))
    for setting, values in wanted:
        if len(values) == 0:
            raise InputError(f"{setting}: got none; give at least one")
    if len(left_out) == 1:  # none is allowed with groups (checked above)
        raise InputError(
            f"left_out: got {left_out.tolist()}; need at least 2 left-out instances (centring "
            "subtracts their mean, so one alone gives a gold standard of zeros)"
        )
    return [int(s) for s in seeds], left_out, test


def gold_standard(
    task: Task,
    settings: FurtherSettings,
    seeds: Iterable[int],
    left_out,
    test,
    store: ShardStore | None = None,
    executor=None,
    left_out_per_shard: int | None = None,
    on_step: Callable[[int], None] | None = None,
    on_shard: Callable[[Shard, bool], None] | None = None,
    compute=None,
    groups=None,
) -> GoldStandard:
    """Further-train every (seed, chunk) shard not yet in ``store`` → GoldStandard.

    Each shard is computed on one torch thread (:mod:`fimo.further.threads`); ``executor``
    (by default :class:`LocalExecutor`, in this process) says where.

    ``groups`` (a list of index lists, or :class:`fimo.further.plan.Groups`) adds, per seed,
    one run without each group's members, in shards of their own (``seed-S_gr-A-B``), kept as
    ``loss_without_group`` with the groups (``left_out`` may then be empty). A store's
    fingerprint must cover the groups, as it covers the settings.

    >>> import torch
    >>> from fimo import ArrayDataset, FurtherSettings, Task
    >>> x = torch.linspace(-1, 1, 12).reshape(6, 2)
    >>> data = ArrayDataset(x, x.sum(1))
    >>> task = Task(torch.nn.Linear(2, 1), data, data, loss="mse")
    >>> gold = gold_standard(task, FurtherSettings(lr=0.1, batch_size=3), [0, 1], [0, 5], [1, 2])
    >>> gold.loss_without.shape  # (seeds, checkpoints: one per epoch, test, left out)
    (2, 2, 2, 2)
    >>> gold = gold_standard(task, FurtherSettings(lr=0.1, batch_size=3), [0], [], [1],
    ...                      groups=[[0, 5], [2]])
    >>> gold.loss_without_group.shape, gold.groups[0].tolist()
    ((1, 2, 1, 2), [0, 5])
    """
    seeds, left_out, test = check_request(task, seeds, left_out, test, groups)
    if groups is not None:
        groups = checked_groups(groups, len(task.train))
    n_groups = 0 if groups is None else len(groups)
    shards = plan_gold(
        task, settings, seeds, len(left_out), len(test), left_out_per_shard, n_groups=n_groups
    ).shards
    if store is not None:  # a finished gold standard is read whole, its shards are not
        gold = store.reuse_gold(shards, seeds, left_out, test, settings.as_dict(), groups)
        if gold is not None:
            for shard in shards if on_shard is not None else ():
                on_shard(shard, True)
            return gold
    # a shard on disk is checked now and read when the gold standard is assembled (None until
    # then), and a computed one too once it is written: only the assembled arrays are held whole
    results: dict[Shard, SeedResult | None] = {}
    todo = []
    for shard in shards:
        if store is None or not store.check(shard):
            todo.append(shard)
        else:
            results[shard] = None
            if on_shard is not None:
                on_shard(shard, True)

    def on_result(shard: Shard, result: SeedResult) -> None:
        if store is not None:
            store.save(shard, result)  # written as it arrives: nothing finished is lost
        results[shard] = None if store is not None else result
        if on_shard is not None:
            on_shard(shard, False)

    runs = left_out if groups is None else LeftOutRuns(left_out, groups)
    (executor or LocalExecutor()).run(
        task, settings, todo, runs, test, on_result, on_step=on_step,
        compute=Timed(compute or compute_shard),
    )  # fmt: skip
    load = None if store is None else store.load
    gold = assemble(results, seeds, left_out, test, settings.as_dict(), groups, load)
    if store is not None:
        store.save_gold(gold, shards)
    return gold


@dataclass(frozen=True)
class Timed:
    """A shard's computation that notes in its result what it took: the seconds of wall
    time and of this process's CPU time (``SeedResult.seconds``). It runs where the shard
    runs (a worker, a Ray task), so the figure is the computation's, not the wait.

    >>> from fimo import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(10, 3), torch.zeros(10))
    >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    >>> res = Timed(compute_shard)(task, FurtherSettings(batch_size=4), Shard(0, 0, 2), [3, 7], [0])
    >>> sorted(res.seconds), res.seconds["wall"] > 0
    (['cpu', 'wall'], True)
    """

    compute: Callable

    def __call__(self, task, settings, shard, left_out, test, on_step=None):
        wall, cpu = time.perf_counter(), time.process_time()
        given = {} if on_step is None else {"on_step": on_step}  # as the executors call it
        result = self.compute(task, settings, shard, left_out, test, **given)
        if isinstance(result, SeedResult):
            result.seconds = {
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu,
            }
        return result
