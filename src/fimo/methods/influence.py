"""Influence functions: the second-order end of the unified view (paper §3).

Further training from θ is modelled by the damped second-order step
Δθ̂(D) = −(H + λI)⁻¹ ∇R(D), with H the Hessian (or Gauss-Newton matrix) of the mean training
loss R at the final weights and λ the *inverse amount of further training* (λ → ∞ gives
Grad-Dot, λ → 0 the classical influence function). Leaving z_i out changes a test function g by

    score[t, i] = (1/n) · ∇g(z_t)ᵀ (H + λI)⁻¹ ∇ℓ(z_i)          (positive = helpful)

at a stationary point, and by Proposition 1's ``generalized`` form otherwise. The methods differ
only in how they apply (H + λI)⁻¹: exactly (``explicit``, Cholesky), by conjugate gradients
(``cg``), by a stochastic Neumann series (``lissa``, ``lissa_hessian``) or on a Krylov subspace
(``arnoldi``). Every one solves the system for the k *test* gradients (s_t = (H+λI)⁻¹∇g(z_t)),
then streams the training gradients in chunks: scores = (1/n) S Gᵀ
(:func:`fimo.methods.common.score_matrix`); no n × P matrix is stored.
n is the size of the whole training set, whatever subset ``train`` scores.

λ defaults to 100 × the mean squared per-instance gradient entry (the paper's choice,
:func:`fimo.methods.damping.resolve_damping`); ``damping=`` sets it directly.

``hessian_samples=m`` estimates H from a seeded random subset of m training instances
(:func:`hessian_subset`, seeded by ``hessian_seed``) instead of all n: the curvature products,
the dense matrix and LiSSA's minibatches use only those m, so their cost falls by n/m. The
scores are still computed for every requested training instance, with the same 1/n; the
damping rule uses the same m, and ``generalized``'s ∇R(D) all n (one cheap pass).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from fimo.errors import InputError, NumericalError, check_choice
from fimo.methods.common import (
    hessian_subset,
    score_matrix,
    seed_value,
    subset_record,
    test_and_train,
)
from fimo.methods.cost import CostProbe
from fimo.methods.curvature import (
    DEFAULT_BATCH,
    KINDS,
    CurvatureOperator,
    curvature,
    dense_matrix,
    lanczos,
    top_eigenvalue,
)
from fimo.methods.damping import resolve_damping
from fimo.methods.gradients import (
    DEFAULT_BUDGET,
    available_memory,
    chunk_size_for,
    gradient_matrix,
)
from fimo.scores import Scores
from fimo.task import Task

UNITS = "influence (loss)"
#: The scales the paper tries for LiSSA (PAPER.md §4); ``scale="auto"`` extends it by powers of 10.
LISSA_SCALES = (10, 20, 50, 100, 150, 200, 250, 300, 400, 500)
#: LiSSA iterates may exceed their bound for a contracting recursion by this factor before the
#: run counts as diverged (minibatch noise can push them somewhat past it).
LISSA_SLACK = 100.0


# -- shared pieces -------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name}: got {value!r}; must be an integer ≥ 1")
    return int(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(f"{name}: got {value!r}; must be a number > 0")
    return float(value)


def _batch_size(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(
            f"batch_size: got {value!r}; must be an integer ≥ 1 (training instances per pass "
            "in a curvature product), or None to choose it from the memory budget"
        )
    return int(value)


def _prepare(
    method,
    task,
    test,
    train,
    damping,
    damping_factor,
    hessian,
    batch_size,
    chunk_size,
    hessian_samples=None,
    hessian_seed=0,
):
    """Indices, λ with its record, the curvature operator and the test gradients (k, P)."""
    test, train = test_and_train(task, test, train, method)
    if chunk_size is not None:
        _positive_int("chunk_size", chunk_size)
    check_choice("hessian", hessian, KINDS)
    batch_size = _batch_size(batch_size)
    hessian_seed = seed_value("hessian_seed", hessian_seed)
    n = len(task.train)
    subset = hessian_subset(n, hessian_samples, hessian_seed)
    lam, record = resolve_damping(
        task, damping, damping_factor, indices=None if len(subset) == n else subset
    )
    op = curvature(
        task, hessian, batch_size=batch_size, data_indices=None if len(subset) == n else subset
    )
    g_test = gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size)
    record.update(
        hessian=hessian,
        num_params=op.size,
        n_train=n,
        **subset_record(n, hessian_samples, hessian_seed, subset),
        batch_size=batch_size,
        curvature_batch=op.plan(len(test))[0],
    )
    return test, train, lam, record, op, g_test.to(op.dtype)


def _check_dense_size(task: Task, max_params: int, max_memory_gb, method: str) -> dict:
    """Refuse (InputError) a model too large for a dense P × P matrix, before any work.

    Two limits: ``max_params`` (time: the build grows like P²·n, the factorisation like P³)
    and memory: the P × P matrix plus about two memory budgets of working memory must fit in
    ``max_memory_gb`` GiB, or (``None``) in what the machine has available now. Returns the
    record of both.
    """
    max_params = _positive_int("max_params", max_params)
    if max_memory_gb is not None:
        max_memory_gb = _positive("max_memory_gb", max_memory_gb)
    P = task.num_params
    itemsize = next(iter(task.params().values())).element_size()
    dtype = str(next(iter(task.params().values())).dtype).replace("torch.", "")
    matrix = P * P * itemsize
    need = matrix + 2 * DEFAULT_BUDGET
    gib = 2**30
    what = (
        f"a dense {P:,} × {P:,} matrix ({matrix / gib:.2f} GiB in {dtype}, "
        f"{need / gib:.2f} GiB with working memory)"
    )
    alternatives = "use method 'cg' or 'arnoldi' (memory a few k × P blocks), restrict `trainable`"
    if P > max_params:
        raise InputError(
            f"{method}: the model has {P:,} trainable parameters, more than "
            f"max_params={max_params:,}, for {what}; {alternatives}, or raise max_params"
        )
    if max_memory_gb is not None:
        limit, source = max_memory_gb * gib, f"max_memory_gb={max_memory_gb:g}"
    else:
        limit, source = available_memory(), "the memory this machine has available now"
    if limit is not None and need > limit:
        raise InputError(
            f"{method}: {what} does not fit in {limit / gib:.2f} GiB ({source}); "
            f"{alternatives}, free memory, or set max_memory_gb if more can be had"
        )
    return {
        "max_params": max_params,
        "max_memory_gb": max_memory_gb,
        "dense_memory_gb": need / gib,
    }


def _damped_dense(op: CurvatureOperator, lam: float, method: str):
    """Cholesky factor L of the explicit H + λI (its lower triangle; one P × P buffer); a long
    build of the matrix is announced (:class:`fimo.methods.cost.CostProbe`)."""
    probe = CostProbe(
        f"the dense {op.size} × {op.size} {op.kind} matrix from {op.count} instances",
        op.count,
        "lower hessian_samples (or use cg)",
    )
    A = dense_matrix(op, on_step=probe.tick)
    if not bool(torch.isfinite(A.sum())):  # NaN and ±inf survive the sum; no P × P temporary
        raise NumericalError(f"{method}: the {op.kind} matrix has NaN or infinite entries")
    A.diagonal().add_(lam)
    # the transposed view is column-major, as LAPACK wants, so torch factors it in place
    # (given A itself, it would work on a copy: twice the memory); A is symmetric, A.mT = A
    L = A.mT
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(L, out=(L, info))
    if int(info) != 0:
        advice = "a larger damping" + (
            ' or hessian="gauss_newton" (PSD for losses convex in the outputs)'
            if op.kind == "hessian"
            else ""
        )
        raise NumericalError(
            f"{method}: H + λI is not positive definite (hessian={op.kind!r}, damping λ={lam:.3g}; "
            f"its leading minor of order {int(info)} is not); use {advice}"
        )
    return L


def _cholesky_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ applied to each row of B, by two triangular solves.

    ``torch.cholesky_solve`` would copy the P × P factor first; ``solve_triangular`` reads
    the column-major factor (and only its lower triangle) where it is.
    """
    Y = torch.linalg.solve_triangular(L, B.T, upper=False)
    return torch.linalg.solve_triangular(L.mT, Y, upper=True).T


