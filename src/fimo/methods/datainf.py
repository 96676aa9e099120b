"""DataInf (Kwon et al. 2024): layer-wise influence with the averaging and the inversion swapped.

In the paper's unified view (PAPER.md §3) DataInf is Gauss-Newton with an identity loss
Hessian, Ĥ_l = (1/m) Σ_i g_il g_ilᵀ per block l, damped by λ_l, and the inverse of the
average replaced by the average of the inverses, each exact by Sherman-Morrison:

    (Ĥ_l + λ_l I)⁻¹ v ≈ (1/m) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹ v
                      = (1/λ_l) [v − (1/m) Σ_i (g_il·v / (λ_l + ‖g_il‖²)) g_il],
    score[t, j] = (1/n) Σ_l g_jlᵀ (Ĥ_l + λ_l I)⁻¹ ∇g_l(z_t).

The sum over i runs over all n training instances (or a seeded subsample of m). The score
estimates g(z_t) without z_j minus with it, so positive = helpful. The DataInf authors' engine
returns the negative of this (upweighting convention, without 1/n); the paper negated it.

Every term is a per-block dot product of per-instance gradients, so for an MLP the scores
can come from each Linear layer's inputs and output gradients without forming any gradient
(:mod:`fimo.methods.datainf_factors`, the ``ghost`` setting).
"""

from __future__ import annotations

import functools
from itertools import pairwise

import numpy as np
import torch

from fimo.errors import InputError, check_choice
from fimo.methods.common import (
    hessian_subset,
    score_matrix,
    seed_value,
    subset_record,
    test_and_train,
)
from fimo.methods.cost import CostProbe
from fimo.methods.datainf_factors import datainf_from_factors, factor_plan
from fimo.methods.ghost import check_ghost
from fimo.methods.gradients import DEFAULT_BUDGET, grad_chunk_size, per_instance_grads
from fimo.methods.gradients import gradient_matrix as _gradient_matrix
from fimo.methods.projection import block_seed, check_proj_dim, gradient_projector
from fimo.scores import Scores
from fimo.task import Task

BLOCKS = ("module", "tensor")


def parameter_blocks(task: Task, blocks: str = "module") -> list[tuple[str, list[int]]]:
    """The layer blocks: (name, positions in the flattened θ), in parameter order.

    ``"module"`` groups the trainable tensors of one module (a Linear's weight and bias);
    ``"tensor"`` makes every trainable tensor its own block.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Sequential(torch.nn.Linear(3, 2)), data, data)
    >>> [(name, len(cols)) for name, cols in parameter_blocks(task)]
    [('0', 8)]
    >>> [(name, len(cols)) for name, cols in parameter_blocks(task, "tensor")]
    [('0.weight', 6), ('0.bias', 2)]
    """
    check_choice("datainf blocks", blocks, BLOCKS)
    groups: dict[str, list[int]] = {}
    start = 0
    for name, p in task.params().items():
        key = name
        if blocks == "module":  # the owning module's path; the root module's own tensors: "<root>"
            key = name.rsplit(".", 1)[0] if "." in name else "<root>"
        groups.setdefault(key, []).extend(range(start, start + p.numel()))
        start += p.numel()
    return list(groups.items())


class _BlockProjection:
    """The blocks' permutation of θ and each block's projector (:mod:`fimo.methods.projection`):
    a block of p_l entries becomes min(k, p_l) numbers, so DataInf's per-block inverses work
    on the projected blocks; without ``proj_dim`` every block is kept whole."""

    def __init__(self, groups, proj_dim, seed: int, kind: str, dtype: torch.dtype):
        self.perm = torch.as_tensor([i for _, cols in groups for i in cols])
        self.sizes = [len(cols) for _, cols in groups]
        bounds = np.cumsum([0, *self.sizes])
        self.spans = [slice(int(a), int(b)) for a, b in pairwise(bounds)]
        self.projectors = [
            gradient_projector(size, proj_dim, block_seed(seed, b), kind, dtype)
            for b, size in enumerate(self.sizes)
        ]
        bounds = np.cumsum([0] + [p.dim for p in self.projectors])
        #: where each block lies in the projected vector
        self.projected_spans = [slice(int(a), int(b)) for a, b in pairwise(bounds)]
        self.width = int(bounds[-1])

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        """G (m, P) in parameter order → (m, width), the blocks contiguous and projected."""
        G = G[:, self.perm]
        if all(p.k is None for p in self.projectors):
            return G
        return torch.cat(
            [p.project(G[:, s]) for p, s in zip(self.projectors, self.spans, strict=True)], dim=1
        )


