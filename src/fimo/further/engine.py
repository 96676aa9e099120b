"""The vectorised further-training engine: all runs of one seed advance together.

The runs of a seed (the full run and one run per left-out instance) start from the same
final weights with a fresh optimizer. Their parameters are stacked along a leading run axis
(R, ...), and one step of all R runs is one ``vmap(grad(...))`` call plus one optimizer
update: R runs cost about one batched kernel instead of R Python loops (DESIGN.md, "Where the
speed comes from"). Dropout draws are shared across the runs (``randomness="same"``) and come
from a generator seeded with the seed, so the runs are paired by seed.

A left-out run is the full run, bit for bit, until the first step at which its batch differs
from the full run's (under ``drop`` and ``mask``, the first batch that holds its instance;
under ``downweight``, the first step). So the stack starts with the full run alone, and each
left-out run joins it at that step as a copy of the full run's parameters and optimizer state;
until then its recorded test losses are the full run's. With one epoch this halves the work of
the left-out runs on average; ``downweight`` runs join at step 1 and gain nothing.

A run that sits a step out (under ``drop``, a run whose epoch is shorter: a group of half the
data takes half the steps) has its gradient left uncomputed at that step: its parameters and
optimizer state do not change, whatever the gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, vmap
from torch.utils._pytree import tree_leaves, tree_map

from fimo.errors import InputError, NumericalError
from fimo.further.fast import fused_mlp_grads
from fimo.further.plan import Groups, Step, differs_from_full, schedule, steps_per_epoch
from fimo.settings import FurtherSettings
from fimo.task import Task

#: Left-out runs join the stack at their first step that differs from the full run, and a
#: step's gradients are computed for the runs that take it alone (under ``drop`` a group's run
#: sits out the end of every epoch). False advances every run at every step from step 0, as
#: fimo did before 2026-12-01 (the reference that the tests and benchmarks/further_training.py
#: compare the results and the time against).
SKIP_SHARED_STEPS = True


@dataclass
class SeedResult:
    """One seed's test losses at each checkpoint: the full run and every left-out run.

    >>> r = SeedResult(np.zeros((2, 3)), np.zeros((2, 3, 4)), np.array([5, 10]), np.array([1, 2]))
    >>> r.loss_without.shape, r.loss_without_group is None
    ((2, 3, 4), True)
    """

    loss_full: np.ndarray  # (C, T)
    loss_without: np.ndarray  # (C, T, L)
    steps: np.ndarray  # (C,)
    epochs: np.ndarray  # (C,)
    loss_without_group: np.ndarray | None = None  # (C, T, G) when groups were left out
    #: what computing it took, ``{"wall": s, "cpu": s}`` (None: not measured, or a shard
    #: written before shards recorded it); never part of the results
    seconds: dict | None = None


def stack(params: dict[str, torch.Tensor], runs: int) -> dict[str, torch.Tensor]:
    """Copies of ``params`` stacked along a new leading run axis of size ``runs``.

    >>> stacked = stack({"w": torch.ones(2, 3), "b": torch.zeros(3)}, runs=4)
    >>> stacked["w"].shape, stacked["b"].shape
    (torch.Size([4, 2, 3]), torch.Size([4, 3]))
    """
    return {k: p.detach().unsqueeze(0).repeat(runs, *([1] * p.dim())) for k, p in params.items()}


def further_train_seed(
    task: Task,
    settings: FurtherSettings,
    seed: int,
    left_out: np.ndarray,
    test: np.ndarray,
    on_step: Callable[[int], None] | None = None,
    groups=None,
) -> SeedResult:
    """Run the full run and one run per left-out index for one seed; record test losses.

    Returns ``loss_full`` (C, T) and ``loss_without`` (C, T, L) at the checkpoints: the end of
    every epoch, every ``settings.record_every`` steps, and after ``settings.record_steps``.
    ``groups`` (a list of index lists, or a :class:`fimo.further.plan.Groups`) adds one run per
    group that leaves out all its members at once, under the same scheme and in the same stack;
    their losses are ``loss_without_group`` (C, T, G).

    Randomness is paired across the runs: the batch order comes from a generator seeded with
    ``seed`` and dropout draws from the global generator seeded with ``seed`` (restored
    afterwards), shared by all runs (``vmap(randomness="same")``). BatchNorm layers stay in
    eval mode: their running statistics are part of the final model and are not updated, so
    each instance's loss depends on that instance alone and removing one changes nothing else.
    A left-out run is computed only from its first step that differs from the full run (the
    module docstring); the numbers are those of advancing every run from step 0, bit for bit.

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> X = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(12, 2)
    >>> data = ArrayDataset(X, (X[:, 0] > 0).long())
    >>> task = Task(nn.Sequential(nn.Linear(2, 2)).double(), data, data)
    >>> settings = FurtherSettings(lr=0.1, batch_size=4)
    >>> res = further_train_seed(task, settings, seed=0, left_out=[3, 7], test=[0, 1, 2])
    >>> res.loss_full.shape, res.loss_without.shape, res.steps.tolist()
    ((2, 3), (2, 3, 2), [3, 6])
    >>> res = further_train_seed(task, settings, 0, left_out=[], test=[0], groups=[[3, 7], [1]])
    >>> res.loss_without.shape, res.loss_without_group.shape
    ((2, 1, 0), (2, 1, 2))
    """
    task = task.with_cached_trunk()  # a frozen leading trunk is computed once, not every step
    n = len(task.train)
    left_out = _checked_left_out(left_out, n)
    group_runs = None if groups is None else checked_groups(groups, n)
    if group_runs is not None and len(left_out):
        return _singles_and_groups(task, settings, seed, left_out, group_runs, test, on_step)
    runs_left = Groups.singles(left_out)
    if group_runs is not None:
        runs_left = runs_left + group_runs
    per_epoch = steps_per_epoch(n, settings.batch_size)
    _check_record_steps(settings, per_epoch)
    runs = _RunStack(task, settings, 1 + len(runs_left))
    checkpoints = _Checkpoints(task, settings, seed, runs_left, test, per_epoch)
    plan = schedule(
        n, runs_left if group_runs is not None else left_out, settings.batch_size,
        settings.epochs, seed, settings.scheme, settings.max_steps,
    )  # fmt: skip
    with task.train_mode(), _paired_randomness(seed, runs.device):  # modes restored on exit
        step = 0
        for item in plan:
            runs.advance(item)
            step += 1
            if on_step is not None:
                on_step(1)
            if checkpoints.due(step, item):
                checkpoints.record(step, runs)
        if checkpoints.steps[-1:] != [step]:
            checkpoints.record(step, runs)  # stopped by max_steps mid-epoch
    result = checkpoints.result()
    if group_runs is not None:
        L = len(left_out)
        result.loss_without_group = np.ascontiguousarray(result.loss_without[..., L:])
        result.loss_without = np.ascontiguousarray(result.loss_without[..., :L])
    return result


def _singles_and_groups(task, settings, seed, left_out, groups: Groups, test, on_step):
    """The single-instance runs and the group runs of one seed, with one full run.

    Two stacks advance in lockstep: the full run and the single-instance runs, as without
    groups, and the group runs, which join as copies of the first stack's full run (it is
    never computed twice). Separate stacks, because under downweight a wider stack (a
    group's members) changes the rounding of every run's step, and the single-instance runs
    must stay bit for bit. Each stack takes its steps from its own schedule and its dropout
    draws from its own stream seeded with ``seed``, as when the two were computed apart (under
    downweight the streams advance by batches of different widths): the results are those of
    a call with the single runs and a call with the groups, bit for bit (until a group run
    joins, the groups' stream is the full run's: no group run differs before then, and
    under drop and mask the two schedules' steps have the same width).
    """
    n = len(task.train)
    per_epoch = steps_per_epoch(n, settings.batch_size)
    _check_record_steps(settings, per_epoch)
    singles = _RunStack(task, settings, 1 + len(left_out))
    grouped = _RunStack(task, settings, 1 + len(groups), source=singles)
    marks = _Checkpoints(task, settings, seed, Groups.singles(left_out), test, per_epoch)
    group_marks = _Checkpoints(task, settings, seed, groups, test, per_epoch)
    plans = [
        schedule(n, runs, settings.batch_size, settings.epochs, seed, settings.scheme,
                 settings.max_steps)
        for runs in (left_out, groups)
    ]  # fmt: skip
    with task.train_mode(), _paired_randomness(seed, singles.device):
        step, group_draws = 0, _random_state(singles.device)
        for item, group_item in zip(*plans, strict=True):
            grouped.join(group_item)  # copies of the full run before its step
            singles.advance(item)
            single_draws = _random_state(singles.device)
            if len(grouped.members) == 0:  # apart, the full run would take this step alone
                group_draws = single_draws
            else:
                _set_random_state(group_draws, singles.device)
                grouped.advance(group_item)
                group_draws = _random_state(singles.device)
                _set_random_state(single_draws, singles.device)
            step += 1
            if on_step is not None:
                on_step(1)
            if marks.due(step, item):
                full = marks.record(step, singles)
                group_marks.record(step, grouped, full)
        if marks.steps[-1:] != [step]:  # stopped by max_steps mid-epoch
            group_marks.record(step, grouped, marks.record(step, singles))
    result = marks.result()
    result.loss_without_group = group_marks.result().loss_without
    return result


def _random_state(device: torch.device) -> tuple:
    """The state of the generators dropout draws from (CPU, and ``device`` on CUDA)."""
    on_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), on_cuda


def _set_random_state(state: tuple, device: torch.device) -> None:
    """Restore a state :func:`_random_state` gave."""
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def checked_groups(groups, n: int) -> Groups:
    """The groups as :class:`Groups`, each a non-empty set of distinct training indices that
    leaves at least one instance in (InputError otherwise).

    >>> checked_groups([[0, 2], [1]], n=3).members.tolist()
    [0, 2, 1]
    >>> checked_groups([[0, 5]], n=3)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: groups: group 0 holds index 5; training indices are 0 to 2
    """
    groups = Groups.of(groups)
    for g, members in enumerate(groups.lists()):
        if len(members) == 0:
            raise InputError(f"groups: group {g} is empty; every group needs at least one member")
        bad = members[(members < 0) | (members >= n)]
        if len(bad):
            raise InputError(
                f"groups: group {g} holds index {int(bad[0])}; training indices are 0 to {n - 1}"
            )
        if len(np.unique(members)) != len(members):
            raise InputError(f"groups: group {g} names an index more than once")
        if len(members) >= n:
            raise InputError(
                f"groups: group {g} holds all {n} training instances; nothing would be left "
                "to train on"
            )
    return groups


def _checked_left_out(left_out, n: int) -> np.ndarray:
    """The left-out indices as int64, each a training index (InputError otherwise)."""
    left_out = np.asarray(left_out, dtype=np.int64)
    if len(left_out) and (left_out.min() < 0 or left_out.max() >= n):
        raise InputError(f"left_out: indices must be in [0, {n - 1}]; got {left_out.tolist()[:5]}")
    return left_out


def _check_record_steps(settings: FurtherSettings, per_epoch: int) -> None:
    """InputError when a step asked for in ``record_steps`` lies beyond the last step."""
    total = settings.epochs * per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    if settings.record_steps and settings.record_steps[-1] > total:
        raise InputError(
            f"further.record_steps: step {settings.record_steps[-1]} is beyond the last step "
            f"({total} = {settings.epochs} epochs × {per_epoch} steps"
            f"{'' if settings.max_steps is None else f', max_steps {settings.max_steps}'}); "
            "drop it or train for longer"
        )


@contextlib.contextmanager
def _paired_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """The global generator seeded with ``seed`` (dropout draws), restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def step_gradients(task: Task, settings: FurtherSettings) -> Callable:
    """``grads(params, x, y, w)``: each stacked run's gradient of Σ_b w·ℓ, fused or vmap'd
    (the engine's step, which the adjoint replays too).

    >>> from fimo.data import ArrayDataset
    >>> x = torch.tensor([[1.0, 2.0]])
    >>> task = Task(torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False)),
    ...             ArrayDataset(x, torch.zeros(1, 1)), ArrayDataset(x, torch.zeros(1, 1)),
    ...             loss="mse")
    >>> params = stack(task.params(), 1)
    >>> grads = step_gradients(task, FurtherSettings())(params, x[None], torch.zeros(1, 1, 1),
    ...                                                   torch.ones(1, 1))
    >>> tuple(grads["0.weight"].shape)
    (1, 1, 2)
    """

    def run_loss(p, x, y, w):
        return (task.losses(p, x, y) * w).sum()

    return _fused_gradients(task, settings) or over_runs(grad(run_loss), task)


def _fused_gradients(task: Task, settings: FurtherSettings) -> Callable | None:
    """The fused MLP step (:func:`fimo.further.fast.fused_mlp_grads`, which draws no random
    numbers) when the settings allow it and the model is such an MLP; None otherwise."""
    return fused_mlp_grads(task) if settings.engine == "auto" else None


def over_runs(fn: Callable, task: Task) -> Callable:
    """``fn`` of one run mapped over the leading run axis of all its arguments: by ``vmap``
    with dropout draws shared across the runs, or, for a model that ``vmap`` cannot map over
    (:meth:`fimo.Task.per_instance_path`), by a loop that gives every run the same random
    state, so the runs stay paired; the results stacked along the run axis.

    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 2), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)), data, data,
    ...             per_instance="loop")
    >>> draws = over_runs(lambda x: task.model[1](x), task)(torch.ones(3, 5))
    >>> bool((draws == draws[0]).all())  # every run saw the same dropout mask
    True
    """
    if task.per_instance_path() == "vmap":
        return vmap(fn, randomness="same")

    def looped(*args):
        runs = len(tree_leaves(args)[0])
        start = torch.get_rng_state()
        each = []
        for r in range(runs):
            torch.set_rng_state(start)
            each.append(fn(*tree_map(lambda t, r=r: t[r], args)))
        return tree_map(lambda *parts: torch.stack(parts), *each)

    return looped


class _RunStack:
    """The runs that have left the full run's path, stacked along a leading run axis.

    Row k holds run ``members[k]`` (0: the full run, r ≥ 1: the run without
    ``left_out[r − 1]``); row 0 is always the full run. A run not in the stack has seen the
    full run's batches at every step so far, so it *is* the full run: same parameters, same
    optimizer state. It joins at the first step whose batch differs, as a copy of row 0.

    The stack never holds fewer than two rows: until the first run joins, row 1 is a spare
    copy of the full run (member ``SPARE``), which that run then takes over. Batched kernels
    may take another path for a single row, and do: the weight gradients of vmap'd
    convolutions in float32 differ in the last bits between one row and several, while two
    rows or more agree with each other (tests/test_engine_skip.py).

    With a ``source`` stack the full run is not computed here: the stack holds only the runs
    that have joined (as copies of the source's row 0, its full run), and a lone row is
    computed twice over so that the kernels still see two rows.
    """

    SPARE = -1

    def __init__(self, task: Task, settings: FurtherSettings, runs: int, source=None):
        self.runs, self.source = runs, source
        self.members = torch.arange(runs)
        if source is not None:
            self.members = torch.zeros(0, dtype=torch.long)
        elif SKIP_SHARED_STEPS and runs > 1:
            self.members = torch.tensor([0, self.SPARE])
        self.params = stack(task.params(), len(self.members))
        some = next(iter(self.params.values()))
        self.device, self.dtype = some.device, some.dtype
        self.opt = settings.transform()
        self.state = tree_to(self.opt.init(self.params), self.device)
        self.inputs, self.targets = task.train.inputs, task.train.targets
        self.step_grads = step_gradients(task, settings)
        self.draws_random = _fused_gradients(task, settings) is None  # dropout, perhaps

    def join(self, item: Step) -> None:
        """Add the runs whose batch first differs from the full run's at this step."""
        waiting = differs_from_full(item)
        waiting[self.members[self.members != self.SPARE]] = False
        new = waiting.nonzero().squeeze(1)
        spare = (self.members == self.SPARE).nonzero().squeeze(1)[: len(new)]
        self.members[spare] = new[: len(spare)]  # a spare row is the full run already
        new = new[len(spare) :]
        if len(new) and self.source is not None:
            copies = torch.zeros_like(new)  # the source's full run, before this step
            self.params = _cat_rows(self.params, _take_rows(self.source.params, copies))
            self.state = _cat_rows(self.state, _take_rows(self.source.state, copies))
            self.members = torch.cat([self.members, new])
        elif len(new):
            rows = torch.cat([torch.arange(len(self.members)), torch.zeros_like(new)])
            self.params = _take_rows(self.params, rows)
            self.state = _take_rows(self.state, rows)
            self.members = torch.cat([self.members, new])

    def rows(self) -> torch.Tensor:
        """The run whose batches each row takes (a spare row takes the full run's)."""
        return self.members.clamp(min=0)

    def advance(self, item: Step) -> None:
        """One optimizer step of every run in the stack (after letting the new ones join).

        With the skip, only the runs that take the step are computed: their gradients, their
        optimizer update; the others are left exactly as they are (:meth:`_stepping`).
        """
        self.join(item)
        runs = self.rows()
        if len(runs) == 0:
            return
        active = None if item.active is None else item.active[runs]
        if active is not None and bool(active.all()):
            active = None
        rows = self._stepping(active)
        if rows is None:  # every row, as without the skip
            grads = self._gradients(item, runs, torch.arange(len(runs)))
            active = None if active is None else active.to(self.device)
            updates, self.state = self.opt.update(grads, self.state, self.params, active=active)
            for k, u in updates.items():  # the stacked copies are ours: update in place
                self.params[k].add_(u)
            return
        if len(rows) == 0:  # no run takes the step
            if self.draws_random:  # take the step's random draws, as computing it would
                self._gradients(item, runs, torch.zeros(1, dtype=torch.long))
            return
        grads = self._gradients(item, runs, rows)
        rows = rows.to(self.device)
        params = _take_rows(self.params, rows)
        updates, state = self.opt.update(grads, _take_rows(self.state, rows), params)
        _put_rows(self.state, rows, state)
        for k, u in updates.items():
            self.params[k].index_add_(0, rows, u)

    def _stepping(self, active) -> torch.Tensor | None:
        """The rows whose run takes this step, or None for every row (all of them take it,
        or the skip is off: the reference computes every row and masks the update)."""
        if active is None or not SKIP_SHARED_STEPS:
            return None
        return active.nonzero().squeeze(1)

    def _gradients(self, item: Step, runs: torch.Tensor, rows: torch.Tensor) -> dict:
        """The gradients of the stack's rows ``rows`` at this step, (len(rows), ...).

        A lone row is computed twice over when the stack holds more rows than it, or has no
        full run of its own (see the class docstring): kernels see two rows at least.
        """
        computed = rows
        if len(rows) == 1 and (len(runs) > 1 or self.source is not None):
            computed = rows.repeat(2)
        whole = len(rows) == len(runs) and computed is rows
        params = self.params if whole else _take_rows(self.params, computed)
        idx = item.idx[runs[computed]].to(self.device)
        w = item.w[runs[computed]].to(device=self.device, dtype=self.dtype)
        grads = self.step_grads(params, self.inputs[idx], self.targets[idx], w)
        return {k: g[: len(rows)] for k, g in grads.items()}


class _Checkpoints:
    """The test losses of every run at the checkpoints, (C, R, T), and their steps."""

    def __init__(self, task, settings, seed, left_out: Groups, test, per_epoch):
        self.task, self.settings, self.seed, self.left_out = task, settings, seed, left_out
        self.per_epoch = per_epoch
        x, y = task.test.inputs[test], task.test.targets[test]
        self.measure = over_runs(lambda p: task.measure(p, x, y), task)
        self.wanted = set(settings.record_steps)
        self.losses, self.steps = [], []

    def due(self, step: int, item: Step) -> bool:
        """Whether ``step`` is a checkpoint: an epoch's end, every k steps, or one asked for."""
        every = self.settings.record_every
        return item.last_in_epoch or bool(every and step % every == 0) or step in self.wanted

    def record(self, step: int, runs: _RunStack, full=None) -> torch.Tensor:
        """Record every run's test losses; a run not yet in the stack has the full run's
        (row 0, or ``full`` for a stack without the full run). Returns the full run's."""
        if len(runs.members) == 0:  # no group run has left the full run yet
            losses = full[:0]
        else:
            losses = self._measured(runs.params, lone_as_two=runs.source is not None)  # (R', T)
        self._check_finite(losses, step, runs.members)
        full = losses[:1] if full is None else full
        every_run = full.expand(runs.runs, -1).clone()
        joined = runs.members != runs.SPARE
        every_run[runs.members[joined]] = losses[joined.to(losses.device)]
        self.losses.append(every_run.double().cpu().numpy())
        self.steps.append(step)
        return every_run[:1]

    def _measured(self, params, lone_as_two: bool) -> torch.Tensor:
        """The test losses of every row of ``params``, (R', T) (with ``lone_as_two``, a lone
        row measured as two, as a stack without the full run computes it)."""
        with self.task.eval_mode(), torch.no_grad():
            if lone_as_two and len(next(iter(params.values()))) == 1:
                return self.measure(_take_rows(params, torch.zeros(2, dtype=torch.long)))[:1]
            return self.measure(params)

    def _check_finite(self, losses: torch.Tensor, step: int, members: torch.Tensor) -> None:
        if torch.isfinite(losses).all():
            return
        bad_run = int(members.clamp(min=0)[int((~torch.isfinite(losses)).any(1).nonzero()[0])])
        left = self.left_out[bad_run - 1].tolist() if bad_run else []
        what = (
            "the full run"
            if bad_run == 0
            else f"the run without {left[0] if len(left) == 1 else left}"
        )
        raise NumericalError(
            f"further training (seed {self.seed}) produced NaN or infinite test losses at step "
            f"{step} in {what}; lower further.lr (now {self.settings.lr}) or set "
            "further.clip_norm"
        )

    def result(self) -> SeedResult:
        losses = np.stack(self.losses)  # (C, R, T)
        return SeedResult(
            loss_full=losses[:, 0, :],
            loss_without=np.transpose(losses[:, 1:, :], (0, 2, 1)),
            steps=np.asarray(self.steps, dtype=np.int64),
            epochs=np.asarray(self.steps, dtype=np.float64) / self.per_epoch,
        )


def tree_to(tree, device):
    """A nested dict of tensors (an optimizer's state) with every tensor moved to ``device``;
    anything else is kept as it is.

    >>> state = {"count": torch.zeros(2), "m": {"w": torch.ones(2, 3)}, "note": 1}
    >>> moved = tree_to(state, "cpu")
    >>> moved["m"]["w"].device.type, moved["note"]
    ('cpu', 1)
    """
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: tree_to(v, device) for k, v in tree.items()}
    return tree


def _cat_rows(tree, more):
    """Two nested dicts of tensors of the same shape joined along their leading (run) axis."""
    if isinstance(tree, torch.Tensor):
        return torch.cat([tree, more.to(tree.device)])
    if isinstance(tree, dict):
        return {k: _cat_rows(v, more[k]) for k, v in tree.items()}
    return tree


def _take_rows(tree, rows: torch.Tensor):
    """Every tensor of a nested dict with its leading (run) axis indexed by ``rows``."""
    if isinstance(tree, torch.Tensor):
        return tree.index_select(0, rows.to(tree.device))
    if isinstance(tree, dict):
        return {k: _take_rows(v, rows) for k, v in tree.items()}
    return tree


def _put_rows(tree, rows: torch.Tensor, part) -> None:
    """Write ``part`` (a nested dict shaped as :func:`_take_rows` gives) into the rows
    ``rows`` of every tensor of ``tree``, in place."""
    for k, v in tree.items():
        if isinstance(v, torch.Tensor):
            v.index_copy_(0, rows.to(v.device), part[k].to(v.dtype))
        elif isinstance(v, dict):
            _put_rows(v, rows, part[k])
