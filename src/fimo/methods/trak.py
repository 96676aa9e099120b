"""TRAK with a single model (Park et al. 2023; M = 1: FiMO has no ensemble).

TRAK linearises the model output function f around the final weights, projects its gradients
to k dimensions, φ_i = Pᵀ∇_θ f(z_i), and scores with the one-step Newton estimate of the
linearised problem: τ(z_t)_i = φ_tᵀ(ΦᵀΦ)⁻¹φ_i·Q_i, with f the margin log(p_y/(1 − p_y)) and
Q_i = 1 − p_i = −∂ℓ_i/∂f_i for classification. In the paper's unified view (PAPER.md §3) that
is Gauss-Newton influence with a random projection, no damping and one model:

    score[t, i] = (1/n)·(Pᵀ∇g(z_t))ᵀ (K + λI)⁻¹ (Pᵀ∇ℓ(z_i)),   K = (h/n) Σ_j F_jᵀF_j,

with F_j = J_f(z_j)P the projected output Jacobian (one row for the margin) and h the loss
curvature in f-space that TRAK assumes: 1 for classification (TRAK drops the logistic
weights p(1 − p)), the constant 2 of fimo's squared error Σ(out − y)² for regression (nothing
to drop, so one-step Newton is exact on a linear model). At λ = 0, K = ΦᵀΦ/n, and since
Pᵀ∇ℓ_i = −Q_i φ_i, the score is TRAK's τ_i times −∂g/∂f at the test point.

Sign. TRAK's τ measures how including z_i raises the test *output* f(z_t). For
classification f is the margin, which the loss decreases in, so τ > 0 already means helpful,
and using ∇g = −Q_t∇f_t on the test side only rescales each row by Q_t > 0 (into loss units).
For regression f is the prediction: τ > 0 means z_i pushes the test prediction up, which is
helpful only when the test target lies above the prediction; no global sign flip can fix that
(the paper negated its regression TRAK scores as a whole). Using the test-loss gradient
∇g = 2(f_t − y_t)∇f_t on the test side, and the residual-weighted ∇ℓ_i = 2(f_i − y_i)∇f_i on
the training side (TRAK's Q for squared error), gives fimo's convention for both: the score
estimates g(z_t) without z_i minus with it, positive = helpful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, jacrev, vmap

from fimo.errors import InputError, check_choice
from fimo.methods.common import (
    hessian_subset,
    score_matrix,
    seed_value,
    subset_record,
    test_and_train,
)
from fimo.methods.cost import CostProbe
from fimo.methods.ghost import MAX_GHOST_CHUNK, capture, checked_plan
from fimo.methods.gradients import (
    DEFAULT_BUDGET,
    chunk_size_for,
    fit_count,
    flatten,
    gradient_matrix,
    over_instances,
)
from fimo.methods.kron_projection import PROJ_STRUCTURES, KroneckerProjector
from fimo.methods.projection import PROJECTIONS, Projector, check_proj_dim
from fimo.scores import Scores
from fimo.task import LossKind, Task

#: The dtype of the kernel, its factorisation and the solve (see :func:`trak`).
WIDE = torch.float64


def _output_function(task: Task):
    """(f, slope, h, name): f(params, x, y) → (d_f,); slope(params, x, y) = ∂ℓ/∂f (B, d_f);
    the curvature h; the name of f ("margin" or "outputs")."""
    if task.loss_kind == LossKind.CROSS_ENTROPY:

        def margin(params, x, y):
            logits = task.outputs(params, x[None])[0]
            mine = torch.arange(logits.shape[-1]) == y
            others = logits.masked_fill(mine, float("-inf")).logsumexp(-1)
            return ((logits * mine).sum(-1) - others).reshape(1)

        def slope(params, x, y):  # ℓ = log(1 + e^{−f}), so ∂ℓ/∂f = −(1 − p_y)
            return -torch.sigmoid(-over_instances(margin, task)(params, x, y))

        return margin, slope, 1.0, "margin"

    def output(params, x, y):
        return task.outputs(params, x[None])[0].reshape(-1)

    def slope(params, x, y):
        def one(o, t):
            return task.loss_fn(o[None], t[None])[0]

        out = task.outputs(params, x)
        return vmap(grad(one))(out, y).reshape(len(x), -1)

    return output, slope, (2.0 if task.loss_kind == LossKind.SQUARED_ERROR else 1.0), "outputs"


def _condition(kept: torch.Tensor, extra: float | None) -> float | None:
    """Largest over smallest eigenvalue of the inverted part of K + λI (None when empty)."""
    values = [float(v) for v in (kept.max(), kept.min())] if len(kept) else []
    if extra is not None:
        values.append(float(extra))
    return max(values) / min(values) if values else None


def _check_settings(proj_dim, damping, proj_structure) -> None:
    check_proj_dim("trak", proj_dim)
    check_choice("trak proj_structure", proj_structure, PROJ_STRUCTURES)
    if proj_structure == "kronecker" and proj_dim is None:
        raise InputError(
            "trak proj_structure: 'kronecker' projects, but proj_dim is None; give a proj_dim "
            "or use proj_structure='dense'"
        )
    if not (isinstance(damping, int | float) and damping >= 0):
        raise InputError(f"trak damping: got {damping!r}; must be a number ≥ 0")


@dataclass
class _Features:
    """What one pass over the training data gives (see :func:`_feature_pass`).

    ``kernel`` Σ_j F_jᵀF_j (k × k, float64) over the kernel's instances, or (``dual``) their
    rows F themselves in ``rows``; ``scored`` the features Pᵀ∇ℓ_i of the scored training
    instances (len(train) × k, the model's dtype); ``chunk`` the instances per chunk.
    """

    kernel: torch.Tensor | None
    rows: list[torch.Tensor]
    scored: torch.Tensor
    chunk: int

    @property
    def dual(self) -> bool:
        return self.kernel is None


def _feature_pass(task, proj, subset, train, chunk_size) -> tuple[_Features, str, float]:
    """One pass over the kernel's m instances (all n by default) and the scored ones.

    Accumulates the kernel Σ_j F_jᵀF_j, F_j = J_f(z_j)P, and the features
    Pᵀ∇ℓ_i = F_iᵀ ∂ℓ_i/∂f of the scored training instances (like TRAK's feature store). With
    N = m·d_f ≤ k rows, K has rank ≤ N: F itself is kept, for a thin SVD (O(N²k)) instead of
    the eigendecomposition of the k × k kernel (O(k³)). Returns the features, the output
    function's name and the curvature h.
    """
    n, m, k = len(task.train), len(subset), proj.dim
    params = task.params()
    f, slope, curvature, output = _output_function(task)
    with torch.no_grad():
        d_f = f(params, task.train.inputs[0], task.train.targets[0]).numel()
    features, size = _feature_maker(task, proj, f, d_f, chunk_size)
    in_kernel = np.zeros(n, dtype=bool)
    in_kernel[subset] = True
    dual = m * d_f <= k
    dtype = next(iter(params.values())).dtype
    feats = _Features(
        None if dual else torch.zeros(k, k, dtype=WIDE),
        [],
        torch.zeros(len(train), k, dtype=dtype),
        size,
    )
    wanted = np.full(n, -1, dtype=np.int64)
    wanted[train] = np.arange(len(train))
    order = np.arange(n) if m == n else np.union1d(subset, train)
    probe = CostProbe(
        f"the projected features of {len(order)} training instances",
        len(order),
        "lower proj_dim or hessian_samples",
    )
    with task.eval_mode():
        for start in range(0, len(order), size):
            pos = order[start : start + size]
            sel = torch.as_tensor(pos) if m < n else slice(int(pos[0]), int(pos[-1]) + 1)
            x, y = task.train.inputs[sel], task.train.targets[sel]
            F = features(x, y)  # (B, d_f, k)
            _add_to_kernel(feats, F, np.nonzero(in_kernel[pos])[0])
            where = wanted[pos]
            keep = np.nonzero(where >= 0)[0]
            if len(keep):
                with torch.no_grad():
                    s = slope(params, x[keep], y[keep])
                feats.scored[where[keep]] = torch.einsum("bfk,bf->bk", F[keep], s)
            probe.tick(len(pos))
    return feats, output, curvature


def _feature_maker(task: Task, proj, f, d_f: int, chunk_size: int | None):
    """(features, chunk): features(x, y) = the projected output Jacobians (B, d_f, k) of a
    chunk of instances, and the instances per chunk. Dense: the per-instance Jacobians
    (B × d_f × P) times P. Kronecker: from each Linear layer's factors, one forward and
    backward pass per output of f (:func:`fimo.methods.ghost.capture`), no Jacobian formed."""
    params = task.params()
    itemsize = next(iter(params.values())).element_size()
    if isinstance(proj, KroneckerProjector):
        rows_of = _batched_output(task)

        def features(x, y):
            per_output = []
            for d in range(d_f):
                factors = capture(
                    task, proj.layers, x, y, fn=lambda p, xs, ys, d=d: rows_of(p, xs, ys)[:, d]
                )
                per_output.append(proj.project_factors(factors, len(x)))
            return torch.stack(per_output, 1)

        width = sum(proj.positions.get(b.module, 0) * (b.out + b.width) for b in proj.blocks)
        per_instance = (4 * width + d_f * proj.dim) * itemsize
        return features, chunk_size or fit_count(per_instance, DEFAULT_BUDGET, MAX_GHOST_CHUNK)
    jac = over_instances(jacrev(f), task)

    def features(x, y):
        J = flatten(jac(params, x, y), batch_dims=2)  # (B, d_f, P)
        return proj.project(J.reshape(-1, J.shape[-1])).reshape(len(x), d_f, proj.dim)

    return features, chunk_size or chunk_size_for(task.num_params * d_f, itemsize)


def _batched_output(task: Task):
    """f of a batch, rows (B, d_f): the margin log(p_y/(1 − p_y)) of every instance for
    classification, the outputs otherwise (the batched form of :func:`_output_function`'s f,
    for the hooks of :func:`fimo.methods.ghost.capture`, which see the whole batch)."""
    if task.loss_kind == LossKind.CROSS_ENTROPY:

        def margins(params, x, y):
            logits = task.outputs(params, x).reshape(len(x), -1)
            mine = torch.arange(logits.shape[-1], device=logits.device) == y.reshape(-1, 1)
            others = logits.masked_fill(mine, float("-inf")).logsumexp(-1)
            return ((logits * mine).sum(-1) - others).reshape(len(x), 1)

        return margins
    return lambda params, x, y: task.outputs(params, x).reshape(len(x), -1)


def _projector(task: Task, proj_dim, structure: str, seed: int, kind: str, dtype):
    """The projection TRAK uses and which one it is ("dense" or "kronecker").

    "kronecker" (and "auto") need every trainable parameter to be a Linear layer's weight or
    bias, confirmed on data (:func:`fimo.methods.ghost.checked_plan`), and proj_dim ≥ the
    number of layers; "kronecker" is an InputError otherwise, "auto" falls back to dense, and
    also when projecting from factors would cost as many multiply-adds per instance as the
    product of the formed Jacobian with the dense P (num_params · proj_dim)."""

    def dense():
        return Projector(task.num_params, proj_dim, seed, kind, dtype), "dense"

    if structure == "dense" or proj_dim is None:
        return dense()
    layers, reason = checked_plan(task)
    if layers is not None and proj_dim < len(layers):
        reason = f"proj_dim {proj_dim} is below the number of Linear layers, {len(layers)}"
        layers = None
    if layers is None:
        if structure == "kronecker":
            raise InputError(
                f"trak proj_structure: 'kronecker' cannot be used here ({reason}); "
                "use proj_structure='dense' or 'auto'"
            )
        return dense()
    proj = KroneckerProjector(task, layers, proj_dim, seed, kind, dtype)
    if len(task.train):
        x, y = task.train.inputs[:1], task.train.targets[:1]
        proj.positions = {name: f.b.shape[1] for name, f in capture(task, layers, x, y).items()}
    if structure == "auto" and proj.cost(proj.positions) >= task.num_params * proj_dim:
        return dense()
    return proj, "kronecker"


def _add_to_kernel(feats: _Features, F: torch.Tensor, use: np.ndarray) -> None:
    """Add the chunk's kernel instances ``use`` (positions in F (B, d_f, k)) to the kernel."""
    k = F.shape[-1]
    if len(use) == len(F):
        F_kernel = F.reshape(-1, k)
    else:
        F_kernel = F[torch.as_tensor(use)].reshape(-1, k)
    if feats.dual:
        feats.rows.append(F_kernel)
    elif len(use):
        F64 = F_kernel.to(WIDE)
        feats.kernel.addmm_(F64.T, F64)


@dataclass
class _Inverse:
    """(K + λI)⁺ as ``basis`` (k × r) with ``denom`` (r,), plus 1/λ off span(F) (``complement``)."""

    basis: torch.Tensor
    denom: torch.Tensor
    complement: bool
    rank: int


def _pseudo_inverse(feats: _Features, curvature: float, m: int, damping: float, dtype) -> _Inverse:
    """K = V diag(w) Vᵀ in float64; (K + λI)⁺ drops the directions with w + λ ≤ cutoff.

    A direction v that is null for the exact features gets the eigenvalue ‖δΦ v‖² from the
    features' rounding δΦ: second order, about eps_f² · max (measured 1e-14-4e-14 · max for
    float32 features of linear and MLP models, P = 1k-30k). So the cut-off is
    k · max(eps64, eps_f²) · max: for float64 features the eigensolver's rounding, for float32
    ones 1.4e-14 · k (7e-12 at k = 512), far below the float32-kernel cut-off k · 1.2e-7 that
    dropped real directions, and above the floor of rounding.
    """
    k = feats.scored.shape[1]
    if feats.dual:
        _, sv, vh = torch.linalg.svd(
            torch.cat(feats.rows).to(WIDE) * (curvature / m) ** 0.5, full_matrices=False
        )
        w, basis = sv**2, vh.T
    else:
        kernel = curvature * (feats.kernel + feats.kernel.T) / (2 * m)
        w, basis = torch.linalg.eigh(kernel)
    denom = w + damping
    floor = max(torch.finfo(WIDE).eps, torch.finfo(dtype).eps ** 2)
    cutoff = k * floor * max(float(denom.max()), float(damping), 1e-300)
    keep = denom > cutoff
    complement = feats.dual and damping > cutoff  # the directions outside span(F) have K = 0
    rank = int(keep.sum()) + (k - len(w) if complement else 0)
    return _Inverse(basis[:, keep], denom[keep], complement, rank)


def _precondition(g_test: torch.Tensor, inverse: _Inverse, damping: float) -> torch.Tensor:
    """(K + λI)⁺ applied to each (projected, float64) test gradient."""
    coords = g_test @ inverse.basis
    pre = (coords / inverse.denom) @ inverse.basis.T
    if inverse.complement:
        pre += (g_test - coords @ inverse.basis.T) / damping
    return pre


def _feature_chunks(feats: _Features):
    """The scored training features in chunks, as :func:`score_matrix` takes them."""
    total = len(feats.scored)
    step = max(1, feats.chunk)
    for start in range(0, total, step):
        rows = slice(start, min(start + step, total))
        yield rows, feats.scored[rows]


def trak(
    task: Task,
    test,
    train,
    *,
    progress=None,
    proj_dim: int | None = 512,
    projection: str = "rademacher",
    proj_structure: str = "dense",
    damping: float = 0.0,
    seed: int = 0,
    chunk_size: int | None = None,
    hessian_samples: int | None = None,
    hessian_seed: int = 0,
) -> Scores:
    """TRAK with one model, (1/n)·(Pᵀ∇g_t)ᵀ(ΦᵀΦ·h/n + λI)⁺(Pᵀ∇ℓ_i), positive = helpful.

    ``proj_dim`` k is the projected dimension (``None``: no projection, exact features);
    ``projection`` is ``"rademacher"`` or ``"gaussian"`` (both scaled by 1/√k, seeded by
    ``seed``). ``proj_structure`` says how P is built: ``"dense"`` (a P × k matrix times each
    instance's formed Jacobian), ``"kronecker"`` (per Linear layer P_out ⊗ P_in, applied to the
    layer's input and output-gradient factors, never forming the Jacobians; proj_dim is split
    over the layers, :mod:`fimo.methods.kron_projection`; an InputError unless every trainable
    parameter is a Linear layer's) or ``"auto"`` (Kronecker where it applies and costs less,
    else dense); the path taken and the dimension used are recorded. ``damping`` λ is added
    to the mean kernel ΦᵀΦ·h/n (TRAK uses none; λ on this scale is TRAK's ``lambda_reg`` =
    nλ); a singular kernel is pseudo-inverted and its rank is
    recorded. The features stay in the model's dtype, but the kernel is accumulated, and
    eigendecomposed (or Φ's SVD taken) and applied, in float64: in float32 the pseudo-inverse
    cut-off k·eps·max would drop the weak directions of a full-rank kernel with condition
    number above about 1/(k·1.2e-7) (1.6e4 at k = 512), and the solve would lose
    cond·1e-7 of its accuracy. Directions are dropped below k·max(eps64, eps_f²)·max, eps_f
    the features' precision: the level at which rounding the features makes a null direction
    look non-null (7e-12 relative at k = 512 for float32 features). See the module docstring
    for the output function, Q and the sign.

    The kernel is the mean over all n training instances, or over ``hessian_samples`` = m of
    them drawn with ``hessian_seed`` (:func:`fimo.methods.common.hessian_subset`, the draw of
    the other curvature methods): ΦᵀΦ·h/m over the sample; the scored instances' features are
    computed whether or not they are in it.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    >>> task = Task(torch.nn.Linear(3, 2).double(), data, data)
    >>> scores = trak(task, test=range(4), train=range(20), proj_dim=4)
    >>> scores.values.shape, scores.settings["output_function"]
    ((4, 20), 'margin')
    """
    test, train = test_and_train(task, test, train, "trak")
    _check_settings(proj_dim, damping, proj_structure)
    check_choice("trak projection", projection, PROJECTIONS)
    n = len(task.train)
    dtype = next(iter(task.params().values())).dtype
    proj, path = _projector(task, proj_dim, proj_structure, seed, projection, dtype)
    hessian_seed = seed_value("hessian_seed", hessian_seed)
    subset = hessian_subset(n, hessian_samples, hessian_seed)
    feats, output, curvature = _feature_pass(task, proj, subset, train, chunk_size)
    inverse = _pseudo_inverse(feats, curvature, len(subset), damping, dtype)
    g_test = gradient_matrix(task, task.test, test, measure=True, chunk_size=chunk_size)
    pre = _precondition(proj.project(g_test).to(WIDE), inverse, damping)
    out = score_matrix(task, train, pre, progress=progress, chunks=_feature_chunks(feats))
    settings = {
        "proj_dim": proj_dim,
        "projection": projection if proj_dim is not None else "identity",
        "proj_structure": proj_structure,
        **_projection_record(proj, path),
        "damping": float(damping),
        "seed": seed,
        "chunk_size": chunk_size,
        "output_function": output,
        "kernel_curvature": curvature,
        **_kernel_record(inverse, proj.dim, damping),
        "n_kernel": len(subset),
        **subset_record(n, hessian_samples, hessian_seed, subset),
    }
    return Scores(out, test, train, "trak", settings, units="test-loss change (1/n scale)")


def _projection_record(proj, path: str) -> dict:
    """What the projection was: the path taken, the dimension used, the Kronecker split."""
    split = proj.split() if path == "kronecker" else None
    return {"projection_path": path, "projected_dim": proj.dim, "kronecker_split": split}


def _kernel_record(inverse: _Inverse, dim: int, damping: float) -> dict:
    """What the kernel's pseudo-inverse kept: its rank, whether it dropped directions out
    of ``dim``, and the condition number of what it inverted."""
    extra = damping if inverse.complement else None
    return {
        "kernel_rank": inverse.rank,
        "pseudo_inverse": inverse.rank < dim,
        "kernel_dtype": "float64",
        "kernel_condition": _condition(inverse.denom, extra),
    }