class _TrainGradients:
    """Per-instance training gradients, blocks contiguous and projected (``blocks``).

    Kept in memory when they fit in the budget (they are read in up to three passes),
    recomputed chunk by chunk otherwise; each chunk is projected as it is made. A chunk holds
    ``chunk_size`` instances, or as many as the budget holds with the activations that
    computing their gradients keeps (:func:`fimo.methods.gradients.grad_chunk_size`), so the
    peak memory is bounded by the budget, not by the number of instances. ``dtype``: the
    parameters' (and so the gradients').
    """

    def __init__(self, task: Task, blocks: _BlockProjection, chunk_size: int | None):
        self.task, self.blocks, self.chunk_size = task, blocks, chunk_size
        self.dtype = next(iter(task.params().values())).dtype
        self.cache: torch.Tensor | None = None
        self.fits = len(task.train) * blocks.width * self.dtype.itemsize <= DEFAULT_BUDGET
        self.size = chunk_size or grad_chunk_size(task, task.train.inputs)

    def chunks(self, indices: np.ndarray):
        """Yield (rows, G) with G (rows, width) for the training instances ``indices``."""
        if self.cache is None and self.fits:
            everything = np.arange(len(self.task.train))  # filled in place: no second copy
            self.cache = torch.empty(len(everything), self.blocks.width, dtype=self.dtype)
            for rows, g in self._compute(everything):
                self.cache[rows] = g
        if self.cache is not None:
            idx = torch.as_tensor(indices)
            for start in range(0, len(indices), self.size):
                rows = slice(start, min(start + self.size, len(indices)))
                yield rows, self.cache[idx[rows]]
            return
        yield from self._compute(indices)

    def _compute(self, indices):
        idx = torch.as_tensor(indices)
        x, y = self.task.train.inputs[idx], self.task.train.targets[idx]
        for rows, g in per_instance_grads(self.task, x, y, chunk_size=self.size):
            yield rows, self.blocks(g)


