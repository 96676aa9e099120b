"""DataInf from layer factors against formed gradients and a plain loop over autograd gradients.

The plain loop takes each instance's gradient with its own autograd call and writes the
formula of PAPER.md §3 out term by term, block by block (float64); the factor path
(``ghost="always"``) and the formed-gradient path (``ghost="never"``) must both equal it.
"""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods.datainf import datainf, parameter_blocks
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def make_task(model, n=40, n_test=6, trainable=None, loss="cross_entropy", seed=0):
    """``model`` (5 inputs) on random float64 data, briefly trained with Adam so that the
    gradients are not those of a random network."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_test, 5, generator=g, dtype=DT)
    Y = (X[:, 0] - X[:, 2] ** 2 > -0.5).long() if loss == "cross_entropy" else X[:, :1].sin()
    model = model.to(DT)
    task = Task(model, ArrayDataset(X[:n], Y[:n]), ArrayDataset(X[n:], Y[n:]), loss=loss)
    task = Task(model, task.train, task.test, loss=loss, trainable=trainable)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        task.loss_fn(model(X[:n]), Y[:n]).mean().backward()
        opt.step()
    return task


def autograd_row(task, data, i, measure):
    """One instance's gradient (loss, or the test measurement), one autograd call."""
    params = {k: p.detach().requires_grad_(True) for k, p in task.params().items()}
    x, y = data.inputs[i : i + 1], data.targets[i : i + 1]
    value = (task.measure if measure else task.losses)(params, x, y).sum()
    grads = torch.autograd.grad(value, list(params.values()))
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


def loop_datainf(task, test, train, sample, blocks="module", lambda_const=10.0, damping=None):
    """score[t, j] = (1/n) Σ_l (1/λ_l) [v_tl·g_jl − (1/m) Σ_i (v_tl·g_il)(g_il·g_jl) /
    (λ_l + ‖g_il‖²)], λ_l = mean over the sample of the block's mean squared entry /
    lambda_const (or ``damping``), with explicit loops."""
    n = len(task.train)
    V = [autograd_row(task, task.test, t, True) for t in test]
    G = {i: autograd_row(task, task.train, i, False) for i in {*train, *sample}}
    out = np.zeros((len(test), len(train)))
    for _, cols in parameter_blocks(task, blocks):
        lam = damping or np.mean([np.mean(G[i][cols] ** 2) for i in sample]) / lambda_const
        for r, v in enumerate(V):
            for c, j in enumerate(train):
                total = v[cols] @ G[j][cols]
                for i in sample:
                    gi = G[i][cols]
                    total -= (v[cols] @ gi) * (gi @ G[j][cols]) / (lam + gi @ gi) / len(sample)
                out[r, c] += total / lam / n
    return out


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


