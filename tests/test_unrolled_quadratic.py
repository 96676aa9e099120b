"""``unrolled_quadratic`` against closed forms, plain gradient descent and fimo's own SGD.

Independent sides: the closed form H⁻¹(I − (I − ηH)^T) with torch.linalg (matrix powers and
solves), gradient descent written out in plain torch on a flat parameter vector, fimo's
``further.optim.sgd`` (itself tested step for step against torch.optim), Jacobians and
Hessians from ``torch.autograd.functional``.
"""

import doctest
import math

import numpy as np
import pytest
import torch
from torch import nn

import fimo.methods.unrolled_quadratic as uq_module
from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.further.engine import FurtherSettings
from fimo.further.optim import sgd
from fimo.methods import get_method, grad_dot
from fimo.methods.common import hessian_subset
from fimo.methods.influence import explicit
from fimo.methods.unrolled_quadratic import (
    dense_apply,
    horizon_filter,
    lanczos_apply,
    series_apply,
    unrolled_quadratic,
)
from fimo.task import Task
from test_influence import DT, N_TEST, N_TRAIN, logistic_task, make_data

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def closed_form(H, V, T, lr):
    """H⁻¹(I − (I − ηH)^T) Vᵀ as rows, by a matrix power and a solve."""
    eye = torch.eye(len(H), dtype=torch.float64)
    return torch.linalg.solve(H, (eye - torch.linalg.matrix_power(eye - lr * H, T)) @ V.T).T


def power_series(H, V, T, lr):
    """η Σ_{t<T} (I − ηH)^t Vᵀ as rows, term by term (valid for a singular H too)."""
    term, total = V.T.clone(), torch.zeros_like(V.T)
    for _ in range(T):
        total += lr * term
        term = term - lr * H @ term
    return total.T


