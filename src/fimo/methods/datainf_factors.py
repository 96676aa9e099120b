"""DataInf from layer factors: its scores are per-block dot products of per-instance gradients.

Written out per block l (the notation of :mod:`fimo.methods.datainf`: v_t the test
measurement's gradient, g_i a training gradient, m instances i in the Hessian sample),

    score[t, j] = (1/n) Σ_l (1/λ_l) [v_tl·g_jl − (1/m) Σ_i c_til (g_il·g_jl)],
    c_til = (v_tl·g_il) / (λ_l + ‖g_il‖²),

and λ_l comes from the norms ‖g_il‖² as well. Every factor is a dot product of two
instances' gradients over one block, which for an ``nn.Linear`` layer met once per instance
is (a_i·a_j)(b_i·b_j) (+ b_i·b_j for the bias) from the layer's inputs a and output gradients
b (:func:`fimo.methods.ghost.ghost_dots`). So for an MLP the scores cost about
m·(k + n)·Σ_l (in_l + out_l) multiply-adds for the dot products and k·m·n per block for the
sum over i, against k·(2m + n)·P for the three passes over formed gradients, and no
instance's gradient (P numbers) is ever formed. :func:`factor_plan` decides, DataInf's
``ghost`` setting forces either way; only unprojected scores are computed so.
"""

from __future__ import annotations

import numpy as np
import torch

from fimo.errors import InputError
from fimo.methods.cost import CostProbe
from fimo.methods.ghost import (
    MAX_GHOST_CHUNK,
    Factors,
    GhostLayer,
    capture_rows,
    checked_plan,
    dense_ghost_plan,
    ghost_dots,
    ghost_norms,
    joined,
    layer_slices,
)
from fimo.methods.gradients import DEFAULT_BUDGET, fit_count
from fimo.methods.projection import holding_budget
from fimo.task import Task


def block_parts(task: Task, layers: list[GhostLayer], groups) -> list[list[GhostLayer]] | None:
    """For each DataInf block (``groups``: (name, positions in θ)), the ghost layers' parts
    it holds, as :class:`GhostLayer` (module, weight?, bias?); None when some block holds
    anything else.

    >>> from fimo.data.base import ArrayDataset
    >>> from fimo.methods.datainf import parameter_blocks
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> block_parts(task, dense_ghost_plan(task), parameter_blocks(task, "tensor"))
    [[GhostLayer(module='', weight=True, bias=False)], [GhostLayer(module='', weight=False, bias=True)]]
    """
    owner = {}  # a part's first position -> (module, leaf, its positions)
    for module, where in layer_slices(task, layers).items():
        for leaf, span in where.items():
            owner[span.start] = (module, leaf, range(span.start, span.stop))
    out = []
    for _, cols in groups:
        held = set(cols)
        flags: dict[str, dict[str, bool]] = {}
        covered = 0
        for module, leaf, span in owner.values():
            if span.start in held:
                if not held.issuperset(span):
                    return None
                flags.setdefault(module, {"weight": False, "bias": False})[leaf] = True
                covered += len(span)
        if covered != len(cols):
            return None
        out.append([GhostLayer(module, f["weight"], f["bias"]) for module, f in flags.items()])
    return out


