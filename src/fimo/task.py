"""`Task`: a model, its per-instance loss, its data and the parameters θ that are trained.

Everything fimo does goes through the task's *functional view*: a dict of trainable
parameters in, per-instance losses out (``torch.func.functional_call``), so that further
training can stack many runs along a leading axis and methods can differentiate with
``torch.func`` (DESIGN.md ◆ Parameters, ◆ The test function g).
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fimo.data.base import ArrayDataset, Fields
from fimo.errors import InputError, check_choice, closest
from fimo.hf import is_hf_model, model_call

Params = dict[str, torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-instance cross-entropy of logits (B, k) against class indices (B,).

    >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))  # log 4 each
    tensor([1.3863, 1.3863])
    """
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-instance squared error, summed over output dimensions.

    >>> squared_error(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 0]]))
    tensor([5., 9.])
    """
    diff = outputs.reshape(targets.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return (diff**2).sum(dim=1)


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy of a causal language model: logits (B, T, V)
    against token ids (B, T), position t's logits predicting token t + 1 (the convention of
    transformers' ``labels``). Tokens marked -100 (padding, a prompt) do not count; a
    sequence with no counted token has loss 0.

    >>> logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: log 4 per predicted token
    >>> token_cross_entropy(logits, torch.tensor([[1, 2, 3], [1, 2, -100]]))
    tensor([1.3863, 1.3863])
    """
    predicted, wanted = outputs[:, :-1], targets[:, 1:]
    counted = wanted != -100
    each = nn.functional.cross_entropy(
        predicted.transpose(1, 2), wanted.clamp(min=0), reduction="none"
    )
    weights = counted.to(each.dtype)
    return (each * weights).sum(1) / weights.sum(1).clamp(min=1)


LOSSES: dict[str, Callable] = {
    "cross_entropy": cross_entropy,
    "mse": squared_error,
    "token_cross_entropy": token_cross_entropy,
}


class LossKind(str, enum.Enum):
    """Which loss a task trains with, for the methods' closed forms of the built-in losses.

    Decided by the identity of the loss function (:func:`loss_kind`), never by its name: a
    user's own function called ``cross_entropy`` is ``CUSTOM`` and gets the generic paths.

    >>> data = ArrayDataset(torch.randn(4, 3), torch.randn(4, 2))
    >>> Task(nn.Linear(3, 2), data, data, loss="mse").loss_kind == LossKind.SQUARED_ERROR
    True
    """

    CROSS_ENTROPY = "cross_entropy"
    SQUARED_ERROR = "squared_error"
    TOKEN_CROSS_ENTROPY = "token_cross_entropy"
    CUSTOM = "custom"


def loss_kind(fn: Callable) -> LossKind:
    """The kind of the loss function ``fn``: built-in (by identity) or custom.

    >>> loss_kind(squared_error), loss_kind(lambda out, y: (out - y).abs().sum(1))
    (<LossKind.SQUARED_ERROR: 'squared_error'>, <LossKind.CUSTOM: 'custom'>)
    """
    if fn is cross_entropy:
        return LossKind.CROSS_ENTROPY
    if fn is squared_error:
        return LossKind.SQUARED_ERROR
    if fn is token_cross_entropy:
        return LossKind.TOKEN_CROSS_ENTROPY
    return LossKind.CUSTOM


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """On exit (also by an exception), every module of ``model`` gets back its own training
    flag: ``model.train(flag)`` would set all of them to the root's, and a Sequential slice or
    a module put in eval mode on purpose may differ from its parent.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> model[1].training = False
    >>> with kept_modes(model):
    ...     _ = model.train()
    >>> [m.training for m in model.modules()]
    [True, True, False]
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout, running normalisation statistics), each module's
    own mode restored on exit (:func:`kept_modes`).

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> with eval_mode(model):
    ...     print(model[1].training)
    False
    >>> model[1].training
    True
    """
    with kept_modes(model):
        model.eval()
        yield


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in train mode (dropout on) with its normalisation layers in eval mode, so
    that their statistics, part of the final model, stay fixed and each instance's loss
    depends on that instance alone; each module's own mode restored on exit.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5)).eval()
    >>> with train_mode(model):
    ...     print([m.training for m in model])
    [True, False, True]
    >>> model.training
    False
    """
    with kept_modes(model):
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()
        yield


class in_float64:
    """``fn`` evaluated on float64 copies of floating outputs and targets.

    The gold standard measures loss differences of 1e-9 and below; in float32, the
    cross-entropy of a confident prediction (logsumexp minus a logit of about 8) is quantised
    at about 1e-6 and those differences vanish. Upcasting the logits before the loss keeps them
    (the logits themselves are accurate to about 1e-7 relative). A class, not a closure, so
    that a Task pickles into worker processes.

    >>> in_float64(cross_entropy)(torch.zeros(1, 2), torch.tensor([0])).dtype
    torch.float64
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "measurement")

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            targets = targets.double()
        return self.fn(outputs.double(), targets)