def datainf(
    task: Task,
    test,
    train,
    *,
    progress=None,
    lambda_const: float = 10.0,
    damping: float | None = None,
    blocks: str = "module",
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    chunk_size: int | None = None,
    proj_dim: int | None = None,
    projection: str = "rademacher",
    proj_seed: int = 0,
    ghost: str = "auto",
) -> Scores:
    """DataInf scores (1/n)·Σ_l g_jlᵀ Ĥ_l⁻¹ ∇g_l(z_t) (Sherman-Morrison per instance),
    positive = helpful.

    λ_l = mean_i(mean_p g_il²) / ``lambda_const`` per block (the paper's default 10, i.e.
    0.1 × the block's mean squared gradient entry), or the absolute ``damping`` for every
    block. ``blocks`` is ``"module"`` (weight and bias of a layer together) or ``"tensor"``.
    ``hessian_samples`` = m draws m training instances for the sum over i and for λ_l (the
    paper's SST-2 setting used 1000; :func:`fimo.methods.common.hessian_subset` with
    ``hessian_seed``, the same draw as the influence family's); by default all n.

    ``proj_dim`` = k projects each block of p_l > k entries to k numbers, φ_il = P_lᵀg_il
    (``projection`` ``"rademacher"`` or ``"gaussian"``, one seeded P_l per block from
    ``proj_seed``; :mod:`fimo.methods.projection`), chunk by chunk, and runs DataInf on the
    projected blocks. λ_l keeps its unprojected meaning: mean_i ‖φ_il‖² / (p_l ·
    ``lambda_const``), since E‖φ_il‖² = ‖g_il‖².

    ``ghost``: unprojected scores of a model whose trainable parameters are all ``nn.Linear``
    weights and biases (an MLP) are computed from layer factors, every term a per-block dot
    product of two instances' gradients, when its multiply-add count says it is the cheaper
    path and what it holds fits in memory (``"auto"``,
    :func:`fimo.methods.datainf_factors.factor_plan`), always (``"always"``: an InputError on
    another model, with ``proj_dim``, or when the factors do not fit) or never
    (``"never"``); the same scores to float rounding. ``settings["gradients"]`` says which
    path ran.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = datainf(task, test=range(4), train=range(20))
    >>> scores.values.shape, list(scores.settings["layer_damping"])
    ((4, 20), ['<root>'])
    """
    test, train = test_and_train(task, test, train, "datainf")
    _check_settings(lambda_const, damping, proj_dim, ghost)
    n = len(task.train)
    hessian_seed = seed_value("hessian_seed", hessian_seed)
    proj_seed = seed_value("proj_seed", proj_seed)
    sample = hessian_subset(n, hessian_samples, hessian_seed)

    groups = parameter_blocks(task, blocks)
    plan = factor_plan(task, groups, ghost, proj_dim, len(test), len(sample), len(train))
    rule = functools.partial(_damping_from, lambda_const=lambda_const, damping=damping)
    common = (task, groups, test, train, sample, rule, chunk_size, progress)
    if plan is not None:
        out, lam = _from_factors(*common, plan)
        width, gradients = task.num_params, "ghost (layer factors)"
    else:
        out, lam, width = _from_gradients(*common, (proj_dim, proj_seed, projection))
        gradients = "per-instance"
    settings = {
        **_damping_record(lambda_const, damping, groups, lam),
        "blocks": blocks,
        **subset_record(n, hessian_samples, hessian_seed, sample),
        "n_hessian": len(sample),
        "chunk_size": chunk_size,
        "proj_dim": proj_dim,
        "projection": projection if width < task.num_params else "identity",
        "proj_seed": proj_seed,
        "projected_dim": width,
        "ghost": ghost,
        "gradients": gradients,
    }
    return Scores(out, test, train, "datainf", settings, units="test-loss change (1/n scale)")


def _from_factors(
    task, groups, test, train, sample, rule, chunk_size, progress, plan
) -> tuple[np.ndarray, torch.Tensor]:
    """The scores and each block's λ_l from layer factors (``plan``: the layers and each
    block's parts, :func:`fimo.methods.datainf_factors.factor_plan`)."""
    layers, parts = plan
    sizes = [len(cols) for _, cols in groups]
    return datainf_from_factors(
        task, layers, parts, sizes, test, train, sample, rule, chunk_size, progress
    )


def _from_gradients(
    task, groups, test, train, sample, rule, chunk_size, progress, projection
) -> tuple[np.ndarray, torch.Tensor, int]:
    """The scores, each block's λ_l (``rule`` of the mean squared gradient entry) and the
    projected width, from formed (and projected) per-instance gradients: three passes over
    them (λ, the preconditioned test side, the scores). ``projection``: (proj_dim, proj_seed,
    kind)."""
    proj_dim, proj_seed, kind = projection
    dtype = next(iter(task.params().values())).dtype
    layout = _BlockProjection(groups, proj_dim, proj_seed, kind, dtype)
    grads = _TrainGradients(task, layout, chunk_size)
    v = layout(_gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size))
    probe = CostProbe(
        f"two passes over the gradients of {len(sample)} training instances",
        2 * len(sample),
        "lower hessian_samples or proj_dim",
    )
    lam = _layer_damping(grads, sample, layout, rule, probe)
    pre = _preconditioned(grads, sample, layout, v, lam, probe)
    # pass 3: the scores, (1/n) Σ_l ⟨Ĥ_l⁻¹ ∇g_l(z_t), g_jl⟩
    out = score_matrix(task, train, pre, progress=progress, chunks=grads.chunks(train))
    return out, lam, layout.width


