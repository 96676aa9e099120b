"""The in-memory dataset that every task uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fimo.errors import InputError


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and targets held as tensors, one row per instance.

    ``inputs`` has shape (n, ...) and ``targets`` shape (n,) (class indices, int64) or
    (n,) / (n, k) floats for regression. ``feature_names`` names the columns of a tabular
    ``inputs``; ``info`` carries anything a loader wants to keep (label names, raw rows).

    >>> ds = ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    >>> len(ds), ds[[0, 2]].targets.tolist()
    (3, [0, 0])
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    feature_names: tuple[str, ...] | None = None
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not isinstance(self.inputs, torch.Tensor) or not isinstance(self.targets, torch.Tensor):
            raise InputError(
                "ArrayDataset: inputs and targets must be torch tensors; "
                f"got {type(self.inputs).__name__} and {type(self.targets).__name__} "
                "(torch.as_tensor converts numpy arrays)"
            )
        if self.inputs.dim() == 0 or self.targets.dim() == 0:
            raise InputError(
                f"ArrayDataset: inputs and targets need one row per instance; got shapes "
                f"{tuple(self.inputs.shape)} and {tuple(self.targets.shape)}"
            )
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise InputError(
                f"ArrayDataset: inputs have {self.inputs.shape[0]} rows but targets have "
                f"{self.targets.shape[0]}; they must match"
            )
        for what, dtype in (("inputs", self.inputs.dtype), ("targets", self.targets.dtype)):
            if dtype == torch.bool or dtype.is_complex:
                raise InputError(
                    f"ArrayDataset: {what} have dtype {dtype}; expected real numbers "
                    "(floats, or integer class indices for targets)"
                )
        for what, values in (("inputs", self.inputs), ("targets", self.targets)):
            if values.is_floating_point() and not torch.isfinite(values).all():
                bad = (~torch.isfinite(values)).reshape(len(values), -1).any(1)
                rows = torch.nonzero(bad).flatten()[:5].tolist()
                raise InputError(
                    f"ArrayDataset: {what} contain NaN or infinite values (rows {rows} ...); "
                    "impute or drop them first"
                )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, index) -> ArrayDataset:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ArrayDataset(self.inputs[index], self.targets[index], self.feature_names, self.info)

    def to(self, device=None, dtype=None) -> ArrayDataset:
        """Move to a device; cast floating inputs (and float targets) to ``dtype``.

        >>> ds = ArrayDataset(torch.ones(2, 3), torch.tensor([0.5, 1.5])).to(dtype=torch.float64)
        >>> ds.inputs.dtype, ds.targets.dtype
        (torch.float64, torch.float64)
        >>> labelled = ArrayDataset(torch.ones(2, 3), torch.tensor([0, 1]))
        >>> labelled.to(dtype=torch.float64).targets.dtype  # class indices stay int64
        torch.int64
        """
        inputs = self.inputs.to(device)
        targets = self.targets.to(device)
        if dtype is not None:
            if inputs.is_floating_point():
                inputs = inputs.to(dtype)
            if targets.is_floating_point():
                targets = targets.to(dtype)
        return ArrayDataset(inputs, targets, self.feature_names, self.info)


def check_pair(train, test, source: str = "data") -> None:
    """Check a (train, test) pair before any work: types, sizes, features and targets agree.

    ``source`` names where the data came from in messages (``"data.factory"``, ...).

    >>> x = torch.zeros(4, 3)
    >>> check_pair(ArrayDataset(x, torch.tensor([0, 1, 0, 1])), ArrayDataset(x, torch.zeros(4)))
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data: train targets are class indices (torch.int64) but test targets are floats (torch.float32); use one kind for both
    """
    for which, data in (("train", train), ("test", test)):
        if not isinstance(data, ArrayDataset):
            raise InputError(
                f"{source}: {which} must be a fimo ArrayDataset; got {type(data).__name__}"
            )
        if len(data) == 0:
            raise InputError(f"{source}: the {which} set is empty")
    if train.inputs.shape[1:] != test.inputs.shape[1:]:
        raise InputError(
            f"{source}: train inputs have shape {tuple(train.inputs.shape)} but test inputs "
            f"{tuple(test.inputs.shape)}; every instance must have the same shape"
        )
    kinds = ["floats" if d.targets.is_floating_point() else "class indices" for d in (train, test)]
    if kinds[0] != kinds[1]:
        raise InputError(
            f"{source}: train targets are {kinds[0]} ({train.targets.dtype}) but test targets "
            f"are {kinds[1]} ({test.targets.dtype}); use one kind for both"
        )
    if train.targets.shape[1:] != test.targets.shape[1:]:
        raise InputError(
            f"{source}: train targets have shape {tuple(train.targets.shape)} but test targets "
            f"{tuple(test.targets.shape)}; every instance's target must have the same shape"
        )
    if kinds[0] == "class indices":
        for which, data in (("train", train), ("test", test)):
            if int(data.targets.min()) < 0:
                raise InputError(
                    f"{source}: {which} labels include {int(data.targets.min())}; class "
                    "indices must be 0, 1, ..., k-1"
                )


def check_indices(setting: str, values, size: int, what: str = "instances") -> np.ndarray:
    """``values`` as distinct int64 positions in ``range(size)``, or an InputError naming
    ``setting``, what came and what is allowed.

    >>> check_indices("left_out", [3, 1], 5).tolist()
    [3, 1]
    """
    try:
        raw = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{setting}: cannot read {values!r} as indices ({exc})") from None
    if raw.ndim > 1:
        raise InputError(
            f"{setting}: got nested lists (shape {raw.shape}); give a flat list of indices"
        )
    raw = raw.reshape(-1)
    if raw.dtype == np.bool_:
        raise InputError(
            f"{setting}: got a boolean mask; give the positions instead (numpy.flatnonzero)"
        )
    with np.errstate(invalid="ignore"):
        whole = raw.dtype.kind in "iu" or (
            raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (np.mod(raw, 1) == 0)))
        )
    if not whole:
        raise InputError(
            f"{setting}: got {raw[:5].tolist()}{' ...' if raw.size > 5 else ''}; "
            "expected whole numbers (indices)"
        )
    outside = raw[(raw < 0) | (raw >= size)]
    if outside.size:
        raise InputError(
            f"{setting}: index {outside[0]:.6g} is out of range; there are {size} {what} "
            f"(indices 0 to {size - 1})"
        )
    out = raw.astype(np.int64)
    unique, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"{setting}: index {int(unique[counts > 1][0])} appears more than once; "
            "each index may appear once"
        )
    return out
