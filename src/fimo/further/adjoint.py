"""The derivative of one seed's further-training run with respect to every training weight.

The full run of a seed (the gold standard's run 0: same batches, dropout draws, optimizer,
checkpoints) is a chain of steps ``z_{t+1} = F_t(z_t, u)``, where ``z = (θ, optimizer state)``
and ``u`` weighs each instance's loss. A measurement ``g(test, θ_c)`` at checkpoint c is then a
function of the weights, and its derivative with respect to every training instance comes from
one reverse (adjoint) sweep through the trajectory, with one cotangent per (checkpoint, test
instance) pair, all advanced together (``vmap``).

What a weight means depends on the leave-out scheme (DESIGN.md ◆ Leave-out schemes):

- ``mask``: a step's loss is ``Σ_b u_b ℓ_b / Σ_b u_b`` over its batch, u = 1 in the full run;
  leaving i out sets ``u_i`` to 0 in every batch it is in, so the first-order change of g is
  ``−∂g/∂u_i``, with ``∂L/∂u_i = (ℓ_i − batch mean) / |B|``.
- ``downweight``: every step's loss is the batch mean ``− Σ_i v_i ℓ_i / n``, v = 0 in the full
  run; leaving i out sets ``v_i`` to 1, so the change is ``+∂g/∂v_i``. Every step contributes
  for every instance: a forward-mode product of all n losses per step (n times a batch's work).
- ``drop``: computed as ``mask``. Dropping i shifts every later batch by one instance, a change
  with no derivative; the first-order estimate keeps the batches and removes i from its own.

The score is the change itself (positive = helpful, DESIGN.md ◆ Score matrix). Each reverse
step is the vector-Jacobian product of the optimizer update (the engine's own pure optimizer,
:mod:`fimo.further.optim`, so SGD, momentum, Nesterov, weight decay, Adam, AdamW and clipping
are all differentiated, optimizer state included), followed by a forward-over-reverse product
through the batch gradient: it gives both the Hessian-vector products that carry the cotangent
to the previous step and the per-instance terms of every batch member. For the MLPs the fused
engine takes, those model products are written out by hand (:mod:`fimo.further.fused_adjoint`);
other models, or ``further.engine = "generic"``, take ``torch.func``. The optimizer's products
are ``torch.func``'s for every model.

The trajectory is stored when it fits the memory budget; otherwise the states every ``s ≈ √T``
steps are kept and each segment is recomputed once during the sweep (about one more forward
pass). Dropout draws are replayed from the global generator's state saved at each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, jvp, vjp, vmap

from fimo.data.base import check_indices
from fimo.errors import InputError, NumericalError, check_choice
from fimo.further.engine import FurtherSettings, stack, step_gradients, tree_to
from fimo.further.fused_adjoint import MlpDerivatives, fused_mlp_derivatives
from fimo.further.plan import schedule, steps_per_epoch
from fimo.further.runner import bytes_per_run
from fimo.methods.cost import CostProbe
from fimo.task import Task

#: Bytes the stored trajectory and the cotangents of one sweep may take, by default.
DEFAULT_BUDGET = 2**30


@dataclass
class UnrolledSeed:
    """One seed's first-order scores of every training instance.

    ``values[c, t, i]``: the estimated ``g(test t, θ_c without i) − g(test t, θ_c)`` at
    checkpoint c, positive = helpful. ``loss_full[c, t]``: g on the full run (the gold
    standard's run 0). ``steps``/``epochs``: the checkpoints, as the engine records them.
    ``segment``: 1 when the whole trajectory was stored, else the length of the segments
    recomputed from saved states (memory budget). ``mode``: ``"forward"`` or ``"reverse"``.

    >>> one = UnrolledSeed(np.zeros((1, 2, 3)), np.ones((1, 2)), np.array([4]), np.array([1.0]))
    >>> one.values.shape, one.segment, one.mode
    ((1, 2, 3), 1, 'reverse')
    """

    values: np.ndarray  # (C, T, n)
    loss_full: np.ndarray  # (C, T)
    steps: np.ndarray  # (C,)
    epochs: np.ndarray  # (C,)
    segment: int = 1
    mode: str = "reverse"


@dataclass
class _Step:
    idx: torch.Tensor  # (W,) dataset indices of the batch columns
    w: torch.Tensor  # (W,) the full run's weights (0 for padding)
    last_in_epoch: bool


def _split(tree, prefix: str = "") -> tuple[dict, dict]:
    """A nested dict of tensors as (floating leaves, the rest), keyed by their paths."""
    floats, rest = {}, {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            f, r = _split(value, path + "/")
            floats.update(f)
            rest.update(r)
            if not value:
                rest[path] = {}
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            floats[path] = value
        else:
            rest[path] = value
    return floats, rest


def _join(floats: dict, rest: dict, template) -> dict:
    """Inverse of :func:`_split`, shaped like ``template``."""

    def build(node, prefix):
        out = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            out[key] = build(value, path + "/") if isinstance(value, dict) else None
            if out[key] is None:
                out[key] = floats[path] if path in floats else rest[path]
        return out

    return build(template, "")


def _clone(tree):
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def _nbytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(_nbytes(v) for v in tree.values())
    return tree.numel() * tree.element_size() if isinstance(tree, torch.Tensor) else 0


def _rng_state() -> tuple:
    """The states of the generators dropout draws from (the CPU one, and CUDA's if in use)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    return torch.random.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def _has_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules())


def run_zero(n: int, settings: FurtherSettings, seed: int) -> list[_Step]:
    """The batches of the gold standard's full run (run 0) for ``seed``, step by step.

    All schemes give run 0 the same batches; under ``downweight`` the engine's batch carries
    one extra column (training instance 0 with weight 0), kept here so that dropout draws the
    same masks.

    >>> plan = run_zero(12, FurtherSettings(batch_size=4, epochs=2), seed=0)
    >>> len(plan), len(plan[0].idx), [step.last_in_epoch for step in plan]
    (6, 4, [False, False, True, False, False, True])
    """
    steps = []
    for item in schedule(
        n, np.empty(0, np.int64), settings.batch_size, settings.epochs, seed, "mask",
        settings.max_steps,
    ):  # fmt: skip
        idx, w = item.idx[0], item.w[0]
        if settings.scheme == "downweight":
            idx = torch.cat([idx, idx.new_zeros(1)])
            w = torch.cat([w, w.new_zeros(1)])
        steps.append(_Step(idx, w, item.last_in_epoch))
    return steps


def checkpoint_steps(plan: list[_Step], settings: FurtherSettings, per_epoch: int) -> list[int]:
    """The step counts at which the engine records the test losses (its rule, its checks).

    >>> settings = FurtherSettings(batch_size=4, epochs=2, record_every=2)
    >>> checkpoint_steps(run_zero(12, settings, 0), settings, per_epoch=3)
    [2, 3, 4, 6]
    """
    total = len(plan)
    if settings.record_steps and settings.record_steps[-1] > total:
        raise InputError(
            f"further.record_steps: step {settings.record_steps[-1]} is beyond the last step "
            f"({total}); drop it or train for longer"
        )
    wanted = set(settings.record_steps)
    out = []
    for t, item in enumerate(plan, start=1):
        every = settings.record_every and t % settings.record_every == 0
        if item.last_in_epoch or every or t in wanted:
            out.append(t)
    if not out or out[-1] != total:
        out.append(total)
    return out


def wanted_checkpoints(marks: list[int], steps) -> list[int]:
    """The wanted ``steps`` (all ``marks`` when None), sorted, once each; InputError for a
    step the settings do not record.

    >>> wanted_checkpoints([2, 3, 4, 6], [4, 2, 4])
    [2, 4]
    """
    if steps is None:
        return list(marks)
    wanted = sorted({int(s) for s in np.asarray(steps, dtype=np.int64).ravel()})
    if not wanted:
        raise InputError("unrolled: steps: got none; give at least one checkpoint's step count")
    missing = [s for s in wanted if s not in set(marks)]
    if missing:
        raise InputError(
            f"unrolled: steps {missing[:5]} are not checkpoints of these further-training "
            f"settings (they record after {marks[:8]} steps)"
        )
    return wanted


class _Trajectory:
    """The states ``z_t = (θ_t, optimizer state_t)`` of the full run, stored or recomputed.

    ``advance(z, t)`` is one step of the engine's run 0. With ``every`` = 1 every state is
    kept; otherwise the states at multiples of ``every`` are kept and a segment is recomputed
    (from its first state and the saved generator states) the first time one of its states is
    asked for, going backwards.
    """

    def __init__(self, advance: Callable, z0, total: int, every: int, on_state: Callable):
        self.advance, self.total, self.every = advance, total, every
        self.anchors = {0: z0}
        self.rng = []  # generator state before each step (dropout replay)
        self.segment: dict[int, object] = {}
        z = z0
        for t in range(total):
            self.rng.append(_rng_state())
            z = advance(z, t)
            on_state(t + 1, z)
            if every == 1 or (t + 1) % every == 0 or t + 1 == total:
                self.anchors[t + 1] = z
        self.final = z

    def state(self, t: int):
        if t in self.anchors:
            return self.anchors[t]
        if t not in self.segment:
            start = (t // self.every) * self.every
            z = self.anchors[start]
            self.segment = {}
            _set_rng_state(self.rng[start])
            for s in range(start, min(start + self.every, self.total) - 1):
                z = self.advance(z, s)
                self.segment[s + 1] = z
        return self.segment[t]


def unrolled_seed(
    task: Task,
    settings: FurtherSettings,
    seed: int,
    test,
    train=None,
    *,
    steps=None,
    mode: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET,
    on_step: Callable[[int], None] | None = None,
    announce_for: int = 1,
) -> UnrolledSeed:
    """First-order scores of the training instances ``train`` (default: all n) for ``test``.

    The derivative of seed ``seed``'s further-training run (the gold standard's run 0) with
    respect to each training instance's weight under ``settings.scheme`` (module docstring),
    at every checkpoint; positive = helpful. ``values[c, t, j]`` is for ``train[j]``.

    ``steps``: the checkpoints wanted (step counts the settings record; default all of them),
    returned in increasing order. Only they are differentiated: the run is followed up to the
    last of them, and vectors are injected (reverse) or read (forward) only at them.

    ``mode``: ``"reverse"`` (one cotangent per (checkpoint, test instance), all training
    instances at once), ``"forward"`` (one tangent per wanted training instance, all
    checkpoints and test instances at once) or ``"auto"``, the one with fewer vectors.
    ``budget_bytes`` bounds the stored trajectory and the vectors of one sweep; the test
    instances (reverse) or training instances (forward) are split into sweeps to fit it.
    ``announce_for``: how many seeds like this one the caller runs; their cost, estimated from
    this seed's first sweep steps, is announced when long (:class:`fimo.methods.cost.CostProbe`;
    0: not announced).

    >>> from fimo.data import ArrayDataset
    >>> from fimo.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> data = ArrayDataset(torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g))
    >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
    >>> out = unrolled_seed(task, FurtherSettings(lr=0.1, batch_size=4, epochs=2), 0, [0, 1])
    >>> out.values.shape, out.steps.tolist()
    ((2, 2, 12), [3, 6])
    >>> unrolled_seed(task, FurtherSettings(lr=0.1, batch_size=4, epochs=2), 0, [0], steps=[3]).steps
    array([3])
    """
    task, test, wanted = _checked_request(task, settings, test, train, mode)
    run = _RunZero(task, settings, seed, steps)
    mode = _choose_mode(mode, settings, run, len(test), len(wanted))
    every = _segment_length(mode, run, budget_bytes)
    measured = _Measured(task, run, test, on_step)
    vectors = len(wanted) if mode == "forward" else len(run.marks) * len(test)
    probe = _probe(mode, run, _sweeps(mode, run, len(test), len(wanted), budget_bytes), vectors,
                   announce_for)  # fmt: skip
    device = run.device
    with task.train_mode(), torch.random.fork_rng([device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        if mode == "forward":
            values = _forward_values(run, wanted, measured, budget_bytes, probe)
        else:
            values = _reverse_values(run, wanted, measured, every, budget_bytes, probe)
    if not np.isfinite(values).all():
        raise NumericalError(
            f"unrolled (seed {seed}): the derivative is NaN or infinite; lower further.lr "
            f"(now {settings.lr}) or set further.clip_norm"
        )
    steps = np.asarray(run.marks, dtype=np.int64)
    loss_full = np.stack(measured.recorded)
    return UnrolledSeed(values, loss_full, steps, steps / run.per_epoch, every, mode)


def _checked_request(task: Task, settings: FurtherSettings, test, train, mode: str):
    """The task with its fixed trunk cached, and the test and wanted training indices of an
    :func:`unrolled_seed` call, after refusing what the adjoint cannot differentiate (a
    per-instance loop, dropout after the trunk under ``downweight``)."""
    if task.per_instance_path() == "loop":
        raise InputError(
            "unrolled: the adjoint needs torch.func.vmap over instances, which this task's "
            "model cannot take (per_instance='loop'); use unrolled_quadratic, or the gold standard"
        )
    task = task.with_cached_trunk()
    n = len(task.train)
    test = check_indices("unrolled: test", test, len(task.test), "test instances")
    wanted = (
        np.arange(n)
        if train is None
        else check_indices("unrolled: train", train, n, "training instances")
    )
    check_choice("unrolled: mode", mode, ("auto", "forward", "reverse"))
    if settings.scheme == "downweight" and _has_dropout(task.model):
        raise InputError(
            "unrolled: further.scheme 'downweight' with dropout in the model is not supported "
            "(the engine draws the extra term's mask per run); use scheme 'mask'"
        )
    return task, test, wanted


class _RunZero:
    """The gold standard's run 0 of one seed: its plan, checkpoints, optimizer and one step."""

    def __init__(self, task: Task, settings: FurtherSettings, seed: int, steps=None):
        self.task, self.settings = task, settings
        self.params0 = stack(task.params(), 1)
        some = next(iter(self.params0.values()))
        self.device, self.dtype = some.device, some.dtype
        self.opt = settings.transform()
        self.state0 = tree_to(self.opt.init(self.params0), self.device)
        n = len(task.train)
        self.per_epoch = steps_per_epoch(n, settings.batch_size)
        plan = run_zero(n, settings, seed)
        self.marks = wanted_checkpoints(checkpoint_steps(plan, settings, self.per_epoch), steps)
        self.plan = plan[: self.marks[-1]]  # nothing after the last wanted checkpoint matters
        self.total = len(self.plan)
        self.step_grads = step_gradients(task, settings)
        # the model's derivatives by hand where the engine fuses its steps (else torch.func)
        self.fused = fused_mlp_derivatives(task) if settings.engine == "auto" else None
        self.state_bytes = _nbytes(self.params0) + _nbytes(self.state0) + 5056
        # a vector (tangent or cotangent) with its scratch and the batch's activations
        self.vector_bytes = 4 * self.state_bytes + 2 * bytes_per_run(task, settings, 0)

    def advance(self, z, t):
        """One step of the engine's run 0 (same gradient path, same optimizer)."""
        params, state = z
        X, Y = self.task.train.inputs, self.task.train.targets
        item = self.plan[t]
        idx = item.idx.to(self.device)
        w = item.w.to(device=self.device, dtype=self.dtype)
        grads = self.step_grads(params, X[idx].unsqueeze(0), Y[idx].unsqueeze(0), w.unsqueeze(0))
        updates, state = self.opt.update(grads, state, params)
        return {k: params[k] + updates[k] for k in params}, state


class _Measured:
    """The full run's test measurements at the checkpoints, taken as the run passes them, and
    the progress count of the first pass through the run."""

    def __init__(self, task: Task, run: _RunZero, test: np.ndarray, on_step):
        self.task, self.run, self.on_step = task, run, on_step
        self.X_test, self.Y_test = task.test.inputs[test], task.test.targets[test]
        self.recorded: list[np.ndarray] = []
        self.counted = 0

    def __call__(self, t: int, z) -> None:
        if t in self.run.marks:
            with self.task.eval_mode():
                self.recorded.append(_measure(self.task, z[0], self.X_test, self.Y_test))
        if self.on_step is not None and self.counted < self.run.total:  # the first pass only
            self.counted += 1
            self.on_step(1)


def _choose_mode(mode: str, settings: FurtherSettings, run: _RunZero, n_test: int, wanted: int):
    """``mode``, or for ``"auto"`` the direction with fewer vector-steps of work."""
    if mode != "auto":
        return mode
    n = len(run.task.train)
    extra = wanted if settings.scheme == "downweight" else 0
    forward_work = wanted * (settings.batch_size + extra)
    reverse_work = len(run.marks) * n_test * (settings.batch_size + (n if extra else 0))
    return "forward" if forward_work <= reverse_work else "reverse"


def _segment_length(mode: str, run: _RunZero, budget_bytes: int) -> int:
    """Steps between stored states of a reverse sweep: 1 (all stored) when the trajectory
    fits half the budget, else about √T; InputError when even that does not fit."""
    if mode != "reverse":
        return 1
    total, state_bytes = run.total, run.state_bytes
    if (total + 1) * state_bytes <= budget_bytes // 2:
        return 1
    every = max(1, math.isqrt(total))
    if every > 1 and (total // every + 2 * every) * state_bytes > budget_bytes // 2:
        raise InputError(
            f"unrolled: a memory budget of {budget_bytes / 2**20:.0f} MiB does not hold "
            f"2·√{total} states of {state_bytes / 2**20:.1f} MiB; raise the budget"
        )
    return every


def _per_sweep(mode: str, run: _RunZero, budget_bytes: int) -> int:
    """How many training instances (forward) or test instances (reverse) one sweep carries."""
    if mode == "forward":
        return max(1, int((budget_bytes // 2) // run.vector_bytes))
    per_test = len(run.marks) * (run.vector_bytes + len(run.task.train) * 8)
    return max(1, int((budget_bytes // 2) // per_test))


def _sweeps(mode: str, run: _RunZero, n_test: int, wanted: int, budget_bytes: int) -> int:
    """The number of sweeps through the run that the vectors need (the budget splits them)."""
    return -(-(wanted if mode == "forward" else n_test) // _per_sweep(mode, run, budget_bytes))


def _probe(mode: str, run: _RunZero, sweeps: int, vectors: int, seeds: int) -> CostProbe | None:
    """The cost announcement of ``seeds`` seeds, ticked at each step of each sweep; the first
    step's time holds the seed's one-off work (the stored trajectory's forward pass)."""
    if seeds < 1:
        return None
    kind = (
        "tangents (training instances)" if mode == "forward" else "cotangents (checkpoint × test)"
    )
    cut = "score fewer training instances" if mode == "forward" else "give fewer test instances"
    return CostProbe(
        f"unrolled: {seeds} seed(s) × {sweeps * run.total} {mode} steps carrying {vectors} {kind}",
        sweeps * run.total,
        f"lower the seeds or the steps, or {cut}",
        repeats=seeds,
    )


def _forward_values(run: _RunZero, wanted, measured: _Measured, budget_bytes: int, probe):
    """(C, T, len(wanted)) by forward sweeps over blocks of training instances."""
    per_sweep = _per_sweep("forward", run, budget_bytes)
    values = np.empty((len(run.marks), len(measured.X_test), len(wanted)))
    for a in range(0, len(wanted), per_sweep):
        cols = slice(a, min(a + per_sweep, len(wanted)))
        measured.recorded = []  # each sweep replays the run: keep one pass's measurements
        values[:, :, cols] = _forward_sweep(
            run.task, run.settings, run.opt, run.plan, run.marks, run.advance,
            (run.params0, run.state0), wanted[cols], measured.X_test, measured.Y_test, measured,
            probe, run.fused,
        )  # fmt: skip
    return values


def _reverse_values(
    run: _RunZero, wanted, measured: _Measured, every: int, budget_bytes: int, probe
):
    """(C, T, len(wanted)) by reverse sweeps over blocks of test instances."""
    trajectory = _Trajectory(run.advance, (run.params0, run.state0), run.total, every, measured)
    per_sweep = _per_sweep("reverse", run, budget_bytes)
    X_test, Y_test = measured.X_test, measured.Y_test
    values = np.empty((len(run.marks), len(X_test), len(wanted)))
    for a in range(0, len(X_test), per_sweep):
        rows = slice(a, min(a + per_sweep, len(X_test)))
        values[:, rows] = _sweep(
            run.task, run.settings, run.opt, run.plan, run.marks, trajectory,
            X_test[rows], Y_test[rows], probe, run.fused,
        )[:, :, wanted]  # fmt: skip
    return values


def _measure(task, params, X_test, Y_test) -> np.ndarray:
    with torch.no_grad():
        p = {k: v[0] for k, v in params.items()}
        return task.measure(p, X_test, Y_test).double().cpu().numpy()


def _sweep(
    task, settings, opt, plan, marks, trajectory, X_test, Y_test, probe, fused=None
) -> np.ndarray:
    """One reverse sweep for a block of test instances: (C, T_block, n) scores; ``probe``
    (or None) is ticked at each step; ``fused``: the model's derivatives by hand, or None
    (``torch.func``)."""
    n = len(task.train)
    X, Y = task.train.inputs, task.train.targets
    C, T = len(marks), len(X_test)
    params0, state0 = trajectory.state(0)
    names = list(params0)
    device = next(iter(params0.values())).device
    dtype = next(iter(params0.values())).dtype
    float_state, _ = _split(state0)
    # cotangents, slot k = c·T + j; the slots of checkpoint c join the sweep at step marks[c]
    lam = {k: torch.zeros(C * T, *v.shape, dtype=dtype, device=device) for k, v in params0.items()}
    lam_state = {k: torch.zeros(C * T, *v.shape, dtype=v.dtype, device=device)
                 for k, v in float_state.items()}  # fmt: skip
    derivative = torch.zeros(C * T, n, dtype=torch.float64, device=device)

    def measure_one(p, x, y):
        return task.measure(p, x.unsqueeze(0), y.unsqueeze(0))[0]

    test_grads = vmap(grad(measure_one), in_dims=(None, 0, 0))
    scheme = settings.scheme
    first = C  # the first active checkpoint: slots first·T … C·T − 1 are live
    for t in range(len(plan) - 1, -1, -1):
        while first > 0 and marks[first - 1] >= t + 1:
            first -= 1
            if marks[first] == t + 1:
                # the state first: recomputing a segment must see dropout as training does
                params_c = {k: v[0] for k, v in trajectory.state(t + 1)[0].items()}
                with task.eval_mode():
                    gs = test_grads(params_c, X_test, Y_test)
                for k in names:
                    lam[k][first * T : (first + 1) * T, 0] += gs[k].to(dtype)
        live = slice(first * T, C * T)
        params, state = trajectory.state(t)
        item = plan[t]
        rng = trajectory.rng[t]
        lam_live = {k: v[live] for k, v in lam.items()}
        lam_state_live = {k: v[live] for k, v in lam_state.items()}
        idx = item.idx.to(device)
        w = item.w.to(device=device, dtype=dtype)
        batch = _batch_loss(task, fused, params, idx, w, rng)
        grad_bar, new_lam, new_lam_state = _optimizer_vjp(
            opt, params, state, batch.grads(), lam_live, lam_state_live
        )
        hvp, dloss = batch.gradient_jvp({k: v[:, 0] for k, v in grad_bar.items()})
        for k in names:  # written in place: one pass over the live cotangents
            torch.add(new_lam[k], hvp[k].unsqueeze(1), out=lam[k][live])
        for k in lam_state:
            lam_state[k][live] = new_lam_state[k]
        if scheme == "downweight":
            derivative[live] -= _all_losses_jvp(task, fused, params, grad_bar, X, Y) / n
        else:
            valid = w > 0
            count = valid.sum()
            d = dloss[:, valid]
            u_bar = (d - d.mean(1, keepdim=True)) / count
            derivative[live].index_add_(1, idx[valid], u_bar.double())
        if probe is not None:
            probe.tick()
    sign = 1.0 if scheme == "downweight" else -1.0
    return (sign * derivative).reshape(C, T, n).cpu().numpy()


def _forward_sweep(
    task, settings, opt, plan, marks, advance, z0, instances, X_test, Y_test, on_state, probe,
    fused=None,
):  # fmt: skip
    """One forward pass with a tangent per training instance (the direction of its removal):
    (C, T, L) scores for the L ``instances``; ``probe`` (or None) is ticked at each step;
    ``fused``: the model's derivatives by hand, or None (``torch.func``).

    Each step advances the engine's run 0 (``advance``'s arithmetic through ``opt``) and
    pushes the tangents through it: a forward-over-reverse product through the batch gradient
    (with the instance's weight moving) and the forward product of the optimizer update.
    """
    params, state = z0
    some = next(iter(params.values()))
    inst = torch.as_tensor(instances, device=some.device)
    floats, _ = _split(state)
    tangents = (
        {
            k: torch.zeros(len(inst), *v.shape, dtype=some.dtype, device=v.device)
            for k, v in params.items()
        },
        {
            k: torch.zeros(len(inst), *v.shape, dtype=v.dtype, device=v.device)
            for k, v in floats.items()
        },
    )
    test_grads = _test_gradients(task)
    out = np.empty((len(marks), len(X_test), len(inst)))
    c = 0
    for t, item in enumerate(plan):
        tangents = _push_tangents(task, settings, opt, (params, state), tangents, item, inst, fused)
        params, state = advance((params, state), t)
        on_state(t + 1, (params, state))
        if c < len(marks) and marks[c] == t + 1:
            with task.eval_mode():
                gs = test_grads({k: v[0] for k, v in params.items()}, X_test, Y_test)
            out[c] = _along_tangents(gs, tangents[0])
            c += 1
        if probe is not None:
            probe.tick()
    return out


def _test_gradients(task):
    """A function of (θ, X_test, Y_test) giving each test instance's measurement gradient."""

    def measure_one(p, x, y):
        return task.measure(p, x.unsqueeze(0), y.unsqueeze(0))[0]

    return vmap(grad(measure_one), in_dims=(None, 0, 0))


def _along_tangents(gs: dict, d_params: dict) -> np.ndarray:
    """(T, L): each test gradient (T, ...) dotted with each instance's tangent (L, 1, ...)."""
    L = next(iter(d_params.values())).shape[0]
    dtype = next(iter(d_params.values())).dtype
    total = sum(gs[k].reshape(len(gs[k]), -1).to(dtype) @ d_params[k].reshape(L, -1).T for k in gs)
    return total.double().cpu().numpy()


def _removal_loss(task, settings, item, inst, dtype):
    """The step's loss as a function of (θ, weights), the weights now and their removal tangents.

    ``downweight``: the batch mean minus Σ_l v_l ℓ(z_l)/n with v = 0 and tangent v̇_l = 1.
    ``mask`` and ``drop``: Σ_b u_b ℓ_b / Σ_b u_b with u = 1 on the batch and u̇ = −1 where the
    batch holds instance l.
    """
    device = inst.device
    X, Y = task.train.inputs, task.train.targets
    idx = item.idx.to(device)
    w = item.w.to(device=device, dtype=dtype)
    x, y = X[idx], Y[idx]
    if settings.scheme == "downweight":
        n, x_extra, y_extra = len(task.train), X[inst], Y[inst]

        def step_loss(q, v):
            batch = (task.losses(q, x, y) * w).sum()
            return batch - (task.losses(q, x_extra, y_extra) * v).sum() / n

        zeros = torch.zeros(len(inst), dtype=dtype, device=device)
        return step_loss, zeros, torch.eye(len(inst), dtype=dtype, device=device)

    def masked_loss(q, u):
        return (task.losses(q, x, y) * u).sum() / u.sum()

    weights = (w > 0).to(dtype)
    d_weights = -((idx.unsqueeze(0) == inst.unsqueeze(1)) & (w > 0)).to(dtype)
    return masked_loss, weights, d_weights


def _push_tangents(task, settings, opt, z, tangents, item, inst, fused=None):
    """The tangents (of θ and the optimizer's float state) after one step of run 0 from ``z``.

    A forward-over-reverse product through the batch gradient (the instance's weight moving
    along its removal; by hand when ``fused`` is given, else ``torch.func``) and the forward
    product of the optimizer update.
    """
    params, state = z
    d_params, d_state = tangents
    p = {k: v[0] for k, v in params.items()}
    dp = {k: v[:, 0] for k, v in d_params.items()}
    if fused is None:
        grads, d_grads = _gradient_tangents(task, settings, item, inst, p, dp)
    else:
        grads, d_grads = _fused_gradient_tangents(fused, task, settings, item, inst, p, dp)
    grads = {k: v.unsqueeze(0) for k, v in grads.items()}
    floats, rest = _split(state)

    def update(q, s, g):
        updates, new_state = opt.update(g, _join(s, rest, state), q)
        return {k: q[k] + updates[k] for k in q}, _split(new_state)[0]

    def push(dq, ds, dg):
        return jvp(update, (params, floats, grads), (dq, ds, dg))[1]

    return vmap(push)(d_params, d_state, {k: v.unsqueeze(1) for k, v in d_grads.items()})


def _gradient_tangents(task, settings, item, inst, p, dp):
    """The batch gradient at ``p`` and its tangents along (θ̇ = ``dp``, each instance's weight
    moving along its removal), by ``torch.func`` with the dropout draws of the step."""
    dtype = next(iter(p.values())).dtype
    step_loss, weights, d_weights = _removal_loss(task, settings, item, inst, dtype)

    def along(dq, du):
        return jvp(grad(step_loss), (p, weights), (dq, du))

    rng = _rng_state()
    grads, d_grads = vmap(along, randomness="same")(dp, d_weights)
    _set_rng_state(rng)
    return {k: v[0] for k, v in grads.items()}, d_grads  # the gradient: the same for every l


def _fused_gradient_tangents(fused: MlpDerivatives, task, settings, item, inst, p, dp):
    """:func:`_gradient_tangents` by hand (an MLP; :mod:`fimo.further.fused_adjoint`).

    ``mask``: the batch weights are ``ω = u/Σu``, so u̇ moves them by ``(u̇ − ω Σu̇)/Σu``;
    ``downweight``: the batch's weights stay, and tangent l adds ``−∇ℓ(z_l)/n``.
    """
    X, Y = task.train.inputs, task.train.targets
    idx = item.idx.to(inst.device)
    some = next(iter(p.values()))
    w = item.w.to(device=some.device, dtype=some.dtype)
    if settings.scheme == "downweight":
        batch = fused.at(p, X[idx], Y[idx], w)
        d_grads = batch.gradient_tangents(dp, w.new_zeros(len(inst), len(w)))
        own = fused.instance_grads(p, X[inst], Y[inst])
        return batch.grads(), {k: d_grads[k] - own[k] / len(task.train) for k in d_grads}
    u = (w > 0).to(w.dtype)
    d_u = -((idx.unsqueeze(0) == inst.unsqueeze(1)) & (w > 0)).to(w.dtype)
    batch = fused.at(p, X[idx], Y[idx], u / u.sum())
    d_omega = (d_u - (u / u.sum()) * d_u.sum(1, keepdim=True)) / u.sum()
    return batch.grads(), batch.gradient_tangents(dp, d_omega)


def _optimizer_vjp(opt, params, state, grads, lam, lam_state):
    """Cotangents of (θ_t, state_t, gradient_t) from those of (θ_{t+1}, state_{t+1});
    ``grads``: the step's batch gradient (unstacked), the primal the optimizer saw."""
    floats, rest = _split(state)
    grads = {k: v.unsqueeze(0) for k, v in grads.items()}

    def update(p, s, g):
        full = _join(s, rest, state)
        updates, new_state = opt.update(g, full, p)
        return {k: p[k] + updates[k] for k in p}, _split(new_state)[0]

    _, pullback = vjp(update, params, floats, grads)
    p_bar, s_bar, g_bar = vmap(pullback)((lam, lam_state))
    return g_bar, p_bar, s_bar


def _batch_loss(task, fused: MlpDerivatives | None, params, idx, w, rng):
    """The step's batch loss ``Σ_b w_b ℓ_b`` at θ_t, offering ``grads()`` and
    ``gradient_jvp(tangents)``: by hand for a fused MLP, else through ``torch.func``."""
    p = {k: v[0] for k, v in params.items()}
    x, y = task.train.inputs[idx], task.train.targets[idx]
    if fused is not None:
        return fused.at(p, x, y, w)
    return _GenericBatch(task, p, x, y, w, rng)


class _GenericBatch:
    """A batch loss's products through ``torch.func``, the dropout draws of the step replayed
    from ``rng`` (the generator state before it)."""

    def __init__(self, task, p, x, y, w, rng):
        self.task, self.p, self.x, self.y, self.w, self.rng = task, p, x, y, w, rng

    def _losses(self, q):
        losses = self.task.losses(q, self.x, self.y)
        return (losses * self.w).sum(), losses

    def grads(self) -> dict:
        """The batch gradient at θ_t (the primal the optimizer saw)."""
        _set_rng_state(self.rng)
        return grad(self._losses, has_aux=True)(self.p)[0]

    def gradient_jvp(self, tangents: dict):
        """Hessian-vector products H·ḡ_k of the batch loss and the per-instance ⟨∇ℓ_b, ḡ_k⟩."""

        def along(tangent):
            (_, _), (hvp, dloss) = jvp(grad(self._losses, has_aux=True), (self.p,), (tangent,))
            return hvp, dloss

        _set_rng_state(self.rng)
        return vmap(along, randomness="same")(tangents)


def _all_losses_jvp(task, fused, params, grad_bar, X, Y, chunk: int = 4096) -> torch.Tensor:
    """⟨∇ℓ_i(θ_t), ḡ_k⟩ for every training instance i: (K, n), in chunks of instances; by
    hand when ``fused`` is given, else through ``torch.func``."""
    p = {k: v[0] for k, v in params.items()}
    tangents = {k: v[:, 0] for k, v in grad_bar.items()}
    out = []
    for a in range(0, len(X), chunk):
        x, y = X[a : a + chunk], Y[a : a + chunk]
        if fused is not None:
            out.append(fused.losses_jvp(p, x, y, tangents).double())
            continue
        along = vmap(lambda t: jvp(lambda q: task.losses(q, x, y), (p,), (t,))[1])  # noqa: B023
        out.append(along(tangents).double())
    return torch.cat(out, 1)