def _check_settings(lambda_const, damping, proj_dim, ghost="auto") -> None:
    """InputError for a λ rule, projection or ``ghost`` choice DataInf cannot use.

    >>> _check_settings(10.0, -1.0, None)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: datainf damping: got -1.0; must be a number > 0 (or None)
    """
    if damping is None and not (isinstance(lambda_const, int | float) and lambda_const > 0):
        raise InputError(f"datainf lambda_const: got {lambda_const!r}; must be a number > 0")
    if damping is not None and not (isinstance(damping, int | float) and damping > 0):
        raise InputError(f"datainf damping: got {damping!r}; must be a number > 0 (or None)")
    check_proj_dim("datainf", proj_dim)
    check_ghost("datainf", ghost, proj_dim)


def _layer_damping(grads, sample, layout, rule, probe) -> torch.Tensor:
    """Pass 1: λ_l per block, ``rule`` (:func:`_damping_from`) of the mean squared gradient
    entry over the Hessian sample (over the unprojected entry count p_l, since E‖φ_il‖² =
    ‖g_il‖²)."""
    spans = layout.projected_spans
    dtype = grads.dtype
    squares = torch.zeros(len(spans), dtype=dtype)
    for _, g in grads.chunks(sample):
        squares += torch.stack([g[:, s].pow(2).sum() for s in spans])
        probe.tick(len(g))
    counts = torch.as_tensor([len(sample) * size for size in layout.sizes], dtype=dtype)
    return rule(squares / counts)


def _damping_from(mean_square: torch.Tensor, lambda_const, damping) -> torch.Tensor:
    """λ_l from each block's mean squared gradient entry: divided by ``lambda_const``, or the
    given ``damping`` for every block."""
    if damping is None:
        return mean_square / lambda_const
    return torch.full_like(mean_square, float(damping))


def _preconditioned(grads, sample, layout, v, lam, probe) -> torch.Tensor:
    """Pass 2: (Ĥ_l + λ_l I)⁻¹ v_l for every test vector at once, by the average of the
    Sherman-Morrison inverses, (1/λ_l) [v − (1/m) Σ_i (v·g_il / (λ_l + ‖g_il‖²)) g_il]."""
    spans = layout.projected_spans
    acc = torch.zeros_like(v)
    for _, g in grads.chunks(sample):
        for k, s in enumerate(spans):
            if lam[k] == 0:  # only zero gradients (LoRA's A at B = 0): it adds 0, not 0 / 0
                continue
            gl = g[:, s]
            coef = (v[:, s] @ gl.T) / (lam[k] + gl.pow(2).sum(1))
            acc[:, s] += coef @ gl
        probe.tick(len(g))
    inverse = torch.where(lam > 0, 1 / lam.clamp_min(torch.finfo(v.dtype).tiny), 0)
    pre = torch.empty_like(v)
    for k, s in enumerate(spans):  # a block with λ_l = 0 has only zero gradients: it adds 0
        pre[:, s] = inverse[k] * (v[:, s] - acc[:, s] / len(sample))
    return pre


def _damping_record(lambda_const, damping, groups, lam) -> dict:
    """The λ rule and each block's λ_l, for the scores' settings.

    >>> _damping_record(10.0, None, [("0", [0, 1])], torch.tensor([0.5]))["layer_damping"]
    {'0': 0.5}
    """
    return {
        "lambda_const": lambda_const if damping is None else None,
        "damping": None if damping is None else float(damping),
        "damping_rule": (
            f"per block: mean squared gradient entry / {lambda_const:g}"
            if damping is None
            else "given"
        ),
        "layer_damping": {name: float(x) for (name, _), x in zip(groups, lam, strict=True)},
    }