def select_parameters(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The model's parameter names that ``names`` select, in the model's order.

    Each entry is a parameter name or a shell-style pattern (``*``, ``?``, ``[...]``, matched
    with :func:`fnmatch.fnmatchcase`), e.g. ``"6.attention.*.weight"``. A name that is not in
    the model, or a pattern that matches nothing, is an error naming the closest parameter.

    >>> select_parameters(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), ["1.*", "0.bias"])
    ['0.bias', '1.weight', '1.bias']
    """
    if isinstance(names, str):
        names = [names]
    all_names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for entry in names:
        if not isinstance(entry, str):
            raise InputError(f"Task: trainable entries must be strings; got {entry!r}")
        if any(c in entry for c in "*?["):
            hits = [n for n in all_names if fnmatch.fnmatchcase(n, entry)]
            if not hits:
                raise InputError(
                    f"Task: trainable pattern {entry!r} matches no parameter of the model"
                    f"{closest(entry, all_names)}"
                )
            chosen.update(hits)
        elif entry in all_names:
            chosen.add(entry)
        else:
            raise InputError(
                f"Task: trainable parameter {entry!r} is not in the model"
                f"{closest(entry, all_names)}"
            )
    return [n for n in all_names if n in chosen]


class Task:
    """What the user supplies: model, per-instance loss, train and test data, trainable θ.

    ``model`` is a torch module; its inputs are a tensor (one positional argument) or
    :class:`fimo.data.Fields` (keyword arguments), and a ``transformers`` model's outputs are
    its ``.logits`` (:mod:`fimo.hf`). ``loss`` is ``"cross_entropy"``, ``"mse"``,
    ``"token_cross_entropy"`` (a causal language model, :func:`token_cross_entropy`) or a
    function ``(outputs, targets) -> (B,)``;
    ``loss_spec`` keeps it as given (so that ``Task(..., loss=task.loss_spec)`` has the same
    loss), ``loss_name`` is the name to show and ``loss_kind`` (:class:`LossKind`) says whether
    it is one of fimo's built-in losses, which some methods treat in closed form.
    ``trainable`` names the parameters (or shell-style patterns, :func:`select_parameters`)
    that further training updates and that every method
    differentiates (all by default). ``measurement`` is the test function g
    ``(outputs, targets) -> (B,)``; by default the per-instance loss, evaluated in float64
    from the model's outputs (:func:`in_float64`). ``per_instance`` says how per-instance
    gradients are taken: ``"vmap"`` (``torch.func.vmap``, fast), ``"loop"`` (one instance at a
    time, for models ``vmap`` cannot map over) or ``"auto"`` (vmap if a probe on two training
    instances succeeds, else the loop with a warning; :meth:`per_instance_path`).

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
        per_instance: str = "auto",
    ):
        if not isinstance(model, nn.Module):
            raise InputError(f"Task: model must be a torch.nn.Module; got {type(model).__name__}")
        for which, data in (("train", train), ("test", test)):
            if not isinstance(data, ArrayDataset):
                raise InputError(
                    f"Task: {which} must be a fimo ArrayDataset; got {type(data).__name__}"
                    f"{_converter_hint(data)}"
                )
            if len(data) == 0:
                raise InputError(f"Task: the {which} set is empty; give at least one instance")
        self.loss_spec = loss
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
        self.loss_kind = loss_kind(loss)
        self.measure_fn = measurement or in_float64(loss)
        if trainable is None:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        else:
            trainable = select_parameters(model, trainable)
        if not trainable:
            raise InputError("Task: no trainable parameters; name at least one in `trainable`")
        self.trainable = tuple(trainable)
        check_choice("Task: per_instance", per_instance, PER_INSTANCE_PATHS)
        self.per_instance, self._path = per_instance, None
        for data in (train, test):
            check_keywords(model, data.inputs)
        self.call = model_call(model)
        self._check_output()
        with self.eval_mode():
            note = self.call.verify(model, train.inputs[:2], self._dtype(self.params()))
        if note:
            warnings.warn(f"fimo: {note}", stacklevel=2)

    # -- the functional view ---------------------------------------------------------------
    def params(self) -> Params:
        """The trainable parameters θ (detached), keyed by name.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> {n: tuple(p.shape) for n, p in Task(nn.Linear(3, 2), data, data).params().items()}
        {'weight': (2, 3), 'bias': (2,)}
        """
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.trainable}

    def frozen(self) -> Params:
        """Everything else the model needs: frozen parameters and buffers.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        >>> sorted(Task(model, data, data, trainable=["0.*"]).frozen())[:3]
        ['1.bias', '1.num_batches_tracked', '1.running_mean']
        """
        out = {n: p.detach() for n, p in self.model.named_parameters() if n not in self.trainable}
        out.update({n: b for n, b in self.model.named_buffers()})
        return out

    def outputs(self, params: Params, inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs at ``params`` (the other parameters and buffers as they are).

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Linear(3, 2), data, data)
        >>> zero = {n: torch.zeros_like(p) for n, p in task.params().items()}
        >>> task.outputs(zero, data.inputs)
        tensor([[0., 0.],
                [0., 0.],
                [0., 0.],
                [0., 0.]])
        """
        args, kwargs = self.call.arguments(inputs, self._dtype(params))
        result = functional_call(self.model, {**self.frozen(), **params}, args, kwargs)
        return self.call.outputs(result)

    def forward(self, inputs: torch.Tensor | Fields) -> torch.Tensor:
        """The model's outputs with its own parameters, differentiable with autograd (final
        training and evaluation call the model this way).

        >>> data = ArrayDataset({"x": torch.ones(2, 3)}, torch.tensor([0, 1]))
        >>> class Keyword(nn.Linear):
        ...     def forward(self, x):
        ...         return super().forward(x)
        >>> Task(Keyword(3, 2), data, data).forward(data.inputs).shape
        torch.Size([2, 2])
        """
        args, kwargs = self.call.arguments(inputs, self._dtype(self.params()))
        return self.call.outputs(self.model(*args, **kwargs))

    def per_instance_path(self) -> str:
        """``"vmap"`` or ``"loop"``: how per-instance gradients (and stacked runs) are taken.

        With ``per_instance="auto"``, decided once by a probe: ``vmap(grad(loss))`` over two
        training instances in eval mode; if it raises (the model branches on the values of
        its inputs, say), the loop, with a warning. With ``"vmap"``, a failing probe is an
        InputError naming the fix.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> Task(nn.Linear(3, 2), data, data).per_instance_path()
        'vmap'
        """
        if self._path is None:
            self._path = "loop" if self.per_instance == "loop" else self._probe_vmap()
        return self._path

    def _probe_vmap(self) -> str:
        """ "vmap" if vmap(grad(loss)) runs on two training instances; else "loop" (auto) or
        an InputError (per_instance="vmap")."""
        x, y = self.train.inputs[:2], self.train.targets[:2]

        def one(p, xi, yi):
            return self.losses(p, xi.unsqueeze(0), yi.unsqueeze(0)).squeeze(0)

        try:
            with self.eval_mode():
                vmap(grad(one), in_dims=(None, 0, 0))(self.params(), x, y)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
            where = _failing_frame(exc)
            if self.per_instance == "vmap":
                raise InputError(
                    f"Task: per_instance='vmap' fails on {type(self.model).__name__} (in "
                    f"{where}); use per_instance='loop' (or 'auto'), or for a transformers "
                    "model load it with attn_implementation='eager'"
                ) from exc
            warnings.warn(
                f"fimo: per-instance gradients of {type(self.model).__name__} cannot use "
                f"torch.func.vmap (it fails in {where}); using a loop over instances (slower)",
                stacklevel=3,
            )
            return "loop"
        return "vmap"

    @staticmethod
    def _dtype(params: Params) -> torch.dtype:
        """The floating dtype the parameters compute in (for masks built as data)."""
        return next((p.dtype for p in params.values() if p.is_floating_point()), torch.float32)

    def losses(self, params: Params, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-instance training losses (B,) at ``params``.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Linear(3, 2), data, data)
        >>> zero = {n: torch.zeros_like(p) for n, p in task.params().items()}
        >>> task.losses(zero, data.inputs, data.targets)  # log 2: equal logits
        tensor([0.6931, 0.6931, 0.6931, 0.6931])
        """
        return self.loss_fn(self.outputs(params, inputs), targets)

    def measure(self, params: Params, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The test function g, per instance (B,) at ``params``.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Linear(3, 2), data, data)
        >>> task.measure(task.params(), data.inputs, data.targets).dtype  # the loss, in float64
        torch.float64
        """
        return self.measure_fn(self.outputs(params, inputs), targets)

    @property
    def num_params(self) -> int:
        """How many trainable numbers θ holds.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> Task(nn.Linear(3, 2), data, data, trainable=["weight"]).num_params
        6
        """
        return sum(p.numel() for p in self.params().values())

    def load_params(self, params: Params) -> None:
        """Copy ``params`` into the model's trainable parameters.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Linear(3, 2), data, data)
        >>> task.load_params({"bias": torch.tensor([1.0, -1.0])})
        >>> task.model.bias
        Parameter containing:
        tensor([ 1., -1.], requires_grad=True)
        """
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, value in params.items():
                named[n].copy_(value)

    def trunk_length(self) -> int:
        """How many leading modules of an ``nn.Sequential`` model hold no trainable parameter
        (the frozen trunk :meth:`with_cached_trunk` computes once); for a BERT-like
        ``transformers`` encoder, how many leading encoder layers (with the embeddings) do
        (:func:`fimo.hf_trunk.frozen_layers`); 0 for other models.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> Task(model, data, data, trainable=["2.*"]).trunk_length()
        2
        """
        if is_hf_model(self.model):
            from fimo.hf_trunk import frozen_layers

            return frozen_layers(self.model, self.trainable, self.train.inputs)
        if not isinstance(self.model, nn.Sequential) or isinstance(self.train.inputs, Fields):
            return 0
        names = list(self.model._modules)
        owners = [
            k
            for k, name in enumerate(names)
            if any(t.startswith(f"{name}.") for t in self.trainable)
        ]
        return min(owners, default=0)

    def rebuilt(self, model=None, train=None, test=None, trainable=None) -> Task:
        """A Task with this one's loss, measurement, name and per-instance path on another
        model, data or choice of θ (each defaults to this task's own).

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randn(4))
        >>> task = Task(torch.nn.Linear(3, 1), data, data, loss="mse", name="toy")
        >>> other = task.rebuilt(trainable=["bias"])
        >>> other.trainable, other.loss_name, other.name
        (('bias',), 'mse', 'toy')
        """
        return Task(
            self.model if model is None else model,
            self.train if train is None else train,
            self.test if test is None else test,
            loss=self.loss_spec,
            trainable=self.trainable if trainable is None else trainable,
            measurement=self.measure_fn,
            name=self.name,
            per_instance=self.per_instance,
        )

    def with_cached_trunk(self, progress: Callable[[int, int], None] | None = None) -> Task:
        """An equivalent task whose frozen leading layers are computed once.

        When the model is an ``nn.Sequential`` whose first k modules have no trainable
        parameters (a fixed trunk, DESIGN.md ◆ Parameters), returns a task on ``model[k:]``
        (same parameter names) whose inputs are the trunk's outputs, computed once in eval
        mode; likewise for the embeddings and lower encoder layers of a BERT-like
        ``transformers`` model (:mod:`fimo.hf_trunk`); otherwise returns ``self``. The result
        is memoised (and kept by :meth:`to`).
        ``progress(done, total)`` is called after each batch of instances through the trunk.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> head = Task(model, data, data, trainable=["2.*"]).with_cached_trunk()
        >>> head.model, head.train.inputs.shape, head.trainable
        (Sequential(
          (2): Linear(in_features=4, out_features=2, bias=True)
        ), torch.Size([4, 4]), ('2.weight', '2.bias'))
        """
        cached = getattr(self, "_cached_trunk", None)
        if cached is not None and cached[0] == self.trainable:
            return cached[1]
        result = self
        first = self.trunk_length()
        if first > 0 and is_hf_model(self.model):
            result = self._cached_encoder_trunk(first, progress)
        elif first > 0:
            trunk, head = self.model[:first], self.model[first:]
            total = len(self.train) + len(self.test)
            with torch.no_grad(), eval_mode(trunk):
                size = _trunk_batch(trunk, self.train.inputs)
                train_x = _batched(trunk, self.train.inputs, size, progress, 0, total)
                test_x = _batched(trunk, self.test.inputs, size, progress, len(self.train), total)
            head.training = self.model.training  # a slice starts in training mode
            result = self.rebuilt(
                head,
                ArrayDataset(train_x, self.train.targets, None, self.train.info),
                ArrayDataset(test_x, self.test.targets, None, self.test.info),
            )
        self._cached_trunk = (self.trainable, result)
        return result

    def _cached_encoder_trunk(self, first: int, progress) -> Task:
        """:meth:`with_cached_trunk` for a ``transformers`` encoder (:mod:`fimo.hf_trunk`): a
        task on the model without its embeddings and first ``first`` layers, fed the hidden
        states entering layer ``first`` as ``inputs_embeds``."""
        from fimo.hf_trunk import cached_datasets, head_model

        with eval_mode(self.model):
            train, test = cached_datasets(self.model, first, self.train, self.test, progress)
        return self.rebuilt(head_model(self.model, first), train, test)

    def to(self, device=None, dtype=None) -> Task:
        """Move the model and the data (in place for the model); returns self.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> Task(nn.Linear(3, 2), data, data).to(dtype=torch.float64).train.inputs.dtype
        torch.float64
        """
        self.model.to(device=device, dtype=dtype)
        self.train = self.train.to(device, dtype)
        self.test = self.test.to(device, dtype)
        cached = getattr(self, "_cached_trunk", None)
        if cached is not None and cached[1] is not self:
            # the head shares its modules with self.model (moved above); move the cached data
            head = cached[1]
            head.train, head.test = head.train.to(device, dtype), head.test.to(device, dtype)
        return self

    def eval_mode(self):
        """A context in which the model is in eval mode (:func:`eval_mode`): gradients and
        outputs of the final model, no dropout; each module's own mode restored on exit.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)), data, data)
        >>> with task.eval_mode():
        ...     print(task.model[1].training)
        False
        >>> task.model[1].training
        True
        """
        return eval_mode(self.model)

    def train_mode(self):
        """A context in which the model is in train mode with its normalisation layers in eval
        mode (:func:`train_mode`), as further training runs it; modes restored on exit.

        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).eval(), data, data)
        >>> with task.train_mode():
        ...     print(task.model.training, task.model[1].training)
        True False
        """
        return train_mode(self.model)

    def _check_output(self) -> None:
        """The model's outputs fit the loss on both sets, and labels fit the outputs."""
        with self.eval_mode():  # a check must not move BatchNorm statistics or draw dropout masks
            for which, data in (("training", self.train), ("test", self.test)):
                self._check_fit(which, data)

    def _check_fit(self, which: str, data: ArrayDataset) -> None:
        x, y = data.inputs[:2], data.targets[:2]
        shape = _shape_text(x)

        def outputs_and_loss():
            outputs = self.outputs(self.params(), x)
            return outputs, self.loss_fn(outputs, y)

        outputs, out = _plainly(
            outputs_and_loss,
            f"Task: the model's output does not fit the loss {self.loss_name!r} on the {which} "
            f"data (inputs {shape}, targets {tuple(y.shape)})",
        )
        _check_per_instance("loss", out, len(x))
        if not isinstance(self.measure_fn, in_float64):  # the user's own measurement
            measured = _plainly(
                lambda: self.measure_fn(outputs, y),
                f"Task: the measurement does not fit the model's output on the {which} data "
                f"(targets {tuple(y.shape)})",
            )
            _check_per_instance("measurement", measured, len(x))
        if self.loss_kind == LossKind.SQUARED_ERROR and outputs[:1].numel() != y[:1].numel():
            raise InputError(
                f"Task: the model gives {outputs[:1].numel()} outputs per instance but the "
                f"{which} targets have {y[:1].numel()}; they must match for the loss 'mse'"
            )
        if not torch.isfinite(out).all():
            raise InputError(
                f"Task: the loss is NaN or infinite on the first {which} instances at the "
                "model's current weights; check the model, its weights and the data"
            )
        labels = data.targets
        if self.loss_kind == LossKind.TOKEN_CROSS_ENTROPY:
            labels = labels[labels != -100]  # tokens that do not count
        if (
            self.loss_kind in (LossKind.CROSS_ENTROPY, LossKind.TOKEN_CROSS_ENTROPY)
            and not labels.is_floating_point()
            and labels.numel()
        ):
            k = outputs.shape[-1]
            if labels.min() < 0 or labels.max() >= k:
                raise InputError(
                    f"Task: {which} labels range over [{int(labels.min())}, "
                    f"{int(labels.max())}] but the model has {k} outputs; labels must be in "
                    f"[0, {k - 1}]"
                )


