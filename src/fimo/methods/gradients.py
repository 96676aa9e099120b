"""Per-instance gradients with ``torch.func``, in chunks sized from a memory budget.

The budget mechanism is shared by the other methods: :func:`fit_count` says how many items of
a given size fit in a budget, :func:`available_memory` what the machine can still give.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch.func import grad, vmap

from fimo.data.base import instance_size
from fimo.errors import InputError
from fimo.task import Task, eval_mode

#: Bytes one chunk of flattened per-instance gradients may take, by default.
DEFAULT_BUDGET = 256 * 2**20
#: Per-sample gradients run fastest in moderate chunks on a CPU (ECOSYSTEM.md §4).
MAX_CHUNK = 256
#: Bytes computing one instance's gradient under ``vmap`` holds per number of its forward pass
#: (:func:`activation_width`), in units of the item size, besides two copies of the gradient
#: (the dict of tensors and the flattened row). Measured from the growth of the peak resident
#: memory with the chunk (float32, chunks of 10-200 instances): 3.9 for all-MiniLM-L6-v2 run by
#: transformers with LoRA on its 36 Linear layers (the ``reviews-hf`` preset: 32 MB per
#: instance, so its chunks of 202, sized from the gradients alone, peaked at 6.9 GB), 1.3 for
#: the top layer of fimo's own MiniLM on its cached trunk, 0.7 for an MLP.
GRAD_BYTES_PER_ACTIVATION = 4.0


def fit_count(item_bytes: float, budget: int = DEFAULT_BUDGET, cap: int | None = None) -> int:
    """How many items of ``item_bytes`` bytes fit in ``budget`` bytes: at least 1, at most cap.

    >>> fit_count(100, budget=1000), fit_count(100, budget=1000, cap=4), fit_count(10**6, 1000)
    (10, 4, 1)
    """
    count = int(budget // max(1.0, float(item_bytes)))
    if cap is not None:
        count = min(count, int(cap))
    return max(1, count)


def chunk_size_for(num_params: int, itemsize: int = 4, budget: int = DEFAULT_BUDGET) -> int:
    """How many flattened per-instance gradients fit in ``budget`` bytes (at least 1).

    >>> chunk_size_for(1_000), chunk_size_for(10_000_000)  # float32: at most MAX_CHUNK
    (256, 6)
    """
    return fit_count(num_params * itemsize, budget, MAX_CHUNK)


def activation_width(task: Task, x: torch.Tensor, params=None) -> int:
    """Numbers one instance produces in a forward pass: its input, and the outputs of every
    module without submodules (a proxy for the activations a product keeps per instance).

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> activation_width(task, X)  # 2 inputs and 1 output of the Linear layer
    3
    """
    total = [instance_size(x[:1])]

    def count(module, inputs, output):
        for out in output if isinstance(output, tuple | list) else (output,):
            if isinstance(out, torch.Tensor):
                total[0] += int(out.numel())

    leaves = [m for m in task.model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad(), eval_mode(task.model):
            out = task.outputs(task.params() if params is None else params, x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(total[0], instance_size(x[:1]) + int(out.numel()))


def grad_chunk_size(
    task: Task, inputs, params=None, budget: int = DEFAULT_BUDGET, outputs: int = 1
) -> int:
    """How many instances' gradients one chunk computes within ``budget`` bytes: each holds
    its gradient twice and ``GRAD_BYTES_PER_ACTIVATION`` numbers per number of its forward
    pass (:func:`activation_width` of the first of ``inputs``), at most ``MAX_CHUNK``; all of
    it ``outputs`` times for a Jacobian of that many rows per instance (EK-FAC's
    pseudo-gradients).

    Sizing from the gradients alone (:func:`chunk_size_for`) ignores the activations, which
    dominate for a deep model with few trainable parameters (LoRA adapters).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)  # 8 parameters, 3 + 2 numbers forward
    >>> grad_chunk_size(task, data.inputs, budget=4 * (2 * 8 + 4 * 5) * 10)  # float32
    10
    """
    params = task.params() if params is None else params
    itemsize = next(iter(params.values())).element_size()
    width = activation_width(task, inputs[:1], params)
    per_instance = itemsize * outputs * (2 * task.num_params + GRAD_BYTES_PER_ACTIVATION * width)
    return fit_count(per_instance, budget, MAX_CHUNK)


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None when the system does not say.

    The smaller of the kernel's ``MemAvailable`` (/proc/meminfo) and the room left under a
    cgroup memory limit (v2 ``memory.max`` − ``memory.current``, or v1 ``limit_in_bytes`` −
    ``usage_in_bytes``), where those files exist.

    >>> room = available_memory()
    >>> room is None or room >= 0
    True
    """
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        if not (os.path.exists(limit_file) and os.path.exists(usage_file)):
            continue
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
    return min(found) if found else None


