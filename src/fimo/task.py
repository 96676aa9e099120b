"""`Task`: a model, its per-instance loss, its data and the parameters θ that are trained.

Everything fimo does goes through the task's *functional view*: a dict of trainable
parameters in, per-instance losses out (``torch.func.functional_call``), so that further
training can stack many runs along a leading axis and methods can differentiate with
``torch.func`` (DESIGN.md ◆ Parameters, ◆ The test function g).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from fimo.data.base import ArrayDataset
from fimo.errors import InputError, closest

Params = dict[str, torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-instance cross-entropy of logits (B, k) against class indices (B,)."""
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-instance squared error, summed over output dimensions."""
    diff = outputs.reshape(targets.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return (diff**2).sum(dim=1)


LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy, "mse": squared_error}


class in_float64:
    """``fn`` evaluated on float64 copies of floating outputs and targets.

    The gold standard measures loss differences of 1e-9 and below; in float32, the
    cross-entropy of a confident prediction (logsumexp minus a logit of about 8) is quantised
    at about 1e-6 and those differences vanish. Upcasting the logits before the loss keeps them
    (the logits themselves are accurate to about 1e-7 relative). A class, not a closure, so
    that a Task pickles into worker processes.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "measurement")

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            targets = targets.double()
        return self.fn(outputs.double(), targets)


