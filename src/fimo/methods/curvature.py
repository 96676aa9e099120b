"""Curvature operators over the flattened trainable parameters θ (paper §3, the H of (H + λI)⁻¹).

Every second-order method of the unified view needs products with the curvature H of the mean
training loss R(θ) = (1/n) Σ_j ℓ_j at the final weights, either the true Hessian ∇²R or its
Gauss-Newton approximation G = (1/n) Σ_j J_jᵀ H_ℓ,j J_j (J_j the Jacobian of instance j's model
outputs w.r.t. θ, H_ℓ,j the Hessian of its loss w.r.t. those outputs; for softmax cross-entropy
diag(p) − ppᵀ). Here both are :class:`CurvatureOperator` objects: ``op(v)`` for one vector
(P,), ``op(V)`` for a block (k, P). They are built with ``torch.func`` (no hooks) and loop over
the training data in batches, so memory stays at one batch's activations per vector; no n × P
matrix is ever formed. The parameter order is that of ``task.params()``, the same as
:func:`fimo.methods.gradients.flatten`.

How many training instances go through the model at a time (the *batch*) and how many
vectors are vmap'd together are chosen from a memory budget (that of
:mod:`fimo.methods.gradients`, 256 MiB by default): a product holds about
``BYTES_PER_ACTIVATION`` × (vectors + 1) × batch × w + ``PARAM_COPIES`` × vectors × P item
sizes, w the numbers one instance produces in a forward pass, so small models get the whole
training set in one batch (one graph per product) and large ones are cut to fit.
``batch_size=`` fixes the batch instead.

A linear model w ↦ x·w with squared error (x·w − y)² has H = G = (2/n) Σ_j x_j x_jᵀ; for
x = (1, 0) and (0, 2) that is diag(1, 4):

>>> from fimo.data import ArrayDataset
>>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
>>> data = ArrayDataset(X, torch.ones(2, 1, dtype=torch.float64))
>>> task = Task(torch.nn.Linear(2, 1, bias=False).double(), data, data, loss="mse")
>>> hvp(task)(torch.ones(2, dtype=torch.float64)).tolist()  # H v, v of shape (P,)
[1.0, 4.0]
>>> dense_matrix(gnvp(task)).round(decimals=12).tolist()  # the explicit P × P matrix
[[1.0, 0.0], [0.0, 4.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev, jvp, vjp, vmap

from fimo.errors import InputError, check_choice
from fimo.methods.gradients import (
    DEFAULT_BUDGET,
    activation_width,
    chunk_size_for,
    fit_count,
    over_rows,
)
from fimo.task import LossKind, Task, eval_mode

#: The curvature matrices the methods accept (the ``hessian`` setting).
KINDS = ("gauss_newton", "hessian")
#: ``batch_size`` of the operators and methods by default: from the memory budget.
DEFAULT_BATCH = None
#: Vectors processed together (vmap'd) in one batched product, unless the batch is small (see
#: ``VMAP_BYTES``) or a fixed ``batch_size`` leaves no room in the budget. Larger blocks measured
#: no faster for large batches on CPU: for the dense Hessian of a 2k-parameter MLP on 2,000
#: instances, blocks of 96 and 256 took 1.2-1.3× as long as blocks of 32.
MAX_VECTORS = 32
#: Bytes a product holds per number of an instance's forward pass, per vector in flight (plus
#: one for the shared graph), in units of the item size. Measured from the peak RSS of one
#: batch product of the Adult MLP 106-128-128-2 in float32 (batches of 1,000-8,000, 1-32
#: vectors): 0.8-1.1 for Gauss-Newton, 1.0-2.9 for the Hessian. So the budget is kept to
#: within about 1.5×, not exactly.
BYTES_PER_ACTIVATION = 2.0
#: Bytes per vector in flight that do not depend on the batch, in units of P × item size: the
#: vector, its product and the parameter-shaped intermediates of the pullback.
PARAM_COPIES = 3
#: Small batches vmap more vectors together, as many as keep the slab of activations
#: (in_flight × batch × width numbers) within this many bytes: fewer, larger kernels. For
#: LiSSA's products on the Adult MLP (batch 128, 100 vectors) with two threads contended by
#: other jobs: 0.16-0.35 s per product with all 100 in one vmap against 0.31-1.36 s in chunks
#: of 32 (whole LiSSA runs: 8.1 s against 9.2 s, minimum of 3); on one thread the same. Large
#: batches stay at 32 (bigger slabs measured slower for the dense Hessian).
VMAP_BYTES = 32 * 2**20
#: Gauss-Newton products with at least this many vectors go through per-instance Jacobian
#: factors (:meth:`CurvatureOperator.factors`): building a batch's Jacobians costs about as
#: much as 3-4 vectors through the model (MLP 8-128-128-1, batch 128: 3.5 ms against about
#: 1 ms per vector), after which each vector is two small matrix products. Products of fewer
#: vectors (Arnoldi's) use factors already held but do not build them: for rank-30 Arnoldi on
#: an MLP 106-128-128-2 with 2,000 instances building them made it 2.3× slower.
FACTOR_VECTORS = 8


class FlatParams:
    """θ as one flat vector, and the way back to the task's parameter dict.

    >>> flat = FlatParams({"w": torch.ones(2, 2), "b": torch.zeros(2)})
    >>> flat.names, flat.vector.tolist()
    (['w', 'b'], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """

    def __init__(self, params: dict[str, torch.Tensor]):
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numels = [p.numel() for p in params.values()]
        self.vector = torch.cat([p.reshape(-1) for p in params.values()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector (P,) as the parameter dict, in the order and shapes of the original.

        >>> flat = FlatParams({"w": torch.ones(2, 2), "b": torch.zeros(2)})
        >>> {name: p.tolist() for name, p in flat.unflatten(torch.arange(6.0)).items()}
        {'w': [[0.0, 1.0], [2.0, 3.0]], 'b': [4.0, 5.0]}
        """
        parts = torch.split(flat, self.numels)
        return {
            n: part.view(shape)
            for n, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }


class CurvatureOperator:
    """v ↦ C v, C the Hessian or Gauss-Newton matrix of the mean loss over some training data.

    ``kind`` is ``"hessian"`` (∇²R: a vjp of the gradient, reverse-over-reverse) or
    ``"gauss_newton"`` (Jᵀ H_ℓ J: J v by a jvp of the output map, H_ℓ(Jv) by a
    Hessian-vector product of the loss in output space, Jᵀ(·) by a vjp). ``data_indices``
    selects training instances (all by default); the product is their *mean*.
    ``batch_size`` training instances go through the model at a time (memory ∝ batch_size
    × vectors in flight); ``None`` (the default) takes as many as fit in ``budget`` bytes
    with the vectors of the call (:meth:`plan`). The result does not depend on it beyond
    rounding.

    Cost of one product: one pass over the selected data at about 3-5 forward passes each.
    A block of k vectors shares each batch's graph (one forward and backward per batch) and
    vmaps the rest over the vectors, 32 at a time (more for small batches). On a task whose
    per-instance path is the loop (:meth:`fimo.Task.per_instance_path`) nothing that runs
    the model is vmap'd: the vectors and the per-instance Jacobians and gradients are looped
    (:func:`fimo.methods.gradients.over_rows`), equal up to rounding and slower.

    Reverse-over-reverse rather than forward-over-reverse (``jvp(grad)``) for the Hessian:
    on CPU with torch 2.13 it measured 1.3-2.8× faster (forward-mode derivatives of backward
    formulas such as the cross-entropy's go through Python decompositions), and it lets the
    k vectors of a block share one graph.

    On a linear model with squared error, H = (2/n) Σ_j x_j x_jᵀ = diag(1, 4) here:

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> op = CurvatureOperator(task, "hessian")
    >>> op.size, op.count, op(torch.ones(2, dtype=torch.float64)).tolist()
    (2, 2, [1.0, 4.0])
    """

    def __init__(
        self,
        task: Task,
        kind: str = "gauss_newton",
        data_indices=None,
        batch_size: int | None = DEFAULT_BATCH,
        params: dict[str, torch.Tensor] | None = None,
        budget: int = DEFAULT_BUDGET,
    ):
        check_choice("hessian", kind, KINDS)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InputError(
                f"batch_size: got {batch_size!r}; must be an integer ≥ 1, or None to choose it "
                "from the memory budget"
            )
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InputError(f"budget: got {budget!r}; must be a number of bytes ≥ 1")
        self.task, self.kind, self.batch_size, self.budget = task, kind, batch_size, budget
        self.flat = FlatParams(task.params() if params is None else params)
        self.theta = self.flat.vector
        self.size = self.theta.numel()
        self.dtype, self.device = self.theta.dtype, self.theta.device
        n = len(task.train)
        idx = np.arange(n) if data_indices is None else np.asarray(data_indices, dtype=np.int64)
        if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise InputError(
                f"data_indices: must be a non-empty list of training indices in [0, {n - 1}]"
            )
        sel = torch.as_tensor(idx, dtype=torch.long)
        self.inputs, self.targets = task.train.inputs[sel], task.train.targets[sel]
        self.count = len(idx)
        with torch.no_grad(), eval_mode(task.model):
            self.output_tail = tuple(
                task.outputs(self.flat.unflatten(self.theta), self.inputs[:1]).shape[1:]
            )
        self.width = activation_width(task, self.inputs[:1], self.flat.unflatten(self.theta))

    def plan(self, vectors: int, count: int | None = None) -> tuple[int, int]:
        """(batch, in_flight) for a product with ``vectors`` vectors over ``count`` instances.

        batch: training instances per pass, the given ``batch_size`` or the most that fit in
        the budget with min(vectors, 32) vectors in flight (at most ``count``); in_flight:
        vectors vmap'd together, min(vectors, 32) or, for small batches, as many as keep
        in_flight × batch × width numbers within ``VMAP_BYTES``; fewer if a given
        ``batch_size`` leaves no room for them in the budget.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> CurvatureOperator(task).plan(vectors=3)  # the 2 instances in one batch, 3 vectors
        (2, 3)
        >>> CurvatureOperator(task, batch_size=1).plan(vectors=40)  # small batch: all 40 at once
        (1, 40)
        """
        count = self.count if count is None else count
        item = self.theta.element_size()
        per = BYTES_PER_ACTIVATION * self.width * item  # per instance and vector in flight
        fixed = PARAM_COPIES * self.size * item  # per vector in flight, whatever the batch
        if self.batch_size is not None:
            batch = min(self.batch_size, count)
        else:
            v = min(vectors, MAX_VECTORS)
            batch = fit_count(per * (v + 1), max(1, self.budget - v * fixed), count)
        room = fit_count(per * batch + fixed, max(1, self.budget - per * batch))
        slab = self.width * item * batch  # one vector's activations
        cap = max(MAX_VECTORS, fit_count(slab, VMAP_BYTES))
        in_flight = max(1, min(vectors, cap, room))
        return batch, in_flight

    @property
    def _looped(self) -> bool:
        """Whether products loop over their vectors instead of vmapping them: on a task whose
        per-instance path is the loop (:meth:`fimo.Task.per_instance_path`), no vmap runs the
        model, over instances or over vectors."""
        return self.task.per_instance_path() == "loop"

    # -- the functional pieces --------------------------------------------------------------
    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs at flat parameters ``theta`` (P,), flattened per instance (B, C).

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> op = CurvatureOperator(task)
        >>> op.outputs(op.theta, X).tolist()  # x · (1, 1)
        [[1.0], [2.0]]
        """
        out = self.task.outputs(self.flat.unflatten(theta), x)
        return out.reshape(out.shape[0], -1)

    def loss_of_outputs(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-instance losses from flattened outputs (B, C).

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> outputs = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
        >>> CurvatureOperator(task).loss_of_outputs(outputs, Y).tolist()  # (o − 1)²
        [0.0, 4.0]
        """
        return self.task.loss_fn(out.reshape(out.shape[0], *self.output_tail), y)

    def pullback(self, x: torch.Tensor, y: torch.Tensor):
        """v ↦ Σ_{j in batch} C_j v (a sum, not a mean), the batch's graph built once.

        The returned function may be called (and vmap'd) any number of times: for the
        Hessian it is the pullback of a vjp of the gradient (reverse-over-reverse); for
        Gauss-Newton, J v by a jvp of the output map, H_ℓ(Jv) by a vjp of the output-space
        gradient, Jᵀ(·) by a vjp of the output map.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> pull = CurvatureOperator(task, "hessian").pullback(X, Y)
        >>> pull(torch.ones(2, dtype=torch.float64)).tolist()  # Σ_j 2 x_j x_jᵀ v = diag(2, 8) v
        [2.0, 8.0]
        """
        theta = self.theta
        if self.kind == "hessian":

            def total(t):
                return self.task.losses(self.flat.unflatten(t), x, y).sum()

            _, pull = vjp(grad(total), theta)
            return lambda v: pull(v)[0]

        def outs(t):
            return self.outputs(t, x)

        def total_of_outputs(o):
            return self.loss_of_outputs(o, y).sum()

        out, pull_out = vjp(outs, theta)
        _, pull_loss = vjp(grad(total_of_outputs), out)

        def one(v):
            jv = jvp(outs, (theta,), (v,))[1]
            return pull_out(pull_loss(jv)[0])[0]

        return one

    def batch_products(
        self, V: torch.Tensor, x: torch.Tensor, y: torch.Tensor, in_flight: int = MAX_VECTORS
    ) -> torch.Tensor:
        """Σ_{j in batch} C_j v (a sum, not a mean) for each row v of V (k, P).

        The batch's graph is built once (:meth:`pullback`) and shared by the k vectors,
        vmap'd ``in_flight`` at a time.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> op = CurvatureOperator(task, "gauss_newton")
        >>> op.batch_products(torch.eye(2, dtype=torch.float64), X, Y).tolist()
        [[2.0, 0.0], [0.0, 8.0]]
        """
        return _apply_rows(self.pullback(x, y), V, in_flight, self._looped)

    # -- products ---------------------------------------------------------------------------
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """C v for v of shape (P,) or each row of V of shape (k, P)."""
        if v.ndim == 1:
            return self.matmat(v[None])[0]
        return self.matmat(v)

    def matmat(
        self,
        V: torch.Tensor,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        rows=None,
    ) -> torch.Tensor:
        """C Vᵀ, returned as rows: (k, P) → (k, P).

        C is the mean over the operator's data, over its instances ``rows`` (positions in
        it, repeats allowed: a minibatch, as LiSSA draws them), or over ``inputs``/``targets``
        when given. Gauss-Newton products of ``FACTOR_VECTORS`` or more vectors go through
        per-instance Jacobian factors instead of a pass through the model per vector: those
        of all the operator's data when they fit in the budget (:meth:`factors`, built at the
        first such product and then used by every product), else those of each batch.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> op = CurvatureOperator(task, "hessian")
        >>> op.matmat(torch.eye(2, dtype=torch.float64)).tolist()  # the mean over both
        [[1.0, 0.0], [0.0, 4.0]]
        >>> op.matmat(torch.eye(2, dtype=torch.float64), rows=[1, 1]).tolist()  # instance 1
        [[0.0, 0.0], [0.0, 8.0]]
        """
        if V.ndim != 2 or V.shape[1] != self.size:
            raise InputError(f"curvature product: expected (k, {self.size}); got {tuple(V.shape)}")
        V = V.to(self.dtype)
        held = getattr(self, "_factors", None)
        if inputs is None and held is None and len(V) >= FACTOR_VECTORS:
            held = self.factors()  # built by the first product of many vectors
        if inputs is None and held is not None:
            return _held_product(held, V, rows)
        if rows is not None:
            sel = torch.as_tensor(rows)
            inputs, targets = self.inputs[sel], self.targets[sel]
        elif inputs is None:
            inputs, targets = self.inputs, self.targets
        if self.kind == "gauss_newton" and len(V) >= FACTOR_VECTORS:
            return self._factor_product(V, inputs, targets)
        out = torch.zeros_like(V)
        batch, in_flight = self.plan(len(V), len(inputs))
        with eval_mode(self.task.model):
            for start in range(0, len(inputs), batch):
                x = inputs[start : start + batch]
                y = targets[start : start + batch]
                out += self.batch_products(V, x, y, in_flight)
        return out / len(inputs)

    def _factor_product(self, V: torch.Tensor, inputs, targets) -> torch.Tensor:
        """Mean Gauss-Newton product over ``inputs`` from their factors, a batch at a time."""
        C = math.prod(self.output_tail)
        batch = fit_count(C * (self.size + len(V)) * self.theta.element_size(), self.budget)
        batch = min(len(inputs), batch if self.batch_size is None else self.batch_size)
        out = torch.zeros_like(V)
        for A, W in self._gn_chunks(inputs, targets, batch):
            M = A.reshape(-1, self.size)
            if W is None:
                out += _factor_apply(M, V)
            else:  # Σ_j J_jᵀ H_ℓ,j (J_j v): H_ℓ,j applied per instance
                U = torch.einsum("kbc,bcd->kbd", (V @ M.mT).reshape(len(V), *W.shape[:2]), W)
                out += U.reshape(len(V), -1) @ M
        return out / len(inputs)

    def gradient(
        self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """∇R(θ), the gradient of the mean loss over the operator's data (P,), or over
        ``inputs``/``targets`` when given.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> CurvatureOperator(task).gradient().tolist()  # mean of 2(x·w − y) x: 0 and (0, 4)
        [0.0, 2.0]
        """
        if inputs is None:
            inputs, targets = self.inputs, self.targets

        def total(theta, x, y):
            return self.task.losses(self.flat.unflatten(theta), x, y).sum()

        out = torch.zeros_like(self.theta)
        batch = self.plan(1, len(inputs))[0]
        with eval_mode(self.task.model):
            for start in range(0, len(inputs), batch):
                x = inputs[start : start + batch]
                y = targets[start : start + batch]
                out += grad(total)(self.theta, x, y)
        return out / len(inputs)

    def dense(self, block: int | None = None, on_step=None) -> torch.Tensor:
        """The explicit P × P matrix (see :func:`dense_matrix`); ``on_step(m)`` (if given) is
        called after each chunk of m instances (e.g. :meth:`fimo.methods.cost.CostProbe.tick`).

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> CurvatureOperator(task, "hessian").dense().tolist()
        [[1.0, 0.0], [0.0, 4.0]]
        """
        tick = on_step or (lambda m: None)
        if self.kind == "gauss_newton":
            return self._dense_gauss_newton(tick)
        return self._dense_from_pullbacks(block, tick)

    def _dense_from_pullbacks(self, block: int | None, tick) -> torch.Tensor:
        """C from P products with unit vectors: batches outside, blocks of unit vectors inside.

        Each batch's graph is built once (:meth:`pullback`) and every block of unit vectors is
        pulled back through it, so the forward pass and first backward run once per batch
        rather than once per batch and block. Batch and block come from the budget
        (:meth:`plan` with P vectors) unless ``batch_size``/``block`` are given. Memory: the
        P × P result plus two (block, P) blocks and the product's working memory.
        """
        P = self.size
        batch, in_flight = self.plan(P)
        block = in_flight if block is None else max(1, min(int(block), P))
        out = torch.zeros(P, P, dtype=self.dtype, device=self.device)
        with eval_mode(self.task.model):
            for start in range(0, self.count, batch):
                pull = self.pullback(
                    self.inputs[start : start + batch], self.targets[start : start + batch]
                )
                for first in range(0, P, block):
                    stop = min(first + block, P)
                    units = _unit_rows(first, stop, P, out)
                    out[first:stop] += _apply_rows(pull, units, block, self._looped)
                tick(min(batch, self.count - start))
        out /= self.count
        return symmetrise_(out)

    def _dense_gauss_newton(self, tick) -> torch.Tensor:
        """(1/n) Σ_j J_jᵀ H_ℓ,j J_j from per-instance Jacobians, a few GEMMs per chunk.

        When the output-space Hessians are PSD (convex losses) they are factored,
        H_ℓ = U diag(λ) Uᵀ, and only the r non-zero directions are kept (r = C − 1 for softmax
        cross-entropy), so the matrix is MᵀM with M the stacked (λ^½ Uᵀ J_j), and only its
        lower triangle is accumulated. Cost about P² · n · r flops; memory P² plus a chunk of
        Jacobians (chunk · C · P) sized to the memory budget of :mod:`fimo.methods.gradients`.
        """
        P = self.size
        C = math.prod(self.output_tail)
        chunk = max(1, chunk_size_for(P * C, self.theta.element_size(), DEFAULT_BUDGET))
        H = torch.zeros(P, P, dtype=self.dtype, device=self.device)
        for A, W in self._gn_chunks(self.inputs, self.targets, chunk):
            if W is None:
                if A.shape[1]:
                    M = A.reshape(-1, P)
                    _add_lower_(H, M, M)
            else:  # an output-space Hessian with negative curvature: no factor
                _add_lower_(H, A.reshape(-1, P), (W @ A).reshape(-1, P))
            tick(len(A))
        H /= self.count
        return _mirror_lower_(H)

    def _gn_factor(self, x: torch.Tensor, y: torch.Tensor):
        """(A, W) with Σ_j C_j = Σ_j A_jᵀ W_j A_j for the Gauss-Newton terms of a batch.

        A: (B, q, P). When every output-space Hessian H_ℓ,j is PSD (convex losses), A_j =
        λ^½ Uᵀ J_j from H_ℓ,j = U diag(λ) Uᵀ with only the r non-zero directions kept (r = C − 1
        for softmax cross-entropy, C for squared error) and W = None (the identity);
        otherwise A_j = J_j and W_j = H_ℓ,j (B, C, C).
        """
        C = math.prod(self.output_tail)

        def out_one(theta, xi):
            return self.outputs(theta, xi[None])[0]

        def loss_one(o, yi):
            return self.loss_of_outputs(o[None], yi[None])[0]

        J = over_rows(jacrev(out_one), self.task, in_dims=(None, 0))(self.theta, x)  # (B, C, P)
        out = self.outputs(self.theta, x)
        Hl = vmap(jacrev(grad(loss_one)), in_dims=(0, 0))(out, y)
        Hl = (Hl + Hl.mT) / 2
        vals, vecs = torch.linalg.eigh(Hl)  # ascending
        tol = self._rounding_scale(out, vals) * C * torch.finfo(self.dtype).eps
        if not bool((vals >= -tol).all()):
            return J, Hl
        rank = int((vals > tol).sum(-1).max())
        vals, vecs = vals[:, C - rank :], vecs[:, :, C - rank :]
        return (vecs * vals.clamp_min(0).sqrt()[:, None, :]).mT @ J, None  # (B, r, P)

    def _rounding_scale(self, out: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """(B, 1): the size of the numbers whose rounding errors the eigenvalues of H_ℓ carry.

        For softmax cross-entropy H_ℓ = diag(p) − ppᵀ: its entries p_i − p_i² come from
        numbers of size p_i, so its zero eigenvalue (along the ones vector) carries an error of
        about eps · max p, not eps · p(1 − p). A confident prediction (p = 0.99) has eigenvalues
        of 0.02 and an error of 1e-16 in the zero one, which a tolerance scaled by the largest
        eigenvalue took for negative curvature; the scale here is max(max p, max |λ|). For
        other losses it is the largest eigenvalue.
        """
        scale = vals.abs().amax(-1, keepdim=True)
        if self.task.loss_kind == LossKind.CROSS_ENTROPY:
            p = torch.softmax(out.reshape(len(out), -1), dim=-1)
            scale = torch.maximum(scale, p.amax(-1, keepdim=True))
        return scale

    def _gn_chunks(self, inputs: torch.Tensor, targets: torch.Tensor, chunk: int):
        """Yield :meth:`_gn_factor` (A, W) of consecutive chunks of ``chunk`` instances."""
        with eval_mode(self.task.model):
            for start in range(0, len(inputs), chunk):
                yield self._gn_factor(inputs[start : start + chunk], targets[start : start + chunk])

    def factors(self) -> torch.Tensor | None:
        """The Gauss-Newton factors A (n, q, P) of all the operator's data, C = (1/n) Σ_j A_jᵀA_j
        (:meth:`_gn_factor`), computed once; None for the Hessian, for a loss whose output-space
        Hessians are not PSD, or when A would not fit in the budget.

        With them a product over any rows S is two matrix products, (V A_Sᵀ) A_S, instead of a
        pass through the model per vector. Memory: n × q × P numbers (q = C − 1 for
        cross-entropy, C for squared error), held only if within the budget. Measured on one
        thread (benchmarks/curvature_factors.py), MLP 8-128-128-1 on 927 instances with 103
        test vectors: LiSSA 2.2× and CG 3.1× faster; MLP 106-128-128-2 on 2,000: 1.6× and 2.0×.

        For squared error H_ℓ = 2, so A_j = √2 x_jᵀ (one row, q = 1):

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> A = CurvatureOperator(task, "gauss_newton").factors()
        >>> A.shape, (A**2).round(decimals=12).tolist()
        (torch.Size([2, 1, 2]), [[[2.0, 0.0]], [[0.0, 8.0]]])
        >>> CurvatureOperator(task, "hessian").factors() is None
        True
        """
        if self.kind != "gauss_newton":
            return None
        if not hasattr(self, "_factors"):
            self._factors = None
            item = self.theta.element_size()
            if self.count * self.size * item > self.budget:  # not even one row each
                return None
            chunk = max(1, chunk_size_for(self.size * math.prod(self.output_tail), item))
            parts = []
            for A, W in self._gn_chunks(self.inputs, self.targets, chunk):
                # each chunk's rank q (C − 1 for cross-entropy) sizes the whole
                if (
                    W is not None
                    or self.count * max(A.shape[1], 1) * self.size * item > self.budget
                ):
                    return None  # a non-convex loss, or too large: products per batch
                parts.append(A)
            q = max(A.shape[1] for A in parts)  # pad every chunk to one rank
            self._factors = torch.cat([F.pad(A, (0, 0, 0, q - A.shape[1])) for A in parts])
        return self._factors

    def per_instance(
        self, u: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yield ``(rows, G, CU)``: per-instance gradients ∇ℓ_i and products C_i u, each (B, P).

        C_i is instance i's own Hessian ∇²ℓ_i (one jvp of the vmap'd per-instance gradient, which
        yields the gradients as its primal output) or its Gauss-Newton term J_iᵀ H_ℓ,i J_i, for
        ONE fixed vector u. Memory: two (chunk_size, P) matrices.

        >>> from fimo.data import ArrayDataset
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> Y = torch.ones(2, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
        >>> op = CurvatureOperator(task, "hessian")
        >>> u = torch.ones(2, dtype=torch.float64)
        >>> [(rows, G.tolist(), CU.tolist()) for rows, G, CU in op.per_instance(u, X, Y, 2)]
        [(slice(0, 2, None), [[0.0, 0.0], [0.0, 4.0]], [[2.0, 0.0], [0.0, 8.0]])]
        """
        u = u.to(self.dtype)

        def loss_one(theta, x, y):
            return self.task.losses(self.flat.unflatten(theta), x[None], y[None])[0]

        with eval_mode(self.task.model):
            for start in range(0, len(inputs), chunk_size):
                rows = slice(start, min(start + chunk_size, len(inputs)))
                x, y = inputs[rows], targets[rows]
                if self.kind == "hessian":

                    def grads(theta, x=x, y=y):
                        return over_rows(grad(loss_one), self.task, (None, 0, 0))(theta, x, y)

                    G, CU = jvp(grads, (self.theta,), (u,))
                else:
                    G, CU = self._per_instance_gauss_newton(u, x, y)
                yield rows, G, CU

    def _per_instance_gauss_newton(self, u, x, y):
        def outs(theta):
            return self.outputs(theta, x)

        def total_of_outputs(o):
            return self.loss_of_outputs(o, y).sum()

        out, ju = jvp(outs, (self.theta,), (u,))
        # the loss is a sum of per-instance terms, so its output-space gradient and Hessian
        # product come out per instance (rows)
        g_out, hju = jvp(grad(total_of_outputs), (out,), (ju,))

        def pull_back(xi, w1, w2):
            _, pull = vjp(lambda theta: self.outputs(theta, xi[None])[0], self.theta)
            return pull(w1)[0], pull(w2)[0]

        return over_rows(pull_back, self.task)(x, g_out, hju)


def hvp(
    task: Task,
    data_indices=None,
    batch_size: int | None = DEFAULT_BATCH,
    params: dict[str, torch.Tensor] | None = None,
) -> CurvatureOperator:
    """v ↦ ∇²R(θ) v, the true Hessian of the mean training loss (over ``data_indices``).

    A Hessian-vector product (vjp of ``grad``) per batch of ``batch_size`` instances (``None``:
    from the memory budget), summed and divided by the count. Accepts v (P,) or a block V (k, P).

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> hvp(task)(torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()  # diag(1, 4) v
    [1.0, 4.0]
    """
    return CurvatureOperator(task, "hessian", data_indices, batch_size, params)


def gnvp(
    task: Task,
    data_indices=None,
    batch_size: int | None = DEFAULT_BATCH,
    params: dict[str, torch.Tensor] | None = None,
) -> CurvatureOperator:
    """v ↦ G v, G = (1/n) Σ_j J_jᵀ H_ℓ,j J_j the Gauss-Newton matrix of the mean training loss.

    PSD whenever the loss is convex in the model outputs (cross-entropy, squared error); equal
    to the Hessian when the outputs are linear in θ.

    On a linear model it equals the Hessian:

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> v = torch.tensor([1.0, -1.0], dtype=torch.float64)
    >>> gnvp(task)(v).tolist(), hvp(task)(v).tolist()
    ([1.0, -4.0], [1.0, -4.0])
    """
    return CurvatureOperator(task, "gauss_newton", data_indices, batch_size, params)


def curvature(task: Task, kind: str, **kw) -> CurvatureOperator:
    """:func:`hvp` (``kind="hessian"``) or :func:`gnvp` (``kind="gauss_newton"``).

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> op = curvature(task, "gauss_newton", batch_size=1)
    >>> op.kind, op.batch_size, op(torch.ones(2, dtype=torch.float64)).tolist()
    ('gauss_newton', 1, [1.0, 4.0])
    """
    return CurvatureOperator(task, kind, **kw)


def _factor_apply(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Rows of (AᵀA) Vᵀ: (V Aᵀ) A, A (m, P), V (k, P)."""
    return (V @ A.mT) @ A


def _held_product(held: torch.Tensor, V: torch.Tensor, rows=None) -> torch.Tensor:
    """Rows of the mean Gauss-Newton product over held per-instance factors ``held`` (n, O,
    P): over all n instances, or over ``rows`` (positions, repeats allowed).

    A minibatch of at least half the instances is weighted by its draw counts rather than
    gathered: copying its factors cost more than the product over all of them (LiSSA on the
    mnist preset: 128 rows of 180 took 472 ms gathered, the product over all 180 288 ms).

    >>> held = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # two instances, one output each
    >>> V = torch.eye(2)
    >>> _held_product(held, V).tolist()  # (AᵀA)/2
    [[0.5, 0.0], [0.0, 2.0]]
    >>> _held_product(held, V, rows=[1, 1, 0]).tolist()  # (2·a₁a₁ᵀ + a₀a₀ᵀ)/3, by weights
    [[0.3333333432674408, 0.0], [0.0, 2.6666667461395264]]
    >>> _held_product(held, V, rows=[1]).tolist()  # one of two: gathered
    [[0.0, 0.0], [0.0, 4.0]]
    """
    size = held.shape[-1]
    if rows is None:
        return _factor_apply(held.reshape(-1, size), V) / len(held)
    idx = torch.as_tensor(rows, device=held.device)
    if 2 * len(idx) < len(held):
        return _factor_apply(held[idx].reshape(-1, size), V) / len(idx)
    draws = torch.bincount(idx, minlength=len(held)).to(V.dtype)
    A = held.reshape(-1, size)
    return ((V @ A.mT) * draws.repeat_interleave(held.shape[1])) @ A / len(idx)


def _apply_rows(fn, V: torch.Tensor, in_flight: int, looped: bool = False) -> torch.Tensor:
    """fn applied to each row of V, vmap'd ``in_flight`` rows at a time, or one row at a time
    (``looped``: a task whose per-instance path is the loop, whose model no vmap runs)."""
    if len(V) == 1 or looped:
        return torch.stack([fn(v) for v in V])
    step = max(1, int(in_flight))
    return torch.cat([vmap(fn)(V[r : r + step]) for r in range(0, len(V), step)])


def _unit_rows(start: int, stop: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """Rows start..stop−1 of the size × size identity, made as needed."""
    rows = torch.zeros(stop - start, size, dtype=like.dtype, device=like.device)
    rows[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return rows


def _dense_from_products(operator, block: int = MAX_VECTORS, size: int | None = None):
    """The symmetrised matrix of any operator V (k, P) → (k, P), from blocks of unit vectors."""
    P = operator.size if size is None else size
    dtype = getattr(operator, "dtype", torch.float64)
    out = torch.empty(P, P, dtype=dtype)
    for start in range(0, P, block):
        stop = min(start + block, P)
        cols = _unit_rows(start, stop, P, out)
        product = operator.matmat(cols) if hasattr(operator, "matmat") else operator(cols)
        out[start:stop] = product
    return symmetrise_(out)


TILE = 1024


def _add_lower_(H: torch.Tensor, L: torch.Tensor, R: torch.Tensor) -> None:
    """H += Lᵀ R on the tiles on and below the diagonal (a symmetric product: half the flops)."""
    P = H.shape[0]
    for i in range(0, P, TILE):
        stop = min(i + TILE, P)
        H[i:stop, :stop].addmm_(L[:, i:stop].T, R[:, :stop])


def _mirror_lower_(A: torch.Tensor) -> torch.Tensor:
    """Complete a matrix filled by :func:`_add_lower_` into the symmetric one, in place."""
    P = A.shape[0]
    for i in range(0, P, TILE):
        for j in range(0, i, TILE):
            A[j : j + TILE, i : i + TILE] = A[i : i + TILE, j : j + TILE].T
        d = A[i : i + TILE, i : i + TILE]
        d.copy_((d + d.T) / 2)
    return A


def symmetrise_(A: torch.Tensor, block: int = TILE) -> torch.Tensor:
    """(A + Aᵀ)/2 in place, tile by tile (no P × P temporary); returns A.

    >>> A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    >>> symmetrise_(A, block=2) is A, A.tolist()
    (True, [[1.0, 1.0, 0.0], [1.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    """
    P = A.shape[0]
    for i in range(0, P, block):
        for j in range(i, P, block):
            upper = A[i : i + block, j : j + block]
            lower = A[j : j + block, i : i + block]
            mean = (upper + lower.T) / 2
            upper.copy_(mean)
            lower.copy_(mean.T)
    return A


def dense_matrix(
    operator, size: int | None = None, block: int | None = None, on_step=None
) -> torch.Tensor:
    """The explicit P × P (symmetrised) matrix of a symmetric operator.

    A :class:`CurvatureOperator` builds it its fastest way: the Gauss-Newton matrix from
    per-instance Jacobians (P² · n · C flops), the Hessian from P products with unit vectors,
    each batch's graph built once and all P unit vectors pulled back through it ``block`` at a
    time (``None``: from the memory budget, 32 or more for small batches). Any other callable
    V (k, P) → (k, P) is applied to blocks of unit vectors (32 by default). Memory: P² numbers
    (symmetrised in place). ``on_step(m)``: called after each chunk of m instances of a
    :class:`CurvatureOperator`'s build.

    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.ones(2, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> _ = torch.nn.init.ones_(model.weight)
    >>> task = Task(model, ArrayDataset(X, Y), ArrayDataset(X, Y), loss="mse")
    >>> dense_matrix(hvp(task)).tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    >>> dense_matrix(lambda V: 2 * V, size=2).tolist()  # any product V (k, P) → (k, P)
    [[2.0, 0.0], [0.0, 2.0]]
    """
    if isinstance(operator, CurvatureOperator):
        return operator.dense(block, on_step)
    if size is None:
        raise InputError("dense_matrix: give the size P for an operator that does not know it")
    return _dense_from_products(operator, MAX_VECTORS if block is None else block, size)


def lanczos(
    operator,
    size: int,
    iterations: int,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    on_step: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Ritz pairs of a symmetric operator v (P,) → (P,) from ``iterations`` Lanczos steps.

    Full reorthogonalisation (twice, classical Gram-Schmidt) keeps the basis orthonormal to
    rounding; on breakdown (an invariant subspace found) the process restarts from a fresh
    random vector orthogonal to the basis, so ``iterations = P`` recovers the whole spectrum.
    Returns ``(values, vectors, residuals, steps)``: eigenvalue estimates sorted by decreasing
    magnitude, Ritz vectors as rows (m, P), the residual norms ‖C y − μ y‖ of each pair
    (|β_m · last component|), and the number of steps taken. Cost: ``iterations`` products,
    O(iterations² · P) for the reorthogonalisation, memory iterations × P. ``on_step()`` is
    called after each step (e.g. :meth:`fimo.methods.cost.CostProbe.tick`).

    >>> D = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> values, vectors, residuals, steps = lanczos(lambda v: D @ v, size=3, iterations=3)
    >>> values.round(decimals=6).tolist(), vectors.shape, steps
    ([3.0, 2.0, 1.0], torch.Size([3, 3]), 3)
    >>> vectors[0].abs().round(decimals=6).tolist()  # the eigenvector of 3
    [0.0, 0.0, 1.0]
    """
    dtype = dtype or getattr(operator, "dtype", torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    m = min(int(iterations), size)
    Q = torch.zeros(m, size, dtype=dtype)
    alphas, betas = [], []
    q = torch.randn(size, generator=gen, dtype=dtype)
    q /= q.norm()
    beta = 0.0
    scale = 0.0
    for j in range(m):
        Q[j] = q
        w = operator(q).to(dtype)
        alpha = float(q @ w)
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if on_step is not None:
            on_step()
        if j == m - 1:
            break
        if beta <= 1e-10 * max(scale, 1e-300):  # invariant subspace: restart orthogonally
            betas.append(0.0)
            q = torch.randn(size, generator=gen, dtype=dtype)
            for _ in range(2):
                q = q - Q[: j + 1].T @ (Q[: j + 1] @ q)
            q /= q.norm()
        else:
            betas.append(beta)
            q = w / beta
    T = torch.diag(torch.tensor(alphas, dtype=dtype))
    if betas:
        off = torch.tensor(betas, dtype=dtype)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    values, Y = torch.linalg.eigh(T)
    residuals = (beta * Y[-1]).abs() if m < size else torch.zeros_like(values)
    order = torch.argsort(values.abs(), descending=True)
    values, Y, residuals = values[order], Y[:, order], residuals[order]
    vectors = Y.T @ Q
    return values, vectors, residuals, m


def top_eigenvalue(operator, size: int, iterations: int = 20, seed: int = 0) -> float:
    """The largest-magnitude eigenvalue of a symmetric operator, by a short Lanczos run.

    >>> D = torch.diag(torch.tensor([1.0, -5.0, 3.0], dtype=torch.float64))
    >>> round(top_eigenvalue(lambda v: D @ v, size=3), 6)
    -5.0
    """
    values, _, _, _ = lanczos(operator, size, min(iterations, size), seed)
    return float(values[0])


__all__ = [
    "KINDS",
    "CurvatureOperator",
    "curvature",
    "dense_matrix",
    "gnvp",
    "hvp",
    "lanczos",
    "top_eigenvalue",
]
