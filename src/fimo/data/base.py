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
                f"got {type(self.inputs).__name__} and {type(self.targets).__name__}"
            )
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise InputError(
                f"ArrayDataset: inputs have {self.inputs.shape[0]} rows but targets have "
                f"{self.targets.shape[0]}; they must match"
            )
        if self.inputs.is_floating_point() and not torch.isfinite(self.inputs).all():
            bad = (~torch.isfinite(self.inputs)).reshape(len(self.inputs), -1).any(1)
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise InputError(
                f"ArrayDataset: inputs contain NaN or infinite values (rows {rows} ...); "
                "impute or drop them first"
            )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, index) -> ArrayDataset:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ArrayDataset(self.inputs[index], self.targets[index], self.feature_names, self.info)

    def to(self, device=None, dtype=None) -> ArrayDataset:
        """Move to a device; cast floating inputs (and float targets) to ``dtype``."""
        inputs = self.inputs.to(device)
        targets = self.targets.to(device)
        if dtype is not None:
            if inputs.is_floating_point():
                inputs = inputs.to(dtype)
            if targets.is_floating_point():
                targets = targets.to(dtype)
        return ArrayDataset(inputs, targets, self.feature_names, self.info)