def factor_plan(task: Task, groups, ghost: str, proj_dim, k: int, m: int, n: int):
    """``(layers, parts)`` when DataInf is to be computed from layer factors, else None.

    ``ghost="never"`` or a projection (``proj_dim`` below some block's size): None.
    Otherwise the trainable parameters must all be weights and biases of ``nn.Linear``
    layers met once per instance (:func:`fimo.methods.ghost.dense_ghost_plan`), each block
    made of whole ones; ``"auto"`` then takes the factors when :func:`factors_are_cheaper`
    says so for k test instances, m Hessian instances and n scored ones, and what they hold
    (:func:`held_bytes`) fits in :func:`fimo.methods.projection.holding_budget`; ``"always"``
    always, and on a model it cannot treat, or whose factors do not fit, raises InputError
    with the reason.

    >>> from fimo.data.base import ArrayDataset
    >>> from fimo.methods.datainf import parameter_blocks
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> groups = parameter_blocks(task)
    >>> factor_plan(task, groups, "always", None, 2, 4, 4)[1]
    [[GhostLayer(module='', weight=True, bias=True)]]
    >>> factor_plan(task, groups, "auto", None, 2, 1000, 1000) is None  # m·n large, P = 8
    True
    >>> factor_plan(task, groups, "never", None, 2, 4, 4) is None
    True
    """
    projected = proj_dim is not None and any(len(cols) > proj_dim for _, cols in groups)
    if ghost == "never" or projected or 0 in (k, m, n):
        return None
    layers = dense_ghost_plan(task)
    parts = None if layers is None else block_parts(task, layers, groups)
    if parts is None:
        if ghost == "always":
            reason = checked_plan(task)[1] or "an instance meets a layer at several positions"
            raise InputError(
                f"datainf ghost: 'always' cannot be used here ({reason}); use ghost='auto'"
            )
        return None
    if ghost == "auto" and not factors_are_cheaper(task, parts, k, m, n):
        return None
    need, room = held_bytes(task, parts, k, m), holding_budget()
    if need > room:
        if ghost == "always":
            raise InputError(
                f"datainf ghost: the layer factors of {k:,} test and {m:,} Hessian instances "
                f"take {need / 2**30:.2f} GiB, more than the {room / 2**30:.2f} GiB that may "
                "be held now; lower hessian_samples, score fewer test instances at a time, "
                "or use ghost='auto' (formed gradients, streamed)"
            )
        return None
    return layers, parts


def held_bytes(task: Task, parts: list[list[GhostLayer]], k: int, m: int) -> int:
    """Bytes the factor path holds for k test and m Hessian instances: the captured layer
    factors of both, and per block the k × m weights c_til/(m λ_l) with the m squared
    norms; the scoring chunks come on top, within the memory budget.

    >>> from fimo.data.base import ArrayDataset
    >>> from fimo.methods.datainf import parameter_blocks
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)  # factors of 3 + 2 numbers
    >>> parts = block_parts(task, dense_ghost_plan(task), parameter_blocks(task))
    >>> held_bytes(task, parts, k=10, m=100) == 4 * ((10 + 100) * 5 + 10 * 100 + 100)
    True
    """
    itemsize = next(iter(task.params().values())).element_size()
    return itemsize * ((k + m) * _factor_width(task, parts) + len(parts) * (k * m + m))


def _factor_width(task: Task, parts: list[list[GhostLayer]]) -> int:
    """Σ over the blocks' layers of in_l (when the block holds the weight) + out_l: the
    numbers one instance's factors take."""
    modules = dict(task.model.named_modules())
    return sum(
        (modules[p.module].in_features if p.weight else 0) + modules[p.module].out_features
        for block in parts
        for p in block
    )


def factors_are_cheaper(task: Task, parts: list[list[GhostLayer]], k: int, m: int, n: int):
    """Whether DataInf's scores of k test against n training instances, with m in the
    Hessian sample, take fewer multiply-adds from factors than from formed gradients.

    From factors: the dot products of the test and of the scored instances with the sample
    and with each other, m·(k + n)·W + k·n·W (W = Σ_l in_l + out_l over the layers), and
    the sum over the sample, k·m·n per block. Formed: each of the 2m + n gradients costs
    about P to form and k·P to multiply, and counts twice: those multiply-adds ran at about
    half the rate of the factors' (CPU time of the two paths on a 106-128-128-2 MLP, k =
    200, one thread: 0.78 s against 4.86 s at m = n = 4,000, 20.5 s against 26.2 s at
    20,000, 1.7 times the ratios of the counts). So the factors win for few Hessian
    instances or wide layers and lose for many instances on narrow layers.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> wide = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.Tanh(), torch.nn.Linear(512, 2))
    >>> task = Task(wide, data, data)
    >>> from fimo.methods.datainf import parameter_blocks
    >>> parts = block_parts(task, dense_ghost_plan(task), parameter_blocks(task))
    >>> factors_are_cheaper(task, parts, 10, 100, 100), factors_are_cheaper(task, parts, 10, 10**5, 10**5)
    (True, False)
    """
    width = _factor_width(task, parts)
    through_factors = m * (k + n) * width + k * n * width + k * m * n * len(parts)
    through_gradients = (k + 1) * (2 * m + n) * task.num_params
    return through_factors <= 2 * through_gradients


