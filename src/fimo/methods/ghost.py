"""Dot products of per-instance gradients from layer factors, never forming the gradients.

The per-instance gradient of a ``nn.Linear`` layer's weight is Σ_s b_s a_sᵀ: a_s is the
layer's input at position s of the instance (one position for a plain MLP, several for a
sequence) and b_s the gradient of the instance's loss with respect to the layer's output
there; the bias's gradient is Σ_s b_s. So over that layer

    ⟨g_i, g_j⟩ = Σ_s Σ_r (a_is · a_jr)(b_is · b_jr) + (Σ_s b_is) · (Σ_r b_jr)

(the "ghost" dot product): k test against m training instances cost about
k·m·T²·(in + out) multiply-adds instead of m·T·in·out to form the gradients and k·m·in·out
to multiply them. One batched forward and backward pass gives the factors of every instance
(each instance's loss depends on its own outputs only, which per-instance gradients assume
anyway). :func:`ghost_plan` says whether a task's trainable parameters can all be treated
so; Grad-Dot and Grad-Cos (:mod:`fimo.methods.first_order`) use it when it is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fimo.errors import InputError, check_choice
from fimo.methods.cost import CostProbe
from fimo.methods.gradients import DEFAULT_BUDGET, fit_count
from fimo.task import Task

#: The values of the ``ghost`` setting: decide by cost, always use it, never use it.
GHOST_CHOICES = ("auto", "always", "never")
#: Training instances per pass at most (the factors of a batch are small).
MAX_GHOST_CHUNK = 4096


@dataclass(frozen=True)
class GhostLayer:
    """One ``nn.Linear`` module whose trainable parameters are scored from factors.

    >>> GhostLayer("0", weight=True, bias=False)  # layer '0' with its bias frozen
    GhostLayer(module='0', weight=True, bias=False)
    """

    module: str
    weight: bool  # is its weight trainable?
    bias: bool  # is its bias trainable?


@dataclass
class Factors:
    """Per-instance factors of one layer: inputs ``a`` (B, T, in) (None when the weight is
    frozen), output gradients ``b`` (B, T, out), and whether the bias is trainable.

    >>> f = Factors(torch.ones(2, 1, 3), torch.ones(2, 1, 4))  # 2 instances, 1 position
    >>> f.a.shape[-1], f.b.shape[-1], f.bias
    (3, 4, True)
    """

    a: torch.Tensor | None
    b: torch.Tensor
    bias: bool = True


def ghost_plan(task: Task) -> tuple[list[GhostLayer] | None, str]:
    """The layers to score from factors, or ``(None, reason)`` when some trainable parameter
    is not the weight or bias of a plain ``nn.Linear`` (or is shared with another module).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> ghost_plan(Task(model, data, data, trainable=["0.weight", "2.*"]))[0]
    [GhostLayer(module='0', weight=True, bias=False), GhostLayer(module='2', weight=True, bias=True)]
    >>> normed = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> ghost_plan(Task(normed, data, data))[1]
    "parameter '1.weight' belongs to a LayerNorm, not an nn.Linear"
    """
    modules = dict(task.model.named_modules())
    uses: dict[int, int] = {}
    for _, p in task.model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    named = dict(task.model.named_parameters())
    layers: dict[str, dict[str, bool]] = {}
    for name in task.trainable:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
            kind = type(module).__name__ if module is not None else "no module"
            return None, f"parameter {name!r} belongs to a {kind}, not an nn.Linear"
        if uses[id(named[name])] > 1:
            return None, f"parameter {name!r} is shared with another module"
        layers.setdefault(owner, {"weight": False, "bias": False})[leaf] = True
    return [GhostLayer(m, flags["weight"], flags["bias"]) for m, flags in layers.items()], ""


def capture(
    task: Task, layers: list[GhostLayer], inputs, targets, measure: bool = False, fn=None
) -> dict[str, Factors]:
    """Each layer's factors for the instances ``inputs``: one forward pass with hooks that
    keep every call's input and output, one backward pass of the summed per-instance losses
    (or measurements g, or ``fn(params, inputs, targets)`` (B,) when given: TRAK's output
    function) to the outputs. A layer called several times (shared across
    positions or steps) gets its calls as extra positions; one never called gets none.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(nn.Linear(3, 2), data, data)
    >>> f = capture(task, ghost_plan(task)[0], data.inputs, data.targets)[""]
    >>> g = torch.func.vmap(torch.func.grad(lambda p, x, y: task.losses(p, x[None], y[None])[0]),
    ...                     in_dims=(None, 0, 0))(task.params(), data.inputs, data.targets)
    >>> torch.allclose(torch.einsum("bto,bti->boi", f.b, f.a), g["weight"], atol=1e-6)
    True
    """
    modules = dict(task.model.named_modules())
    calls: dict[str, list] = {layer.module: [] for layer in layers}
    handles = []
    for layer in layers:

        def keep(module, args, output, store=calls[layer.module]):
            store.append((args[0].detach(), output))

        handles.append(modules[layer.module].register_forward_hook(keep))
    params = {n: p.detach().requires_grad_(True) for n, p in task.params().items()}
    fn = fn or (task.measure if measure else task.losses)
    try:
        with torch.enable_grad(), task.eval_mode():
            total = fn(params, inputs, targets).sum()
    finally:
        for h in handles:
            h.remove()
    outputs = [out for layer in layers for _, out in calls[layer.module]]
    grads = torch.autograd.grad(total, outputs, allow_unused=True) if outputs else ()
    grads = iter(grads)
    n = len(targets)
    factors = {}
    for layer in layers:
        a_parts, b_parts = [], []
        for a, out in calls[layer.module]:
            b = next(grads)
            b = torch.zeros_like(out) if b is None else b.detach()
            if a.shape[0] != n or b.shape[0] != n:
                raise ValueError(f"layer {layer.module!r} did not see the batch as its first axis")
            a_parts.append(a.reshape(n, -1, a.shape[-1]))
            b_parts.append(b.reshape(n, -1, b.shape[-1]))
        if not b_parts:
            continue
        a = (a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, 1)) if layer.weight else None
        b = b_parts[0] if len(b_parts) == 1 else torch.cat(b_parts, 1)
        factors[layer.module] = Factors(a, b, layer.bias)
    return factors


def checked_plan(task: Task, probes: int = 2) -> tuple[list[GhostLayer] | None, str]:
    """:func:`ghost_plan`, confirmed on the data: the gradients rebuilt from the factors of
    the first ``probes`` training instances must equal their gradients taken by autograd.
    A model that also uses a parameter outside its layer's call (a penalty on the weights
    inside the loss, a weight read in ``forward``) passes the structural check but not this
    one, and is scored from formed gradients.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> checked_plan(Task(nn.Linear(3, 2), data, data))[0]
    [GhostLayer(module='', weight=True, bias=True)]
    """
    layers, reason, _ = _probed_plan(task, probes)
    return layers, reason


def _probed_plan(task: Task, probes: int = 2):
    """:func:`checked_plan`'s ``(layers, reason)`` and the probe instances' factors (None when
    not captured), so that a caller can read their positions without capturing again."""
    layers, reason = ghost_plan(task)
    if layers is None or len(task.train) == 0:
        return layers, reason, None
    rows = torch.arange(min(probes, len(task.train)))
    x, y = task.train.inputs[rows], task.train.targets[rows]
    try:
        factors = capture(task, layers, x, y)
    except ValueError as exc:
        return None, str(exc), None
    formed = _autograd_rows(task, x, y)
    rebuilt = torch.zeros_like(formed)
    for name, where in layer_slices(task, layers).items():
        f = factors.get(name)
        if f is None:
            continue
        if "weight" in where:
            w = torch.einsum("bto,bti->boi", f.b, f.a).reshape(len(rows), -1)
            rebuilt[:, where["weight"]] = w.to(formed.dtype)
        if "bias" in where:
            rebuilt[:, where["bias"]] = f.b.sum(1).to(formed.dtype)
    tol = 1e-4 if formed.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = float(formed.abs().max().clamp_min(torch.finfo(formed.dtype).tiny))
    if float((rebuilt - formed).abs().max()) > tol * scale:
        return None, "a trainable parameter is used outside its nn.Linear call", factors
    return layers, "", factors


def _autograd_rows(task: Task, x, y) -> torch.Tensor:
    """(B, P) loss gradients of the instances (x, y), one autograd call each (a few rows)."""
    params = {n: p.detach().requires_grad_(True) for n, p in task.params().items()}
    rows = []
    with torch.enable_grad(), task.eval_mode():
        for i in range(len(y)):
            one = torch.tensor([i])
            loss = task.losses(params, x[one], y[one]).sum()
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for g, p in zip(grads, params.values(), strict=True)
                    ]
                )
            )
    return torch.stack(rows).detach()


def _pair_sum(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, plus: float):
    """Σ_s Σ_r (x_ks · y_mr + plus)(u_ks · v_mr) for every pair (k, m): x, u (k, T, ·);
    y, v (m, R, ·). ``plus`` = 1 adds the bias's term when each instance has one position."""
    if x.shape[1] == 1 and y.shape[1] == 1:
        out = x[:, 0] @ y[:, 0].T
        if plus:
            out += plus
        return out.mul_(u[:, 0] @ v[:, 0].T)
    xy = torch.einsum("ksi,mri->ksmr", x, y)
    return torch.einsum("ksmr,ksmr->km", xy, torch.einsum("kso,mro->ksmr", u, v))


