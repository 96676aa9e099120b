"""A fused path for the common case: an MLP (``nn.Sequential`` of Linear and ReLU/Tanh).

The generic engine computes each step as ``vmap(grad(run_loss))`` over the run axis. For an
MLP the same gradients come from a handful of batched matrix products over the run axis
(``torch.baddbmm``/``torch.bmm``), with the backward pass written out by hand: no autograd
graph, no vmap bookkeeping. ``tests/test_fast.py`` checks that both paths give the same
gradients; ``benchmarks/further_training.py`` measures the difference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fimo.task import LossKind, Task

_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "identity"}


def mlp_plan(task: Task) -> list[tuple[str, str | None, str]] | None:
    """[(weight name, bias name or None, activation after the layer)] of a plain MLP, or None
    when the fused path does not apply (the generic engine and the generic adjoint take it).

    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> mlp_plan(Task(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), data, data))
    [('0.weight', '0.bias', 'tanh'), ('2.weight', '2.bias', 'identity')]
    >>> mlp_plan(Task(nn.Sequential(nn.Linear(3, 5), nn.Dropout(), nn.Linear(5, 2)), data, data))
    """
    model = task.model
    if not isinstance(model, nn.Sequential) or task.loss_kind not in (
        LossKind.CROSS_ENTROPY,
        LossKind.SQUARED_ERROR,
    ):
        return None
    layers: list[list] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            bias = f"{name}.bias" if module.bias is not None else None
            layers.append([f"{name}.weight", bias, "identity"])
        elif type(module) in _ACTIVATIONS and layers and layers[-1][2] == "identity":
            layers[-1][2] = _ACTIVATIONS[type(module)]
        elif type(module) is nn.Identity:
            continue
        else:
            return None  # dropout, normalisation, convolutions...: the generic path
    if not layers:
        return None
    names = {n for w, b, _ in layers for n in (w, b) if n is not None}
    if names != set(task.trainable) or dict(model.named_buffers()):
        return None  # frozen parts or buffers: the generic path handles them
    return [tuple(layer) for layer in layers]


def fused_mlp_grads(task: Task) -> Callable | None:
    """``grads(params, x, y, w) -> dict`` equal to ``vmap(grad(Σ_b w·ℓ))``, or None.

    ``params`` are stacked (R, ...), ``x`` (R, B, d), ``y`` (R, B), ``w`` (R, B).

    For one run of a linear model with squared error the gradient is Σ_b w_b·2(x_b·W − y_b)x_b:

    >>> from fimo.data import ArrayDataset
    >>> X, Y = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]])
    >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
    ...             ArrayDataset(X, Y), loss="mse")
    >>> grads = fused_mlp_grads(task)
    >>> params = {"0.weight": torch.tensor([[[1.0, 1.0]]])}  # R = 1 run
    >>> x, y, w = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[1.0]]), torch.tensor([[0.5]])
    >>> grads(params, x, y, w)["0.weight"].tolist()  # 0.5 · 2 · (3 − 1) · [1, 2]
    [[[2.0, 4.0]]]
    >>> _ = task.model.append(nn.Dropout(0.1))  # not an MLP of Linear and ReLU/Tanh any more
    >>> fused_mlp_grads(task) is None  # the generic path
    True
    """
    plan = mlp_plan(task)
    if plan is None:
        return None
    cross_entropy = task.loss_kind == LossKind.CROSS_ENTROPY

    def grads(params, x, y, w):
        # forward: keep each layer's input; ReLU in place (its mask is recovered from a > 0)
        acts = [x]
        a = x
        for wname, bname, act in plan:
            W = params[wname]
            if bname is None:
                a = torch.bmm(a, W.transpose(1, 2))
            else:
                a = torch.baddbmm(params[bname].unsqueeze(1), a, W.transpose(1, 2))
            if act == "relu":
                a.clamp_min_(0)
            elif act == "tanh":
                a.tanh_()
            acts.append(a)
        out = acts[-1]
        if cross_entropy:
            delta = torch.softmax(out, dim=-1)
            delta.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(delta[..., :1], -1.0))
        else:  # squared error summed over outputs: d/dout = 2(out - y)
            delta = 2 * (out - y.reshape(out.shape))
        _backward_activation(delta, out, plan[-1][2])
        delta.mul_(w.unsqueeze(-1))
        result = {}
        for k in range(len(plan) - 1, -1, -1):
            wname, bname, _ = plan[k]
            result[wname] = torch.bmm(delta.transpose(1, 2), acts[k])
            if bname is not None:
                result[bname] = delta.sum(1)
            if k == 0:
                break
            delta = torch.bmm(delta, params[wname])
            _backward_activation(delta, acts[k], plan[k - 1][2])
        return {name: result[name] for name in params}

    return grads


def _backward_activation(delta: torch.Tensor, activation: torch.Tensor, kind: str) -> None:
    """delta ← delta · f'(z), in place, from the activation's output a = f(z)."""
    if kind == "relu":
        delta.mul_(activation > 0)
    elif kind == "tanh":
        delta.mul_(1 - activation**2)
