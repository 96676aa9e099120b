"""TRAK (M = 1) against dense Gauss-Newton influence, TRAK's own formula, JL accuracy and signs."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods.gradients import flatten, gradient_matrix
from fimo.methods.trak import Projector, trak
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def linear_task(d_out, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=DT)
    Y = torch.randn(n, d_out, generator=g, dtype=DT).squeeze(-1)
    torch.manual_seed(seed)
    return Task(
        nn.Linear(5, d_out).to(DT), ArrayDataset(X, Y), ArrayDataset(X[:6] + 0.1, Y[:6]), loss="mse"
    )


def gn_influence(task, test, train):
    """(1/n)∇gᵀ G⁻¹∇ℓ_i with the dense G = (2/n) Σ J_iᵀJ_i (fimo's mse has H_ℓ = 2I)."""

    def f(p, x):
        return task.outputs(p, x[None])[0].reshape(-1)

    J = flatten(vmap(jacrev(f), in_dims=(None, 0))(task.params(), task.train.inputs), batch_dims=2)
    n = len(J)
    G = 2 * torch.einsum("nop,noq->pq", J, J) / n
    gt = gradient_matrix(task, task.test, test, measure=True)
    gi = gradient_matrix(task, task.train, train)
    return (gt @ torch.linalg.solve(G, gi.T) / n).numpy()


def trained_mlp(n=200, loss="cross_entropy", hidden=(8,), d_in=5, steps=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + 20, d_in, generator=g, dtype=DT)
    if loss == "mse":
        Y = torch.sin(X[:, 0]) + X[:, 1] ** 2
    else:
        Y = (X[:, 0] + X[:, 1] ** 2 > 0.5).long()
    Xtr, Ytr = X[:n], Y[:n]
    model = mlp(d_in, 1 if loss == "mse" else 2, hidden=hidden, seed=1).to(DT)
    task = Task(model, ArrayDataset(Xtr, Ytr), ArrayDataset(X[n:], Y[n:]), loss=loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss_fn(model(Xtr), Ytr).mean().backward()
        opt.step()
    return task


@pytest.mark.parametrize("d_out", [1, 3])
@pytest.mark.parametrize("proj_dim", [None, "P", 64])
def test_linear_least_squares_equals_dense_gauss_newton(d_out, proj_dim):
    # k ≥ P and λ = 0 with a nonsingular GN: the projection cancels exactly (P has full rank).
    # k = P takes the primal path (k × k kernel), k = 64 ≥ n·d_out the dual one (SVD of Φ).
    task = linear_task(d_out)
    k = task.num_params if proj_dim == "P" else proj_dim
    for kind in ("rademacher", "gaussian"):
        s = trak(task, range(6), range(40), proj_dim=k, projection=kind)
        ref = gn_influence(task, range(6), range(40))
        np.testing.assert_allclose(s.values, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
        # for k > P the projected kernel has rank P and is pseudo-inverted (still exact)
        assert s.settings["kernel_rank"] == task.num_params
        assert s.settings["kernel_curvature"] == 2.0


def test_classification_is_traks_formula_times_test_out_to_loss():
    # TRAK: τ_i = φ_tᵀ(ΦᵀΦ)⁻¹φ_i (1 − p_i), φ = Pᵀ∇(margin); fimo's row t is (1 − p_t)·τ
    task = trained_mlp(n=120, hidden=(6,), steps=50)
    k = 24
    s = trak(task, range(5), range(120), proj_dim=k, seed=3)
    P = Projector(task.num_params, k, seed=3, dtype=DT).matrix

    def margin(p, x, y):
        logits = task.outputs(p, x[None])[0]
        return (logits * torch.tensor([-1.0, 1.0], dtype=DT)).sum() * (2 * y - 1)

    def features(data):
        grads = vmap(jacrev(margin), in_dims=(None, 0, 0))(task.params(), data.inputs, data.targets)
        return flatten(grads) @ P

    def one_minus_p(data):
        probs = torch.softmax(task.outputs(task.params(), data.inputs), -1)
        return 1 - probs.gather(1, data.targets[:, None])[:, 0]

    phi, phi_t = features(task.train), features(task.test[range(5)])
    tau = phi_t @ torch.linalg.solve(phi.T @ phi, phi.T) * one_minus_p(task.train)
    want = one_minus_p(task.test[range(5)])[:, None] * tau
    np.testing.assert_allclose(s.values, want.detach().numpy(), rtol=1e-8)
    assert s.settings["output_function"] == "margin" and s.settings["kernel_rank"] == k


def test_projection_is_a_johnson_lindenstrauss_approximation():
    # MLP with P = 1410 parameters and n = 300 < P (the λ = 0 kernel is singular, rank 300,
    # so even k ≥ P is not exact: PPᵀ ≠ I on the span of the gradients). Measured correlation
    # of all scores with the unprojected ones: k = 512 → 0.80, k = 4096 → 0.982.
    task = trained_mlp(n=300, hidden=(32, 32), d_in=8, steps=150)
    assert task.num_params == 1410
    exact = trak(task, range(20), range(300), proj_dim=None)
    assert exact.settings["kernel_rank"] == 300 and exact.settings["pseudo_inverse"]
    corr = {}
    for k in (512, 4096):
        s = trak(task, range(20), range(300), proj_dim=k)
        corr[k] = np.corrcoef(s.values.ravel(), exact.values.ravel())[0, 1]
    assert corr[4096] > 0.95 and corr[512] < corr[4096]


def test_deterministic_given_seed_and_blockwise_projection_is_the_same_matrix():
    task = trained_mlp(n=60, steps=30)
    a = trak(task, [0, 1], range(60), proj_dim=16, seed=7)
    b = trak(task, [0, 1], range(60), proj_dim=16, seed=7, chunk_size=7)
    c = trak(task, [0, 1], range(60), proj_dim=16, seed=8)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-10)
    assert not np.allclose(a.values, c.values)
    held = Projector(1000, 32, seed=1, kind="gaussian", dtype=DT)
    streamed = Projector(1000, 32, seed=1, kind="gaussian", dtype=DT, budget=0)
    assert streamed.matrix is None and held.matrix is not None
    G = torch.randn(3, 1000, dtype=DT)
    torch.testing.assert_close(streamed.project(G), held.project(G), rtol=1e-12, atol=1e-12)
    assert abs(float(held.matrix.pow(2).sum()) / 1000 - 1) < 0.05  # columns scaled by 1/√k


def test_damping_singular_kernel_and_bad_settings():
    task = trained_mlp(n=30, steps=20)
    s = trak(task, [0], range(30), proj_dim=64)  # N = 30 < k: rank 30, pseudo-inverse
    assert s.settings["pseudo_inverse"] and s.settings["kernel_rank"] == 30
    d = trak(task, [0], range(30), proj_dim=64, damping=1e-3)
    assert d.settings["kernel_rank"] == 64 and np.isfinite(d.values).all()
    calls = []
    trak(task, [0], range(30), proj_dim=8, progress=calls.append)
    assert sum(calls) == 30
    with pytest.raises(InputError, match="proj_dim"):
        trak(task, [0], [0], proj_dim=0)
    with pytest.raises(InputError, match="projection"):
        trak(task, [0], [0], projection="sparse")


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
    # measured rank of the duplicate among 40: 1 (classification), 1 (regression)
    row = trak(duplicate_task(loss), [2], range(40), proj_dim=64).values[0]
    assert row[0] > 0
    assert (row > row[0]).sum() < 5  # among the most helpful
    assert (row < 0).any()  # the sign is informative: other instances are harmful