def ghost_dots(test: dict[str, Factors], train: dict[str, Factors]) -> torch.Tensor | None:
    """The (k, m) matrix of gradient dot products between two sets of instances' factors
    (None when no layer has factors in both).

    >>> a, b = torch.randn(3, 1, 4), torch.randn(3, 1, 2)
    >>> G = torch.einsum("bto,bti->boi", b, a).reshape(3, -1)  # the weight gradients
    >>> f = {"l": Factors(a, b)}
    >>> torch.allclose(ghost_dots(f, f), G @ G.T + b[:, 0] @ b[:, 0].T, atol=1e-5)
    True
    """
    out = None
    for name, t in test.items():
        if name not in train:
            continue
        r = train[name]
        single = t.b.shape[1] == 1 and r.b.shape[1] == 1
        if t.a is None:
            part = t.b.sum(1) @ r.b.sum(1).T
        else:
            part = _pair_sum(t.a, r.a, t.b, r.b, 1.0 if t.bias and single else 0.0)
            if t.bias and not single:
                part += t.b.sum(1) @ r.b.sum(1).T
        out = part if out is None else out.add_(part)
    return out


def ghost_norms(factors: dict[str, Factors]) -> torch.Tensor:
    """‖g_i‖ for every instance, from its factors alone.

    >>> a, b = torch.randn(3, 2, 4), torch.randn(3, 2, 5)
    >>> G = torch.einsum("bto,bti->boi", b, a).reshape(3, -1)
    >>> f = {"l": Factors(a, b)}
    >>> torch.allclose(ghost_norms(f) ** 2, (G**2).sum(1) + (b.sum(1) ** 2).sum(1), atol=1e-4)
    True
    """
    total = None
    for f in factors.values():
        part = (f.b.sum(1) ** 2).sum(1) if f.bias else 0
        if f.a is not None:
            if f.a.shape[1] == 1:
                part = part + (f.a[:, 0] ** 2).sum(1) * (f.b[:, 0] ** 2).sum(1)
            else:
                gram = (f.a @ f.a.transpose(1, 2)) * (f.b @ f.b.transpose(1, 2))
                part = part + gram.sum((1, 2))
        total = part if total is None else total + part
    return total.clamp_min(0).sqrt()


