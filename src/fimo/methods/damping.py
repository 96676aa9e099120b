"""Damping λ for the second-order methods (paper §4, after Grosse et al. 2023).

The base value is the mean squared entry of the per-instance training gradients,
``Σ_i Σ_p g_ip² / (n · P)``; the paper's plots use 100 × that (1000 × for Energy). A method
takes either an absolute ``damping`` or a ``damping_factor`` times the base value.

The base costs a pass of per-instance gradients over the training data. It is memoised on the
task, keyed by a digest of everything it depends on (the model's weights and buffers, the
training rows and their inputs and targets, the dtype, the chunk size), so the methods of one
run share one pass and a changed model or subset never reuses a stale value.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from fimo.data.base import tensors_of
from fimo.errors import InputError
from fimo.methods.ghost import capture_rows, dense_ghost_plan, ghost_norms
from fimo.methods.gradients import per_instance_grads
from fimo.task import Task


def mean_squared_gradient(task: Task, indices=None, chunk_size: int | None = None) -> float:
    """Mean squared entry of per-instance training-loss gradients at the task's parameters.

    Computed once per (weights, training rows, dtype, chunk size) and task (module docstring).

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> model = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    >>> _ = nn.init.zeros_(model[0].weight)
    >>> task = Task(model, ArrayDataset(X, torch.ones(2, 1, dtype=torch.float64)),
    ...             ArrayDataset(X, torch.ones(2, 1, dtype=torch.float64)), loss="mse")
    >>> mean_squared_gradient(task)  # gradients −2x: (4 + 16) / (2 instances · 2 weights)
    5.0
    """
    idx = np.arange(len(task.train)) if indices is None else np.asarray(indices)
    sel = torch.as_tensor(idx, dtype=torch.long)
    x, y = task.train.inputs[sel], task.train.targets[sel]
    key = _digest(task, x, y, idx, chunk_size)
    memo = task.__dict__.setdefault("_damping_bases", {})
    if key not in memo:
        memo[key] = _squared_norms_sum(task, x, y, idx, chunk_size) / (len(idx) * task.num_params)
    return memo[key]


def _squared_norms_sum(task: Task, x, y, idx: np.ndarray, chunk_size) -> float:
    """Σ_i ‖∇ℓ_i‖² over the rows ``idx``: from layer factors when every trainable parameter
    is a Linear layer's met once per instance (no gradients formed), else from formed
    per-instance gradients, chunk by chunk."""
    layers = dense_ghost_plan(task)
    if layers is not None:
        parts = capture_rows(task, layers, task.train, idx, False, chunk_size)
        return sum(float(ghost_norms(f).double().pow(2).sum()) for _, f in parts)
    total = 0.0
    for _, g in per_instance_grads(task, x, y, params=task.params(), chunk_size=chunk_size):
        total += float(g.double().pow(2).sum())
    return total


def _digest(task: Task, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, chunk_size) -> str:
    """A digest of what the damping base depends on: every tensor of the model's state (by
    name), the trainable names, the rows and their data, the dtype and the chunk size."""
    h = hashlib.blake2b(digest_size=20)
    dtypes = [str(t.dtype) for t in tensors_of(x)]
    h.update(repr((task.trainable, dtypes, chunk_size, task.loss_name)).encode())
    for name, t in task.model.state_dict().items():
        h.update(name.encode())
        h.update(_bytes(t))
    for t in (*tensors_of(x), y, torch.as_tensor(idx, dtype=torch.long)):
        h.update(_bytes(t))
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return (
        repr((t.dtype, tuple(t.shape))).encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()
    )


def resolve_damping(
    task: Task, damping: float | None, damping_factor: float, indices=None
) -> tuple[float, dict]:
    """λ and a record of how it was chosen (for ``Scores.settings``).

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    >>> _ = nn.init.zeros_(model[0].weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> resolve_damping(task, damping=0.01, damping_factor=100.0)
    (0.01, {'damping': 0.01, 'damping_rule': 'given'})
    >>> lam, record = resolve_damping(task, damping=None, damping_factor=100.0)
    >>> lam, record["damping_base"]  # 100 × the mean squared gradient entry, 5
    (500.0, 5.0)
    >>> resolve_damping(task, damping=-1.0, damping_factor=100.0)
    Traceback (most recent call last):
    fimo.errors.InputError: damping: got -1.0; must be a number ≥ 0
    """
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
