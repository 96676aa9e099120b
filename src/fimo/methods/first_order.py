"""First-order methods: Grad-Dot and Grad-Cos (paper §3, the λ → ∞ end of the unified view).

Grad-Dot scores a pair by ∇g(z_test)·∇ℓ(z_i) at the final weights: one step of gradient
descent of size η without z_i changes the test loss by about (η/n)·∇g·∇ℓ_i (plus a term common
to every i, which centring removes), so positive = helpful, the gold standard's sign.
Grad-Cos divides by both gradient norms.

With ``proj_dim`` = k both work on randomly projected gradients Pᵀ∇ (:mod:`fimo.methods.
projection`; each chunk of training gradients is projected as it is made): Grad-Dot's
projected dot product equals the exact one in expectation over P, Grad-Cos is the cosine of
the projected vectors.

Unprojected, on a model whose trainable parameters are all ``nn.Linear`` weights and biases,
both are computed from each layer's inputs and output gradients without forming the
gradients (:mod:`fimo.methods.ghost`) when that is cheaper (``ghost="auto"``, the default);
``ghost="always"`` or ``"never"`` forces the choice. The two paths agree to float rounding.
"""

from __future__ import annotations

import torch

from fimo.methods.common import score_matrix, test_and_train
from fimo.methods.ghost import check_ghost, ghost_scores, ghost_test_factors
from fimo.methods.gradients import check_chunk_size, gradient_matrix
from fimo.methods.projection import check_proj_dim, gradient_projector
from fimo.scores import Scores
from fimo.task import Task


def _unit_rows(G: torch.Tensor) -> torch.Tensor:
    """Each row of G divided by its norm (a zero row stays zero)."""
    return G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _scores(task: Task, test, train, normalise: bool, settings: dict, progress=None):
    method = "grad_cos" if normalise else "grad_dot"
    test, train = test_and_train(task, test, train, method)
    check_proj_dim(method, settings["proj_dim"])
    check_ghost(method, settings["ghost"], settings["proj_dim"])
    check_chunk_size(settings["chunk_size"])
    dtype = next(iter(task.params().values())).dtype
    proj = gradient_projector(
        task.num_params, settings["proj_dim"], settings["proj_seed"], settings["projection"], dtype
    )
    chunk_size = settings["chunk_size"]
    layers, factors = ghost_test_factors(method, task, test, settings["ghost"], proj.k, chunk_size)
    if layers is not None:
        out = ghost_scores(task, layers, factors, len(test), train, normalise, progress, chunk_size)
        record = {**settings, "projected_dim": proj.dim, "projection": "identity"}
        return test, train, out, {**record, "gradients": "ghost (layer factors)"}
    g_test = proj.project(
        gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size)
    )
    if normalise:
        g_test = _unit_rows(g_test)

    def transform(G: torch.Tensor) -> torch.Tensor:
        G = proj.project(G)
        return _unit_rows(G) if normalise else G

    out = score_matrix(
        task,
        train,
        g_test,
        transform=transform,
        per_n=False,
        progress=progress,
        chunk_size=chunk_size,
    )
    record = {**settings, "projected_dim": proj.dim}
    if proj.k is None:
        record["projection"] = "identity"
    return test, train, out, {**record, "gradients": "per-instance"}


def grad_dot(
    task: Task,
    test,
    train,
    *,
    progress=None,
    chunk_size: int | None = None,
    proj_dim: int | None = None,
    projection: str = "rademacher",
    proj_seed: int = 0,
    ghost: str = "auto",
) -> Scores:
    """Grad-Dot: ∇g(z_test)ᵀ∇ℓ(z_i) at the final weights, for every (test, train) pair.

    ``proj_dim`` = k (default None: exact) scores (Pᵀ∇g)ᵀ(Pᵀ∇ℓ_i) instead, P a ``projection``
    (``"rademacher"`` or ``"gaussian"``, entries of variance 1/k, seeded by ``proj_seed``):
    equal to the exact score in expectation; k ≥ P is no projection. ``ghost`` (``"auto"``,
    ``"always"``, ``"never"``) chooses how unprojected scores of ``nn.Linear`` layers are
    computed: from layer factors or from formed per-instance gradients (module docstring).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = grad_dot(task, test=range(4), train=range(20))
    >>> scores.values.shape, bool((scores.values.diagonal() >= 0).all())  # ‖∇ℓ‖² ≥ 0
    ((4, 20), True)
    >>> grad_dot(task, range(4), range(20), proj_dim=4).settings["projected_dim"]
    4
    """
    settings = {
        "chunk_size": chunk_size,
        "proj_dim": proj_dim,
        "projection": projection,
        "proj_seed": proj_seed,
        "ghost": ghost,
    }
    test, train, values, record = _scores(task, test, train, False, settings, progress)
    return Scores(values, test, train, "grad_dot", record, "gradient dot product")


def grad_cos(
    task: Task,
    test,
    train,
    *,
    progress=None,
    chunk_size: int | None = None,
    proj_dim: int | None = None,
    projection: str = "rademacher",
    proj_seed: int = 0,
    ghost: str = "auto",
) -> Scores:
    """Grad-Cos: the cosine of ∇g(z_test) and ∇ℓ(z_i) at the final weights.

    ``proj_dim``, ``projection`` and ``proj_seed`` as in :func:`grad_dot`: the cosine of the
    projected gradients Pᵀ∇g and Pᵀ∇ℓ_i; ``ghost`` as in :func:`grad_dot`.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = grad_cos(task, test=range(4), train=range(20))
    >>> bool(abs(scores.values.diagonal() - 1).max() < 1e-12)  # each instance with itself
    True
    """
    settings = {
        "chunk_size": chunk_size,
        "proj_dim": proj_dim,
        "projection": projection,
        "proj_seed": proj_seed,
        "ghost": ghost,
    }
    test, train, values, record = _scores(task, test, train, True, settings, progress)
    return Scores(values, test, train, "grad_cos", record, units="cosine")