CASES = {
    "mlp, modules": (lambda: mlp(5, 2, hidden=(7, 4), seed=1), None, {}),
    "mlp, tensors, λ given": (
        lambda: mlp(5, 2, hidden=(6,), seed=2),
        None,
        {"blocks": "tensor", "damping": 0.05},
    ),
    "first layer and a bias frozen": (
        lambda: mlp(5, 2, hidden=(7, 4), seed=3),
        ["2.weight", "4.*"],
        {"lambda_const": 0.5},
    ),
    "biases only, tensors": (
        lambda: mlp(5, 2, hidden=(7,), seed=4),
        ["*.bias"],
        {"blocks": "tensor"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hessian_samples", [None, 11])
def test_factors_equal_formed_gradients_and_the_plain_loop(case, hessian_samples):
    make_model, trainable, settings = CASES[case]
    task = make_task(make_model(), trainable=trainable)
    test, train = [0, 5, 2], [3, 39, 0, 17, 8]
    args = dict(hessian_samples=hessian_samples, hessian_seed=4, chunk_size=3, **settings)
    factors = datainf(task, test, train, ghost="always", **args)
    formed = datainf(task, test, train, ghost="never", **args)
    assert factors.settings["gradients"] == "ghost (layer factors)"
    assert formed.settings["gradients"] == "per-instance"
    sample = range(40) if hessian_samples is None else _sample(40, hessian_samples, 4)
    loop = loop_datainf(
        task,
        test,
        train,
        list(sample),
        settings.get("blocks", "module"),
        settings.get("lambda_const", 10.0),
        settings.get("damping"),
    )
    assert np.abs(loop).max() > 1e-4
    assert relative(factors.values, formed.values) < 1e-10
    assert relative(factors.values, loop) < 1e-10
    assert relative(formed.values, loop) < 1e-10
    lam_f, lam_g = factors.settings["layer_damping"], formed.settings["layer_damping"]
    assert lam_f.keys() == lam_g.keys()
    np.testing.assert_allclose(list(lam_f.values()), list(lam_g.values()), rtol=1e-12)


def _sample(n, m, seed):
    from fimo.methods.common import hessian_subset

    return hessian_subset(n, m, seed)


def test_mse_and_chunks_of_every_size_with_progress():
    """A regression MLP; the scored instances in chunks of 1, 4 and the budget's default give
    the same scores, and ``progress`` counts every scored instance once."""
    task = make_task(mlp(5, 1, hidden=(6, 3), seed=5), loss="mse")
    test, train = [1, 3], list(range(0, 40, 3))
    loop = loop_datainf(task, test, train, list(range(40)))
    for chunk in (1, 4, None):
        seen = []
        got = datainf(task, test, train, ghost="always", chunk_size=chunk, progress=seen.append)
        assert relative(got.values, loop) < 1e-10
        assert sum(seen) == len(train)


class Scaled(nn.Module):
    """An MLP whose output passes through a LayerNorm: a trainable parameter that is not a
    Linear layer's."""

    def __init__(self):
        super().__init__()
        self.body = mlp(5, 4, hidden=(6,), seed=6)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def test_a_layernorm_falls_back_and_always_names_it():
    task = make_task(Scaled())
    test, train = [0, 4], [1, 2, 30]
    auto = datainf(task, test, train, hessian_samples=5)
    assert auto.settings["gradients"] == "per-instance"
    loop = loop_datainf(task, test, train, list(_sample(40, 5, 0)))
    assert relative(auto.values, loop) < 1e-10
    with pytest.raises(InputError, match=r"norm\.weight.*LayerNorm"):
        datainf(task, test, train, ghost="always")
    # with the LayerNorm frozen every trainable parameter is a Linear layer's again
    frozen = Task(task.model, task.train, task.test, trainable=["body.*", "head.*"])
    again = datainf(frozen, test, train, ghost="always", hessian_samples=5)
    assert again.settings["gradients"] == "ghost (layer factors)"
    assert (
        relative(again.values, loop_datainf(frozen, test, train, list(_sample(40, 5, 0)))) < 1e-10
    )


def test_projection_takes_formed_gradients():
    task = make_task(mlp(5, 2, hidden=(7,), seed=7))
    auto = datainf(task, [0], [1, 2], proj_dim=4, ghost="auto")
    assert auto.settings["gradients"] == "per-instance" and auto.settings["projected_dim"] < 63
    # a proj_dim of at least every block's size projects nothing: the path of no projection
    whole = datainf(task, [0], [1, 2], proj_dim=task.num_params, ghost="auto")
    unprojected = datainf(task, [0], [1, 2])
    assert whole.settings["gradients"] == unprojected.settings["gradients"]
    assert np.array_equal(whole.values, unprojected.values)
    with pytest.raises(InputError, match="datainf ghost: 'always' works on unprojected"):
        datainf(task, [0], [1, 2], proj_dim=4, ghost="always")
    with pytest.raises(InputError, match="datainf ghost"):
        datainf(task, [0], [1, 2], ghost="sometimes")


def expected_path(k, m, n, widths, blocks, num_params):
    """The documented rule, written out: factors when m(k + n)W + knW + kmn·blocks ≤
    2(k + 1)(2m + n)P."""
    factors = m * (k + n) * widths + k * n * widths + k * m * n * blocks
    formed = 2 * (k + 1) * (2 * m + n) * num_params
    return "ghost (layer factors)" if factors <= formed else "per-instance"


def test_auto_switches_where_the_documented_rule_says():
    """MLP 5-8-2 (P = 66) in four blocks, one per tensor (W = (5 + 8) + 8 + (8 + 2) + 2 =
    33), k = 2 test and n = 40 scored instances: the factors win for few Hessian instances m
    and lose for many. Scanned over m, the rule switches once; ``"auto"`` takes the path it
    predicts on both sides of the switch, and the scores equal the plain loop there."""
    task = make_task(mlp(5, 2, hidden=(8,), seed=8))
    assert task.num_params == 66
    expected = [expected_path(2, m, 40, 33, 4, 66) for m in range(1, 41)]
    switch = expected.index("per-instance") + 1  # the first m that takes formed gradients
    assert 1 < switch < 40 and set(expected[switch - 1 :]) == {"per-instance"}
    test, train = [0, 3], list(range(40))
    for m in (switch - 1, switch):
        got = datainf(task, test, train, blocks="tensor", hessian_samples=m, hessian_seed=1)
        assert got.settings["gradients"] == expected[m - 1]
        loop = loop_datainf(task, test, train, list(_sample(40, m, 1)), "tensor")
        assert relative(got.values, loop) < 1e-10


def test_factors_that_do_not_fit_stream_formed_gradients_or_are_refused(monkeypatch):
    """What the factor path holds (held_bytes: (k + m)·W factors and per block k·m weights
    and m norms) is checked against the memory that may be held: above it ``"auto"`` takes
    the formed gradients, which stream the Hessian sample, and ``"always"`` says why not."""
    from fimo.methods import datainf_factors

    task = make_task(mlp(5, 2, hidden=(8,), seed=8))  # W = (5 + 8) + (8 + 2) in 2 blocks
    test, train, m = [0, 3], list(range(40)), 6
    need = 8 * ((2 + m) * 23 + 2 * (2 * m + m))  # float64
    loop = loop_datainf(task, test, train, list(_sample(40, m, 1)))
    for room, path in ((need, "ghost (layer factors)"), (need - 1, "per-instance")):
        monkeypatch.setattr(datainf_factors, "holding_budget", lambda room=room: room)
        got = datainf(task, test, train, hessian_samples=m, hessian_seed=1)
        assert got.settings["gradients"] == path
        assert relative(got.values, loop) < 1e-10
    with pytest.raises(InputError, match=r"2 test and 6 Hessian .*lower hessian_samples"):
        datainf(task, test, train, hessian_samples=m, hessian_seed=1, ghost="always")
