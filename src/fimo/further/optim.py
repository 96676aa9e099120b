"""Pure optimizers over parameters stacked along a leading *run* axis.

Each optimizer is a pair of pure functions in the style of optax:
``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``; the
engine adds the updates to the parameters. Every tensor has shape (R, ...): R runs advance
together, each with its own state, and each run's arithmetic is the same, step for step, as
``torch.optim`` started fresh on that run alone (tests/test_engine.py checks whole further
training runs against ``torch.optim`` for SGD with momentum, Nesterov and clipping, Adam and
AdamW).

``active`` (an (R,) bool tensor or None) lets some runs sit out a step (a left-out run whose
epoch has one batch fewer): their parameters and state are left exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tree = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """An optimizer as two pure functions: ``init(params) -> state`` and
    ``update(grads, state, params, active=None) -> (updates, state)``.

    >>> t = sgd(lr=0.5)
    >>> params = {"w": torch.tensor([[1.0], [2.0]])}  # two runs, one weight each
    >>> updates, state = t.update({"w": torch.ones(2, 1)}, t.init(params), params)
    >>> updates["w"].tolist(), state["count"].tolist()
    ([[-0.5], [-0.5]], [1, 1])
    """

    init: Callable[[Tree], dict]
    update: Callable[..., tuple[Tree, dict]]


def _per_run(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an (R,) tensor to broadcast against ``like`` (R, ...)."""
    return x.reshape(-1, *([1] * (like.dim() - 1)))