def _instance_bytes(task: Task, layers: list[GhostLayer], positions: int = 1) -> int:
    """Bytes of one instance's factors (inputs and output gradients of every layer)."""
    modules = dict(task.model.named_modules())
    itemsize = next(iter(task.params().values())).element_size()
    width = sum(modules[x.module].in_features + modules[x.module].out_features for x in layers)
    return 4 * positions * width * itemsize  # forward activations and their gradients too


def capture_rows(
    task: Task, layers: list[GhostLayer], data, rows, measure: bool, chunk_size: int | None
):
    """Yield ``(slice, factors)`` for the instances ``data[rows]``, a chunk at a time
    (``chunk_size`` instances, or as many as fit in the memory budget).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(nn.Linear(3, 2), data, data)
    >>> parts = capture_rows(task, ghost_plan(task)[0], data, [0, 2, 4], False, 2)
    >>> [(rows.start, rows.stop, f[""].b.shape[0]) for rows, f in parts]
    [(0, 2, 2), (2, 3, 1)]
    """
    idx = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    size = chunk_size or fit_count(_instance_bytes(task, layers), DEFAULT_BUDGET, MAX_GHOST_CHUNK)
    for start in range(0, len(idx), size):
        part = idx[start : start + size]
        factors = capture(task, layers, data.inputs[part], data.targets[part], measure)
        yield slice(start, start + len(part)), factors


