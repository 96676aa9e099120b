"""A Kronecker-factored random projection of ``nn.Linear`` layers' gradients (as LoGra does).

The per-instance gradient of a Linear layer's weight and bias, [W | b], is Σ_s b_s ãᵀ_s with
ã_s = [a_s; 1]: a bias is a weight on an input that is always 1 (a_s the layer's input and b_s
the gradient with respect to its output at position s, :mod:`fimo.methods.ghost`). With the
projection P = P_out ⊗ P_in (P_out out × k_out, P_in (in + 1) × k_in) the projected gradient is

    P_outᵀ (Σ_s b_s ã_sᵀ) P_in = Σ_s (P_outᵀ b_s)(P_inᵀ ã_s)ᵀ,

a k_out × k_in matrix computed from the factors alone: T·(out·k_out + (in+1)·k_in + k_out·k_in)
multiply-adds per instance and layer instead of forming the gradient (T·in·out) and
multiplying it by a dense P × k matrix (P·k). Treating the bias as a column of ones keeps one
factor pair per layer (no separate share of k for a vector of ``out`` numbers) and gives it the
same scale as the weight's entries; a layer whose weight is frozen keeps only that column
(in + 1 → 1, k_in = 1). Entries are ±1/√k_side (or N(0, 1/k_side)), independent between the
factors, so E[P Pᵀ] = E[P_out P_outᵀ] ⊗ E[P_in P_inᵀ] = I, as for the dense projection.

The factors are drawn on the CPU by :class:`fimo.methods.projection.Projector` with a seed
derived from (seed, layer, side), in float32 and cast to the model's dtype, then moved to the
device of the factors they multiply: the same matrices for the same seed on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fimo.methods.ghost import Factors, GhostLayer, layer_slices
from fimo.methods.projection import Projector, block_seed
from fimo.task import Task

#: The values of TRAK's ``proj_structure`` setting.
PROJ_STRUCTURES = ("dense", "kronecker", "auto")


@dataclass(frozen=True)
class KronBlock:
    """One layer's share of the projection: its output width, its input width (``in + 1``
    with a trainable bias, ``in`` without, ``1`` when only the bias is trainable) and the
    projected sizes k_out × k_in.

    >>> KronBlock("0", out=4, width=4, k_out=2, k_in=3, weight=True, bias=True).dim
    6
    """

    module: str
    out: int
    width: int
    k_out: int
    k_in: int
    weight: bool
    bias: bool

    @property
    def dim(self) -> int:
        """k_out · k_in, the layer's projected numbers.

        >>> KronBlock("", 3, 5, 1, 4, True, True).dim
        4
        """
        return self.k_out * self.k_in


def split_proj_dim(shapes: list[tuple[int, int]], proj_dim: int) -> list[tuple[int, int]]:
    """Per layer (k_out, k_in) for layers of shapes (out, width), using at most ``proj_dim``
    numbers in all: each layer gets 1 plus a share of the rest proportional to its size
    out·width (its number of parameters), k_l, split into k_out × k_in ≤ k_l as square as
    k_out ≤ out and k_in ≤ width allow (:func:`_factor_pair` says how and why). Rounding
    down can leave a few numbers unused (the total actually used is what TRAK records). With
    proj_dim ≥ every layer's size, each layer keeps all of it (a square, invertible P_out ⊗ P_in
    almost surely). Needs proj_dim ≥ the number of layers (ValueError otherwise).

    >>> split_proj_dim([(128, 101), (128, 129), (2, 129)], 512)
    [(13, 17), (14, 20), (2, 2)]
    >>> split_proj_dim([(3, 3)], 100)  # never more than the layer has
    [(3, 3)]
    """
    if proj_dim < len(shapes):
        raise ValueError(f"proj_dim {proj_dim} is below the number of layers {len(shapes)}")
    total = sum(out * width for out, width in shapes)
    if proj_dim >= total:
        return list(shapes)
    spare = proj_dim - len(shapes)
    return [_factor_pair(1 + spare * out * width / total, out, width) for out, width in shapes]


def _factor_pair(share: float, out: int, width: int) -> tuple[int, int]:
    """k_out ≤ out and k_in ≤ width with k_out·k_in ≤ ``share`` that minimise
    (1 + 1/k_out)(1 + 1/k_in). For a gradient b ãᵀ (one position) the projected dot product is
    the product of two independent estimates, (bᵀP_out P_outᵀb')(ãᵀP_in P_inᵀã'), each unbiased
    with relative variance about 1/k_side, so its relative variance is about
    (1 + 1/k_out)(1 + 1/k_in) − 1: near-square pairs (4 × 4, not 1 × 17)."""
    pairs = [
        (k_out, min(width, max(1, int(share // k_out))))
        for k_out in range(1, max(1, min(out, int(share))) + 1)
    ]
    return min(pairs, key=lambda p: ((1 + 1 / p[0]) * (1 + 1 / p[1]), -p[0] * p[1]))


class KroneckerProjector:
    """P = ⊕_l (P_out,l ⊗ P_in,l) over the Linear layers ``layers`` of ``task``: the projected
    gradient is the concatenation of each layer's P_outᵀ [G_W | g_b] P_in (row-major), from
    layer factors (:meth:`project_factors`) or from flattened gradients (:meth:`project`).
    ``proj_dim`` is split by :func:`split_proj_dim`; ``dim`` is the total used.

    >>> from fimo.data.base import ArrayDataset
    >>> from fimo.methods.ghost import ghost_plan
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                                 torch.nn.Linear(4, 2)), data, data)
    >>> proj = KroneckerProjector(task, ghost_plan(task)[0], 8)
    >>> [(b.k_out, b.k_in) for b in proj.blocks], proj.dim
    ([(2, 2), (1, 3)], 7)
    """

    def __init__(
        self,
        task: Task,
        layers: list[GhostLayer],
        proj_dim: int,
        seed: int = 0,
        kind: str = "rademacher",
        dtype: torch.dtype = torch.float32,
    ):
        modules = dict(task.model.named_modules())
        shapes = []
        for layer in layers:
            module = modules[layer.module]
            width = (module.in_features if layer.weight else 0) + (1 if layer.bias else 0)
            shapes.append((module.out_features, width))
        dims = split_proj_dim(shapes, int(proj_dim))
        self.blocks = [
            KronBlock(layer.module, out, width, k_out, k_in, layer.weight, layer.bias)
            for layer, (out, width), (k_out, k_in) in zip(layers, shapes, dims, strict=True)
        ]
        self.layers = list(layers)
        self.where = layer_slices(task, layers)
        #: positions per instance of each layer (1 for an MLP; set from data by the caller)
        self.positions = {block.module: 1 for block in self.blocks}
        self.dtype = dtype
        self.factors = [
            (
                _draw(block.out, block.k_out, block_seed(seed, 2 * i), kind, dtype),
                _draw(block.width, block.k_in, block_seed(seed, 2 * i + 1), kind, dtype),
            )
            for i, block in enumerate(self.blocks)
        ]

    @property
    def dim(self) -> int:
        """The projected dimension actually used, Σ_l k_out,l · k_in,l.

        >>> from fimo.data.base import ArrayDataset
        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(torch.nn.Linear(3, 2), data, data)
        >>> KroneckerProjector(task, [GhostLayer("", True, True)], 8).dim  # 2 × 4
        8
        """
        return sum(block.dim for block in self.blocks)

    def split(self) -> dict[str, list[int]]:
        """Each layer's [k_out, k_in], by module name (what TRAK records).

        >>> from fimo.data.base import ArrayDataset
        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(torch.nn.Linear(3, 2), data, data)
        >>> KroneckerProjector(task, [GhostLayer("", True, True)], 4).split()
        {'': [2, 2]}
        """
        return {block.module: [block.k_out, block.k_in] for block in self.blocks}

    def cost(self, positions: dict[str, int]) -> int:
        """Multiply-adds to project one instance from its factors, with ``positions[module]``
        positions per layer: Σ_l T_l·(out·k_out + width·k_in + k_out·k_in).

        >>> from fimo.data.base import ArrayDataset
        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> task = Task(torch.nn.Linear(3, 2), data, data)
        >>> KroneckerProjector(task, [GhostLayer("", True, True)], 4).cost({"": 1})  # 2·2 + 4·2 + 2·2
        16
        """
        return sum(
            positions.get(b.module, 0) * (b.out * b.k_out + b.width * b.k_in + b.dim)
            for b in self.blocks
        )

    def project_factors(self, factors: dict[str, Factors], count: int) -> torch.Tensor:
        """(count, dim) projected gradients of ``count`` instances from their layer factors
        (a layer without factors, never called, contributes zeros).

        >>> a, b = torch.randn(2, 1, 3), torch.randn(2, 1, 2)
        >>> from fimo.data.base import ArrayDataset
        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> proj = KroneckerProjector(Task(torch.nn.Linear(3, 2), data, data),
        ...                           [GhostLayer("", True, True)], 8)
        >>> g = torch.cat([torch.einsum("bto,bti->boi", b, a).flatten(1), b.sum(1)], 1)
        >>> torch.allclose(proj.project_factors({"": Factors(a, b)}, 2), proj.project(g), atol=1e-6)
        True
        """
        parts = []
        for block, (p_out, p_in) in zip(self.blocks, self.factors, strict=True):
            f = factors.get(block.module)
            if f is None:
                parts.append(torch.zeros(count, block.dim, dtype=self.dtype))
                continue
            p_out, p_in = p_out.to(f.b.device), p_in.to(f.b.device)
            u = f.b.to(self.dtype) @ p_out  # (B, T, k_out)
            if block.weight:
                v = f.a.to(self.dtype) @ p_in[: f.a.shape[-1]]  # (B, T, k_in)
                if block.bias:
                    v = v + p_in[-1]
            else:  # the bias alone: the input column of ones
                v = p_in[-1].expand(*u.shape[:2], block.k_in)
            parts.append(torch.einsum("btp,btq->bpq", u, v).reshape(count, -1))
        return torch.cat(parts, 1)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """(m, dim) projections of flattened gradients g (m, num_params), in the order of
        ``task.params()`` (the test side, whose gradients are formed).

        >>> from fimo.data.base import ArrayDataset
        >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
        >>> proj = KroneckerProjector(Task(torch.nn.Linear(3, 2), data, data),
        ...                           [GhostLayer("", True, True)], 8)
        >>> proj.project(torch.ones(5, 8)).shape
        torch.Size([5, 8])
        """
        m, parts = len(g), []
        g = g.to(self.dtype)
        for block, (p_out, p_in) in zip(self.blocks, self.factors, strict=True):
            where = self.where[block.module]
            columns = []
            if block.weight:
                columns.append(g[:, where["weight"]].reshape(m, block.out, -1))
            if block.bias:
                columns.append(g[:, where["bias"]].reshape(m, block.out, 1))
            G = torch.cat(columns, 2)  # (m, out, width)
            p_out, p_in = p_out.to(g.device), p_in.to(g.device)
            parts.append((p_out.T @ (G @ p_in)).reshape(m, -1))
        return torch.cat(parts, 1)


def _draw(rows: int, k: int, seed: int, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """A seeded rows × k factor with entries ±1/√k or N(0, 1/k) (:class:`Projector`'s)."""
    return Projector(rows, k, seed, kind, dtype, budget=math.inf).matrix
