"""The adjoint's derivatives of an MLP's batch loss, written out by hand.

:mod:`fimo.further.adjoint` differentiates a further-training run with many vectors at once
(cotangents in reverse mode, tangents in forward mode). Per step it needs, besides the
optimizer's own products (shared by every model), the model's second-order products of the
batch loss ``L(θ) = Σ_b w_b ℓ_b(θ)``:

- the batch gradient ``∇L`` (the primal the optimizer saw);
- for each vector ``v_k``: the Hessian-vector product ``H v_k`` and every batch member's
  ``⟨∇ℓ_b, v_k⟩`` (reverse mode: the cotangent's way back and each instance's term);
- for each tangent: ``H v_k + Σ_b ẇ_kb ∇ℓ_b`` with the batch weights moving (forward mode);
- ``⟨∇ℓ_i, v_k⟩`` for every training instance i, and single instances' gradients
  (``downweight``, whose extra term touches every instance at every step).

For the models the fused engine takes (:mod:`fimo.further.fast`: ``nn.Sequential`` of
Linear and ReLU/Tanh/Identity, cross-entropy or squared error) these come here from one
forward pass per batch, kept, and a forward-over-reverse pass written out with matrix
products over the vector axis: the tangent of each layer's pre-activation
``ż = ȧ Wᵀ + a Vᵀ + v``, then the tangent of the backward pass
``δ̇ = ė ⊙ f'(z) + e ⊙ f''(z) ⊙ ż``, ``Ġ_W = δ̇ᵀ a + δᵀ ȧ``, ``ė = δ̇ W + δ V``. No autograd
graph and no ``vmap`` bookkeeping; the answers equal ``torch.func``'s to rounding
(``tests/test_fused_adjoint.py``).
"""

from __future__ import annotations

import torch

from fimo.further.fast import mlp_plan
from fimo.task import LossKind, Task

Params = dict[str, torch.Tensor]


def fused_mlp_derivatives(task: Task) -> MlpDerivatives | None:
    """The hand-written derivatives of ``task``'s batch loss, or None when its model is not
    one the fused engine takes (then the adjoint goes through ``torch.func``).

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    >>> fused_mlp_derivatives(Task(nn.Sequential(nn.Linear(3, 2)), data, data)) is not None
    True
    >>> dropout = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    >>> fused_mlp_derivatives(Task(dropout, data, data)) is None
    True
    """
    plan = mlp_plan(task)
    if plan is None:
        return None
    return MlpDerivatives(plan, task.loss_kind == LossKind.CROSS_ENTROPY)