def random_spd(P, seed, low=0.05, high=3.0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    vals = torch.linspace(low, high, P, dtype=torch.float64)
    return (U * vals) @ U.T


# -- the scalar filter ----------------------------------------------------------------------------
def test_horizon_filter_is_the_closed_form_without_momentum():
    h = np.array([-0.3, 0.0, 1e-9, 0.01, 0.5, 1.0, 1.9, 2.5])
    steps = [0, 1, 2, 7, 100, 1000]
    lr = 0.8
    got = horizon_filter(h, steps, lr)
    for k, T in enumerate(steps):
        for m, hm in enumerate(h):
            series = math.fsum(lr * (1 - lr * hm) ** t for t in range(T))  # η Σ (1 − ηh)^t
            assert got[k, m] == pytest.approx(series, rel=1e-9, abs=1e-12), (T, hm)
            if abs(hm) > 1e-3:  # the closed form, where it is well conditioned
                closed = (1 - (1 - lr * hm) ** T) / hm
                assert got[k, m] == pytest.approx(closed, rel=1e-9, abs=1e-12), (T, hm)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_filter_equals_fimos_sgd_on_a_quadratic(nesterov):
    """T steps of fimo's sgd(momentum) from x = 0 on ½xᵀAx + bᵀx end at −U F_T(Λ) Uᵀ b."""
    P, lr, beta = 12, 0.3, 0.7
    A = random_spd(P, seed=1, low=0.01, high=2.0)
    b = torch.randn(P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    vals, U = torch.linalg.eigh(A)
    steps = [1, 2, 5, 13, 60]
    filt = horizon_filter(vals.numpy(), steps, lr, beta, nesterov)
    opt = sgd(lr, momentum=beta, nesterov=nesterov)
    params = {"x": torch.zeros(1, P, dtype=torch.float64)}
    state = opt.init(params)
    for t in range(1, max(steps) + 1):
        grads = {"x": params["x"] @ A + b}
        updates, state = opt.update(grads, state, params)
        params = {"x": params["x"] + updates["x"]}
        if t in steps:
            want = -(U * torch.as_tensor(filt[steps.index(t)])) @ U.T @ b
            assert rel(params["x"][0], want) < 1e-12, t


# -- F_T(H) v three ways against the closed form ---------------------------------------------------
def test_dense_lanczos_and_series_equal_the_closed_form():
    P, lr = 40, 0.6
    H = random_spd(P, seed=3)
    V = torch.randn(3, P, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    steps = [1, 4, 17, 60, 400]

    def filt(h):
        return horizon_filter(h, steps, lr)

    dense = dense_apply(H, V, filt)
    lanczos, info = lanczos_apply(lambda X: X @ H, V, filt, max_iter=P, tol=1e-14)
    series = series_apply(lambda X: X @ H, V, steps, lr)
    for c, T in enumerate(steps):
        want = closed_form(H, V, T, lr)
        assert rel(dense[c], want) < 1e-10, T
        assert rel(lanczos[c], want) < 1e-9, T
        assert rel(series[c], want) < 1e-10, T
    assert max(info["iterations"]) <= P


def test_lanczos_stops_at_the_polynomial_degree_and_converges_with_its_estimate():
    P, lr = 300, 0.5
    H = random_spd(P, seed=5, low=0.02, high=3.5)
    V = torch.randn(2, P, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # T = 8: F_8 is a polynomial of degree 7, exact after 8 steps
    out, info = lanczos_apply(lambda X: X @ H, V, lambda h: horizon_filter(h, [8], lr), 200, 0, 8)
    assert info["iterations"] == [8, 8] and info["max_error_estimate"] == 0.0
    assert rel(out[0], closed_form(H, V, 8, lr)) < 1e-10
    # T = 500 from 300 dimensions: stopped by the tolerance, well before P steps
    steps = [30, 500]
    out, info = lanczos_apply(
        lambda X: X @ H, V, lambda h: horizon_filter(h, steps, lr), 200, 1e-9, 500
    )
    assert max(info["iterations"]) < P and info["max_error_estimate"] <= 1e-9
    for c, T in enumerate(steps):
        assert rel(out[c], closed_form(H, V, T, lr)) < 1e-7, T


# -- the method on small models ----------------------------------------------------------------
def regression_task(n=60, n_test=5, seed=0, hidden=(4,)):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_test, 3, generator=g, dtype=DT)
    y = torch.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * torch.randn(n + n_test, generator=g, dtype=DT)
    layers, d = [], 3
    for w in hidden:
        layers += [nn.Linear(d, w), nn.Tanh()]
        d = w
    torch.manual_seed(seed)
    model = nn.Sequential(*layers, nn.Linear(d, 1)).to(DT)
    return Task(
        model, ArrayDataset(X[:n], y[:n, None]), ArrayDataset(X[n:], y[n:, None]), loss="mse"
    )


def flat(task):
    return torch.cat([p.detach().reshape(-1) for p in task.params().values()])


def functional(task):
    names = list(task.params())
    shapes = [p.shape for p in task.params().values()]
    sizes = [p.numel() for p in task.params().values()]

    def out(theta, x):
        views = [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes, strict=True)]
        parts = dict(zip(names, views, strict=True))
        return torch.func.functional_call(task.model, parts, (x,))

    return out


def reference_scores(task, steps, lr, shift=0.0):
    """(1/n) ∇g_tᵀ F_T(G + shift·I) ∇ℓ_i with G = (2/n) Σ J_jᵀJ_j (squared error) from autograd."""
    out = functional(task)
    theta = flat(task)
    X, y = task.train.inputs, task.train.targets
    Xt, yt = task.test.inputs, task.test.targets
    J = torch.autograd.functional.jacobian(lambda t: out(t, X)[:, 0], theta)  # (n, P)
    n = len(X)
    G = 2 * J.T @ J / n + shift * torch.eye(len(theta), dtype=DT)
    g_train = torch.autograd.functional.jacobian(lambda t: ((out(t, X) - y) ** 2)[:, 0], theta)
    g_test = torch.autograd.functional.jacobian(lambda t: ((out(t, Xt) - yt) ** 2)[:, 0], theta)
    return np.stack([(closed_form(G, g_test, T, lr) @ g_train.T / n).numpy() for T in steps])


@pytest.mark.parametrize("solver", ["dense", "lanczos", "series"])
def test_each_solver_equals_the_dense_closed_form_on_a_small_network(solver):
    task = regression_task()
    steps, lr = [1, 3, 10, 50], 0.05
    s = unrolled_quadratic(
        task, range(5), [0, 7, 3, 59], steps=steps, lr=lr, solver=solver, tol=1e-12
    )
    assert s.values.shape == (4, 5, 4) and s.steps.tolist() == steps
    assert s.settings["solver"] == solver and s.method == "unrolled_quadratic"
    want = reference_scores(task, steps, lr)[:, :, [0, 7, 3, 59]]
    assert rel(s.values, want) < 1e-6, rel(s.values, want)


@pytest.mark.parametrize("solver", ["lanczos", "series"])
def test_one_test_gradient_per_block_gives_the_same_scores(solver, monkeypatch):
    """A memory budget that holds one test gradient's vectors: five blocks, each scored
    against every chunk of training gradients (chunks of 7 of the 60)."""
    task = regression_task()
    steps, lr = [1, 3, 10, 50], 0.05
    monkeypatch.setattr(uq_module, "DEFAULT_BUDGET", 1)
    s = unrolled_quadratic(
        task, range(5), range(60), steps=steps, lr=lr, solver=solver, tol=1e-12, chunk_size=7
    )
    want = reference_scores(task, steps, lr)
    assert rel(s.values, want) < 1e-6, rel(s.values, want)


def test_weight_decay_of_further_training_shifts_the_curvature():
    task = regression_task()
    further = FurtherSettings(lr=0.05, weight_decay=0.3)
    s = unrolled_quadratic(task, range(5), range(60), steps=[2, 30], further=further, damping=0.1)
    assert s.settings["lr"] == 0.05 and s.settings["weight_decay"] == 0.3
    assert rel(s.values, reference_scores(task, [2, 30], 0.05, shift=0.4)) < 1e-9


def least_squares_task(n=50, d=4, seed=0):
    """A linear model with squared error at its least-squares solution (a stationary point)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + 3, d, generator=g, dtype=DT)
    y = X @ torch.randn(d, generator=g, dtype=DT) + 0.3 * torch.randn(n + 3, generator=g, dtype=DT)
    model = nn.Linear(d, 1).to(DT)
    A = torch.cat([X[:n], torch.ones(n, 1, dtype=DT)], 1)
    sol = torch.linalg.lstsq(A, y[:n, None]).solution[:, 0]
    with torch.no_grad():
        model.weight.copy_(sol[:d][None])
        model.bias.copy_(sol[d:])
    return Task(
        model, ArrayDataset(X[:n], y[:n, None]), ArrayDataset(X[n:], y[n:, None]), loss="mse"
    )


def gd_test_losses(task, weights, T, lr, momentum=0.0):
    """Full-batch heavy-ball GD (plain torch) on Σ_j w_j ℓ_j from the final weights: test losses."""
    X, y = task.train.inputs, task.train.targets
    A = torch.cat([X, torch.ones(len(X), 1, dtype=DT)], 1)
    At = torch.cat([task.test.inputs, torch.ones(len(task.test), 1, dtype=DT)], 1)
    theta = flat(task).clone()
    buf = torch.zeros_like(theta)
    for t in range(T):
        grad = A.T @ (weights * 2 * (A @ theta - y[:, 0]))
        buf = grad if t == 0 else momentum * buf + grad
        theta = theta - lr * buf
    return ((At @ theta - task.test.targets[:, 0]) ** 2).numpy()


@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_scores_equal_the_derivative_of_gradient_descent_at_a_stationary_point(momentum):
    """On least squares (R is its own quadratic model, GN = H) at the optimum, n·score is the
    derivative of the test loss after T steps of GD on R − ε ℓ_i at ε = 0, exactly. (Actually
    leaving i out differs from this first-order estimate by about i's leverage, as the
    influence function does: up to 30% here, for 5 parameters and 50 instances.)"""
    task = least_squares_task()
    n, lr, steps = 50, 0.05, [3, 20, 100]
    s = unrolled_quadratic(task, range(3), range(n), steps=steps, lr=lr, momentum=momentum)
    full = np.ones(n) / n
    eps = 1e-5
    for c, T in enumerate(steps):
        for i in (0, 17, 42):
            up, down = full.copy(), full.copy()
            up[i] -= eps
            down[i] += eps
            up_loss = gd_test_losses(task, torch.as_tensor(up), T, lr, momentum)
            down_loss = gd_test_losses(task, torch.as_tensor(down), T, lr, momentum)
            derivative = (up_loss - down_loss) / (2 * eps)
            np.testing.assert_allclose(n * s.values[c, :, i], derivative, rtol=1e-6, atol=1e-9)


def test_limits_grad_dot_at_one_step_and_the_influence_function_at_long_horizons():
    task = logistic_task(*make_data())
    lr = 0.5
    s = unrolled_quadratic(
        task, range(N_TEST), range(N_TRAIN), steps=[1, 200_000], lr=lr, hessian="hessian"
    )
    gd = grad_dot(task, range(N_TEST), range(N_TRAIN)).values
    assert rel(s.values[0], lr / N_TRAIN * gd) < 1e-10  # F_1 = ηI
    inf = explicit(task, range(N_TEST), range(N_TRAIN), damping=0.0, hessian="hessian").values
    assert rel(s.values[1], inf) < 1e-6
    assert s.settings["lr_top_eigenvalue"] < 2


def test_a_duplicate_of_the_test_instance_is_helpful_at_every_horizon():
    X, y, Xt, yt = make_data()
    Xt[0], yt[0] = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.5], dtype=DT), 0.0
    X[0], y[0] = Xt[0], yt[0]
    task = logistic_task(X, y, Xt, yt)
    s = unrolled_quadratic(task, [0], range(N_TRAIN), steps=[1, 10, 100, 10_000], lr=1.0)
    assert (s.values[:, 0, 0] > 0).all()
    assert np.argmax(s.values[-1, 0]) == 0


# -- settings ----------------------------------------------------------------------------------------
def test_settings_come_from_further_training_and_adam_is_refused():
    task = regression_task()
    s = unrolled_quadratic(task, [0], [1], steps=[5], further={"optimizer": "sgd", "lr": 0.02})
    assert s.settings["lr"] == 0.02 and s.settings["momentum"] == 0.0
    s = unrolled_quadratic(
        task, [0], [1], steps=[5], lr=0.01, further=FurtherSettings(lr=0.02, momentum=0.5)
    )
    assert s.settings["lr"] == 0.01 and s.settings["momentum"] == 0.5  # a given lr wins
    for optimizer in ("adam", "adamw"):
        with pytest.raises(
            InputError, match=rf"further\.optimizer = '{optimizer}' is not supported"
        ):
            unrolled_quadratic(
                task, [0], [1], steps=[5], further=FurtherSettings(optimizer=optimizer)
            )
    with pytest.raises(InputError, match="steps: not given"):
        unrolled_quadratic(task, [0], [1], lr=0.1)
    with pytest.raises(InputError, match="lr: not given"):
        unrolled_quadratic(task, [0], [1], steps=[3])
    with pytest.raises(InputError, match="steps: got"):
        unrolled_quadratic(task, [0], [1], steps=[8, 4], lr=0.1)
    with pytest.raises(InputError, match="solver"):
        unrolled_quadratic(task, [0], [1], steps=[8], lr=0.1, solver="cholesky")
    assert get_method("unrolled_quadratic") is unrolled_quadratic


def test_unstable_learning_rate_warns():
    task = regression_task()
    with pytest.warns(RuntimeWarning, match="diverges"):
        s = unrolled_quadratic(task, [0], [1], steps=[5], lr=1e3)
    assert s.settings["lr_top_eigenvalue"] > 2


@pytest.mark.parametrize("solver", ["dense", "lanczos"])
def test_hessian_samples_fit_the_curvature_on_a_subset(solver):
    """The curvature from 20 of the 60 instances; the gradients and the 1/n from all 60."""
    task = regression_task()
    s = unrolled_quadratic(
        task, range(5), range(60), steps=[4, 40], lr=0.05, hessian_samples=20, solver=solver
    )
    subset = torch.as_tensor(hessian_subset(60, 20, seed=0))
    ref = reference_scores_subset(task, task.train.inputs[subset], [4, 40], 0.05)
    assert rel(s.values, ref) < 1e-9


def reference_scores_subset(task, Xs, steps, lr):
    out = functional(task)
    theta = flat(task)
    J = torch.autograd.functional.jacobian(lambda t: out(t, Xs)[:, 0], theta)
    G = 2 * J.T @ J / len(Xs)  # rank ≤ 20 < P = 21: singular, so the series, not a solve
    X, y = task.train.inputs, task.train.targets
    Xt, yt = task.test.inputs, task.test.targets
    g_train = torch.autograd.functional.jacobian(lambda t: ((out(t, X) - y) ** 2)[:, 0], theta)
    g_test = torch.autograd.functional.jacobian(lambda t: ((out(t, Xt) - yt) ** 2)[:, 0], theta)
    return np.stack([(power_series(G, g_test, T, lr) @ g_train.T / len(X)).numpy() for T in steps])


def test_doctests():
    for module in (uq_module,):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0
    import fimo.evaluate.metrics as metrics
    import fimo.scores as scores

    for module in (scores, metrics):
        assert doctest.testmod(module).failed == 0
