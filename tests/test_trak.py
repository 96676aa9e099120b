"""TRAK (M = 1) against dense Gauss-Newton influence, TRAK's own formula, JL accuracy and signs."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.methods.gradients import flatten, gradient_matrix
from fimo.methods.projection import Projector
from fimo.methods.trak import trak
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


# -- float64 kernel on an ill-conditioned problem, and a dtype-independent projection ----------
def ill_conditioned_task(n, d=400, condition=5e4, seed=0):
    """float32 least squares, no bias, zero weights, targets ±1: features exact in float32.

    X = U diag(s) Vᵀ with s log-spaced so that K = (2/n) XᵀX has condition number ``condition``
    (to float32 rounding of X). With zero weights the residuals are −y, so every gradient
    2(f − y)x = −2y·x is exact in float32 and the only rounding left is the kernel's and the
    solve's: a float64 formula can be matched to near float64 accuracy.
    """
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    s = torch.logspace(0, -0.5 * np.log10(condition), d, dtype=DT)
    X = ((U * s) @ V.T * 10).float()
    Xt = (torch.randn(20, d, generator=g, dtype=DT) * 10 / np.sqrt(n)).float()
    y = (torch.randint(0, 2, (n + 20,), generator=g) * 2 - 1).float()
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return Task(model, ArrayDataset(X, y[:n]), ArrayDataset(Xt, y[n:]), loss="mse")


@pytest.mark.parametrize("n", [800, 400])  # primal (k × k kernel) and dual (SVD of Φ, n = k)
def test_ill_conditioned_full_rank_kernel_is_inverted_in_float64(n):
    task = ill_conditioned_task(n)
    d = task.num_params
    X = task.train.inputs.double().numpy()
    Xt = task.test.inputs.double().numpy()
    y, yt = task.train.targets.double().numpy(), task.test.targets.double().numpy()
    K = 2 * X.T @ X / n  # fimo's mse has loss curvature 2 in f-space
    eig = np.linalg.eigvalsh(K)
    condition = eig.max() / eig.min()
    assert 1e4 < condition < 1e5  # well-posed, moderately ill-conditioned
    # the former float32 rule, cut-off k·eps32·max, would drop the weakest directions
    dropped32 = int((eig <= d * np.finfo(np.float32).eps * eig.max()).sum())
    assert dropped32 > 10
    G, Gt = -2 * y[:, None] * X, -2 * yt[:, None] * Xt  # exact gradients (f = 0)
    want = Gt @ np.linalg.solve(K, G.T) / n

    s = trak(task, range(20), range(n), proj_dim=None)
    assert s.settings["kernel_rank"] == d and not s.settings["pseudo_inverse"]
    assert s.settings["kernel_dtype"] == "float64"
    np.testing.assert_allclose(s.settings["kernel_condition"], condition, rtol=1e-6)
    err = np.linalg.norm(s.values - want) / np.linalg.norm(want)
    assert err < 1e-9, err

    # the same formula with a float32 kernel (the former implementation) misses by far more
    K32 = torch.tensor(K, dtype=torch.float32)
    w, B = torch.linalg.eigh(K32)
    keep = w > d * torch.finfo(torch.float32).eps * w.max()
    assert int(keep.sum()) < d
    Gt32, G32 = torch.tensor(Gt, dtype=torch.float32), torch.tensor(G, dtype=torch.float32)
    old = ((Gt32 @ B[:, keep] / w[keep]) @ B[:, keep].T @ G32.T / n).double().numpy()
    assert np.linalg.norm(old - want) / np.linalg.norm(want) > 1e4 * err


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_matrix_depends_on_seed_size_and_k_only(kind, monkeypatch):
    import fimo.methods.projection as projection_module

    # small blocks, so that the 1000 rows span many of them (32 rows each at k = 32)
    monkeypatch.setattr(projection_module, "BLOCK_BUDGET", 4096)
    P, k = 1000, 32
    m32 = Projector(P, k, seed=5, kind=kind, dtype=torch.float32)
    m64 = Projector(P, k, seed=5, kind=kind, dtype=DT)
    assert m32.rows == m64.rows == 32 and m32.num_blocks == 32
    a, b = m32.matrix, m64.matrix
    assert a.dtype == torch.float32 and b.dtype == DT
    # float64 equals float32 up to float32 rounding, block by block: the same draws, scaled
    # by 1/√k in each dtype (two roundings in float32, of 1/√k and of the product: ≤ 2·2⁻²⁴)
    rel_diff = (b - a.double()).abs() / b.abs()
    assert float(rel_diff.max()) <= 2 * 2**-24
    assert float(rel_diff.max()) > 0 or kind == "rademacher"
    if kind == "rademacher":
        assert set(np.unique(b.numpy() * np.sqrt(k)).round(12)) == {-1.0, 1.0}
    else:
        assert not torch.equal(b, b.float().double())  # a genuine float64 matrix
    assert abs(float(b.pow(2).sum()) / P - 1) < 0.05  # columns of length ≈ 1
    # held in memory and regenerated block by block: the same matrix, in both dtypes
    G = torch.randn(3, P, generator=torch.Generator().manual_seed(0), dtype=DT)
    for held, dt in ((m32, torch.float32), (m64, DT)):
        streamed = Projector(P, k, seed=5, kind=kind, dtype=dt, budget=0)
        assert streamed.matrix is None
        Gd = G.to(dt)
        torch.testing.assert_close(streamed.project(Gd), Gd @ held.matrix, rtol=1e-5, atol=1e-5)
        blocks = torch.cat([streamed.block(i) for i in range(streamed.num_blocks)])
        assert torch.equal(blocks, held.matrix)
    # another seed is another matrix
    other = Projector(P, k, seed=6, kind=kind, dtype=DT).matrix
    assert float((other - b).abs().max()) > 0.1


def test_float32_features_of_a_singular_kernel_keep_exactly_its_rank():
    # float32 least squares whose inputs span r = 30 of d = 3000 dimensions, projected to
    # k = 64 (a power of 4: the Rademacher entries ±1/8 are exact), n = 400 > k (primal path).
    # Rounding the float32 features gives the 34 null directions eigenvalues of about
    # 2e-14 · max (measured); a float64 cut-off k·eps64 = 1.4e-14 kept 13 of them.
    d, r, k, n = 3000, 30, 64, 400
    g = torch.Generator().manual_seed(0)
    B = torch.randn(r, d, generator=g)
    X = torch.randn(n + 5, r, generator=g) @ B / np.sqrt(r)
    y = (torch.randint(0, 2, (n + 5,), generator=g) * 2 - 1).float()
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    task = Task(model, ArrayDataset(X[:n], y[:n]), ArrayDataset(X[n:], y[n:]), loss="mse")
    s = trak(task, range(5), range(n), proj_dim=k, seed=2)
    assert s.settings["kernel_rank"] == r and s.settings["pseudo_inverse"]
    # TRAK in float64 numpy from the exact features: Φ = X·P (P the same matrix in float64)
    P = Projector(d, k, seed=2, dtype=DT).matrix.numpy()
    assert np.array_equal(P, Projector(d, k, seed=2).matrix.double().numpy())
    Xd = X.double().numpy()
    phi, phi_t = Xd[:n] @ P, Xd[n:] @ P
    K = 2 * phi.T @ phi / n
    yd = y.double().numpy()
    G, Gt = -2 * yd[:n, None] * phi, -2 * yd[n:, None] * phi_t  # f = 0: residual −y
    want = Gt @ np.linalg.pinv(K, rcond=1e-10, hermitian=True) @ G.T / n
    assert np.linalg.matrix_rank(K, tol=1e-10 * np.abs(K).max()) == r
    np.testing.assert_allclose(s.values, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("proj_dim", [16, 256])  # primal (m·d_f > k) and dual (m·d_f ≤ k)
def test_hessian_samples_fit_the_kernel_on_exactly_that_subset(proj_dim):
    from fimo.methods.common import hessian_subset

    task = trained_mlp(n=60, steps=60)
    n, m, seed = 60, 25, 3
    full = trak(task, range(6), range(n), proj_dim=proj_dim, damping=1e-3)
    same = trak(task, range(6), range(n), proj_dim=proj_dim, damping=1e-3, hessian_samples=n)
    np.testing.assert_array_equal(same.values, full.values)
    part = trak(
        task,
        range(6),
        range(n),
        proj_dim=proj_dim,
        damping=1e-3,
        hessian_samples=m,
        hessian_seed=seed,
        chunk_size=7,
    )
    rows = hessian_subset(n, m, seed)
    # the same method on a task whose training set is the subset: its kernel is the subset's
    sub = Task(task.model, task.train[rows], task.test, loss=task.loss_name)
    ref = trak(sub, range(6), range(m), proj_dim=proj_dim, damping=1e-3)
    np.testing.assert_allclose(part.values[:, rows] * n, ref.values * m, rtol=1e-9, atol=1e-12)
    assert np.abs(part.values - full.values).max() > 1e-3 * np.abs(full.values).max()
    assert part.settings["n_kernel"] == m and part.settings["hessian_samples"] == m
    assert f"subset of {m} of the {n}" in part.settings["hessian_data"]
    # scored instances outside the sample get features too: train only those
    outside = np.setdiff1d(np.arange(n), rows)[:5]
    only = trak(
        task,
        range(6),
        outside,
        proj_dim=proj_dim,
        damping=1e-3,
        hessian_samples=m,
        hessian_seed=seed,
    )
    np.testing.assert_allclose(only.values, part.values[:, outside], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_rademacher_blocks_are_the_int64_draws_of_the_seeded_generator(dtype):
    # the matrix for a seed must not change when its drawing is made faster: each block is
    # the generator seeded by SeedSequence([seed, block]) drawing int64 {0, 1} → ±1 / √k
    proj = Projector(70_000, 64, seed=9, dtype=dtype, budget=0)
    assert proj.num_blocks == 2  # 65,536 rows per block at k = 64
    for b in range(proj.num_blocks):
        state = np.random.SeedSequence([9, b]).generate_state(2)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        rows = min(proj.rows, 70_000 - b * proj.rows)
        signs = torch.randint(0, 2, (rows, 64), generator=gen).double() * 2 - 1
        expected = (signs.to(torch.float32).to(dtype) / 8.0).double()
        assert torch.equal(proj.block(b).double(), expected)


def test_dense_trak_scores_are_the_same_with_p_held_or_regenerated(monkeypatch):
    import fimo.methods.projection as projection_module

    task = trained_mlp(n=80, steps=30)
    held = trak(task, [0, 1, 2], range(80), proj_dim=24, seed=4, chunk_size=9)
    assert Projector(task.num_params, 24, seed=4, dtype=DT).matrix is not None
    # nothing may be held: every chunk of instances regenerates P block by block
    monkeypatch.setattr(projection_module, "holding_budget", lambda: 0)
    streamed_proj = Projector(task.num_params, 24, seed=4, dtype=DT)
    assert streamed_proj.matrix is None
    streamed = trak(task, [0, 1, 2], range(80), proj_dim=24, seed=4, chunk_size=9)
    np.testing.assert_allclose(streamed.values, held.values, rtol=1e-9, atol=1e-12)
    # and both are TRAK's formula with that matrix, φ_tᵀ(ΦᵀΦ)⁻¹φ_i (1 − p_i)(1 − p_t)
    P = torch.cat([streamed_proj.block(b) for b in range(streamed_proj.num_blocks)])
    x, y = task.train.inputs, task.train.targets

    def margin(params, xi, yi):
        logits = task.outputs(params, xi[None])[0]
        return (logits[1] - logits[0]) * (2 * yi - 1)  # two classes: log(p_y / (1 − p_y))

    grads = vmap(torch.func.grad(margin), in_dims=(None, 0, 0))
    phi = flatten(grads(task.params(), x, y)) @ P
    xt, yt = task.test.inputs[:3], task.test.targets[:3]
    phi_t = flatten(grads(task.params(), xt, yt)) @ P
    with torch.no_grad():
        q = 1 - torch.softmax(task.model(x), -1)[torch.arange(80), y]
        q_t = 1 - torch.softmax(task.model(xt), -1)[torch.arange(3), yt]
    tau = phi_t @ torch.linalg.solve(phi.T @ phi, phi.T) * q[None] * q_t[:, None]
    np.testing.assert_allclose(held.values, tau.numpy(), rtol=1e-6, atol=1e-10)


def test_holding_budget_is_half_the_room_left_and_never_below_the_default(monkeypatch):
    import fimo.methods.projection as projection_module
    from fimo.methods.gradients import DEFAULT_BUDGET

    inf = projection_module.resource.RLIM_INFINITY
    monkeypatch.setattr(projection_module, "available_memory", lambda: 10 * 2**30)
    monkeypatch.setattr(projection_module.resource, "getrlimit", lambda which: (inf, inf))
    assert projection_module.holding_budget() == 5 * 2**30
    monkeypatch.setattr(projection_module.resource, "getrlimit", lambda which: (6 * 2**30, inf))
    assert projection_module.holding_budget() == 3 * 2**30  # the address-space limit's half
    monkeypatch.setattr(projection_module, "available_memory", lambda: None)
    assert projection_module.holding_budget() == 3 * 2**30
    monkeypatch.setattr(projection_module.resource, "getrlimit", lambda which: (inf, inf))
    assert projection_module.holding_budget() == DEFAULT_BUDGET  # nothing known: as before
    monkeypatch.setattr(projection_module, "available_memory", lambda: 2**20)
    assert projection_module.holding_budget() == DEFAULT_BUDGET
