"""First-order methods: Grad-Dot and Grad-Cos (paper §3, the λ → ∞ end of the unified view).

Grad-Dot scores a pair by ∇g(z_test)·∇ℓ(z_i) at the final weights: one step of gradient
descent of size η without z_i changes the test loss by about (η/n)·∇g·∇ℓ_i (plus a term common
to every i, which centring removes), so positive = helpful, the gold standard's sign.
Grad-Cos divides by both gradient norms.
"""

from __future__ import annotations

import torch

from fimo.methods.common import score_matrix, test_and_train
from fimo.methods.gradients import gradient_matrix
from fimo.scores import Scores
from fimo.task import Task


def _unit_rows(G: torch.Tensor) -> torch.Tensor:
    """Each row of G divided by its norm (a zero row stays zero)."""
    return G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _scores(task: Task, test, train, normalise: bool, chunk_size=None, progress=None):
    method = "grad_cos" if normalise else "grad_dot"
    test, train = test_and_train(task, test, train, method)
    g_test = gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size)
    if normalise:
        g_test = _unit_rows(g_test)
    out = score_matrix(
        task,
        train,
        g_test,
        transform=_unit_rows if normalise else None,
        per_n=False,
        progress=progress,
        chunk_size=chunk_size,
    )
    return test, train, out


def grad_dot(task: Task, test, train, *, progress=None, chunk_size: int | None = None) -> Scores:
    """Grad-Dot: ∇g(z_test)ᵀ∇ℓ(z_i) at the final weights, for every (test, train) pair.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = grad_dot(task, test=range(4), train=range(20))
    >>> scores.values.shape, bool((scores.values.diagonal() >= 0).all())  # ‖∇ℓ‖² ≥ 0
    ((4, 20), True)
    """
    test, train, values = _scores(task, test, train, False, chunk_size, progress)
    return Scores(
        values, test, train, "grad_dot", {"chunk_size": chunk_size}, "gradient dot product"
    )


def grad_cos(task: Task, test, train, *, progress=None, chunk_size: int | None = None) -> Scores:
    """Grad-Cos: the cosine of ∇g(z_test) and ∇ℓ(z_i) at the final weights.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = grad_cos(task, test=range(4), train=range(20))
    >>> bool(abs(scores.values.diagonal() - 1).max() < 1e-12)  # each instance with itself
    True
    """
    test, train, values = _scores(task, test, train, True, chunk_size, progress)
    return Scores(values, test, train, "grad_cos", {"chunk_size": chunk_size}, units="cosine")