def _cg_solve(op, lam: float, B: torch.Tensor, tol: float, max_iter: int, method: str):
    """Conjugate gradients on (H + λI) X = B, the k systems (rows of B) run in lockstep.

    A system stops when its residual falls to ``tol`` · ‖b‖; each iteration costs one
    (vmap'd) curvature product for the systems still running. Returns X and a record.
    """
    X = torch.zeros_like(B)
    R = B.clone()
    D = R.clone()
    rs = (R * R).sum(1)
    bnorm = B.norm(dim=1)
    active = rs.sqrt() > tol * bnorm
    iters = torch.zeros(len(B), dtype=torch.long)
    probe = CostProbe(
        f"at most {max_iter} conjugate-gradient iterations on {len(B)} systems",
        max_iter,
        "lower hessian_samples or max_iter (or raise tol)",
    )
    for _ in range(max_iter):
        rows = torch.nonzero(active).flatten()
        if len(rows) == 0:
            break
        d = D[rows]
        AD = op(d) + lam * d
        curv = (d * AD).sum(1)
        if not bool((curv > 0).all()) or not bool(torch.isfinite(curv).all()):
            raise NumericalError(
                f"{method}: conjugate gradients met a direction of non-positive curvature "
                f"(dᵀ(H + λI)d = {float(curv.min()):.3g}, damping λ={lam:.3g}, hessian={op.kind!r}): "
                "H + λI is not positive definite; use a larger damping"
                + (' or hessian="gauss_newton"' if op.kind == "hessian" else "")
            )
        alpha = rs[rows] / curv
        X[rows] += alpha[:, None] * d
        R[rows] -= alpha[:, None] * AD
        rs_new = (R[rows] ** 2).sum(1)
        D[rows] = R[rows] + (rs_new / rs[rows])[:, None] * d
        rs[rows] = rs_new
        iters[rows] += 1
        active[rows] = rs_new.sqrt() > tol * bnorm[rows]
        probe.tick()
    true_res = (B - op(X) - lam * X).norm(dim=1) / bnorm.clamp_min(torch.finfo(B.dtype).tiny)
    true_res[bnorm == 0] = 0.0
    converged = ~active
    record = {
        "tol": tol,
        "max_iter": max_iter,
        "iterations": iters.tolist(),
        "relative_residuals": [float(r) for r in true_res],
        "converged": bool(converged.all()),
    }
    if not converged.all():
        bad = int((~converged).sum())
        warnings.warn(
            f"{method}: {bad} of {len(B)} conjugate-gradient systems did not reach relative "
            f"residual {tol:g} in max_iter={max_iter} iterations (worst "
            f"{float(true_res.max()):.2e}); the scores are approximate. Raise max_iter or the "
            "damping.",
            RuntimeWarning,
            stacklevel=3,
        )
    return X, record


# -- explicit --------------------------------------------------------------------------------
def explicit(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    hessian: str = "gauss_newton",
    max_params: int = 40_000,
    max_memory_gb: float | None = None,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH,
    chunk_size: int | None = None,
) -> Scores:
    """Influence with the exact inverse: (1/n) ∇g(z_t)ᵀ (H + λI)⁻¹ ∇ℓ(z_i), by Cholesky.

    Builds the dense P × P matrix H + λI (Gauss-Newton by default, from per-instance
    Jacobians in P²·n·C flops; ``hessian="hessian"`` from P Hessian-vector products), factors
    it in place (P³/3 flops) and solves for the k test gradients. A matrix that is not
    positive definite raises :class:`NumericalError` (use more damping, or Gauss-Newton).

    Memory: one P × P matrix, factored and solved in place (3.2 GB for P = 20,000 in float64).
    Models above ``max_params`` (40,000) are refused with :class:`InputError` before any work,
    and so are models whose matrix (plus about 0.5 GiB of working memory) does not fit in
    ``max_memory_gb`` GiB (``None``: the memory the machine has available); the message names
    the memory needed. Measured on this 2-core machine, shared with other jobs
    (``benchmarks/explicit_size.py``: MLP 20-h-h-2, n = 1,000 training and k = 10 test
    instances, whole call, float32 / float64): P ≈ 5k: 0.7 s / 1.1 s; 10k: 4.3 s / 6.2 s;
    20k: 28 s / 39 s (of which the Cholesky factorisation 22 s / 33 s), peak memory
    2.0 / 3.7 GiB. The build grows like P²·n (n → ``hessian_samples`` when given), the
    factorisation like P³: expect about 3× the 20k time at 30k.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> explicit(task, test=range(4), train=range(20)).values.shape
    (4, 20)
    >>> # on a large training set, H from a random subset of its instances:
    >>> explicit(task, range(4), range(20), hessian_samples=10).settings["hessian_samples"]
    10
    """
    limits = _check_dense_size(task, max_params, max_memory_gb, "explicit")
    test, train, lam, record, op, g_test = _prepare(
        "explicit",
        task,
        test,
        train,
        damping,
        damping_factor,
        hessian,
        batch_size,
        chunk_size,
        hessian_samples,
        hessian_seed,
    )
    L = _damped_dense(op, lam, "explicit")
    S = _cholesky_solve(L, g_test)
    del L
    values = score_matrix(task, train, S, progress=progress, chunk_size=chunk_size)
    record.update(limits, solver="cholesky", chunk_size=chunk_size)
    if hessian == "gauss_newton":  # built from per-instance Jacobians, not from batches
        record.pop("curvature_batch")
    else:
        record["curvature_batch"] = op.plan(op.size)[0]
    return Scores(values, test, train, "explicit", record, UNITS)


# -- conjugate gradients -------------------------------------------------------------------------
def cg(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    hessian: str = "gauss_newton",
    tol: float = 1e-6,
    max_iter: int = 100,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH,
    chunk_size: int | None = None,
) -> Scores:
    """Influence with (H + λI)⁻¹ ∇g(z_t) by conjugate gradients on Hessian-vector products.

    The k test systems run together (one vmap'd curvature product per iteration for those not
    yet converged); a system stops at relative residual ``tol``. Cost: at most ``max_iter``
    passes over the training data per group of 32 test vectors, each about 3-5 forward
    passes; memory a few (k, P) blocks. Per-test iterations, final relative residuals and a
    ``converged`` flag go into the settings; systems that did not converge raise a
    ``RuntimeWarning``. Without damping the matrix must be positive definite. Each product
    takes as many training instances per pass as fit in the memory budget with the systems
    still running (``batch_size`` fixes it; the batch used for all k is recorded as
    ``curvature_batch``); ``hessian_samples`` restricts H to a seeded random subset.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> by_cg = cg(task, test=range(4), train=range(20), tol=1e-10)
    >>> by_cholesky = explicit(task, test=range(4), train=range(20))
    >>> bool(np.allclose(by_cg.values, by_cholesky.values, rtol=1e-6, atol=1e-12))
    True
    """
    tol = _positive("tol", tol)
    max_iter = _positive_int("max_iter", max_iter)
    test, train, lam, record, op, g_test = _prepare(
        "cg",
        task,
        test,
        train,
        damping,
        damping_factor,
        hessian,
        batch_size,
        chunk_size,
        hessian_samples,
        hessian_seed,
    )
    S, info = _cg_solve(op, lam, g_test, tol, max_iter, "cg")
    values = score_matrix(task, train, S, progress=progress, chunk_size=chunk_size)
    record.update(info, solver="cg", chunk_size=chunk_size)
    return Scores(values, test, train, "cg", record, UNITS)


# -- LiSSA ---------------------------------------------------------------------------------
def lissa(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    depth: int = 1000,
    repeat: int = 1,
    batch_size: int = 128,
    scale: float | str = "auto",
    seed: int = 0,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    chunk_size: int | None = None,
) -> Scores:
    """Influence with (H + λI)⁻¹ by the LiSSA series, H the Gauss-Newton matrix.

    h_{j+1} = v + (I − (H_B + λI)/scale) h_j from h_0 = v, H_B the curvature of a random
    minibatch of ``batch_size`` training instances drawn with replacement (a torch.Generator
    seeded by ``seed``; all k test vectors share the draws); after ``depth`` steps h/scale
    estimates (H + λI)⁻¹ v, averaged over ``repeat`` independent runs. ``batch_size`` ≥ n uses
    the whole training set at every step (no sampling noise: the truncated Neumann series).
    With ``hessian_samples`` = m the minibatches are drawn from (and ``batch_size`` ≥ m
    means) a seeded random subset of m training instances.

    The series converges when ``scale`` exceeds half the largest eigenvalue of every H_B + λI
    and its remaining error shrinks like (1 − μ_min/scale)^depth (recorded as
    ``truncation_bound`` with μ_min ≥ λ). ``scale="auto"`` estimates the top eigenvalue of
    H + λI by Lanczos and takes the smallest value of the paper's grid (10, 20, 50, 100, 150,
    200, 250, 300, 400, 500), extended by powers of ten, above it; if the run still diverges it
    moves up the grid. Divergence (non-finite iterates, or ‖h_j‖ beyond 100 × the bound
    min(j+1, scale/λ)·‖v‖ of a contracting series) raises :class:`NumericalError` naming the
    scale. With minibatches the estimate is unbiased but noisy (about 20-30 % relative error
    per run with batches of a fifth to a half of the data on a small problem); the spread of
    the ``repeat`` runs gives ``relative_standard_error`` (the worst test vector), and averaging
    reduces the error like 1/√repeat. With full batches ``last_step_relative_change`` shows
    how far the series still moves. Cost: depth × repeat minibatch products per group of 32
    test vectors; memory a few (k, P) blocks.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = lissa(task, test=range(4), train=range(20), depth=20, batch_size=20)
    >>> scores.values.shape, scores.settings["batches"]
    ((4, 20), 'full training set every step')
    """
    return _lissa(
        task,
        test,
        train,
        progress,
        "gauss_newton",
        "lissa",
        damping=damping,
        damping_factor=damping_factor,
        depth=depth,
        repeat=repeat,
        batch_size=batch_size,
        scale=scale,
        seed=seed,
        hessian_samples=hessian_samples,
        hessian_seed=hessian_seed,
        chunk_size=chunk_size,
    )


def lissa_hessian(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    depth: int = 1000,
    repeat: int = 1,
    batch_size: int = 128,
    scale: float | str = "auto",
    seed: int = 0,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    chunk_size: int | None = None,
) -> Scores:
    """LiSSA with the true Hessian (the paper's LiSSA-H); otherwise exactly :func:`lissa`.

    With negative curvature not covered by the damping (H + λI indefinite) the series diverges
    for every scale. With ``scale="auto"`` the Lanczos run that sizes the scale also detects
    it (a Ritz value below −λ) and raises :class:`NumericalError` at once, asking for more
    damping; with a given scale it shows as a divergence.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> lissa_hessian(task, test=range(4), train=range(20), depth=20).values.shape
    (4, 20)
    """
    return _lissa(
        task,
        test,
        train,
        progress,
        "hessian",
        "lissa_hessian",
        damping=damping,
        damping_factor=damping_factor,
        depth=depth,
        repeat=repeat,
        batch_size=batch_size,
        scale=scale,
        seed=seed,
        hessian_samples=hessian_samples,
        hessian_seed=hessian_seed,
        chunk_size=chunk_size,
    )


def _scale_candidates(target: float) -> list[float]:
    """The paper's grid times powers of ten, ascending, from the first value ≥ target."""
    grid = sorted({float(f"{g * 10.0**e:.12g}") for e in range(-15, 16) for g in LISSA_SCALES})
    above = [s for s in grid if s >= target]
    return above[:4] if above else [target * 2]


def _lissa(
    task,
    test,
    train,
    progress,
    kind,
    method,
    *,
    damping,
    damping_factor,
    depth,
    repeat,
    batch_size,
    scale,
    seed,
    hessian_samples,
    hessian_seed,
    chunk_size,
):
    """LiSSA with curvature ``kind`` (the body of :func:`lissa` and :func:`lissa_hessian`):
    the settings checked, each candidate scale tried in turn until the series converges,
    the scores of the test gradients' estimate of (H + λI)⁻¹."""
    depth = _positive_int("depth", depth)
    repeat = _positive_int("repeat", repeat)
    batch_size = _positive_int("batch_size", batch_size)
    seed = seed_value("seed", seed)
    scale = _lissa_scale(scale)
    # the operator's own batch (instances per pass) comes from the memory budget: a minibatch
    # that does not fit goes through the model in parts
    test, train, lam, record, op, g_test = _prepare(
        method, task, test, train, damping, damping_factor, kind, None, chunk_size,
        hessian_samples, hessian_seed,
    )  # fmt: skip
    full = batch_size >= op.count
    candidates = _lissa_candidates(op, lam, kind, method, scale, seed, record)
    tried = []
    for s in candidates:
        tried.append(s)
        try:
            H_inv_v, diag = _lissa_series(op, lam, g_test, depth, repeat, batch_size, s, seed, full)
        except NumericalError as exc:
            if len(tried) < len(candidates):
                continue
            raise _lissa_diverged(exc, op, lam, kind, method, scale, seed, tried) from None
        break
    record.update(
        diag,
        scale=float(s),
        scale_tried=[float(t) for t in tried],
        depth=depth,
        repeat=repeat,
        batch_size=batch_size,
        batches=_lissa_batches(full, op.count == len(task.train)),
        curvature_batch=op.plan(len(g_test), min(batch_size, op.count))[0],
        seed=int(seed),
        truncation_bound=float((1 - lam / s) ** depth) if 0 < lam < s else None,
        chunk_size=chunk_size,
    )
    values = score_matrix(task, train, H_inv_v, progress=progress, chunk_size=chunk_size)
    return Scores(values, test, train, method, record, UNITS)


def _lissa_scale(scale):
    """``scale`` checked: ``"auto"`` or a number > 0.

    >>> _lissa_scale("auto"), _lissa_scale(10)
    ('auto', 10.0)
    """
    if scale == "auto":
        return scale
    if isinstance(scale, str):
        raise InputError(f"scale: got {scale!r}; must be a number > 0 or 'auto'")
    return _positive("scale", scale)


def _lissa_candidates(op, lam, kind, method, scale, seed, record) -> list[float]:
    """The scales to try, in order: the given one, or for ``"auto"`` the paper's grid above
    the top eigenvalue of H + λI (found by Lanczos, which also catches an indefinite H + λI:
    the series would diverge for every scale). Notes the rule in ``record``."""
    if scale != "auto":
        record.update(scale_rule="given")
        return [scale]
    ritz = lanczos(op, op.size, min(20, op.size), seed)[0]
    top, bottom = float(ritz[0]), float(ritz.min())
    if kind == "hessian" and bottom + lam < -1e-6 * abs(top):
        # a Ritz value is a Rayleigh quotient: H + λI has a negative direction, and the
        # series grows along it for every scale (perhaps too slowly to be caught)
        raise NumericalError(
            f"{method}: H + λI is indefinite (H has a Rayleigh quotient {bottom:.3g} below "
            f"−λ, λ = {lam:.3g}), so the series diverges for every scale; use a larger "
            f"damping, above {-bottom:.3g} at least (the lowest eigenvalue may be lower), "
            "or method 'lissa' (Gauss-Newton, positive semi-definite)"
        )
    record.update(
        scale_rule="auto: smallest value of the paper's grid (x 10^k) above the top "
        "eigenvalue of H + λI",
        top_eigenvalue=top,
    )
    return _scale_candidates(abs(top) + lam)


def _lissa_diverged(exc, op, lam, kind, method, scale, seed, tried) -> NumericalError:
    """The error when the series diverged at every scale tried: what was tried, how large
    the curvature is, and a scale to try next."""
    if scale == "auto":
        detail = " (scale='auto' tried " + ", ".join(f"{t:g}" for t in tried) + ")"
        suggestion = 10 * tried[-1]
    else:  # say how large the curvature is: a scale above it is the place to start
        top = abs(top_eigenvalue(op, op.size, iterations=20, seed=seed)) + lam
        detail = f"; the top eigenvalue of H + λI is about {top:.3g}"
        suggestion = max(_scale_candidates(top)[0], 10 * tried[-1])
    return NumericalError(
        f"{method}: {exc}{detail}; the scale must exceed the largest eigenvalue of "
        f"the minibatch H + λI (hessian={kind!r}, damping λ={lam:.3g}): use a larger "
        f"scale (e.g. scale={suggestion:g}), or scale='auto'"
        + (", or more damping if H + λI is indefinite" if kind == "hessian" else "")
    )


def _lissa_batches(full: bool, whole_training_set: bool) -> str:
    """What each LiSSA step's curvature product runs on, for the record.

    >>> _lissa_batches(True, False)
    'full Hessian sample every step'
    """
    if not full:
        return "minibatches with replacement"
    return ("full training set" if whole_training_set else "full Hessian sample") + " every step"


def _lissa_series(op, lam, V, depth, repeat, batch_size, scale, seed, full):
    """The averaged LiSSA estimates of (H + λI)⁻¹ V (rows), or NumericalError on divergence."""
    gen = torch.Generator().manual_seed(int(seed))
    n = op.count
    vnorm = V.norm(dim=1)
    cap = scale / lam if lam > 0 else math.inf
    total = torch.zeros_like(V)
    total_sq = torch.zeros(len(V), dtype=V.dtype)
    last_change = 0.0
    probe = CostProbe(
        f"{depth * repeat} curvature products on "
        + ("the whole curvature data" if full else f"minibatches of {batch_size}")
        + f" (depth {depth} × repeat {repeat})",
        depth * repeat,
        "lower depth or hessian_samples" + ("" if full else " or batch_size"),
    )
    for _ in range(repeat):
        h = V.clone()
        for j in range(depth):
            if full:
                Hh = op(h)
            else:
                rows = torch.randint(n, (batch_size,), generator=gen)
                Hh = op.matmat(h, rows=rows)
            h_new = h + V - (Hh + lam * h) / scale
            norms = h_new.norm(dim=1)
            # a contracting series has ‖h_j‖ ≤ min(j + 1, scale/λ)·‖v‖ (H PSD)
            bound = LISSA_SLACK * min(j + 2, cap) * vnorm
            if not bool(torch.isfinite(norms).all()) or bool((norms > bound).any()):
                worst = float((norms / vnorm.clamp_min(1e-300)).max())
                raise NumericalError(
                    f"the recursion diverged at step {j + 1} of {depth} with scale={scale:g} "
                    f"(‖h‖/‖v‖ = {worst:.3g})"
                )
            last_change = float(((h_new - h).norm(dim=1) / norms.clamp_min(1e-300)).max())
            h = h_new
            probe.tick()
        total += h
        total_sq += (h * h).sum(1)
    mean = total / repeat
    if full:
        diag = {"last_step_relative_change": last_change}
    elif repeat > 1:
        # spread of the independent runs → standard error of their mean, relative to it
        var = (total_sq / repeat - (mean * mean).sum(1)).clamp_min(0) / (repeat - 1) * repeat
        err = (var / repeat).sqrt() / (mean.norm(dim=1)).clamp_min(1e-300)
        diag = {"relative_standard_error": float(err.max())}
    else:
        diag = {"relative_standard_error": None}
    return mean / scale, diag


# -- Arnoldi ---------------------------------------------------------------------------------
def arnoldi(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    hessian: str = "gauss_newton",
    rank: int = 50,
    iterations: int | None = None,
    complement: bool = False,
    seed: int = 0,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH,
    chunk_size: int | None = None,
) -> Scores:
    """Influence with (H + λI)⁻¹ restricted to H's top-``rank`` eigenspace (Schioppa et al.).

    ``iterations`` Krylov steps (default 2 × rank, at most P) of Lanczos with full
    reorthogonalisation (H is symmetric, so Arnoldi reduces to Lanczos) from a random start
    (``seed``) give Ritz pairs (μ, u); the ``rank`` of largest |μ| give
    (H + λI)⁻¹ ≈ U diag(1/(μ + λ)) Uᵀ, plus (1/λ)(I − UUᵀ) on the complement when
    ``complement=True`` (off by default, as in Schioppa et al.; needs λ > 0). With rank = P it
    is the exact inverse. Cost: ``iterations`` Hessian-vector products plus
    O(iterations² · P); memory iterations × P. A kept μ + λ ≤ 0 raises
    :class:`NumericalError`; the eigenvalues and the largest Ritz residual are recorded.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> full_rank = arnoldi(task, test=range(4), train=range(20), rank=task.num_params)
    >>> exact = explicit(task, test=range(4), train=range(20))
    >>> bool(np.allclose(full_rank.values, exact.values, rtol=1e-6, atol=1e-12))
    True
    """
    rank = _positive_int("rank", rank)
    if iterations is not None:
        iterations = _positive_int("iterations", iterations)
    if not isinstance(complement, bool):
        raise InputError(f"complement: got {complement!r}; must be true or false")
    seed = seed_value("seed", seed)
    test, train, lam, record, op, g_test = _prepare(
        "arnoldi", task, test, train, damping, damping_factor, hessian, batch_size, chunk_size,
        hessian_samples, hessian_seed,
    )  # fmt: skip
    record["curvature_batch"] = op.plan(1)[0]  # Lanczos: one vector per product
    rank = min(rank, op.size)
    steps = min(op.size, max(rank, iterations if iterations is not None else 2 * rank))
    mu, U, res, steps = _top_eigenpairs(op, lam, hessian, rank, steps, seed)
    S = _low_rank_inverse(g_test, mu, U, lam, complement)
    values_out = score_matrix(task, train, S, progress=progress, chunk_size=chunk_size)
    record.update(
        rank=rank,
        iterations=steps,
        complement=complement,
        seed=int(seed),
        eigenvalues=[float(m) for m in mu],
        max_relative_ritz_residual=float((res / mu.abs().clamp_min(1e-300)).max()),
        chunk_size=chunk_size,
    )
    return Scores(values_out, test, train, "arnoldi", record, UNITS)


def _top_eigenpairs(op, lam: float, hessian: str, rank: int, steps: int, seed: int):
    """``(μ, U, residuals, steps taken)``: the ``rank`` Ritz pairs of largest |μ| from
    ``steps`` Lanczos steps, or NumericalError when the damping does not make every kept
    μ + λ positive."""
    probe = CostProbe(
        f"{steps} Lanczos steps (curvature products)", steps, "lower rank or hessian_samples"
    )
    values, vectors, residuals, steps = lanczos(op, op.size, steps, seed, on_step=probe.tick)
    mu, U, res = values[:rank], vectors[:rank].to(op.dtype), residuals[:rank]
    if bool((mu + lam <= 0).any()):
        raise NumericalError(
            f"arnoldi: eigenvalue {float(mu.min()):.3g} of H is not covered by the damping "
            f"λ={lam:.3g} (hessian={hessian!r}): H + λI is not positive definite on the kept "
            "subspace; use a larger damping"
            + (' or hessian="gauss_newton"' if hessian == "hessian" else "")
        )
    return mu, U, res, steps


def _low_rank_inverse(g_test, mu, U, lam: float, complement: bool):
    """``g_test`` (rows) times U diag(1/(μ + λ)) Uᵀ, plus (1/λ)(I − UUᵀ) with ``complement``.

    >>> U = torch.eye(2, dtype=torch.float64)[:1]  # one kept direction of two
    >>> g = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    >>> mu = torch.tensor([1.0], dtype=torch.float64)
    >>> _low_rank_inverse(g, mu, U, 1.0, False), _low_rank_inverse(g, mu, U, 1.0, True)
    (tensor([[1., 0.]], dtype=torch.float64), tensor([[1., 3.]], dtype=torch.float64))
    """
    coef = g_test @ U.T  # (k, rank)
    S = (coef / (mu + lam).to(U.dtype)) @ U
    if complement:
        if lam <= 0:
            raise InputError("arnoldi: complement=True needs damping λ > 0 (it applies 1/λ)")
        S += (g_test - coef @ U) / lam
    return S