class MlpDerivatives:
    """An MLP's loss derivatives: ``plan`` as :mod:`fimo.further.fast` makes it
    ([(weight name, bias name or None, activation)]), cross-entropy or squared error.

    Parameters are one model's (unstacked); vectors (tangents, cotangents) are dicts of the
    same names with a leading vector axis K.

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> derivatives = fused_mlp_derivatives(Task(model, data, data))
    >>> derivatives.plan, derivatives.cross_entropy
    ([('0.weight', '0.bias', 'tanh'), ('2.weight', '2.bias', 'identity')], True)
    """

    def __init__(self, plan: list[tuple[str, str | None, str]], cross_entropy: bool):
        self.plan, self.cross_entropy = plan, cross_entropy

    def at(self, params: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> MlpBatch:
        """The batch loss ``Σ_b w_b ℓ(x_b, y_b)`` at ``params``, its forward pass done once
        for all the products asked of it.

        For a linear model with squared error ``ℓ = (x·θ − y)²`` the gradient is
        ``Σ_b w_b·2(x_b·θ − y_b)x_b`` and the Hessian ``2 Σ_b w_b x_b x_bᵀ``:

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> batch = fused_mlp_derivatives(task).at(
        ...     {"0.weight": torch.tensor([[1.0, 1.0]])}, X, Y, torch.tensor([0.5, 1.0]))
        >>> batch.grads()["0.weight"].tolist()  # 0.5·2·2·[1, 2] + 1·2·1·[0, 1]
        [[2.0, 6.0]]
        >>> hvp, dloss = batch.gradient_jvp({"0.weight": torch.tensor([[[1.0, 0.0]]])})
        >>> hvp["0.weight"].tolist(), dloss.tolist()  # H·e₁ = 2·0.5·[1, 2]; ⟨∇ℓ_b, e₁⟩
        ([[[1.0, 2.0]]], [[4.0, 0.0]])
        """
        return MlpBatch(self, params, x, y, w)

    def losses_jvp(self, params: Params, x, y, tangents: Params) -> torch.Tensor:
        """``⟨∇ℓ(x_i, y_i), v_k⟩``: (K, m) for the m instances and the K ``tangents``.

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> p = {"0.weight": torch.tensor([[1.0, 1.0]])}
        >>> v = {"0.weight": torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])}
        >>> fused_mlp_derivatives(task).losses_jvp(p, X, Y, v).tolist()  # 2(x·θ − y)·x·v
        [[8.0, 2.0], [4.0, 0.0]]
        """
        acts = _forward(self.plan, params, x)
        residual, _ = _output_derivative(acts[-1], y, self.cross_entropy)
        out_dot = _tangent_forward(self.plan, params, acts, tangents, keep=False)[-1]
        return (out_dot * residual).sum(-1)

    def instance_grads(self, params: Params, x, y) -> Params:
        """Each instance's loss gradient ``∇ℓ(x_i, y_i)``: the names of ``params``, with a
        leading axis of the m instances.

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> p = {"0.weight": torch.tensor([[1.0, 1.0]])}
        >>> fused_mlp_derivatives(task).instance_grads(p, X, Y)["0.weight"].tolist()
        [[[4.0, 8.0]], [[0.0, 2.0]]]
        """
        acts = _forward(self.plan, params, x)
        e, _ = _output_derivative(acts[-1], y, self.cross_entropy)
        out = {}
        for k in range(len(self.plan) - 1, -1, -1):
            wname, bname, act = self.plan[k]
            delta = _times_slope(e, acts[k + 1], act)
            out[wname] = delta.unsqueeze(2) * acts[k].unsqueeze(1)
            if bname is not None:
                out[bname] = delta
            if k > 0:
                e = delta @ params[wname]
        return {name: out[name] for name in params}


class MlpBatch:
    """One batch's loss ``Σ_b w_b ℓ_b`` at one θ, with its forward and backward pass kept
    (:meth:`MlpDerivatives.at`): each layer's output and the loss's derivative with respect
    to each layer's pre-activation.

    >>> from torch import nn
    >>> from fimo.data import ArrayDataset
    >>> X, Y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]])
    >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
    ...             ArrayDataset(X, Y), loss="mse")
    >>> batch = fused_mlp_derivatives(task).at(
    ...     {"0.weight": torch.tensor([[1.0, 1.0]])}, X, Y, torch.tensor([0.5, 1.0]))
    >>> batch.acts[-1].tolist(), batch.deltas[0].tolist()  # outputs; w_b·2(out_b − y_b)
    ([[3.0], [1.0]], [[2.0], [2.0]])
    """

    def __init__(self, owner: MlpDerivatives, params: Params, x, y, w):
        self.plan, self.params, self.w = owner.plan, params, w
        self.acts = _forward(self.plan, params, x)
        self.residual, self.probs = _output_derivative(self.acts[-1], y, owner.cross_entropy)
        # es[k]: the batch loss's derivative with respect to layer k's output, deltas[k]
        # with respect to its pre-activation (times f')
        self.es: list[torch.Tensor] = [None] * len(self.plan)  # type: ignore[list-item]
        self.deltas: list[torch.Tensor] = [None] * len(self.plan)  # type: ignore[list-item]
        e = self.residual * w.unsqueeze(-1)
        for k in range(len(self.plan) - 1, -1, -1):
            wname, _, act = self.plan[k]
            self.es[k], self.deltas[k] = e, _times_slope(e, self.acts[k + 1], act)
            if k > 0:
                e = self.deltas[k] @ params[wname]

    def grads(self) -> Params:
        """The batch gradient ``Σ_b w_b ∇ℓ_b``.

        For ``ℓ = (x·θ − y)²``: ``Σ_b w_b·2(x_b·θ − y_b)x_b``.

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> batch = fused_mlp_derivatives(task).at(
        ...     {"0.weight": torch.tensor([[1.0, 0.0]])}, X, Y, torch.tensor([1.0]))
        >>> batch.grads()["0.weight"].tolist()  # 2·(1 − 1)·x: at the minimum along x
        [[0.0, 0.0]]
        """
        out = {}
        for k, (wname, bname, _) in enumerate(self.plan):
            out[wname] = self.deltas[k].T @ self.acts[k]
            if bname is not None:
                out[bname] = self.deltas[k].sum(0)
        return {name: out[name] for name in self.params}

    def gradient_jvp(self, tangents: Params) -> tuple[Params, torch.Tensor]:
        """For each of the K ``tangents`` v_k: ``H v_k`` (the Hessian of the batch loss; the
        names of θ with a leading K axis) and ``⟨∇ℓ_b, v_k⟩`` for every batch member (K, B).

        For ``ℓ = (x·θ − y)²`` the Hessian is ``2 Σ_b w_b x_b x_bᵀ``:

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> batch = fused_mlp_derivatives(task).at(
        ...     {"0.weight": torch.tensor([[1.0, 1.0]])}, X, Y, torch.tensor([1.0]))
        >>> v = {"0.weight": torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])}  # K = 2
        >>> hvp, dloss = batch.gradient_jvp(v)
        >>> hvp["0.weight"].tolist(), dloss.tolist()  # 2·x(x·v); 2(x·θ − y)(x·v)
        ([[[4.0, 8.0]], [[6.0, 12.0]]], [[8.0], [12.0]])
        """
        a_dots = _tangent_forward(self.plan, self.params, self.acts, tangents)
        out_dot = a_dots[-1]
        dloss = (out_dot * self.residual).sum(-1)
        e_dot = self._hessian_out(out_dot) * self.w.unsqueeze(-1)
        return self._backward_tangent(tangents, a_dots, e_dot), dloss

    def gradient_tangents(self, tangents: Params, d_weights: torch.Tensor) -> Params:
        """``H v_k + Σ_b ẇ_kb ∇ℓ_b``: the tangent of the batch gradient when θ moves along
        v_k and the batch weights along ``d_weights`` (K, B).

        >>> from torch import nn
        >>> from fimo.data import ArrayDataset
        >>> X, Y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]])
        >>> task = Task(nn.Sequential(nn.Linear(2, 1, bias=False)), ArrayDataset(X, Y),
        ...             ArrayDataset(X, Y), loss="mse")
        >>> batch = fused_mlp_derivatives(task).at(
        ...     {"0.weight": torch.tensor([[1.0, 1.0]])}, X, Y, torch.tensor([0.5, 1.0]))
        >>> still = {"0.weight": torch.zeros(1, 1, 2)}  # θ still; w₂ moves: ∇ℓ₂ = [0, 2]
        >>> batch.gradient_tangents(still, torch.tensor([[0.0, 1.0]]))["0.weight"].tolist()
        [[[0.0, 2.0]]]
        """
        a_dots = _tangent_forward(self.plan, self.params, self.acts, tangents)
        e_dot = self._hessian_out(a_dots[-1]) * self.w.unsqueeze(-1)
        e_dot += d_weights.unsqueeze(-1) * self.residual
        return self._backward_tangent(tangents, a_dots, e_dot)

    def _hessian_out(self, out_dot: torch.Tensor) -> torch.Tensor:
        """The loss's Hessian in the outputs times ``out_dot`` (K, B, o), per instance."""
        if self.probs is None:  # squared error: 2·I
            return 2 * out_dot
        p = self.probs  # cross-entropy: diag(p) − p pᵀ
        return p * (out_dot - (p * out_dot).sum(-1, keepdim=True))

    def _backward_tangent(self, tangents: Params, a_dots: list, e_dot: torch.Tensor) -> Params:
        """The tangent of the backward pass (the gradient's tangent), from ``e_dot``, the
        tangent of the loss's derivative with respect to the model's output (K, B, o)."""
        out = {}
        for k in range(len(self.plan) - 1, -1, -1):
            wname, bname, act = self.plan[k]
            a_in, a_out, delta = self.acts[k], self.acts[k + 1], self.deltas[k]
            delta_dot = _times_slope_(e_dot, a_out, act)  # e_dot is ours: changed in place
            if act == "tanh":  # e ⊙ f''(z) ⊙ ż = −2a ⊙ e ⊙ ȧ
                delta_dot.addcmul_(a_out * self.es[k], a_dots[k + 1], value=-2)
            # the products accumulate in place (no extra pass over K × the layer's size)
            grad_w = torch.matmul(delta_dot.transpose(1, 2), a_in)
            if a_dots[k] is not None:
                grad_w.baddbmm_(delta.T.expand(len(grad_w), -1, -1), a_dots[k])
            out[wname] = grad_w
            if bname is not None:
                out[bname] = delta_dot.sum(1)
            if k > 0:
                W = self.params[wname]
                e_dot = torch.matmul(delta, tangents[wname])
                e_dot.view(-1, W.shape[1]).addmm_(delta_dot.view(-1, W.shape[0]), W)
        return {name: out[name] for name in self.params}


def _forward(plan, params: Params, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's input and the output: [x, a_1, …, a_L]."""
    acts = [x]
    for wname, bname, act in plan:
        W = params[wname]
        a = acts[-1] @ W.T if bname is None else torch.addmm(params[bname], acts[-1], W.T)
        if act == "relu":
            a = a.clamp_min_(0)
        elif act == "tanh":
            a = a.tanh_()
        acts.append(a)
    return acts


def _output_derivative(out: torch.Tensor, y: torch.Tensor, cross_entropy: bool):
    """(∂ℓ_b/∂out_b (B, o), the softmax for cross-entropy's Hessian or None)."""
    if cross_entropy:
        probs = torch.softmax(out, dim=-1)
        residual = probs.clone()
        residual.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(probs[:, :1], -1.0))
        return residual, probs
    return 2 * (out - y.reshape(out.shape)), None


def _times_slope(e: torch.Tensor, a_out: torch.Tensor, act: str) -> torch.Tensor:
    """e ⊙ f'(z), from the activation's output a = f(z) (a new tensor)."""
    return _times_slope_(e.clone(), a_out, act)


def _times_slope_(e: torch.Tensor, a_out: torch.Tensor, act: str) -> torch.Tensor:
    """e ← e ⊙ f'(z), in place, from the activation's output a = f(z)."""
    if act == "relu":
        return e.mul_(a_out > 0)
    if act == "tanh":
        return e.mul_(1 - a_out**2)
    return e


def _tangent_forward(plan, params: Params, acts: list, tangents: Params, keep=True) -> list:
    """Each layer's output tangent ȧ_k (K, B, h) along the K ``tangents`` of θ: [None (the
    input does not move), ȧ_1, …, ȧ_L]; with ``keep`` False only ȧ_L (the others None, freed
    as the pass goes: the memory of two layers)."""
    a_dots = [None]
    for k, (wname, bname, act) in enumerate(plan):
        W = params[wname]
        z_dot = torch.matmul(acts[k], tangents[wname].transpose(1, 2))
        if a_dots[k] is not None:  # accumulated in place: ȧ Wᵀ + a Vᵀ
            z_dot.view(-1, W.shape[0]).addmm_(a_dots[k].view(-1, W.shape[1]), W.T)
        if bname is not None:
            z_dot += tangents[bname].unsqueeze(1)
        a_dots.append(_times_slope_(z_dot, acts[k + 1], act))
        if not keep:
            a_dots[k] = None
    return a_dots
