"""The vectorised further-training engine: all runs of one seed advance together.

The runs of a seed (the full run and one run per left-out instance) start from the same
final weights with a fresh optimizer. Their parameters are stacked along a leading run axis
(R, ...), and one step of all R runs is one ``vmap(grad(...))`` call plus one optimizer
update: R runs cost about one batched kernel instead of R Python loops (DESIGN.md, "Where the
speed comes from"). Dropout draws are shared across the runs (``randomness="same"``) and come
from a generator seeded with the seed, so the runs are paired by seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.func import grad, vmap

from fimo.errors import InputError, NumericalError, check_choice
from fimo.further.fast import fused_mlp_grads
from fimo.further.optim import OPTIMIZERS, make_optimizer
from fimo.further.plan import SCHEMES, schedule, steps_per_epoch
from fimo.task import Task


@dataclass
class FurtherSettings:
    """How further training runs (recorded in the run directory and its fingerprint).

    ``record_every``: also record the test losses every k optimizer steps (0: only at the end
    of each epoch). ``record_steps``: also record after each of these step counts. ``max_steps``: stop after this many steps (None: run all ``epochs``).
    ``engine``: ``"auto"`` uses the fused batched-matmul path for plain MLPs
    (:mod:`fimo.further.fast`) and ``vmap(grad)`` otherwise; ``"generic"`` always the latter.
    """

    optimizer: str = "sgd"
    lr: float = 1e-4
    epochs: int = 2
    batch_size: int = 128
    scheme: str = "drop"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float = 0.0
    record_every: int = 0
    record_steps: list[int] = field(default_factory=list)
    max_steps: int | None = None
    engine: str = "auto"

    def __post_init__(self):
        check_choice("further.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("further.scheme", self.scheme, SCHEMES)
        check_choice("further.engine", self.engine, ("auto", "generic"))
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"further.{name}: got {value!r}; must be a whole number ≥ 1")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < float("inf")):
            raise InputError(f"further.lr: got {self.lr!r}; must be a positive number")
        for name in ("momentum", "weight_decay", "clip_norm", "record_every"):
            if getattr(self, name) < 0:
                raise InputError(f"further.{name}: got {getattr(self, name)!r}; must be ≥ 0")
        betas = tuple(self.betas) if isinstance(self.betas, list | tuple) else ()
        if len(betas) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise InputError(
                f"further.betas: got {self.betas!r}; expected two numbers in [0, 1), "
                "e.g. [0.9, 0.999]"
            )
        self.betas = tuple(float(b) for b in betas)
        if self.nesterov and self.momentum <= 0:
            raise InputError("further.nesterov: needs further.momentum > 0")
        if not isinstance(self.record_steps, list | tuple) or not all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in self.record_steps
        ):
            raise InputError(
                f"further.record_steps: got {self.record_steps!r}; expected a list of whole "
                "numbers of steps, e.g. [2, 4, 8]"
            )
        self.record_steps = sorted({int(k) for k in self.record_steps})
        if self.record_steps and self.record_steps[0] < 1:
            raise InputError(
                f"further.record_steps: got {self.record_steps[0]}; step counts must be ≥ 1"
            )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def transform(self):
        return make_optimizer(
            self.optimizer,
            self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            betas=self.betas,
            eps=self.eps,
            clip_norm=self.clip_norm,
            nesterov=self.nesterov,
        )


@dataclass
class SeedResult:
    loss_full: np.ndarray  # (C, T)
    loss_without: np.ndarray  # (C, T, L)
    steps: np.ndarray  # (C,)
    epochs: np.ndarray  # (C,)


def stack(params: dict[str, torch.Tensor], runs: int) -> dict[str, torch.Tensor]:
    """Copies of ``params`` stacked along a new leading run axis of size ``runs``."""
    return {k: p.detach().unsqueeze(0).repeat(runs, *([1] * p.dim())) for k, p in params.items()}


def further_train_seed(
    task: Task,
    settings: FurtherSettings,
    seed: int,
    left_out: np.ndarray,
    test: np.ndarray,
    on_step: Callable[[int], None] | None = None,
) -> SeedResult:
    """Run the full run and one run per left-out index for one seed; record test losses.

    Returns ``loss_full`` (C, T) and ``loss_without`` (C, T, L) at the checkpoints: the end of
    every epoch, every ``settings.record_every`` steps, and after ``settings.record_steps``.

    Randomness is paired across the runs: the batch order comes from a generator seeded with
    ``seed`` and dropout draws from the global generator seeded with ``seed`` (restored
    afterwards), shared by all runs (``vmap(randomness="same")``). BatchNorm layers stay in
    eval mode: their running statistics are part of the final model and are not updated, so
    each instance's loss depends on that instance alone and removing one changes nothing else.
    """
    left_out = np.asarray(left_out, dtype=np.int64)
    task = task.with_cached_trunk()  # a frozen leading trunk is computed once, not every step
    n = len(task.train)
    if len(left_out) and (left_out.min() < 0 or left_out.max() >= n):
        raise InputError(f"left_out: indices must be in [0, {n - 1}]; got {left_out.tolist()[:5]}")
    runs = 1 + len(left_out)
    params = stack(task.params(), runs)
    device = next(iter(params.values())).device
    dtype = next(iter(params.values())).dtype
    X, Y = task.train.inputs, task.train.targets
    X_test, Y_test = task.test.inputs[test], task.test.targets[test]
    opt = settings.transform()
    state = _to(opt.init(params), device)

    def run_loss(p, x, y, w):
        return (task.losses(p, x, y) * w).sum()

    fused = fused_mlp_grads(task) if settings.engine == "auto" else None
    step_grads = fused or vmap(grad(run_loss), randomness="same")
    measure = vmap(lambda p: task.measure(p, X_test, Y_test))
    per_epoch = steps_per_epoch(n, settings.batch_size)
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

    recorded, steps, epochs = [], [], []
    wanted = set(settings.record_steps)

    def record(step: int) -> None:
        task.model.eval()
        with torch.no_grad():
            losses = measure(params)  # (R, T)
        _train_mode(task.model)
        if not torch.isfinite(losses).all():
            bad_run = int((~torch.isfinite(losses)).any(1).nonzero()[0])
            what = "the full run" if bad_run == 0 else f"the run without {left_out[bad_run - 1]}"
            raise NumericalError(
                f"further training (seed {seed}) produced NaN or infinite test losses at step "
                f"{step} in {what}; lower further.lr (now {settings.lr}) or set further.clip_norm"
            )
        recorded.append(losses.double().cpu().numpy())
        steps.append(step)
        epochs.append(step / per_epoch)

    devices = [device] if device.type == "cuda" else []
    with task.train_mode():  # each module's own mode comes back on exit
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            step = 0
            plan = schedule(
                n, left_out, settings.batch_size, settings.epochs, seed, settings.scheme,
                settings.max_steps,
            )  # fmt: skip
            for item in plan:
                idx = item.idx.to(device)
                w = item.w.to(device=device, dtype=dtype)
                grads = step_grads(params, X[idx], Y[idx], w)
                active = None if item.active is None else item.active.to(device)
                updates, state = opt.update(grads, state, params, active=active)
                for k, u in updates.items():  # the stacked copies are ours: update in place
                    params[k].add_(u)
                step += 1
                if on_step is not None:
                    on_step(1)
                at_every = settings.record_every and step % settings.record_every == 0
                if item.last_in_epoch or at_every or step in wanted:
                    record(step)
            if not steps or steps[-1] != step:
                record(step)  # stopped by max_steps mid-epoch
    losses = np.stack(recorded)  # (C, R, T)
    return SeedResult(
        loss_full=losses[:, 0, :],
        loss_without=np.transpose(losses[:, 1:, :], (0, 2, 1)),
        steps=np.asarray(steps, dtype=np.int64),
        epochs=np.asarray(epochs, dtype=np.float64),
    )


def _train_mode(model: torch.nn.Module) -> None:
    """Train mode (dropout on), with normalisation layers kept in eval mode (see above)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._NormBase):
            module.eval()


def _to(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree
