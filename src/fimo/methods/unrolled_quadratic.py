"""``unrolled_quadratic``: the horizon-matched estimator, from the final model alone.

On the local quadratic model of the mean training loss R around the final weights θ_f
(gradient g = ∇R, curvature H: Gauss-Newton by default, the true Hessian on request), T steps
of gradient descent at learning rate η move the weights by Δθ_T = −F_T(H) g with

    F_T(H) = η Σ_{t<T} (I − ηH)^t = H⁻¹ (I − (I − ηH)^T).

Leaving z_i out (R → R − ℓ_i/n, the ``downweight`` scheme; ``drop`` and ``mask`` differ by a
term common to every i, which centring removes, and by 1/(n − 1) for 1/n) moves them by
(1/n) F_T(H) ∇ℓ_i more, so the test function g_test changes by

    score[c, t, i] = (1/n) · ∇g_test(z_t)ᵀ F_{T_c}(H) ∇ℓ(z_i)      (positive = helpful)

for each checkpoint c after T_c steps: one (n_test, n_train) matrix per checkpoint, the
checkpoint axis of DESIGN.md ◆ Score matrix. The scale is that of the influence methods
((1/n), n the whole training set). T → 0 gives (ηT/n)·Grad-Dot; T → ∞ (with H positive
definite) the influence function (1/n)∇gᵀH⁻¹∇ℓ_i: the horizon T and the learning rate η are
exactly what the two ends of the unified view leave out.

Heavy-ball momentum β (``torch.optim.SGD``, dampening 0) runs the same linear recursion with
a velocity: per eigenvalue h of H, (Δ_{t+1}, b_t) = M (Δ_t, b_{t−1}) + c with
M = [[1 − ηh, −ηβ], [h, β]], c = (−η, 1) (g = 1), so F_T(h) = −(Σ_{t<T} M^t c)_1
(:func:`horizon_filter`); Nesterov momentum has M = [[1 − η(1+β)h, −ηβ²], [h, β]],
c = (−η(1+β), 1). L2 weight decay w adds w·I to H (the gradient's own weight-decay term is the
same with and without z_i). Adam and AdamW are refused: their steps depend on the gradients'
running second moments, which the quadratic model of the final weights does not give.

F(H) applied to the test gradients three ways (``solver``):

- ``dense``: the explicit P × P matrix, its eigendecomposition, F(λ) per eigenvalue (small P);
- ``lanczos``: k Lanczos steps from each test gradient v, with full reorthogonalisation,
  F(H)v ≈ ‖v‖ Q_k F(T_k) e₁ (T_k the k × k tridiagonal); exact once k reaches the largest
  step count (F_T is a polynomial of degree T − 1), otherwise stopped when the estimate
  changes by less than ``tol`` (relative) over ``CHECK_EVERY`` steps;
- ``series``: the recursion itself run on the vectors, one curvature product per step.

The training gradients then meet the C vectors F_c(H) v of each test gradient (one matrix
product per chunk of them), or, with Lanczos stopped after fewer steps than there are
checkpoints, its k basis vectors and coefficients: whichever is fewer per test gradient.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fimo.errors import InputError, check_choice
from fimo.methods.common import hessian_subset, seed_value, subset_record, test_and_train
from fimo.methods.cost import CostProbe
from fimo.methods.curvature import DEFAULT_BATCH, KINDS, curvature, dense_matrix
from fimo.methods.gradients import DEFAULT_BUDGET, gradient_matrix, per_instance_grads
from fimo.scores import Scores
from fimo.task import Task

UNITS = "influence (loss)"
SOLVERS = ("auto", "dense", "lanczos", "series")
#: Lanczos checks its estimate for convergence every this many steps.
CHECK_EVERY = 5


# -- the scalar filter ----------------------------------------------------------------------------
def _recursion(h: np.ndarray, lr: float, momentum: float, nesterov: bool):
    """M (m, 2, 2) and c (2,) of the optimizer's recursion on (Δ_t, b_{t−1}) per eigenvalue."""
    b = momentum
    M = np.empty((len(h), 2, 2))
    if nesterov:
        M[:, 0, 0], M[:, 0, 1] = 1 - lr * (1 + b) * h, -lr * b * b
        c = np.array([-lr * (1 + b), 1.0])
    else:
        M[:, 0, 0], M[:, 0, 1] = 1 - lr * h, -lr * b
        c = np.array([-lr, 1.0])
    M[:, 1, 0], M[:, 1, 1] = h, b
    return M, c