def _keep(active, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return new if active is None else torch.where(_per_run(active, new), new, old)


def clip_by_global_norm(max_norm: float) -> Transform:
    """Scale each run's gradient to global norm at most ``max_norm`` (torch clip_grad_norm_).

    >>> clip = clip_by_global_norm(1.0)
    >>> grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)}  # norms 5, 0.5
    >>> clipped, _ = clip.update(grads, clip.init(grads))
    >>> clipped["w"].round(decimals=4).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """

    def init(params):
        return {}

    def update(grads, state, params=None, active=None):
        sq = sum(g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads.values())
        coef = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
        return {k: g * _per_run(coef, g) for k, g in grads.items()}, state

    return Transform(init, update)


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    """torch.optim.SGD (dampening 0): L2 weight decay added to the gradient, heavy-ball momentum.

    Two steps with momentum 0.9 and the same gradient 1: steps −0.1, then −0.1·(0.9 + 1).
    The second run sits the second step out (``active``).

    >>> opt = sgd(lr=0.1, momentum=0.9)
    >>> params = {"w": torch.zeros(2, 1, dtype=torch.float64)}
    >>> grads = {"w": torch.ones(2, 1, dtype=torch.float64)}
    >>> first, state = opt.update(grads, opt.init(params), params)
    >>> second, state = opt.update(grads, state, params, active=torch.tensor([True, False]))
    >>> first["w"].flatten().tolist(), second["w"].flatten().round(decimals=4).tolist()
    ([-0.1, -0.1], [-0.19, -0.0])
    """

    def init(params):
        state = {"count": torch.zeros(next(iter(params.values())).shape[0], dtype=torch.long)}
        if momentum:
            state["buf"] = {k: torch.zeros_like(p) for k, p in params.items()}
        return state

    def update(grads, state, params, active=None):
        count = state["count"].to(next(iter(grads.values())).device)
        updates, bufs = {}, {}
        for k, g in grads.items():
            if weight_decay:
                g = g + weight_decay * params[k]
            if momentum:
                old = state["buf"][k]
                first = _per_run(count == 0, g)
                buf = torch.where(first, g, momentum * old + g)
                bufs[k] = _keep(active, buf, old)
                g = g + momentum * buf if nesterov else buf
            step = -lr * g
            updates[k] = step if active is None else step * _per_run(active, step)
        new = {"count": count + (1 if active is None else active.long())}
        if momentum:
            new["buf"] = bufs
        return updates, new

    return Transform(init, update)


def adam(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
):
    """torch.optim.Adam (L2 decay in the gradient) or, with ``decoupled``, torch.optim.AdamW.

    Adam's first step is −lr·sign(g) (up to eps), whatever the gradient's size:

    >>> opt = adam(lr=0.01)
    >>> params = {"w": torch.zeros(1, 3, dtype=torch.float64)}
    >>> updates, state = opt.update({"w": torch.tensor([[5.0, -0.2, 1e-3]], dtype=torch.float64)},
    ...                             opt.init(params), params)
    >>> updates["w"].round(decimals=4).tolist(), state["count"].tolist()
    ([[-0.01, 0.01, -0.01]], [1])
    """
    b1, b2 = betas

    def init(params):
        r = next(iter(params.values())).shape[0]
        return {
            "count": torch.zeros(r, dtype=torch.long),
            "m": {k: torch.zeros_like(p) for k, p in params.items()},
            "v": {k: torch.zeros_like(p) for k, p in params.items()},
        }

    def update(grads, state, params, active=None):
        any_grad = next(iter(grads.values()))
        count = state["count"].to(any_grad.device)
        step = count + 1
        bc1 = 1 - b1 ** step.to(any_grad.dtype)
        bc2_sqrt = (1 - b2 ** step.to(any_grad.dtype)).sqrt()
        updates, m_new, v_new = {}, {}, {}
        for k, g in grads.items():
            p = params[k]
            if weight_decay and not decoupled:
                g = g + weight_decay * p
            m = state["m"][k].lerp(g, 1 - b1)
            v = state["v"][k] * b2 + (1 - b2) * g * g
            # sqrt of v ≥ the smallest normal number: the same values (below it, sqrt(v) is
            # lost against eps), and a finite derivative where a gradient entry is exactly 0
            # (a dead unit), for the adjoint of fimo.further.adjoint
            denom = v.clamp_min(torch.finfo(v.dtype).tiny).sqrt() / _per_run(bc2_sqrt, v) + eps
            u = -(lr / _per_run(bc1, m)) * m / denom
            if weight_decay and decoupled:
                # AdamW decays before the Adam step: p ← p(1 − lr·wd), then p ← p − lr·m̂/…
                u = u - lr * weight_decay * p
            m_new[k] = _keep(active, m, state["m"][k])
            v_new[k] = _keep(active, v, state["v"][k])
            updates[k] = u if active is None else u * _per_run(active, u)
        new_count = count + (1 if active is None else active.long())
        return updates, {"count": new_count, "m": m_new, "v": v_new}

    return Transform(init, update)


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order (e.g. clipping, then an optimizer).

    >>> opt = chain(clip_by_global_norm(1.0), sgd(lr=0.5))
    >>> params = {"w": torch.zeros(1, 2, dtype=torch.float64)}
    >>> grads = {"w": torch.tensor([[3.0, 4.0]], dtype=torch.float64)}
    >>> updates, _ = opt.update(grads, opt.init(params), params)
    >>> updates["w"].round(decimals=4).tolist()  # clipped to norm 1, then −0.5·g
    [[-0.3, -0.4]]
    """

    def init(params):
        return {i: t.init(params) for i, t in enumerate(transforms)}

    def update(grads, state, params, active=None):
        new_state = {}
        for i, t in enumerate(transforms):
            grads, new_state[i] = t.update(grads, state[i], params, active=active)
        return grads, new_state

    return Transform(init, update)


def make_optimizer(
    name: str,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    clip_norm: float = 0.0,
    nesterov: bool = False,
) -> Transform:
    """The optimizer for further training, by name, with gradient clipping when clip_norm > 0.

    The settings are taken as valid: :class:`fimo.settings.FurtherSettings` checks them,
    once, when it is made (its ``transform()`` calls this).

    >>> opt = make_optimizer("adamw", lr=0.1, weight_decay=0.5)
    >>> params = {"w": torch.ones(1, 1)}
    >>> updates, _ = opt.update({"w": torch.ones(1, 1)}, opt.init(params), params)
    >>> round(updates["w"].item(), 4)  # Adam step −0.1, decay −0.1·0.5·1
    -0.15
    """
    if name == "sgd":
        opt = sgd(lr, momentum, weight_decay, nesterov)
    else:
        opt = adam(lr, tuple(betas), eps, weight_decay, decoupled=name == "adamw")
    return chain(clip_by_global_norm(clip_norm), opt) if clip_norm > 0 else chain(opt)
