"""The settings of final and further training, checked in full when they are made.

They hold plain values and import no torch, so that a configuration is checked (and a
mistake refused) before the heavy libraries load; the code that trains reads them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from fimo.errors import InputError, check_choice, check_keys

#: further training's optimizers (:func:`fimo.further.optim.make_optimizer`)
OPTIMIZERS = ("sgd", "adam", "adamw")

#: how a left-out instance leaves further training (:mod:`fimo.further.plan`)
SCHEMES = ("drop", "mask", "downweight")


@dataclass
class FurtherSettings:
    """How further training runs (recorded in the run directory and its fingerprint).

    ``record_every``: also record the test losses every k optimizer steps (0: only at the end
    of each epoch). ``record_steps``: also record after each of these step counts. ``max_steps``: stop after this many steps (None: run all ``epochs``).
    ``engine``: ``"auto"`` uses the fused batched-matmul path for plain MLPs
    (:mod:`fimo.further.fast`, and in ``unrolled`` :mod:`fimo.further.fused_adjoint`) and
    ``vmap(grad)`` (``torch.func``) otherwise; ``"generic"`` always the latter.

    >>> s = FurtherSettings(lr=0.01, batch_size=32, record_steps=[8, 2, 8])
    >>> s.scheme, s.epochs, s.record_steps  # record_steps sorted, duplicates dropped
    ('drop', 2, [2, 8])
    >>> FurtherSettings(momentum=1.0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: further.momentum: got 1.0; must be in [0, 1)
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
        self._check_numbers()
        self._check_lists()

    def _check_numbers(self) -> None:
        """Counts, the learning rate, the optimizer's constants: each in its allowed range."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"further.{name}: got {value!r}; must be a whole number ≥ 1")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < float("inf")):
            raise InputError(f"further.lr: got {self.lr!r}; must be a positive number")
        if self.lr < 1e-30:  # steps this small vanish against the weights (or are subnormal)
            raise InputError(
                f"further.lr: got {self.lr!r}; must be at least 1e-30 (smaller steps vanish in "
                "floating point)"
            )
        for name in ("weight_decay", "clip_norm", "eps", "record_every"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and 0 <= value < float("inf")):
                raise InputError(f"further.{name}: got {value!r}; must be a finite number ≥ 0")
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < 1):
            raise InputError(f"further.momentum: got {self.momentum!r}; must be in [0, 1)")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, numbers.Integral) or self.max_steps < 1
        ):
            raise InputError(
                f"further.max_steps: got {self.max_steps!r}; must be a whole number ≥ 1 (or "
                "absent, to run all epochs)"
            )
        if self.nesterov and self.momentum <= 0:
            raise InputError("further.nesterov: needs further.momentum > 0")

    def _check_lists(self) -> None:
        """``betas`` (two numbers in [0, 1)) and ``record_steps`` (whole numbers ≥ 1, sorted)."""
        betas = tuple(self.betas) if isinstance(self.betas, list | tuple) else ()
        if len(betas) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise InputError(
                f"further.betas: got {self.betas!r}; expected two numbers in [0, 1), "
                "e.g. [0.9, 0.999]"
            )
        self.betas = tuple(float(b) for b in betas)
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
        """The settings as plain values (``betas`` a list), for TOML files and fingerprints.

        >>> d = FurtherSettings(optimizer="adam").as_dict()
        >>> d["optimizer"], d["betas"], d["record_steps"]
        ('adam', [0.9, 0.999], [])
        """
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def transform(self):
        """The optimizer these settings name (:func:`fimo.further.optim.make_optimizer`).

        >>> import torch
        >>> opt = FurtherSettings(lr=0.5).transform()
        >>> params = {"w": torch.ones(2)}
        >>> updates, _ = opt.update({"w": torch.tensor([1.0, -2.0])}, opt.init(params), params)
        >>> updates["w"].tolist()  # plain SGD: −lr · gradient
        [-0.5, 1.0]
        """
        from fimo.further.optim import make_optimizer

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
class TrainingSettings:
    """How final training runs (the ``[training]`` table of a configuration), checked here.

    >>> TrainingSettings(optimizer="adam", lr=1e-3).as_dict()["optimizer"]
    'adam'
    """

    optimizer: str = "sgd"
    lr: float = 1e-2
    epochs: int = 100
    batch_size: int = 128
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    # parameters (names or patterns) that final training updates; empty: the task's trainable
    trainable: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_choice("training.optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        if not (isinstance(self.lr, int | float) and 0 < self.lr < float("inf")):
            raise InputError(f"training.lr: got {self.lr!r}; must be a positive number")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"training.{name}: got {value!r}; must be a whole number ≥ 1")

    def as_dict(self) -> dict:
        """The settings as a plain dict (for the run record).

        >>> TrainingSettings().as_dict()["epochs"]
        100
        """
        return asdict(self)


#: the keys of ``further.lora`` (:mod:`fimo.lora`)
LORA_KEYS = ("rank", "targets", "alpha", "seed")


def check_lora_settings(table, where: str = "further.lora") -> dict:
    """``table`` checked: ``rank`` a whole number ≥ 1, ``targets`` a non-empty list of
    strings, optional ``alpha`` a positive number and ``seed`` a whole number ≥ 0; returns it
    as a plain dict. InputError (naming ``where``) otherwise.

    >>> check_lora_settings({"rank": 8, "targets": ["query", "value"]})
    {'rank': 8, 'targets': ['query', 'value']}
    >>> check_lora_settings({"rank": 0, "targets": ["query"]})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: further.lora.rank: got 0; must be a whole number ≥ 1
    """
    if not isinstance(table, dict):
        raise InputError(f"{where}: got {table!r}; expected a table {{rank = 8, targets = [...]}}")
    check_keys(where, table, LORA_KEYS, ordered=False)
    for key in ("rank", "targets"):
        if key not in table:
            raise InputError(f"{where}: {key} is missing; e.g. {{rank = 8, targets = ['query']}}")
    _check_whole(where, "rank", table["rank"], 1)
    targets = table["targets"]
    if (
        not isinstance(targets, list | tuple)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise InputError(
            f"{where}.targets: got {targets!r}; expected a non-empty list of module names or "
            "patterns, e.g. ['query', 'value']"
        )
    alpha = table.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < math.inf:
        raise InputError(f"{where}.alpha: got {alpha!r}; must be a positive number")
    _check_whole(where, "seed", table.get("seed", 0), 0)
    return {**table, "targets": list(targets)}


def _check_whole(where: str, key: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{where}.{key}: got {value!r}; must be a whole number ≥ {least}")