def _plainly(call: Callable, what: str):
    """``call()`` without gradients; any error it raises becomes an InputError ``what: reason``
    (one line, at most 300 characters of the reason): the model, loss or measurement disagree.

    >>> _plainly(lambda: 1 / 0, "Task: the loss does not fit")
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: Task: the loss does not fit: division by zero
    """
    try:
        with torch.no_grad():
            return call()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise InputError(f"{what}: {reason}") from exc


def _check_per_instance(what: str, out, n: int) -> None:
    """InputError unless the loss (or measurement) gave ``n`` floating-point values: one per
    instance, and differentiable (integers would make every gradient, hence Grad-Dot, zero).

    >>> _check_per_instance("loss", torch.tensor([1, 0]), 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: Task: the loss must return floating-point values ...; got dtype torch.int64
    """
    if not isinstance(out, torch.Tensor) or out.shape != (n,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"Task: the {what} must return one value per instance, shape ({n},); got {got}"
        )
    if not out.is_floating_point():
        raise InputError(
            f"Task: the {what} must return floating-point values (the methods use its "
            f"gradient, which is zero for integers); got dtype {out.dtype}"
        )


PER_INSTANCE_PATHS = ("auto", "vmap", "loop")


def check_keywords(model: nn.Module, inputs) -> None:
    """InputError when the inputs' fields are not arguments of the model's forward.

    A forward with ``**kwargs`` takes any field, except a ``transformers`` model's: its
    forward drops unknown keywords silently, so they must be named arguments; and its
    ``labels`` would make it compute its own loss, so they belong in the targets.

    >>> check_keywords(nn.Linear(2, 2), Fields({"x": torch.zeros(1, 2)}))
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: Task: the model's forward takes no argument 'x' (a field of the inputs); it takes ['input']; rename the field or leave it out of the dataset
    """
    if not isinstance(inputs, Fields):
        return
    hf = is_hf_model(model)
    if hf and "labels" in inputs:
        raise InputError(
            "Task: the inputs hold a field 'labels'; give the labels as the dataset's targets "
            "(fimo computes the loss), e.g. from_hf_dataset(ds, label='labels')"
        )
    params = inspect.signature(model.forward).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = not hf and any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = [k for k in inputs.keys() if k not in named]
    if unknown and not takes_any:
        raise InputError(
            f"Task: the model's forward takes no argument {unknown[0]!r} (a field of the "
            f"inputs); it takes {named[:8]}; rename the field or leave it out of the dataset"
        )