def _power_and_sum(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(M^k, Σ_{t<k} M^t) for a batch of 2 × 2 matrices, by binary doubling (log k products)."""
    eye = np.broadcast_to(np.eye(2), M.shape).copy()
    power, total = eye.copy(), np.zeros_like(M)  # of the steps taken so far
    base, base_sum = M.copy(), eye.copy()  # M^(2^j) and Σ_{t<2^j} M^t
    while k:
        if k & 1:
            total = total + power @ base_sum
            power = power @ base
        base_sum = base_sum + base @ base_sum
        base = base @ base
        k >>= 1
    return power, total


def horizon_filter(h, steps, lr: float, momentum: float = 0.0, nesterov: bool = False):
    """F_T(h) for each step count T in ``steps`` and each eigenvalue h: shape (len(steps), len(h)).

    F_T(h) is what T steps of SGD (learning rate ``lr``, heavy-ball ``momentum``, optionally
    Nesterov, torch.optim's conventions) on the quadratic ½hx² + x, started at x = 0 with a
    fresh optimizer, move x by, with the sign flipped: x_T = −F_T(h). Without momentum
    F_T(h) = (1 − (1 − lr·h)^T)/h (lr·T at h = 0). Computed by doubling the 2 × 2 recursion,
    so any T costs log T small products.

    >>> horizon_filter([0.0, 1.0], [1, 2, 1000], lr=0.1).round(6).tolist()
    [[0.1, 0.1], [0.2, 0.19], [100.0, 1.0]]
    """
    h = np.atleast_1d(np.asarray(h, dtype=np.float64))
    steps = [int(s) for s in np.atleast_1d(steps)]
    M, c = _recursion(h, float(lr), float(momentum), bool(nesterov))
    out = np.empty((len(steps), len(h)))
    state = np.zeros((len(h), 2))  # (Δ_T, b_{T−1}) for g = 1
    done = 0
    for k, T in sorted(enumerate(steps), key=lambda kv: kv[1]):
        power, total = _power_and_sum(M, T - done)
        state = np.einsum("mij,mj->mi", power, state) + total @ c
        done = T
        out[k] = -state[:, 0]
    return out


# -- F(H) applied to blocks of vectors ------------------------------------------------------------
def dense_apply(H: torch.Tensor, V: torch.Tensor, filt) -> torch.Tensor:
    """F_c(H) v for each row v of V (K, P) and each checkpoint c, from the eigendecomposition
    of the dense symmetric H: (C, K, P). ``filt(λ)`` gives F_c at the eigenvalues, (C, P).

    >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> dense_apply(H, torch.ones(1, 2, dtype=torch.float64), lambda h: 1 / h[None])[0].tolist()
    [[0.5, 0.25]]
    """
    vals, U = torch.linalg.eigh(H.double())
    return _dense_scorer(vals, U, V, filt)(torch.eye(len(H), dtype=torch.float64))


def _dense_scorer(vals: torch.Tensor, U: torch.Tensor, V: torch.Tensor, filt):
    """G (N, P) ↦ (F_c(H) v_k) · g_n for every (c, k, n), with H = U diag(vals) Uᵀ."""
    phi = torch.as_tensor(filt(vals.numpy()))  # (C, P)
    A = V.double() @ U  # (K, P): the test vectors in the eigenbasis
    return lambda G: torch.einsum("kp,cp,np->ckn", A, phi, G.double() @ U)


def _krylov_coefficients(alpha, beta, norms, filt) -> tuple[torch.Tensor, torch.Tensor]:
    """‖v‖ F_c(T) e₁ for each vector's tridiagonal T (K, j, j): (C, K, j); and the largest
    Ritz value of each (K,)."""
    K, j = alpha.shape
    T = torch.diag_embed(alpha)
    if j > 1:
        T = T + torch.diag_embed(beta[:, : j - 1], 1) + torch.diag_embed(beta[:, : j - 1], -1)
    theta, Y = torch.linalg.eigh(T)  # (K, j), (K, j, j)
    phi = torch.as_tensor(filt(theta.reshape(-1).numpy())).reshape(-1, K, j)
    coef = torch.einsum("kab,ckb,kb->cka", Y, phi, Y[:, 0, :]) * norms[None, :, None]
    return coef, theta[:, -1]


def lanczos_apply(
    matmat, V: torch.Tensor, filt, max_iter: int, tol: float, exact_at: int | None = None
) -> tuple[torch.Tensor, dict]:
    """F_c(H) v for each row v of V (K, P) by Lanczos from v: (C, K, P) and a record.

    ``matmat`` maps a block (k, P) to H times it (rows); ``filt(θ)`` gives F_c at the values
    θ, shape (C, len(θ)). The K processes run in lockstep (one block product per step) in
    float64, each with full reorthogonalisation (twice, classical Gram-Schmidt) against its own
    basis. A process stops at breakdown (an invariant subspace: the estimate is exact), at
    ``exact_at`` steps (F is a polynomial of degree exact_at − 1), or when its estimate moved
    by at most ``tol`` (relative, worst checkpoint) over the last ``CHECK_EVERY`` steps; the
    last such change is its error estimate. Memory: K × max_iter × P numbers.

    >>> H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> V = torch.ones(1, 3, dtype=torch.float64)
    >>> out, info = lanczos_apply(lambda X: X @ H, V, lambda t: 1 / np.asarray(t)[None], 10, 1e-12)
    >>> out[0, 0].numpy().round(12).tolist(), info["iterations"]
    ([1.0, 0.5, 0.333333333333], [3])
    """
    coef, Q, info = _lanczos(matmat, V, filt, max_iter, tol, exact_at)
    return torch.einsum("ckm,kmp->ckp", coef, Q), info


def _lanczos(matmat, V, filt, max_iter, tol, exact_at, on_step=lambda: None):
    """:func:`lanczos_apply` in factored form: coefficients (C, K, m), bases (K, m, P), record;
    ``on_step()`` is called after each step."""
    V = V.double()
    K, P = V.shape
    m = max(1, min(int(max_iter), P, exact_at or P))
    norms = V.norm(dim=1)
    Q = torch.zeros(K, m, P, dtype=torch.float64)
    alpha = torch.zeros(K, m, dtype=torch.float64)
    beta = torch.zeros(K, m, dtype=torch.float64)
    q = V / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    running = norms > 0
    steps = torch.zeros(K, dtype=torch.long)
    change = torch.zeros(K, dtype=torch.float64)
    coef = [None] * K  # each process's final (C, j) coefficients
    last = {}  # each running process's coefficients at its last check
    top = torch.full((K,), -math.inf, dtype=torch.float64)  # largest Ritz values
    for j in range(m):
        rows = torch.nonzero(running).flatten()
        if len(rows) == 0:
            break
        Q[rows, j] = q[rows]
        W = matmat(q[rows]).double()
        alpha[rows, j] = (W * q[rows]).sum(1)
        basis = Q[rows, : j + 1]
        for _ in range(2):
            W = W - torch.einsum("kjp,kj->kp", basis, torch.einsum("kjp,kp->kj", basis, W))
        b = W.norm(dim=1)
        beta[rows, j] = b
        steps[rows] = j + 1
        scale = alpha[rows, : j + 1].abs().amax(1).clamp_min(b.max())
        broke = b <= 1e-10 * scale.clamp_min(1e-300)
        check = (j + 1) % CHECK_EVERY == 0 or j + 1 == m or bool(broke.any())
        if check:
            c_now, top[rows] = _krylov_coefficients(
                alpha[rows, : j + 1], beta[rows], norms[rows], filt
            )
            stop = broke | (j + 1 == m)
            for pos, k in enumerate(rows.tolist()):
                now = c_now[:, pos]
                if k in last:
                    prev = torch.nn.functional.pad(last[k], (0, now.shape[1] - last[k].shape[1]))
                    rel = (now - prev).norm(dim=1) / now.norm(dim=1).clamp_min(1e-300)
                    change[k] = float(rel.max())
                    stop[pos] |= bool(change[k] <= tol)
                last[k] = now
                if broke[pos] or j + 1 in (exact_at, P):
                    change[k] = 0.0  # exact: an invariant subspace, or the degree reached
                if stop[pos]:
                    coef[k] = now
                    running[k] = False
        q[rows] = W / b.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        on_step()
    C = len(filt(np.ones(1)))
    out = torch.zeros(C, K, m, dtype=torch.float64)  # zero past each process's last step
    for k in range(K):
        if coef[k] is not None:
            out[:, k, : coef[k].shape[1]] = coef[k]
    return (
        out,
        Q,
        {
            "iterations": steps.tolist(),
            "error_estimates": [float(e) for e in change],
            "max_error_estimate": float(change.max()) if K else 0.0,
            "top_ritz_value": float(top.max()) if K else math.nan,
        },
    )


def series_apply(matmat, V: torch.Tensor, steps, lr, momentum=0.0, nesterov=False, on_step=None):
    """F_c(H) v for each row v of V by running the optimizer's recursion on the quadratic:
    (C, K, P), one block product per step up to the largest step count; ``on_step()`` (if
    given) is called after each step.

    >>> H = torch.tensor([[2.0]], dtype=torch.float64)
    >>> series_apply(lambda X: X @ H, torch.ones(1, 1, dtype=torch.float64), [1, 3], 0.1)[:, 0, 0]
    tensor([0.1000, 0.2440], dtype=torch.float64)
    """
    V = V.double()
    delta, buf = torch.zeros_like(V), torch.zeros_like(V)
    wanted = {int(s): c for c, s in enumerate(steps)}
    out = torch.zeros(len(wanted), *V.shape, dtype=torch.float64)  # F_0 = 0
    for t in range(1, max(wanted) + 1):
        grad = V + matmat(delta).double()
        buf = momentum * buf + grad
        delta = delta - lr * (grad + momentum * buf if nesterov else buf)
        if t in wanted:
            out[wanted[t]] = -delta
        if on_step is not None:
            on_step()
    return out


# -- settings ---------------------------------------------------------------------------------------
def _further_dict(further) -> dict:
    if further is None:
        return {}
    if hasattr(further, "as_dict"):
        further = further.as_dict()
    if not isinstance(further, Mapping):
        raise InputError(
            f"unrolled_quadratic: further: got {type(further).__name__}; expected the further-"
            "training settings (a FurtherSettings or a mapping such as its as_dict())"
        )
    return dict(further)


def resolve_optimizer(further, lr, momentum) -> dict:
    """The learning rate, momentum, Nesterov flag and weight decay the filter uses: ``lr`` and
    ``momentum`` as given, else from ``further`` (the run's further-training settings).

    >>> resolve_optimizer({"optimizer": "sgd", "lr": 0.03, "momentum": 0.9}, None, None)["lr"]
    0.03
    """
    f = _further_dict(further)
    optimizer = f.get("optimizer", "sgd")
    if optimizer != "sgd":
        raise InputError(
            f"unrolled_quadratic: further.optimizer = {optimizer!r} is not supported: the "
            "quadratic model's filter is derived for SGD (with or without momentum); use "
            "further.optimizer = 'sgd', or leave unrolled_quadratic out of methods.names"
        )
    lr = f.get("lr") if lr is None else lr
    if lr is None:
        raise InputError(
            "unrolled_quadratic: lr: not given; pass lr= (the further-training learning rate) "
            "or further= (the further-training settings)"
        )
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise InputError(f"unrolled_quadratic: lr: got {lr!r}; must be a positive number")
    momentum = f.get("momentum", 0.0) if momentum is None else momentum
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise InputError(f"unrolled_quadratic: momentum: got {momentum!r}; must be in [0, 1)")
    nesterov = bool(f.get("nesterov", False)) and momentum > 0
    decay = float(f.get("weight_decay", 0.0))
    return {
        "lr": float(lr),
        "momentum": float(momentum),
        "nesterov": nesterov,
        "weight_decay": decay,
        "clip_norm": float(f.get("clip_norm", 0.0)),
    }


def _steps(steps) -> np.ndarray:
    if steps is None:
        raise InputError(
            "unrolled_quadratic: steps: not given; pass the checkpoints' step counts, e.g. "
            "steps=[4, 8, 16] (a run passes those of its gold standard)"
        )
    raw = np.atleast_1d(np.asarray(steps))
    ok = raw.size > 0 and np.issubdtype(raw.dtype, np.integer) and raw.min() >= 0
    if not ok or np.any(np.diff(raw) <= 0):
        raise InputError(
            f"unrolled_quadratic: steps: got {np.asarray(steps).tolist()!r}; expected "
            "increasing whole numbers ≥ 0 (step counts of the checkpoints)"
        )
    return raw.astype(np.int64)


def _number(name: str, value, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < math.inf:
        raise InputError(f"unrolled_quadratic: {name}: got {value!r}; must be a number ≥ {low:g}")
    return float(value)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"unrolled_quadratic: {name}: got {value!r}; must be a whole number ≥ 1")
    return int(value)


# -- the method -------------------------------------------------------------------------------------
def unrolled_quadratic(
    task: Task,
    test,
    train,
    *,
    progress=None,
    steps=None,
    lr: float | None = None,
    momentum: float | None = None,
    further=None,
    hessian: str = "gauss_newton",
    damping: float = 0.0,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
    solver: str = "auto",
    dense_max_params: int = 3000,
    max_iter: int = 200,
    tol: float = 1e-6,
    batch_size: int | None = DEFAULT_BATCH,
    chunk_size: int | None = None,
) -> Scores:
    """(1/n) ∇g(z_t)ᵀ F_T(H) ∇ℓ(z_i) for each checkpoint after T steps: Scores (C, n_test, n_train).

    ``steps`` are the checkpoints' step counts; ``lr`` and ``momentum`` those of further
    training (SGD), taken from ``further`` (the further-training settings, which a run passes
    itself, with its gold standard's steps) unless given; further training with weight decay
    w adds w·I to H, and ``damping`` adds more. ``hessian``: ``"gauss_newton"`` or
    ``"hessian"``, fitted on ``hessian_samples`` training instances (all by default) like the
    influence methods. ``solver``: ``"dense"`` (eigendecomposition; ``"auto"`` picks it up to
    ``dense_max_params`` parameters), ``"lanczos"`` (at most ``max_iter`` steps per test
    gradient, relative tolerance ``tol``; iterations and error estimates are recorded) or
    ``"series"`` (the recursion itself, one curvature product per step). The settings record
    lr × the largest eigenvalue found: above 2 (2(1 + β) with momentum) the quadratic model's
    SGD diverges along that direction, and a RuntimeWarning says so.

    After one step F_1(H) = lr·I, so the scores are lr/n times the gradients' dot products
    (:func:`fimo.methods.first_order.grad_dot` gives ∇gᵀ∇ℓ); the solvers agree:

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> from fimo.methods.first_order import grad_dot
    >>> X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> data = ArrayDataset(X, X.sum(1, keepdim=True))
    >>> task = Task(nn.Linear(3, 1).double(), data, data, loss="mse")
    >>> s = unrolled_quadratic(task, test=range(2), train=range(8), steps=[1, 5], lr=0.05)
    >>> s.values.shape, s.at(5).values.shape
    ((2, 2, 8), (2, 8))
    >>> dot = grad_dot(task, test=range(2), train=range(8)).values
    >>> np.allclose(s.at(1).values, 0.05 / 8 * dot)
    True
    >>> krylov = unrolled_quadratic(task, range(2), range(8), steps=[1, 5], lr=0.05,
    ...                             solver="lanczos")
    >>> np.allclose(krylov.values, s.values)
    True
    """
    test, train = test_and_train(task, test, train, "unrolled_quadratic")
    checked = _Settings.checked(
        steps, lr, momentum, further, hessian, damping, solver, dense_max_params, max_iter, tol,
        chunk_size, hessian_seed,
    )  # fmt: skip
    op, solver, record = _operator(task, checked, hessian_samples, batch_size, chunk_size)
    g_test = gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size).double()
    blocks, top = _scorers(
        solver, op, checked.shift, _shifted(op, checked.shift), checked.filter, g_test,
        checked.steps, checked.opt, checked.max_iter, checked.tol, record,
    )  # fmt: skip
    if top is not None:
        _check_stability(checked.opt, top, record)
    if record.get("converged") is False:
        _warn_unconverged(checked, record)
    values = _stream(task, blocks, len(checked.steps), len(test), train, chunk_size, progress)
    return Scores(values, test, train, "unrolled_quadratic", record, UNITS, checked.steps)


@dataclass(frozen=True)
class _Settings:
    """The method's settings, checked: the checkpoints' step counts, the optimizer's
    constants (:func:`resolve_optimizer`), the curvature kind, the damping, the solver and
    its limits."""

    steps: np.ndarray
    opt: dict
    hessian: str
    damping: float
    solver: str
    dense_max_params: int
    max_iter: int
    tol: float
    hessian_seed: int

    @classmethod
    def checked(
        cls, steps, lr, momentum, further, hessian, damping, solver, dense_max_params, max_iter,
        tol, chunk_size, hessian_seed,
    ) -> _Settings:  # fmt: skip
        """Every setting checked once, at the door (an InputError names the setting).

        >>> s = _Settings.checked([4, 8], 0.1, None, None, "hessian", 0, "auto", 3000, 200,
        ...                       1e-6, None, 0)
        >>> s.steps.tolist(), s.opt["lr"], s.shift
        ([4, 8], 0.1, 0.0)
        """
        steps = _steps(steps)
        opt = resolve_optimizer(further, lr, momentum)
        check_choice("hessian", hessian, KINDS)
        check_choice("solver", solver, SOLVERS)
        damping = _number("damping", damping)
        dense_max_params = _count("dense_max_params", dense_max_params)
        max_iter = _count("max_iter", max_iter)
        tol = _number("tol", tol)
        if chunk_size is not None:
            _count("chunk_size", chunk_size)
        hessian_seed = seed_value("hessian_seed", hessian_seed)
        return cls(
            steps, opt, hessian, damping, solver, dense_max_params, max_iter, tol, hessian_seed
        )

    @property
    def shift(self) -> float:
        """What is added to H: the further training's L2 weight decay and the damping."""
        return self.opt["weight_decay"] + self.damping

    def filter(self, h) -> np.ndarray:
        """F_c at the eigenvalues ``h`` for every checkpoint c: (C, len(h))."""
        opt = self.opt
        return horizon_filter(h, self.steps, opt["lr"], opt["momentum"], opt["nesterov"])


def _operator(task: Task, checked: _Settings, hessian_samples, batch_size, chunk_size):
    """The curvature operator of H (on ``hessian_samples`` training instances, all by
    default), the solver (``"auto"`` resolved by the number of parameters) and the record
    of the settings the scores were made with."""
    n = len(task.train)
    subset = hessian_subset(n, hessian_samples, checked.hessian_seed)
    op = curvature(
        task, checked.hessian, batch_size=batch_size,
        data_indices=None if len(subset) == n else subset,
    )  # fmt: skip
    solver = checked.solver
    if solver == "auto":
        solver = "dense" if op.size <= checked.dense_max_params else "lanczos"
    record = {
        "steps": checked.steps.tolist(),
        **checked.opt,
        "damping": checked.damping,
        "hessian": checked.hessian,
        "solver": solver,
        "num_params": op.size,
        "n_train": n,
        **subset_record(n, hessian_samples, checked.hessian_seed, subset),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
    }
    return op, solver, record


def _shifted(op, shift: float):
    """The product X ↦ (H + shift·I) X on rows, in float64."""

    def matmat(X):
        return op(X.to(op.dtype)).double() + shift * X.double()

    return matmat


def _warn_unconverged(checked: _Settings, record: dict) -> None:
    """A RuntimeWarning, at the caller of :func:`unrolled_quadratic`: Lanczos stopped at
    ``max_iter`` before reaching ``tol`` for some test gradient."""
    warnings.warn(
        f"unrolled_quadratic: Lanczos did not reach tol={checked.tol:g} in "
        f"max_iter={checked.max_iter} steps for every test gradient (worst relative change "
        f"{record['max_error_estimate']:.2e}); raise max_iter",
        RuntimeWarning,
        stacklevel=3,
    )


def _scorers(solver, op, shift, matmat, filt, g_test, steps, opt, max_iter, tol, record):
    """Blocks (test rows, G ↦ scores (C, rows, N) before the 1/n) and the largest eigenvalue
    (or Ritz value) of H + shift·I seen, None for the series; fills ``record``."""
    if solver == "dense":
        probe = CostProbe(
            f"the dense {op.size} × {op.size} {op.kind} matrix from {op.count} instances",
            op.count,
            "lower hessian_samples or dense_max_params (Lanczos instead)",
        )
        H = dense_matrix(op, on_step=probe.tick).double()
        H.diagonal().add_(shift)
        vals, U = torch.linalg.eigh(H)
        del H
        record["eigenvalue_range"] = [float(vals[0]), float(vals[-1])]
        return [(slice(0, len(g_test)), _dense_scorer(vals, U, g_test, filt))], float(vals[-1])
    depth = max_iter if solver == "lanczos" else 3  # vectors of P held per test gradient
    per = max(1, DEFAULT_BUDGET // (8 * op.size * depth))
    n_blocks = -(-len(g_test) // per)
    length = min(max_iter, op.size, int(steps.max())) if solver == "lanczos" else int(steps.max())
    probe = CostProbe(
        f"{'at most ' if solver == 'lanczos' else ''}{n_blocks * length} {solver} steps on "
        f"blocks of up to {min(per, len(g_test))} test gradients",
        n_blocks * length,
        "lower max_iter or hessian_samples" if solver == "lanczos" else "lower the steps",
    )
    blocks, parts = [], []
    for start in range(0, len(g_test), per):
        V = g_test[start : start + per]
        rows = slice(start, start + len(V))
        if solver == "lanczos":
            coef, Q, part = _lanczos(matmat, V, filt, max_iter, tol, int(steps.max()), probe.tick)
            parts.append(part)
            blocks.append((rows, _krylov_vectors(coef, Q, max(part["iterations"]))))
        else:
            S = series_apply(
                matmat, V, steps, opt["lr"], opt["momentum"], opt["nesterov"], probe.tick
            )
            blocks.append((rows, S))
    blocks = _joined(blocks)
    if solver == "series":
        return blocks, None
    errors = [e for p in parts for e in p["error_estimates"]]
    record.update(
        iterations=[i for p in parts for i in p["iterations"]],
        error_estimates=errors,
        max_error_estimate=max(errors, default=0.0),
        converged=max(errors, default=0.0) <= tol,
    )
    return blocks, max(p["top_ritz_value"] for p in parts)


def _krylov_vectors(coef: torch.Tensor, Q: torch.Tensor, used: int):
    """What a block's scores are made from: the vectors F_c(H) v_k (C, K, P), or the
    coefficients and the first ``used`` vectors of the Lanczos bases Q (K, m, P) (the most
    any process took) when there are fewer of those than checkpoints.

    Each training gradient meets C vectors per test gradient in the first form, ``used`` in
    the second: the product with the training gradients, which dominated the cost on the
    credit preset (2 checkpoints, 10 Lanczos steps, 27,000 training gradients), shrinks
    ``used``/C times."""
    coef, Q = coef[:, :, :used], Q[:, :used].contiguous()  # a copy: the rest is freed
    if len(coef) <= used:
        return torch.einsum("ckm,kmp->ckp", coef, Q)
    return coef, Q


def _joined(blocks: list) -> list:
    """(rows, scorer) per block, G (N, P) ↦ scores (C, rows, N); blocks held as vectors
    F_c(H) v_k are joined into one, so that a chunk of training gradients meets every test
    gradient in one matrix product."""
    if all(torch.is_tensor(S) for _, S in blocks):
        S = torch.cat([S for _, S in blocks], dim=1)
        return [(slice(0, S.shape[1]), lambda G: torch.einsum("ckp,np->ckn", S, G.double()))]
    return [
        (rows, lambda G, S=S: torch.einsum("ckp,np->ckn", S, G.double()))
        if torch.is_tensor(S)
        else (rows, lambda G, S=S: torch.einsum("ckm,kmn->ckn", S[0], S[1] @ G.double().T))
        for rows, S in blocks
    ]


def _check_stability(opt: dict, top: float, record: dict) -> None:
    """Record lr × the largest eigenvalue; warn when the quadratic model's SGD diverges."""
    record["lr_top_eigenvalue"] = opt["lr"] * top
    limit = 2 * (1 + opt["momentum"])
    if opt["lr"] * top > limit:
        warnings.warn(
            f"unrolled_quadratic: lr × the largest curvature eigenvalue is {opt['lr'] * top:.3g}"
            f" > {limit:g}: on the quadratic model, SGD diverges along that direction and the "
            "long-horizon scores grow without bound",
            RuntimeWarning,
            stacklevel=3,
        )


def _stream(task, blocks, C, K, train, chunk_size, progress) -> np.ndarray:
    """(1/n) S_c Gᵀ for each block of test rows, over chunks of training gradients (each
    chunk computed once, for every block)."""
    n = len(task.train)
    idx = torch.as_tensor(train, dtype=torch.long)
    x, y = task.train.inputs[idx], task.train.targets[idx]
    out = np.empty((C, K, len(train)), dtype=np.float64)
    probe = CostProbe(
        f"scoring {len(train)} training instances against {K} test vectors at {C} checkpoints",
        len(train),
        "score fewer training instances or test instances",
    )
    for cols, g in per_instance_grads(task, x, y, chunk_size=chunk_size):
        for rows, scorer in blocks:
            out[:, rows, cols] = (scorer(g) / n).numpy()
        if progress is not None:
            progress(cols.stop - cols.start)
        probe.tick(cols.stop - cols.start)
    return out
