"""EK-FAC against dense Gauss-Newton influence, explicit Kronecker factors and a sign case."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods.ekfac import ekfac, fit_ekfac
from fimo.methods.gradients import flatten, gradient_matrix
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def jacobians(task, inputs):
    """Per-instance output Jacobians (n, d_o, P) in the flattened parameter layout."""

    def f(p, x):
        return task.outputs(p, x[None])[0].reshape(-1)

    return flatten(vmap(jacrev(f), in_dims=(None, 0))(task.params(), inputs), batch_dims=2)


def loss_hessians(task, inputs):
    out = task.outputs(task.params(), inputs).detach()
    if task.loss_name == "mse":
        return 2 * torch.eye(out.shape[1], dtype=DT).expand(len(out), -1, -1)
    p = torch.softmax(out, -1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def dense_gn(task):
    """(1/n) Σ_i J_iᵀ H_ℓ(z_i) J_i over all training instances."""
    J = jacobians(task, task.train.inputs)
    H = loss_hessians(task, task.train.inputs)
    return torch.einsum("nop,nor,nrq->pq", J, H, J) / len(J)


def influence(task, hessian, lam, test, train):
    gt = gradient_matrix(task, task.test, test, measure=True)
    gi = gradient_matrix(task, task.train, train)
    eye = torch.eye(len(hessian), dtype=DT)
    return (gt @ torch.linalg.solve(hessian + lam * eye, gi.T) / len(task.train)).numpy()


def linear_task(d_out, loss, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.randn(n, d_out, generator=g, dtype=DT).squeeze(-1)
    else:
        Y = torch.randint(0, d_out, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(5, d_out).to(DT)
    return Task(model, ArrayDataset(X, Y), ArrayDataset(X[:6] + 0.1, Y[:6]), loss=loss)


def mlp_task(n=60, k=3, loss="cross_entropy", hidden=(7,), seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + 5, 4, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        Y = (X[:, 0] + X[:, 1] ** 2 > 0.5).long() + (X[:, 2] > 1).long() * (k > 2)
    model = mlp(4, k if loss != "mse" else 1, hidden=hidden, seed=1).to(DT)
    return Task(model, ArrayDataset(X[:n], Y[:n]), ArrayDataset(X[n:], Y[n:]), loss=loss)


@pytest.mark.parametrize("d_out", [1, 3])
def test_linear_least_squares_equals_dense_gauss_newton(d_out):
    # GN = 2·E[x̃x̃ᵀ] ⊗ I is an exact Kronecker product for a linear model with squared error,
    # for any number of outputs (the output-space Hessian is the constant 2I).
    task = linear_task(d_out, "mse")
    s = ekfac(task, range(6), range(40), damping=0.01)
    ref = influence(task, dense_gn(task), 0.01, range(6), range(40))
    np.testing.assert_allclose(s.values, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    assert s.settings["damping"] == 0.01 and s.settings["sampling"] == "exact"


def test_linear_softmax_is_not_exact():
    # with cross-entropy the loss Hessian diag(p) − ppᵀ varies with x, so GN is a sum of
    # Kronecker products, not one: EK-FAC only matches it in the eigenbasis diagonal
    task = linear_task(3, "cross_entropy")
    s = ekfac(task, range(6), range(40), damping=0.01)
    ref = influence(task, dense_gn(task), 0.01, range(6), range(40))
    rel = np.abs(s.values - ref).max() / np.abs(ref).max()
    assert 1e-3 < rel < 0.5
    assert np.corrcoef(s.values.ravel(), ref.ravel())[0, 1] > 0.95


def explicit_factors(task):
    """A and S of both layers of Linear-ReLU-Linear, by hand."""
    W0, b0, W2 = task.model[0].weight, task.model[0].bias, task.model[2].weight
    X = task.train.inputs
    n = len(X)
    pre = X @ W0.T + b0
    hidden = torch.relu(pre)
    H = loss_hessians(task, X)  # Σ_c u_c u_cᵀ
    ones = torch.ones(n, 1, dtype=DT)
    a0, a2 = torch.cat([X, ones], 1), torch.cat([hidden, ones], 1)
    back = (pre > 0).to(DT)[:, :, None] * W2.T[None]  # ∂(output)/∂(pre-activation 0)ᵀ
    S0 = torch.einsum("nho,nor,nkr->hk", back, H, back) / n
    return {"0": (a0.T @ a0 / n, S0), "2": (a2.T @ a2 / n, H.mean(0))}


def test_factors_are_explicit_averages_and_eigenvalues_match_gauss_newton_diagonal():
    task = mlp_task()
    with torch.no_grad():
        layers, mode = fit_ekfac(task, chunk_size=17)
    assert mode == "exact" and [layer.name for layer in layers] == ["0", "2"]
    want = explicit_factors(task)
    gn = dense_gn(task)
    P = gn.shape[0]
    for layer in layers:
        A, S = want[layer.name]
        torch.testing.assert_close(layer.A, A, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.S, S, rtol=1e-12, atol=1e-12)
        select = layer.gather(torch.eye(P, dtype=DT)).reshape(P, -1).T  # (block, P)
        block = select @ gn @ select.T
        basis = torch.kron(layer.QS, layer.QA)
        # the eigenvalue correction: same diagonal as the exact GN block in the K-FAC eigenbasis
        torch.testing.assert_close(
            torch.diagonal(basis.T @ block @ basis), layer.eigen.reshape(-1), rtol=1e-10, atol=1e-13
        )
        # ... but not the same matrix (the off-diagonal part is dropped)
        assert (layer.hessian() - block).abs().max() > 1e-4 * block.abs().max()


def test_scores_equal_materialised_block_diagonal_inverse():
    task = mlp_task()
    s = ekfac(task, range(5), range(60), damping_factor=10.0, chunk_size=13)
    layers, _ = fit_ekfac(task)
    P = task.num_params
    h = torch.zeros(P, P, dtype=DT)
    for layer in layers:
        select = layer.gather(torch.eye(P, dtype=DT)).reshape(P, -1).T
        h += select.T @ layer.hessian() @ select
    ref = influence(task, h, s.settings["damping"], range(5), range(60))
    np.testing.assert_allclose(s.values, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    assert s.settings["damping_factor"] == 10.0 and s.settings["layers"] == ["0", "2"]
    assert s.units and s.values.shape == (5, 60)


def test_sampled_fisher_is_deterministic_and_close_to_exact():
    task = mlp_task(n=1500, k=3)
    exact, _ = fit_ekfac(task, sampling="exact")
    a, mode = fit_ekfac(task, sampling="sample", seed=3)
    b, _ = fit_ekfac(task, sampling="sample", seed=3)
    c, _ = fit_ekfac(task, sampling="sample", seed=4)
    assert mode == "sample"
    for la, lb, lc, le in zip(a, b, c, exact, strict=True):
        assert torch.equal(la.eigen, lb.eigen)
        assert not torch.equal(la.eigen, lc.eigen)
        torch.testing.assert_close(la.A, le.A)  # inputs do not depend on the labels
        assert (la.S - le.S).norm() / le.S.norm() < 0.1


def duplicate_task(loss, n=40, steps=150):
    """Test instance 2 copied into training slot 0, an 8-8 MLP trained briefly (Adam).

    Classification labels are noisy so that the model cannot memorise them (a memorised
    duplicate has a vanishing gradient, and every method scores it ≈ 0).
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + 10, 5, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        Y = (X[:, 0] + X[:, 1] ** 2 + torch.randn(n + 10, generator=g, dtype=DT) > 0.5).long()
    Xtr, Ytr = X[:n].clone(), Y[:n].clone()
    Xtr[0], Ytr[0] = X[n + 2], Y[n + 2]
    model = mlp(5, 1 if loss == "mse" else 2, hidden=(8, 8), seed=1).to(DT)
    task = Task(model, ArrayDataset(Xtr, Ytr), ArrayDataset(X[n:], Y[n:]), loss=loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(Xtr), Ytr).mean().backward()
        opt.step()
    return task


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_duplicate_of_test_instance_is_helpful(loss):
    # measured rank of the duplicate among 40: 2 (classification), 1 (regression)
    row = ekfac(duplicate_task(loss), [2], range(40)).values[0]
    assert row[0] > 0
    assert (row > row[0]).sum() < 5  # among the most helpful
    assert (row < 0).any()  # the sign is informative: other instances are harmful


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
        self.head = nn.Linear(3 * 3 * 3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


class TokenwiseLinear(nn.Module):
    """A Linear applied at 5 positions (as in a sequence model), then a head."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(4, 3)
        self.head = nn.Linear(15, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.tok(x)).flatten(1))


@pytest.mark.parametrize("model", [SmallCNN, TokenwiseLinear])
def test_layers_with_several_positions_match_gauss_newton_diagonal(model):
    # per-instance layer gradients are sums over positions, Σ_t δ_t ã_tᵀ (unfolded patches
    # for the convolution); the eigenvalue correction still makes the diagonal exact
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shape = (2, 5, 5) if model is SmallCNN else (5, 4)
    X = torch.randn(30, *shape, generator=g, dtype=DT)
    Y = (X.flatten(1)[:, :5].mean(1) > 0).long()
    task = Task(model().to(DT), ArrayDataset(X[:25], Y[:25]), ArrayDataset(X[25:], Y[25:]))
    layers, _ = fit_ekfac(task, chunk_size=7)
    gn = dense_gn(task)
    P = gn.shape[0]
    for layer in layers:
        select = layer.gather(torch.eye(P, dtype=DT)).reshape(P, -1).T
        basis = torch.kron(layer.QS, layer.QA)
        torch.testing.assert_close(
            torch.diagonal(basis.T @ (select @ gn @ select.T) @ basis),
            layer.eigen.reshape(-1),
            rtol=1e-10,
            atol=1e-13,
        )
    assert ekfac(task, [0], range(25)).values.shape == (1, 25)


def test_unsupported_trainable_layer_is_an_input_error_but_frozen_is_fine():
    X = torch.randn(20, 4, dtype=DT)
    Y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 2)).to(DT)
    data = ArrayDataset(X, Y)
    with pytest.raises(InputError, match="LayerNorm"):
        ekfac(Task(model, data, data), [0], [0, 1])
    frozen = Task(model, data, data, trainable=["0.weight", "3.weight", "3.bias"])
    calls = []
    s = ekfac(frozen, [0, 1], range(20), progress=calls.append, chunk_size=8)
    assert s.values.shape == (2, 20) and sum(calls) == 20
    assert s.settings["layers"] == ["0", "3"]


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_cross_entropy_output_factors_are_rank_c_minus_one_and_exact(classes):
    """C − 1 vectors u with Σ u uᵀ = diag(p) − ppᵀ, the Hessian of cross-entropy in the
    logits (checked against torch's own Hessian)."""
    from torch.func import hessian

    from fimo.methods.ekfac import _output_vectors

    torch.manual_seed(classes)
    out = torch.randn(5, classes, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (5,))
    data = ArrayDataset(torch.randn(5, 3, dtype=torch.float64), y)
    task = Task(nn.Linear(3, classes).double(), data, data)
    u = _output_vectors(task, out, y, "exact", None)
    assert u.shape == (classes - 1, 5, classes)
    moments = torch.einsum("cbo,cbp->bop", u, u)
    for b in range(5):
        label = y[b : b + 1]
        h = hessian(lambda o, t=label: nn.functional.cross_entropy(o[None], t))(out[b])
        assert torch.allclose(moments[b], h, atol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_hessian_samples_fit_the_factors_on_exactly_that_subset(loss):
    from fimo.methods.common import hessian_subset

    task = mlp_task(n=60, loss=loss)
    n, m, seed = 60, 24, 5
    full = ekfac(task, range(5), range(n), damping=1e-2)
    same = ekfac(task, range(5), range(n), damping=1e-2, hessian_samples=n)
    np.testing.assert_array_equal(same.values, full.values)
    part = ekfac(task, range(5), range(n), hessian_samples=m, hessian_seed=seed, chunk_size=7)
    rows = hessian_subset(n, m, seed)
    sub = Task(task.model, task.train[rows], task.test, loss=task.loss_name)
    ref = ekfac(sub, range(5), range(m))  # factors and the damping base from the subset alone
    assert part.settings["damping"] == pytest.approx(ref.settings["damping"], rel=1e-12)
    np.testing.assert_allclose(part.values[:, rows] * n, ref.values * m, rtol=1e-9, atol=1e-12)
    assert part.settings["n_hessian"] == m and part.settings["hessian_seed"] == seed
    other = ekfac(task, range(5), range(n), damping=1e-2, hessian_samples=m)
    assert np.abs(other.values - full.values).max() > 1e-3 * np.abs(full.values).max()
