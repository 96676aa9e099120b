"""LoRA further training: low-rank adapters on named Linear layers, the only thing trained.

:func:`with_lora` turns a task into one whose trainable parameters θ are low-rank adapters
added to chosen ``nn.Linear`` layers of the final model: each such layer computes

    y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ,   A (r × d_in), B (d_out × r),

with W and b frozen (held as buffers, never stacked) and B = 0 at the start, so that the
model is exactly the final model θ^f. Further training stacks only A and B across its runs,
and every method differentiates with respect to them (DESIGN.md ◆ Parameters). The wrapper
is a module swap, so the task, the engine and the methods need no change: A and B are
``nn.Linear`` layers themselves, which EK-FAC's layer hooks also see.

What the gradients mean: at B = 0 the gradient with respect to B is (α/r)·G Aᵀ, with G the
gradient with respect to W: a projection of each row of G onto r random directions. The
gradient with respect to A is (α/r)·Bᵀ G = 0. A is drawn N(0, 1/r) so that E[AᵀA] = I: with
α = r (the default) the first SGD step changes W by −η·G AᵀA, the full step −η·G in
expectation over A, and Grad-Dot at the start is an unbiased random-projection estimate of
Grad-Dot on the targeted weights (docs/lora.md).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn

from fimo.errors import InputError, closest
from fimo.settings import check_lora_settings
from fimo.task import Task

__all__ = ["LoraLinear", "check_lora_settings", "lora_targets", "with_lora"]

#: the keys of a ``further.lora`` table and what each holds


class LoraLinear(nn.Module):
    """A Linear layer with its weight and bias frozen as buffers and a low-rank adapter:
    ``x Wᵀ + b + scale · lora_B(lora_A(x))`` with ``scale = alpha / rank``.

    ``lora_A`` (rank × d_in) is drawn N(0, 1/rank) from ``generator`` (in float32, then cast,
    so that the draw does not depend on the layer's dtype); ``lora_B`` starts at zero, so
    the layer computes exactly what ``base`` does. ``weight`` and ``bias`` are the tensors of
    ``base`` (shared, not copied).

    >>> base = nn.Linear(3, 2)
    >>> layer = LoraLinear(base, rank=2, alpha=2.0, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(4, 3)
    >>> torch.equal(layer(x), base(x)), [n for n, _ in layer.named_parameters()]
    (True, ['lora_A.weight', 'lora_B.weight'])
    >>> sorted(n for n, _ in layer.named_buffers())
    ['bias', 'weight']
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, alpha / rank
        self.register_buffer("weight", base.weight.detach())
        self.register_buffer("bias", None if base.bias is None else base.bias.detach())
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        # skip_init: no draw from the global generator, whose stream further training pairs
        self.lora_A = nn.utils.skip_init(nn.Linear, self.in_features, rank, bias=False, **like)
        self.lora_B = nn.utils.skip_init(nn.Linear, rank, self.out_features, bias=False, **like)
        draw = torch.randn(rank, self.in_features, generator=generator) / math.sqrt(rank)
        with torch.no_grad():
            self.lora_A.weight.copy_(draw)
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's output plus the adapter's low-rank correction.

        >>> layer = LoraLinear(nn.Linear(2, 1, bias=False), 1, 1.0, torch.Generator())
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        ...     _ = layer.lora_A.weight.copy_(torch.tensor([[1.0, 2.0]]))
        ...     _ = layer.lora_B.weight.fill_(3.0)
        >>> layer(torch.tensor([[1.0, 1.0]]))  # 0 + 1 · 3 · (1 + 2)
        tensor([[9.]], grad_fn=<AddBackward0>)
        """
        frozen = nn.functional.linear(x, self.weight, self.bias)
        return frozen + self.scale * self.lora_B(self.lora_A(x))

    def extra_repr(self) -> str:
        """The sizes, as ``print(model)`` shows them.

        >>> LoraLinear(nn.Linear(3, 2), 1, 1.0, torch.Generator()).extra_repr()
        'in_features=3, out_features=2, rank=1'
        """
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _linear_names(model: nn.Module) -> list[str]:
    """Every Linear layer below the root (a bare Linear has no parent to swap it in)."""
    return [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]


def _matches(name: str, target: str) -> bool:
    """A module name matches a target by its full name or a dotted suffix, glob allowed."""
    return fnmatch.fnmatchcase(name, target) or fnmatch.fnmatchcase(name, f"*.{target}")


def lora_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names of the ``nn.Linear`` layers of ``model`` that ``targets`` select, in model
    order.

    A target selects a module by its full name or by a dotted suffix (``"query"`` selects
    ``"3.attention.self.query"``), shell-style patterns allowed (``"*"`` selects every
    Linear layer). A plain name must select Linear layers only; a pattern selects the Linear
    layers among the modules it matches. InputError for a target that selects none, naming
    the Linear layers there are.

    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> lora_targets(model, ["2"]), lora_targets(model, ["*"])
    (['2'], ['0', '2'])
    >>> lora_targets(model, ["1"])
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: lora: target '1' names a Tanh, not a Linear layer; Linear layers: '0', '2'
    """
    modules = dict(model.named_modules())
    if any(isinstance(m, LoraLinear) for m in modules.values()):
        raise InputError("lora: the model already holds LoRA adapters; wrap the original model")
    linear = _linear_names(model)
    listed = ", ".join(repr(n) for n in linear[:40]) + (", ..." if len(linear) > 40 else "")
    chosen: set[str] = set()
    for target in targets:
        hits = [n for n in modules if n and _matches(n, target)]
        other = [n for n in hits if n not in linear]
        if other and not any(ch in target for ch in "*?["):
            kind = type(modules[other[0]]).__name__
            raise InputError(
                f"lora: target {target!r} names a {kind}, not a Linear layer; "
                f"Linear layers: {listed or 'none'}"
            )
        found = [n for n in hits if n in linear]
        if not found:
            suffixes = {".".join(n.split(".")[k:]) for n in linear for k in range(n.count(".") + 1)}
            raise InputError(
                f"lora: target {target!r} selects no Linear layer{closest(target, suffixes)}; "
                f"Linear layers: {listed or 'none'}"
            )
        chosen.update(found)
    return [n for n in linear if n in chosen]


def _shallow_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters share the original tensors' storage
    (new Parameter objects, frozen, so that moving or freezing the copy leaves the original
    as it is) and whose buffers are the original buffers."""
    memo: dict[int, object] = {
        id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()
    }
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def with_lora(
    task: Task,
    rank: int = 8,
    targets: Sequence[str] = ("query", "value"),
    alpha: float | None = None,
    seed: int = 0,
) -> Task:
    """A task on ``task``'s final model with LoRA adapters on the ``targets`` Linear layers
    (:func:`lora_targets`), whose θ is the adapters alone.

    Each targeted layer becomes a :class:`LoraLinear` of rank ``rank`` and scale
    ``alpha / rank`` (``alpha`` defaults to ``rank``: scale 1); the A matrices are drawn
    from ``seed``, one generator for all layers in model order, the B matrices are zero, so
    the new task's model computes exactly what ``task.model`` does. All other parameters are
    frozen. ``task`` is left unchanged; the new model shares its weights' storage (no copy).

    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    >>> task = Task(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), data, data)
    >>> lora = with_lora(task, rank=2, targets=["*"])
    >>> lora.trainable
    ('0.lora_A.weight', '0.lora_B.weight', '2.lora_A.weight', '2.lora_B.weight')
    >>> lora.num_params  # A and B of both layers: 2·3 + 4·2 + 2·4 + 2·2
    26
    >>> torch.equal(lora.model(data.inputs), task.model(data.inputs))  # B = 0: the same model
    True
    """
    settings = check_lora_settings(
        {"rank": rank, "targets": targets, "seed": seed}
        | ({} if alpha is None else {"alpha": alpha}),
        "with_lora",
    )
    chosen = lora_targets(task.model, settings["targets"])
    model = _shallow_copy(task.model)
    generator = torch.Generator().manual_seed(settings["seed"])
    scale_alpha = float(settings.get("alpha", settings["rank"]))
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoraLinear(getattr(parent, child), settings["rank"], scale_alpha, generator)
        setattr(parent, child, layer)
    adapters = [n for n, p in model.named_parameters() if p.requires_grad]  # the rest: frozen
    return task.rebuilt(model, trainable=adapters)