def joined(parts: list[dict[str, Factors]]) -> dict[str, Factors]:
    """One set of factors from the chunks of :func:`capture_rows` (same layers in each).

    >>> part = {"l": Factors(torch.ones(2, 1, 3), torch.ones(2, 1, 4))}
    >>> joined([part, part])["l"].a.shape
    torch.Size([4, 1, 3])
    """
    first = parts[0]
    return {
        name: Factors(
            None if f.a is None else torch.cat([p[name].a for p in parts]),
            torch.cat([p[name].b for p in parts]),
            f.bias,
        )
        for name, f in first.items()
    }


def ghost_is_cheaper(test: dict[str, Factors]) -> bool:
    """Whether k test instances against each training instance cost fewer multiply-adds from
    factors (k·T²·(in + out) per layer, T positions as in the test factors) than by forming
    the training gradient (T·in·out) and taking k products with it (k·in·out).

    >>> f = lambda k, t, i, o: {"l": Factors(torch.zeros(k, t, i), torch.zeros(k, t, o))}
    >>> ghost_is_cheaper(f(200, 1, 128, 128)), ghost_is_cheaper(f(10, 64, 16, 16))
    (True, False)
    """
    ghost = full = 0
    for f in test.values():
        k, positions, out = f.b.shape
        if f.a is None:
            ghost, full = ghost + k * out, full + (k + positions) * out
            continue
        width = f.a.shape[-1]
        ghost += k * positions * positions * (width + out) + (k * out if f.bias else 0)
        full += (k + positions) * (width * out + (out if f.bias else 0))
    return ghost < full


