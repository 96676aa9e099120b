"""Per-instance gradients with ``torch.func``, in chunks sized from a memory budget."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.func import grad, vmap

from fimo.task import Task

#: Bytes one chunk of flattened per-instance gradients may take, by default.
DEFAULT_BUDGET = 256 * 2**20
#: Per-sample gradients run fastest in moderate chunks on a CPU (ECOSYSTEM.md §4).
MAX_CHUNK = 256


def chunk_size_for(num_params: int, itemsize: int = 4, budget: int = DEFAULT_BUDGET) -> int:
    """How many flattened per-instance gradients fit in ``budget`` bytes (at least 1)."""
    return int(max(1, min(MAX_CHUNK, budget // max(1, num_params * itemsize))))


def flatten(tree: dict[str, torch.Tensor], batch_dims: int = 1) -> torch.Tensor:
    """Concatenate the leaves of a gradient dict into one (B, P) matrix (parameter order kept)."""
    return torch.cat([g.reshape(*g.shape[:batch_dims], -1) for g in tree.values()], dim=-1)


def per_instance_grads(
    task: Task,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    measure: bool = False,
    chunk_size: int | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, G)`` with G (rows, P): gradients of each instance's loss (or of g).

    The model is put in eval mode (gradients of the final model, no dropout).
    """
    params = task.params() if params is None else params
    fn = task.measure if measure else task.losses

    def one(p, x, y):
        return fn(p, x.unsqueeze(0), y.unsqueeze(0)).squeeze(0)

    grads = vmap(grad(one), in_dims=(None, 0, 0))
    size = chunk_size or chunk_size_for(task.num_params, inputs.element_size())
    was_training = task.model.training
    task.model.eval()
    try:
        for start in range(0, len(inputs), size):
            rows = slice(start, min(start + size, len(inputs)))
            yield rows, flatten(grads(params, inputs[rows], targets[rows]))
    finally:
        task.model.train(was_training)


def gradient_matrix(task: Task, data, indices, measure: bool = False, **kw) -> torch.Tensor:
    """All per-instance gradients of ``data[indices]`` as one (len(indices), P) matrix."""
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    x, y = data.inputs[idx], data.targets[idx]
    return torch.cat([g for _, g in per_instance_grads(task, x, y, measure=measure, **kw)])