def _converter_hint(data) -> str:
    """For a torch or Hugging Face dataset given as a task's data: the converter to use."""
    if hasattr(data, "column_names"):
        return " (fimo.data.from_hf_dataset converts a datasets.Dataset)"
    if isinstance(data, torch.utils.data.Dataset):
        return " (fimo.data.from_torch_dataset converts a torch Dataset)"
    return ""


def _shape_text(inputs) -> str:
    """The shape of inputs for messages: a tensor's, or each field's."""
    if isinstance(inputs, Fields):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
    return str(tuple(inputs.shape))


def _failing_frame(exc: BaseException) -> str:
    """'module.function' of the innermost frame outside torch where ``exc`` was raised."""
    where = "the model"
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if not module.startswith(("torch", "fimo", "contextlib")):
            where = f"{module}.{tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where


def _trunk_batch(trunk: nn.Module, inputs: torch.Tensor, budget: int = 2**26) -> int:
    """Instances per trunk batch: about ``budget`` bytes of output, between 1 and 4,096."""
    with torch.no_grad():
        out = trunk(inputs[:1])
    return int(max(1, min(4096, budget // max(1, out.numel() * out.element_size()))))


def _batched(
    module: nn.Module,
    inputs: torch.Tensor,
    size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    offset: int = 0,
    total: int = 0,
) -> torch.Tensor:
    parts = []
    for k in range(0, len(inputs), size):
        parts.append(module(inputs[k : k + size]))
        if progress is not None:
            progress(offset + min(k + size, len(inputs)), total or len(inputs))
    return torch.cat(parts)