def ghost_scores(
    task: Task,
    layers: list[GhostLayer],
    test_factors: dict[str, Factors],
    k: int,
    train,
    normalise: bool,
    progress=None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """The (k, len(train)) float64 matrix of gradient dot products (cosines when
    ``normalise``) of the k test instances whose factors are given against the training
    instances ``train``, chunk by chunk; ``progress(m)`` after each chunk of m.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    >>> task = Task(nn.Linear(3, 2), data, data)
    >>> layers = ghost_plan(task)[0]
    >>> test = capture(task, layers, data.inputs[:2], data.targets[:2], measure=True)
    >>> ghost_scores(task, layers, test, 2, np.arange(6), normalise=True).shape
    (2, 6)
    """
    out = np.zeros((k, len(train)), dtype=np.float64)
    test_norms = ghost_norms(test_factors) if normalise and test_factors else None
    probe = CostProbe(
        f"scoring {len(train)} training instances against {k} test vectors (ghost)",
        len(train),
        'score fewer training instances (methods.train = "left_out") or test instances',
    )
    for rows, factors in capture_rows(task, layers, task.train, train, False, chunk_size):
        block = ghost_dots(test_factors, factors)
        if block is not None:
            if normalise:
                norms = ghost_norms(factors)
                block = block / test_norms.clamp_min(1e-30)[:, None] / norms.clamp_min(1e-30)
            out[:, rows] = block.double().cpu().numpy()
        if progress is not None:
            progress(rows.stop - rows.start)
        probe.tick(rows.stop - rows.start)
    return out


def check_ghost(method: str, ghost: str, proj_dim) -> None:
    """InputError unless ``ghost`` is one of :data:`GHOST_CHOICES` (and not ``"always"``
    together with a projection, which works on formed gradients).

    >>> check_ghost("grad_dot", "always", 16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: grad_dot ghost: 'always' works on unprojected gradients; ...
    """
    check_choice(f"{method} ghost", ghost, GHOST_CHOICES)
    if ghost == "always" and proj_dim is not None:
        raise InputError(
            f"{method} ghost: 'always' works on unprojected gradients; got proj_dim={proj_dim}, "
            "use ghost='auto' (or proj_dim=None)"
        )


def ghost_test_factors(
    method: str, task: Task, test, ghost: str, proj_dim, chunk_size: int | None
) -> tuple[list[GhostLayer] | None, dict[str, Factors] | None]:
    """The ghost layers and the test instances' factors when the ghost path is to be taken
    (``ghost="always"``, or ``"auto"`` when every trainable parameter is a Linear layer's and
    it is cheaper), else ``(None, None)``; ``"always"`` on a model it cannot treat is an
    InputError naming the parameter.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(nn.Linear(3, 2), data, data)
    >>> layers, factors = ghost_test_factors("grad_dot", task, [0, 1], "always", None, None)
    >>> layers, factors[""].b.shape
    ([GhostLayer(module='', weight=True, bias=True)], torch.Size([2, 1, 2]))
    >>> ghost_test_factors("grad_dot", task, [0, 1], "never", None, None)
    (None, None)
    """
    if ghost == "never" or proj_dim is not None or len(test) == 0:
        return None, None
    layers, reason = checked_plan(task)
    if layers is not None:
        try:
            parts = capture_rows(task, layers, task.test, test, True, chunk_size)
            factors = joined([f for _, f in parts])
        except ValueError as exc:
            layers, reason = None, str(exc)
    if layers is None:
        if ghost == "always":
            raise InputError(
                f"{method} ghost: 'always' cannot be used here ({reason}); use ghost='auto'"
            )
        return None, None
    if ghost == "auto" and not ghost_is_cheaper(factors):
        return None, None
    return layers, factors


def layer_slices(task: Task, layers: list[GhostLayer]) -> dict[str, dict[str, slice]]:
    """Where each ghost layer's weight and bias sit in a flattened parameter vector (the order
    of ``task.params()``, as :func:`fimo.methods.gradients.flatten` concatenates them).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> task = Task(model, data, data)
    >>> layer_slices(task, ghost_plan(task)[0])["2"]
    {'weight': slice(16, 24, None), 'bias': slice(24, 26, None)}
    """
    where, start = {}, 0
    for name, p in task.params().items():
        where[name] = slice(start, start + p.numel())
        start += p.numel()
    out: dict[str, dict[str, slice]] = {}
    for layer in layers:
        prefix = f"{layer.module}." if layer.module else ""
        out[layer.module] = {
            leaf: where[prefix + leaf]
            for leaf, used in (("weight", layer.weight), ("bias", layer.bias))
            if used
        }
    return out


def _weight_products(a: torch.Tensor, b: torch.Tensor, W: torch.Tensor, budget: int):
    """Σ_s b_isᵀ W_t a_is for every (instance i, test vector t): a (m, T, in), b (m, T, out),
    W (k, out, in); (m, k). The product goes through the narrower side of W, in blocks of
    test vectors sized so that the intermediate (m·T, block, width) stays within ``budget``."""
    m, positions, width_in = a.shape
    k, width_out, _ = W.shape
    rows_a, rows_b = a.reshape(m * positions, width_in), b.reshape(m * positions, width_out)
    narrow_out = width_out <= width_in
    step = max(1, budget // max(1, m * positions * min(width_in, width_out) * a.element_size()))
    out = torch.empty(m, k, dtype=a.dtype, device=a.device)
    for t0 in range(0, k, step):
        block = W[t0 : t0 + step]
        if narrow_out:  # (m·T, in) @ (in, kb·out) → (m·T, kb, out), times b over out
            mid = (rows_a @ block.reshape(-1, width_in).T).view(m * positions, -1, width_out)
            part = (mid * rows_b[:, None, :]).sum(-1)
        else:  # (m·T, out) @ (out, kb·in) → (m·T, kb, in), times a over in
            mid = rows_b @ block.transpose(0, 1).reshape(width_out, -1)
            part = (mid.view(m * positions, -1, width_in) * rows_a[:, None, :]).sum(-1)
        out[:, t0 : t0 + step] = part.view(m, positions, -1).sum(1)
    return out


def ghost_products(
    task: Task,
    layers: list[GhostLayer],
    test_side: torch.Tensor,
    train,
    chunk_size: int | None = None,
    budget: int = DEFAULT_BUDGET,
):
    """Yield ``(rows, block)`` with block (len(rows), k) = the per-instance loss gradients of
    the training instances ``train[rows]`` times ``test_side`` (k, P), from layer factors:
    the gradients (m·P numbers per chunk) are never formed. Any dense test side works (a
    preconditioned or inverse-Hessian product), which is the last step of every influence
    method; for an instance with one position per layer it costs k·in·out per layer and
    instance, the same multiply-adds as the product with formed gradients.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
    >>> task = Task(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), data, data)
    >>> V = torch.randn(2, task.num_params, dtype=torch.float64)
    >>> blocks = list(ghost_products(task, ghost_plan(task)[0], V, range(5), chunk_size=3))
    >>> from fimo.methods.common import training_gradients
    >>> G = torch.cat([g for _, g in training_gradients(task, range(5))])
    >>> [rows.stop for rows, _ in blocks], torch.allclose(torch.cat([b for _, b in blocks]), G @ V.T)
    ([3, 5], True)
    """
    where = layer_slices(task, layers)
    modules = dict(task.model.named_modules())
    for rows, factors in capture_rows(task, layers, task.train, train, False, chunk_size):
        block = torch.zeros(rows.stop - rows.start, len(test_side), dtype=test_side.dtype)
        for name, f in factors.items():
            b = f.b.to(test_side.dtype)
            if "weight" in where[name]:
                module = modules[name]
                W = test_side[:, where[name]["weight"]].reshape(
                    -1, module.out_features, module.in_features
                )
                block += _weight_products(f.a.to(test_side.dtype), b, W, budget)
            if "bias" in where[name]:
                block += b.sum(1) @ test_side[:, where[name]["bias"]].T
        yield rows, block


def dense_ghost_plan(task: Task) -> list[GhostLayer] | None:
    """The ghost layers when every trainable parameter is a Linear layer's and each instance
    meets each layer once (one position: an MLP's layers; the product with a dense test side
    costs T times more from factors than from formed gradients at T positions), and the
    factors reproduce the gradients (:func:`checked_plan`); else None.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> dense_ghost_plan(Task(nn.Linear(3, 2), data, data))
    [GhostLayer(module='', weight=True, bias=True)]
    """
    layers, _, probe = _probed_plan(task)
    if layers is None or probe is None or any(f.b.shape[1] != 1 for f in probe.values()):
        return None
    return layers
