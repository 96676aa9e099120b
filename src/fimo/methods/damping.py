"""Damping λ for the second-order methods (paper §4, after Grosse et al. 2023).

The base value is the mean squared entry of the per-instance training gradients,
``Σ_i Σ_p g_ip² / (n · P)``; the paper's plots use 100 × that (1000 × for Energy). A method
takes either an absolute ``damping`` or a ``damping_factor`` times the base value.
"""

from __future__ import annotations

import numpy as np
import torch

from fimo.errors import InputError
from fimo.methods.gradients import per_instance_grads
from fimo.task import Task


def mean_squared_gradient(task: Task, indices=None, chunk_size: int | None = None) -> float:
    """Mean squared entry of per-instance training-loss gradients at the task's parameters."""
    idx = np.arange(len(task.train)) if indices is None else np.asarray(indices)
    params = task.params()
    sel = torch.as_tensor(idx, dtype=torch.long)
    x, y = task.train.inputs[sel], task.train.targets[sel]
    total = 0.0
    for _, g in per_instance_grads(task, x, y, params=params, chunk_size=chunk_size):
        total += float(g.double().pow(2).sum())
    return total / (len(idx) * task.num_params)


def resolve_damping(
    task: Task, damping: float | None, damping_factor: float, indices=None
) -> tuple[float, dict]:
    """λ and a record of how it was chosen (for ``Scores.settings``)."""
    if damping is not None:
        if not (isinstance(damping, int | float) and damping >= 0):
            raise InputError(f"damping: got {damping!r}; must be a number ≥ 0")
        return float(damping), {"damping": float(damping), "damping_rule": "given"}
    if not (isinstance(damping_factor, int | float) and damping_factor > 0):
        raise InputError(f"damping_factor: got {damping_factor!r}; must be a number > 0")
    base = mean_squared_gradient(task, indices)
    lam = float(damping_factor) * base
    return lam, {
        "damping": lam,
        "damping_rule": f"{damping_factor:g} x mean squared per-instance gradient entry",
        "damping_base": base,
    }