class Task:
    """What the user supplies: model, per-instance loss, train and test data, trainable θ.

    ``loss`` is ``"cross_entropy"``, ``"mse"`` or a function ``(outputs, targets) -> (B,)``.
    ``trainable`` names the parameters that further training updates and that every method
    differentiates (all by default). ``measurement`` is the test function g
    ``(outputs, targets) -> (B,)``; by default the per-instance loss, evaluated in float64
    from the model's outputs (:func:`in_float64`).

    >>> model = nn.Linear(3, 2)
    >>> data = ArrayDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    >>> task = Task(model, data, data)
    >>> task.losses(task.params(), data.inputs, data.targets).shape
    torch.Size([8])
    """

    def __init__(
        self,
        model: nn.Module,
        train: ArrayDataset,
        test: ArrayDataset,
        loss: str | Callable = "cross_entropy",
        trainable: Sequence[str] | None = None,
        measurement: Callable | None = None,
        name: str = "task",
    ):
        if not isinstance(model, nn.Module):
            raise InputError(f"Task: model must be a torch.nn.Module; got {type(model).__name__}")
        for which, data in (("train", train), ("test", test)):
            if not isinstance(data, ArrayDataset):
                raise InputError(
                    f"Task: {which} must be a fimo ArrayDataset; got {type(data).__name__}"
                )
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise InputError(
                    f"Task: loss {loss!r} is unknown{closest(loss, LOSSES)}; "
                    f"allowed: {sorted(LOSSES)} or a function (outputs, targets) -> (B,)"
                )
            loss_name, loss = loss, LOSSES[loss]
        else:
            loss_name = getattr(loss, "__name__", "custom")
        self.model, self.train, self.test, self.name = model, train, test, name
        self.loss_fn, self.loss_name = loss, loss_name
        self.measure_fn = measurement or in_float64(loss)
        names = [n for n, _ in model.named_parameters()]
        if trainable is None:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        unknown = [n for n in trainable if n not in names]
        if unknown:
            raise InputError(
                f"Task: trainable parameter {unknown[0]!r} is not in the model"
                f"{closest(unknown[0], names)}"
            )
        if not trainable:
            raise InputError("Task: no trainable parameters; name at least one in `trainable`")
        self.trainable = tuple(trainable)
        self._check_output()

    # -- the functional view ---------------------------------------------------------------
    def params(self) -> Params:
        """The trainable parameters θ (detached), keyed by name."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.trainable}

    def frozen(self) -> Params:
        """Everything else the model needs: frozen parameters and buffers."""
        out = {n: p.detach() for n, p in self.model.named_parameters() if n not in self.trainable}
        out.update({n: b for n, b in self.model.named_buffers()})
        return out

    def outputs(self, params: Params, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.frozen(), **params}, (inputs,))

    def losses(self, params: Params, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-instance training losses (B,) at ``params``."""
        return self.loss_fn(self.outputs(params, inputs), targets)

    def measure(self, params: Params, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The test function g, per instance (B,) at ``params``."""
        return self.measure_fn(self.outputs(params, inputs), targets)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params().values())

    def load_params(self, params: Params) -> None:
        """Copy ``params`` into the model's trainable parameters."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, value in params.items():
                named[n].copy_(value)

    def with_cached_trunk(self) -> Task:
        """An equivalent task whose frozen leading layers are computed once.

        When the model is an ``nn.Sequential`` whose first k modules have no trainable
        parameters (a fixed trunk, DESIGN.md ◆ Parameters), returns a task on ``model[k:]``
        (same parameter names) whose inputs are the trunk's outputs, computed once in eval
        mode; otherwise returns ``self``. The result is memoised.
        """
        cached = getattr(self, "_cached_trunk", None)
        if cached is not None and cached[0] == self.trainable:
            return cached[1]
        result = self
        if isinstance(self.model, nn.Sequential):
            names = list(self.model._modules)
            owners = [
                k
                for k, name in enumerate(names)
                if any(t.startswith(f"{name}.") for t in self.trainable)
            ]
            first = min(owners, default=0)
            if first > 0:
                trunk, head = self.model[:first], self.model[first:]
                was = trunk.training
                trunk.eval()
                with torch.no_grad():
                    train_x = _batched(trunk, self.train.inputs)
                    test_x = _batched(trunk, self.test.inputs)
                trunk.train(was)
                result = Task(
                    head,
                    ArrayDataset(train_x, self.train.targets, None, self.train.info),
                    ArrayDataset(test_x, self.test.targets, None, self.test.info),
                    loss=self.loss_fn if self.loss_name not in LOSSES else self.loss_name,
                    trainable=self.trainable,
                    measurement=self.measure_fn,
                    name=self.name,
                )
        self._cached_trunk = (self.trainable, result)
        return result

    def to(self, device=None, dtype=None) -> Task:
        """Move the model and the data (in place for the model); returns self."""
        self.model.to(device=device, dtype=dtype)
        self.train = self.train.to(device, dtype)
        self.test = self.test.to(device, dtype)
        self._cached_trunk = None
        return self

    def _check_output(self) -> None:
        x, y = self.train.inputs[:2], self.train.targets[:2]
        was_training = self.model.training
        self.model.eval()  # a check must not move BatchNorm statistics or draw dropout masks
        try:
            with torch.no_grad():
                out = self.losses(self.params(), x, y)
        except Exception as exc:  # the model and the loss disagree: say so plainly
            raise InputError(
                f"Task: the model's output does not fit the loss {self.loss_name!r} "
                f"(inputs {tuple(x.shape)}, targets {tuple(y.shape)}): {exc}"
            ) from exc
        finally:
            self.model.train(was_training)
        if out.shape != (x.shape[0],):
            raise InputError(
                f"Task: the loss must return one value per instance, shape ({x.shape[0]},); "
                f"got {tuple(out.shape)}"
            )
        if self.loss_name == "cross_entropy":
            with torch.no_grad():
                self.model.eval()
                k = self.outputs(self.params(), x).shape[-1]
                self.model.train(was_training)
            labels = self.train.targets
            if labels.min() < 0 or labels.max() >= k:
                raise InputError(
                    f"Task: training labels range over [{int(labels.min())}, {int(labels.max())}] "
                    f"but the model has {k} outputs; labels must be in [0, {k - 1}]"
                )


def _batched(module: nn.Module, inputs: torch.Tensor, size: int = 4096) -> torch.Tensor:
    return torch.cat([module(inputs[k : k + size]) for k in range(0, len(inputs), size)])