# -- generalized (Proposition 1) -----------------------------------------------------------------
def generalized(
    task: Task,
    test,
    train,
    *,
    progress=None,
    damping: float | None = None,
    damping_factor: float = 100.0,
    hessian: str = "gauss_newton",
    solver: str = "cg",
    tol: float = 1e-6,
    max_iter: int = 100,
    max_params: int = 40_000,
    max_memory_gb: float | None = None,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH,
    chunk_size: int | None = None,
) -> Scores:
    """The generalised influence function of Proposition 1 (no stationarity assumed).

    With Δθ̂(D) = −(H + λI)⁻¹ ∇R(D), the predicted further-training step on all the data,

        score[t, i] = (1/n) ∇g(z_t)ᵀ (H + λI)⁻¹ [∇ℓ(z_i) + ∇²ℓ(z_i) Δθ̂(D)],

    the first-order change of ∇gᵀΔθ̂ when z_i is down-weighted. At a stationary point
    (∇R = 0) it is the classical influence function. ∇²ℓ(z_i) is instance i's own Hessian or
    its Gauss-Newton term J_iᵀH_ℓ,iJ_i (``hessian``), applied to the one vector Δθ̂(D) by a
    jvp of the vmap'd per-instance gradient, chunk by chunk. The k + 1 systems (test
    gradients and −∇R) are solved together by ``solver="cg"`` (``tol``, ``max_iter``) or
    ``"explicit"`` (Cholesky, P ≤ ``max_params``). Cost: the solve, plus about twice the
    per-instance gradients of the training set. ‖∇R‖, ‖Δθ̂(D)‖ and the relative size of the
    correction term (Frobenius norm of its scores over that of the classical scores) are
    recorded. With ``hessian_samples`` = m, H (the solve) comes from a seeded random subset of
    m training instances, while ∇R(D) is still the mean gradient over all n (one pass) and
    the per-instance terms are computed for every scored instance.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = generalized(task, test=range(4), train=range(20))
    >>> scores.values.shape, scores.settings["gradient_norm"] > 0  # not at a stationary point
    ((4, 20), True)
    """
    check_choice("solver", solver, ("cg", "explicit"))
    tol = _positive("tol", tol)
    max_iter = _positive_int("max_iter", max_iter)
    if solver == "explicit":
        limits = _check_dense_size(task, max_params, max_memory_gb, "generalized")
    test, train, lam, record, op, g_test = _prepare(
        "generalized", task, test, train, damping, damping_factor, hessian, batch_size,
        chunk_size, hessian_samples, hessian_seed,
    )  # fmt: skip
    # ∇R(D) over all n training instances, whatever subset H is estimated from
    grad_R = op.gradient(task.train.inputs, task.train.targets)
    B = torch.cat([-grad_R[None], g_test])
    if solver == "explicit":
        L = _damped_dense(op, lam, "generalized")
        X = _cholesky_solve(L, B)
        del L
        record.update(limits, solver="explicit")
    else:
        X, info = _cg_solve(op, lam, B, tol, max_iter, "generalized")
        record.update(info, solver="cg")
    u, S = X[0], X[1:]
    values, classical_sq, correction_sq = _generalized_scores(
        task, op, u, S, train, chunk_size, progress
    )
    record.update(
        gradient_norm=float(grad_R.norm()),
        delta_theta_norm=float(u.norm()),
        correction_relative_size=math.sqrt(correction_sq / classical_sq)
        if classical_sq > 0
        else 0.0,
        gradient_data=f"all {len(task.train)} training instances",
        chunk_size=chunk_size,
    )
    return Scores(values, test, train, "generalized", record, UNITS)


def _generalized_scores(task, op, u, S, train, chunk_size, progress):
    """``(scores, Σ classical², Σ correction²)``: (1/n) S [∇ℓ(z_i) + ∇²ℓ(z_i) u] for each
    training instance i of ``train``, chunk by chunk, with the squared Frobenius norms of
    the two parts (S: the solved test gradients, rows; u: the solved −∇R, i.e. Δθ̂(D))."""
    n = len(task.train)
    idx = torch.as_tensor(train, dtype=torch.long)
    x, y = task.train.inputs[idx], task.train.targets[idx]
    size = chunk_size or max(1, chunk_size_for(op.size, op.theta.element_size()) // 2)
    values = np.empty((len(S), len(train)), dtype=np.float64)
    classical_sq = correction_sq = 0.0
    for rows, G, CU in op.per_instance(u, x, y, size):
        classical = S @ G.T / n
        correction = S @ CU.T / n
        values[:, rows] = (classical + correction).double().cpu().numpy()
        classical_sq += float(classical.double().pow(2).sum())
        correction_sq += float(correction.double().pow(2).sum())
        if progress is not None:
            progress(rows.stop - rows.start)
    return values, classical_sq, correction_sq
