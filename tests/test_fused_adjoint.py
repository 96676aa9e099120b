"""The fused adjoint (an MLP's derivatives by hand) gives torch.func's numbers.

Two levels: each product of :mod:`fimo.further.fused_adjoint` against ``torch.func`` on the
task's own loss, and whole ``unrolled_seed`` calls with ``further.engine = "auto"`` (fused)
against ``"generic"`` (torch.func), float64, to 1e-10.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad, jvp, vmap

import fimo.further.adjoint as adjoint
import fimo.further.fused_adjoint as fused_adjoint
from fimo.data import ArrayDataset
from fimo.further.adjoint import unrolled_seed
from fimo.further.engine import FurtherSettings
from fimo.further.fused_adjoint import fused_mlp_derivatives
from fimo.task import Task

TOL = 1e-10


def make_task(activation=nn.ReLU, loss="cross_entropy", n=29, bias=True, last=None, dropout=0):
    """An MLP 5 → 8 → 6 → (3 classes | 2 outputs), float64, on random data."""
    seed = 0
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    Xt = torch.randn(4, 5, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        out = 3
        y, yt = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (4,), generator=g)
    else:
        out = 2
        y, yt = X[:, :2] ** 2 - X[:, 2:4], Xt[:, :2] ** 2 - Xt[:, 2:4]
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8, bias=bias), activation(), nn.Linear(8, 6), activation()]
    layers += [nn.Linear(6, out)] + ([last()] if last else [])
    if dropout:
        layers.insert(2, nn.Dropout(dropout))
    model = nn.Sequential(*layers).double()
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, yt), loss=loss)


def random_like(params, K, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(K, *v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=TOL, atol=TOL)


MODELS = [
    dict(activation=nn.ReLU, loss="cross_entropy"),
    dict(activation=nn.Tanh, loss="cross_entropy", bias=False),
    dict(activation=nn.Tanh, loss="mse", last=nn.Tanh),
    dict(activation=nn.ReLU, loss="mse"),
]
IDS = ["relu-ce", "tanh-ce-nobias", "tanh-mse-tanhout", "relu-mse"]


@pytest.mark.parametrize("kind", MODELS, ids=IDS)
def test_products_equal_torch_func(kind):
    task = make_task(**kind)
    p = {k: v + 0.3 * torch.randn_like(v) for k, v in task.params().items()}
    X, Y = task.train.inputs, task.train.targets
    idx = torch.tensor([3, 0, 17, 9, 28, 4, 4])
    x, y = X[idx], Y[idx]
    w = torch.tensor([0.2, 0.1, 0.0, 0.3, 0.15, 0.05, 0.2], dtype=torch.float64)
    K = 5
    v = random_like(p, K, seed=1)
    d_weights = torch.randn(K, len(idx), dtype=torch.float64)

    def batch(q, weights):
        losses = task.losses(q, x, y)
        return (losses * weights).sum(), losses

    def along(t, dw):  # the gradient's tangent and each member's ⟨∇ℓ_b, t⟩
        (_, _), (d_grad, dloss) = jvp(grad(batch, has_aux=True), (p, w), (t, dw))
        return d_grad, dloss

    hvp, dloss = vmap(along, in_dims=(0, None))(v, torch.zeros_like(w))
    moved, _ = vmap(along)(v, d_weights)
    fused = fused_mlp_derivatives(task).at(p, x, y, w)
    close(fused.grads(), grad(batch, has_aux=True)(p, w)[0])
    got_hvp, got_dloss = fused.gradient_jvp(v)
    close(got_hvp, hvp)
    torch.testing.assert_close(got_dloss, dloss, rtol=TOL, atol=TOL)
    close(fused.gradient_tangents(v, d_weights), moved)
    assert max(t.abs().max() for t in hvp.values()) > 1e-3  # not a comparison of zeros

    derivatives = fused_mlp_derivatives(task)
    every = vmap(lambda t: jvp(lambda q: task.losses(q, X, Y), (p,), (t,))[1])(v)
    torch.testing.assert_close(derivatives.losses_jvp(p, X, Y, v), every, rtol=TOL, atol=TOL)
    one = vmap(grad(lambda q, xi, yi: task.losses(q, xi[None], yi[None])[0]), (None, 0, 0))
    close(derivatives.instance_grads(p, x, y), one(p, x, y))


def test_only_the_fused_engines_models_take_it():
    assert fused_mlp_derivatives(make_task()) is not None
    X = torch.randn(10, 5, dtype=torch.float64)
    data = ArrayDataset(X, torch.randint(0, 2, (10,)))
    dropout = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.2), nn.Linear(4, 2)).double()
    assert fused_mlp_derivatives(Task(dropout, data, data)) is None
    gelu = nn.Sequential(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 2)).double()
    assert fused_mlp_derivatives(Task(gelu, data, data)) is None
    custom = Task(make_task().model, data, data, loss=lambda out, y: out.logsumexp(-1))
    assert fused_mlp_derivatives(custom) is None


def paths_taken(monkeypatch):
    """Count the steps that went through torch.func and through the fused products."""
    taken = {"generic": 0, "fused": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            taken[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    counting(adjoint, "_GenericBatch", "generic")
    counting(adjoint, "_gradient_tangents", "generic")
    counting(fused_adjoint, "MlpBatch", "fused")
    return taken


CASES = [
    (dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01), {}),
    (dict(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True), dict(activation=nn.Tanh)),
    (dict(optimizer="sgd", lr=0.1, clip_norm=0.2), dict(loss="mse")),
    (dict(optimizer="adam", lr=0.01), dict(activation=nn.Tanh, loss="mse")),
    (dict(optimizer="adamw", lr=0.01, weight_decay=0.1, clip_norm=0.3), {}),
]


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("scheme", ["mask", "downweight"])
@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: "-".join(f"{k}{getattr(v, '__name__', v)}" for d in c for k, v in d.items()),
)
def test_unrolled_fused_equals_generic(case, scheme, mode, monkeypatch):
    optimizer, kind = case
    task = make_task(**kind)
    settings = dict(epochs=2, batch_size=8, scheme=scheme, record_every=3, **optimizer)
    train = None if mode == "reverse" else [0, 7, 28, 13]
    taken = paths_taken(monkeypatch)
    fused = unrolled_seed(task, FurtherSettings(**settings), 2, np.arange(4), train, mode=mode)
    assert taken == {"generic": 0, "fused": 8} and fused.mode == mode
    generic = unrolled_seed(
        task, FurtherSettings(engine="generic", **settings), 2, np.arange(4), train, mode=mode
    )
    assert taken == {"generic": 8, "fused": 8}
    assert fused.steps.tolist() == [3, 4, 6, 8]
    scale = np.abs(generic.values).max()
    assert scale > 1e-3
    np.testing.assert_allclose(fused.values, generic.values, rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(fused.loss_full, generic.loss_full, rtol=0, atol=1e-12)


def test_dropout_model_goes_through_torch_func(monkeypatch):
    task = make_task(dropout=0.3)
    taken = paths_taken(monkeypatch)
    settings = FurtherSettings(lr=0.1, epochs=1, batch_size=8, scheme="mask")
    out = unrolled_seed(task, settings, 0, np.arange(4), mode="reverse")
    assert taken == {"generic": 4, "fused": 0} and np.abs(out.values).max() > 0