def flatten(tree: dict[str, torch.Tensor], batch_dims: int = 1) -> torch.Tensor:
    """Concatenate the leaves of a gradient dict into one (B, P) matrix (parameter order kept).

    >>> flatten({"weight": torch.ones(2, 2, 3), "bias": torch.zeros(2, 2)})
    tensor([[1., 1., 1., 1., 1., 1., 0., 0.],
            [1., 1., 1., 1., 1., 1., 0., 0.]])
    """
    return torch.cat([g.reshape(*g.shape[:batch_dims], -1) for g in tree.values()], dim=-1)


def check_chunk_size(chunk_size) -> None:
    """InputError unless ``chunk_size`` is None (sized from the memory budget) or a whole
    number ≥ 1, the settings' check for methods called from Python.

    >>> check_chunk_size(-1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: chunk_size: got -1; must be a whole number ≥ 1 (or None: ...)
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputError(
            f"chunk_size: got {chunk_size!r}; must be a whole number ≥ 1 (or None: sized from "
            "the memory budget)"
        )


def per_instance_grads(
    task: Task,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    measure: bool = False,
    chunk_size: int | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, G)`` with G (rows, P): gradients of each instance's loss (or of g).

    The model is put in eval mode (gradients of the final model, no dropout) while the
    chunks are drawn; each module's own mode comes back when the generator ends or is closed.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> chunks = per_instance_grads(task, data.inputs, data.targets, chunk_size=3)
    >>> [(rows, G.shape) for rows, G in chunks]
    [(slice(0, 3, None), torch.Size([3, 8])), (slice(3, 5, None), torch.Size([2, 8]))]
    """
    params = task.params() if params is None else params
    fn = task.measure if measure else task.losses

    def one(p, x, y):
        return fn(p, x.unsqueeze(0), y.unsqueeze(0)).squeeze(0)

    grads = over_instances(grad(one), task)
    check_chunk_size(chunk_size)
    if len(inputs) == 0:
        return
    size = chunk_size or grad_chunk_size(task, inputs, params)
    with task.eval_mode():
        for start in range(0, len(inputs), size):
            rows = slice(start, min(start + size, len(inputs)))
            yield rows, flatten(grads(params, inputs[rows], targets[rows]))


def over_instances(fn, task: Task):
    """``fn(params, x, y)`` of one instance mapped over the rows of ``x`` and ``y``: by
    ``vmap``, or by a loop when the task's model cannot go through ``vmap``
    (:meth:`fimo.Task.per_instance_path`); the results stacked along a new leading axis.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(3, 2), torch.randint(0, 2, (3,)))
    >>> task = Task(torch.nn.Linear(2, 2), data, data, per_instance="loop")
    >>> mapped = over_instances(lambda p, x, y: (p["weight"] @ x)[y], task)
    >>> torch.allclose(mapped(task.params(), data.inputs, data.targets),
    ...                (data.inputs @ task.model.weight.T).gather(1, data.targets[:, None])[:, 0])
    True
    """
    return over_rows(fn, task, in_dims=(None, 0, 0))


def over_rows(fn, task: Task, in_dims: int | tuple = 0):
    """``fn`` mapped over the leading axis of the arguments whose ``in_dims`` entry is 0 (None:
    passed whole), results stacked along a new leading axis: ``vmap(fn, in_dims)``, or a loop
    over the rows when the task's per-instance path is the loop
    (:meth:`fimo.Task.per_instance_path`), so that no ``vmap`` runs the model of such a task.
    Arguments may be tensors or pytrees of them (dicts, :class:`fimo.data.Fields`).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(3, 2), torch.randint(0, 2, (3,)))
    >>> task = Task(torch.nn.Linear(2, 2), data, data, per_instance="loop")
    >>> V = torch.randn(4, 2)
    >>> torch.allclose(over_rows(lambda v, w: v @ w, task, (0, None))(V, V[0]), V @ V[0])
    True
    """
    if task.per_instance_path() == "vmap":
        return vmap(fn, in_dims=in_dims)

    def looped(*args):
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        mapped = [a for a, d in zip(args, dims, strict=True) if d is not None]
        count = len(pytree.tree_leaves(mapped[0])[0])
        each = [
            fn(*(a if d is None else _row(a, i) for a, d in zip(args, dims, strict=True)))
            for i in range(count)
        ]
        return pytree.tree_map(lambda *parts: torch.stack(parts), *each)

    return looped


def _row(tree, i: int):
    """Row ``i`` of every tensor of a pytree (a tensor, a dict of tensors, Fields)."""
    return pytree.tree_map(lambda t: t[i], tree)


def gradient_matrix(task: Task, data, indices, measure: bool = False, **kw) -> torch.Tensor:
    """All per-instance gradients of ``data[indices]`` as one (len(indices), P) matrix.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> G = gradient_matrix(task, data, [4, 1])
    >>> loss = task.loss_fn(task.model(data.inputs[4:5]), data.targets[4:5]).sum()
    >>> G.shape, torch.allclose(G[0, :6], torch.autograd.grad(loss, task.model.weight)[0].ravel())
    (torch.Size([2, 8]), True)
    """
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    x, y = data.inputs[idx], data.targets[idx]
    return torch.cat([g for _, g in per_instance_grads(task, x, y, measure=measure, **kw)])
