"""Seeded random projections of per-instance gradients (TRAK's, and optionally Grad-Dot's,
Grad-Cos's and DataInf's).

A projection P (num_params × k) with entries ±1/√k (Rademacher) or N(0, 1/k) keeps dot
products in expectation, E[(Pᵀa)·(Pᵀb)] = a·b (Johnson-Lindenstrauss), so a method can work
with k numbers per instance instead of P. The projected training gradients are formed chunk
by chunk (each chunk of per-instance gradients times P), never as an n × P matrix; P itself is
held in memory when it fits in :func:`holding_budget` and regenerated block by block otherwise.
Holding is worth much memory: drawing the entries costs about 10 times the product of a chunk
of gradients with them (1.16 M × 512 entries: 5-8 s to draw, 0.8 s to multiply by a chunk of 57
gradients), so regenerating P for each chunk made TRAK's dense path at 1.16 M parameters
spend 90 % of its time drawing the same matrix again (docs/benchmarks.md).
"""

from __future__ import annotations

import resource

import numpy as np
import torch

from fimo.errors import InputError, check_choice
from fimo.methods.gradients import DEFAULT_BUDGET, available_memory

PROJECTIONS = ("rademacher", "gaussian")
#: Bytes one generated block of the projection matrix may take, counted in float32 whatever the
#: dtype, so that the block shape (and with it the matrix) does not depend on the dtype.
BLOCK_BUDGET = 16 * 2**20
#: The dtype the random entries are drawn in (then cast): the matrix is a function of
#: (seed, num_params, k, kind) only, and float64 copies equal float32 ones up to its rounding.
DRAW_DTYPE = torch.float32


def check_proj_dim(method: str, proj_dim) -> None:
    """An :class:`~fimo.errors.InputError` unless ``proj_dim`` is a positive int or None.

    >>> check_proj_dim("grad_dot", 512)
    >>> check_proj_dim("grad_dot", 0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: grad_dot proj_dim: got 0; must be a positive integer or None
    """
    if proj_dim is None:
        return
    if isinstance(proj_dim, bool) or not isinstance(proj_dim, int | np.integer) or proj_dim < 1:
        raise InputError(f"{method} proj_dim: got {proj_dim!r}; must be a positive integer or None")


class Projector:
    """A seeded random projection P (num_params × k), entries ±1/√k or N(0, 1/k).

    P is made of row blocks of a fixed number of rows (``BLOCK_BUDGET`` / (4k), whatever the
    dtype), each drawn in float32 from its own generator seeded by (seed, block) and then cast
    to ``dtype``, so it is a function of (seed, num_params, k, kind) only: the same whether it
    is held in memory (when it fits in ``budget`` bytes, by default :func:`holding_budget`)
    or regenerated block by block at every use, and the same in float32 and float64 up to
    float32 rounding (Rademacher entries: exactly, when 1/√k is exact). ``k=None`` is the
    identity (no projection).

    >>> Projector(10, 4, seed=0).project(torch.ones(2, 10)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        num_params: int,
        k: int | None,
        seed: int = 0,
        kind: str = "rademacher",
        dtype: torch.dtype = torch.float32,
        budget: float | None = None,
    ):
        check_choice("projection", kind, PROJECTIONS)
        self.num_params, self.k, self.seed, self.kind, self.dtype = num_params, k, seed, kind, dtype
        itemsize = torch.finfo(dtype).bits // 8
        draw_size = torch.finfo(DRAW_DTYPE).bits // 8
        if k is not None:
            self.rows = int(max(1, min(num_params, BLOCK_BUDGET // (k * draw_size))))
        self.matrix = None
        budget = holding_budget() if budget is None else budget
        if k is not None and num_params * k * itemsize <= budget:
            self.matrix = torch.empty(num_params, k, dtype=dtype)
            for b in range(self.num_blocks):  # filled in place: no second copy while held
                self.matrix[b * self.rows : (b + 1) * self.rows] = self.block(b)

    @property
    def dim(self) -> int:
        """The projected dimension.

        >>> Projector(10, 4).dim, Projector(10, None).dim
        (4, 10)
        """
        return self.num_params if self.k is None else self.k

    @property
    def num_blocks(self) -> int:
        """How many row blocks P is drawn in.

        >>> Projector(10, 4).num_blocks
        1
        """
        return -(-self.num_params // self.rows)

    def block(self, b: int) -> torch.Tensor:
        """Rows [b·rows, (b+1)·rows) of P.

        >>> Projector(10, 4).block(0).abs().unique()  # Rademacher: ±1/√k
        tensor([0.5000])
        """
        state = np.random.SeedSequence([int(self.seed), b]).generate_state(2)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        shape = (min(self.rows, self.num_params - b * self.rows), self.k)
        if self.kind == "gaussian":
            values = torch.randn(shape, generator=gen, dtype=DRAW_DTYPE)
        else:  # drawn straight in float32 (the same bits as int64 draws), ±1 in place
            values = torch.randint(0, 2, shape, generator=gen, dtype=DRAW_DTYPE).mul_(2).sub_(1)
        return values.to(self.dtype).div_(self.k**0.5)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """G (m, num_params) → G P (m, k).

        >>> proj = Projector(10, 4)
        >>> torch.equal(proj.project(torch.eye(10)), proj.matrix)
        True
        """
        if self.k is None:
            return g
        if self.matrix is not None:
            return g @ self.matrix
        out = torch.zeros(g.shape[0], self.k, dtype=g.dtype)
        for b in range(self.num_blocks):
            out += g[:, b * self.rows : (b + 1) * self.rows] @ self.block(b)
        return out


def holding_budget() -> int:
    """Bytes a projection matrix may take and still be held in memory: half of what the
    machine can still give (:func:`fimo.methods.gradients.available_memory`) and half of the
    process's address-space limit when one is set, but never less than ``DEFAULT_BUDGET``
    (what was always held). Regenerating instead costs a full draw of P per chunk of
    instances (see the module's docstring).

    >>> holding_budget() >= DEFAULT_BUDGET
    True
    """
    room = []
    available = available_memory()
    if available is not None:
        room.append(available // 2)
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        room.append(limit // 2)
    return max(DEFAULT_BUDGET, min(room, default=DEFAULT_BUDGET))


def gradient_projector(
    num_params: int, proj_dim: int | None, seed: int, kind: str, dtype: torch.dtype
) -> Projector:
    """The projector of a first-order method or of one DataInf block: k = ``proj_dim``, or the
    identity when ``proj_dim`` is None or at least ``num_params`` (a projection to as many
    dimensions or more could only add noise).

    >>> gradient_projector(100, 8, 0, "rademacher", torch.float64).dim
    8
    >>> gradient_projector(100, 100, 0, "rademacher", torch.float64).k is None  # identity
    True
    """
    k = None if proj_dim is None or proj_dim >= num_params else int(proj_dim)
    return Projector(num_params, k, seed, kind, dtype)


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block``'s own projector, derived from (``seed``, ``block``), so the
    blocks of one method get independent projections.

    >>> block_seed(0, 1) == block_seed(0, 1) != block_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(block), 1]).generate_state(1)[0])