def _restricted(factors: dict[str, Factors], block: list[GhostLayer]) -> dict[str, Factors]:
    """The factors of one block: its layers, each with the weight and bias it holds."""
    return {
        p.module: Factors(factors[p.module].a if p.weight else None, factors[p.module].b, p.bias)
        for p in block
        if p.module in factors
    }


def _dots(x: dict[str, Factors], y: dict[str, Factors], rows: int, cols: int, like):
    """The (rows, cols) dot products over one block (zeros like ``like``'s dtype and device
    when the block was never called)."""
    out = ghost_dots(x, y)
    return like.new_zeros(rows, cols) if out is None else out


def datainf_from_factors(
    task: Task,
    layers: list[GhostLayer],
    parts: list[list[GhostLayer]],
    sizes: list[int],
    test,
    train,
    sample,
    damping_rule,
    chunk_size: int | None = None,
    progress=None,
) -> tuple[np.ndarray, torch.Tensor]:
    """DataInf's (len(test), len(train)) float64 scores and the λ_l of each block, from layer
    factors (module docstring). ``parts`` and ``sizes``: each block's layers and number of
    parameters; ``sample``: the Hessian instances; ``damping_rule(mean_square)``: λ_l from
    each block's mean squared gradient entry over the sample.

    >>> from fimo.data.base import ArrayDataset
    >>> from fimo.methods.datainf import datainf, parameter_blocks
    >>> data = ArrayDataset(torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> layers, groups = dense_ghost_plan(task), parameter_blocks(task)
    >>> parts = block_parts(task, layers, groups)
    >>> S, lam = datainf_from_factors(task, layers, parts, [8], [0, 1], range(6), range(6),
    ...                               lambda mean_square: mean_square / 10)
    >>> bool(np.allclose(S, datainf(task, [0, 1], range(6), ghost="never").values))
    True
    """
    like = next(iter(task.params().values())).detach()
    dtype = like.dtype

    def captured(data, rows, measure, size=chunk_size):
        return joined([f for _, f in capture_rows(task, layers, data, rows, measure, size)])

    test_f, sample_f = captured(task.test, test, True), captured(task.train, sample, False)
    k, m = len(test), len(sample)
    tests = [_restricted(test_f, block) for block in parts]
    samples = [_restricted(sample_f, block) for block in parts]
    squares = [ghost_norms(s) ** 2 if s else like.new_zeros(m) for s in samples]  # ‖g_il‖²
    counts = m * torch.as_tensor(sizes, dtype=dtype, device=like.device)
    lam = damping_rule(torch.stack([q.sum() for q in squares]) / counts)
    # (1/(m λ_l)) c_til, and 1/λ_l; a block with λ_l = 0 has only zero gradients: it adds 0
    inverse = torch.where(lam > 0, 1 / lam.clamp_min(torch.finfo(dtype).tiny), 0)
    weights = [
        _dots(t, s, k, m, like) / (lam[b] + squares[b]) * (inverse[b] / m)
        for b, (t, s) in enumerate(zip(tests, samples, strict=True))
    ]
    out = np.empty((k, len(train)), dtype=np.float64)
    # per scored instance: two m-long dot-product columns, the test block's, and its factors
    widths = sum(f.b.shape[-1] + (0 if f.a is None else f.a.shape[-1]) for f in sample_f.values())
    per_instance = (2 * m + 2 * k + 4 * widths) * dtype.itemsize
    size = chunk_size or fit_count(per_instance, DEFAULT_BUDGET, MAX_GHOST_CHUNK)
    probe = CostProbe(
        f"scoring {len(train)} training instances against {k} test vectors (layer factors)",
        len(train),
        'score fewer training instances (methods.train = "left_out") or lower hessian_samples',
    )
    for rows, chunk in capture_rows(task, layers, task.train, train, False, size):
        width = rows.stop - rows.start
        block = like.new_zeros(k, width)
        for b, members in enumerate(parts):
            if lam[b] == 0:
                continue
            here = _restricted(chunk, members)
            block += inverse[b] * _dots(tests[b], here, k, width, like)
            block -= weights[b] @ _dots(samples[b], here, m, width, like)
        out[:, rows] = (block / len(task.train)).double().cpu().numpy()
        if progress is not None:
            progress(width)
        probe.tick(width)
    return out, lam
