"""Influence functions and curvature operators against independent dense computations.

The reference model is an L2-regularised logistic regression, written as a fimo Task whose
per-instance loss carries the penalty (the model returns θ next to its logit so that the loss
can see it); it is trained to a stationary point by Newton's method, so H is positive definite
and leave-one-out retraining is exact and cheap. Everything the tests compare against (Hessians,
Jacobians, retraining, the finite differences of Proposition 1) is computed here with plain
``torch.autograd.functional`` on a flat parameter vector, not with fimo's operators.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fimo.data import ArrayDataset
from fimo.errors import InputError, NumericalError
from fimo.methods import influence
from fimo.methods.curvature import dense_matrix, gnvp, hvp, lanczos
from fimo.models import mlp
from fimo.task import Task

# torch loads its forward-mode decompositions with torch.jit.script on first use of jvp
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

ALPHA = 0.05  # L2 penalty, part of every per-instance loss
D = 5
N_TRAIN, N_TEST = 80, 8
DT = torch.float64


# -- the reference task: penalised logistic regression -------------------------------------------
class PenalisedLogistic(nn.Module):
    """One logit, followed by the parameters themselves (so the loss can penalise them)."""

    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x):
        theta = torch.cat([self.linear.weight.reshape(-1), self.linear.bias])
        return torch.cat([self.linear(x), theta.expand(x.shape[0], -1)], dim=1)


def bce(logit, targets):
    # = binary_cross_entropy_with_logits, whose forward-mode derivative is far slower in torch
    return F.softplus(logit) - targets * logit


def penalised_log_loss(outputs, targets):
    logit, theta = outputs[:, 0], outputs[:, 1:]
    return bce(logit, targets) + ALPHA / 2 * (theta**2).sum(1)


def log_loss(outputs, targets):
    return bce(outputs[:, 0], targets)


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0], dtype=DT)
    X = torch.randn(N_TRAIN + N_TEST, D, generator=g, dtype=DT)
    p = torch.sigmoid(X @ w + 0.3)
    y = (torch.rand(N_TRAIN + N_TEST, generator=g, dtype=DT) < p).to(DT)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


# plain-torch versions on a flat θ = (w, b): the independent side of every comparison
def objective(theta, X, y):
    z = X @ theta[:D] + theta[D]
    return (F.binary_cross_entropy_with_logits(z, y, reduction="none")).mean() + ALPHA / 2 * (
        theta @ theta
    )


def instance_losses(theta, X, y):
    z = X @ theta[:D] + theta[D]
    return F.binary_cross_entropy_with_logits(z, y, reduction="none") + ALPHA / 2 * (theta @ theta)


def measured_losses(theta, X, y):
    return F.binary_cross_entropy_with_logits(X @ theta[:D] + theta[D], y, reduction="none")


def newton(theta, X, y, tol=1e-12):
    """Minimise the mean penalised loss by Newton's method to ‖∇‖ < tol."""

    def obj(t):
        return instance_losses(t, X, y).mean()

    theta = theta.clone()
    for _ in range(50):
        g = torch.autograd.functional.jacobian(obj, theta)
        if g.norm() < tol:
            return theta
        H = torch.autograd.functional.hessian(obj, theta)
        theta = theta - torch.linalg.solve(H, g)
    raise AssertionError("Newton did not converge")


def flat_theta(task):
    return torch.cat([p.reshape(-1) for p in task.params().values()])


def set_theta(task, theta):
    task.load_params({"linear.weight": theta[:D].reshape(1, D), "linear.bias": theta[D:]})


def logistic_task(X, y, Xt, yt):
    """The task at its optimum (Newton to ‖∇R‖ < 1e-12)."""
    model = PenalisedLogistic(D).to(DT)
    task = Task(
        model,
        ArrayDataset(X, y),
        ArrayDataset(Xt, yt),
        loss=penalised_log_loss,
        measurement=log_loss,
    )
    set_theta(task, newton(torch.zeros(D + 1, dtype=DT), X, y))
    return task


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture
def task(data):
    return logistic_task(*data)


def reference_if(task, damping):
    """(1/n) ∇g_t (H + λI)⁻¹ ∇ℓ_i from autograd Hessian and Jacobians, all test × train."""
    X, y = task.train.inputs, task.train.targets
    Xt, yt = task.test.inputs, task.test.targets
    theta = flat_theta(task)
    H = torch.autograd.functional.hessian(lambda t: objective(t, X, y), theta)
    G = torch.autograd.functional.jacobian(lambda t: instance_losses(t, X, y), theta)
    Gt = torch.autograd.functional.jacobian(lambda t: measured_losses(t, Xt, yt), theta)
    A = H + damping * torch.eye(len(theta), dtype=DT)
    return (Gt @ torch.linalg.solve(A, G.T) / len(X)).numpy()


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- influence methods agree with the dense formula --------------------------------------------
def test_methods_agree_with_the_dense_influence_formula(task):
    lam = 1e-3
    ref = reference_if(task, lam)
    test, train = range(N_TEST), range(N_TRAIN)
    P = task.num_params
    settings = {
        "explicit": {},
        "cg": {"tol": 1e-10},
        # batch_size ≥ n: the whole training set at every step, so only truncation remains:
        # (1 − μ_min/scale)^depth ≤ (1 − 0.05/0.3)^1000 ≈ 1e-79 (μ_min ≥ ALPHA)
        "lissa": {"batch_size": N_TRAIN},
        "lissa_hessian": {"batch_size": 200},
        "arnoldi": {"rank": P},
        "generalized": {"tol": 1e-10},
    }
    runs = {}
    for name, kw in settings.items():
        calls = []
        runs[name] = getattr(influence, name)(
            task, test, train, damping=lam, progress=calls.append, **kw
        )
        assert sum(calls) == N_TRAIN, name
    for name, s in runs.items():
        assert s.values.shape == (N_TEST, N_TRAIN) and s.method == name
        assert s.settings["damping"] == lam and s.settings["damping_rule"] == "given"
        assert rel(s.values, ref) < 1e-4, (name, rel(s.values, ref))
        json.dumps(s.settings)  # JSON-able, as Scores.save needs
    assert rel(runs["explicit"].values, ref) < 1e-10
    assert runs["cg"].settings["converged"] is True
    assert max(runs["cg"].settings["relative_residuals"]) < 1e-9
    assert runs["lissa"].settings["batches"] == "full training set every step"
    assert runs["arnoldi"].settings["iterations"] == P
    np.testing.assert_allclose(
        sorted(runs["arnoldi"].settings["eigenvalues"]),
        torch.linalg.eigvalsh(
            torch.autograd.functional.hessian(
                lambda t: objective(t, task.train.inputs, task.train.targets), flat_theta(task)
            )
        ).numpy(),
        rtol=1e-10,
    )


def test_default_damping_is_the_papers_rule_and_methods_still_agree(task):
    s = influence.explicit(task, [0, 3], range(N_TRAIN))
    lam = s.settings["damping"]
    assert s.settings["damping_rule"].startswith("100 x mean squared")
    np.testing.assert_allclose(lam, 100 * s.settings["damping_base"], rtol=1e-12)
    ref = reference_if(task, lam)[[0, 3]]
    assert rel(s.values, ref) < 1e-10
    assert rel(influence.cg(task, [0, 3], range(N_TRAIN)).values, ref) < 1e-5


def test_stochastic_lissa_is_unbiased_up_to_its_sampling_noise(task):
    """Minibatches of 40 of 80 drawn with replacement: single runs are off by about 20 %.

    The recursion is unbiased (independent batches, so E[h] is the deterministic series), so
    its error is sampling noise: measured over seeds 0-2 it is 0.18-0.27 for one run, and it
    falls like 1/√repeat. We check that averaging 8 runs brings it under 15 %, below a single
    run's, that the recorded standard error is of the size of the actual error, and that the
    result is reproducible from the seed.
    """
    lam = 1e-3
    ref = reference_if(task, lam)
    kw = dict(damping=lam, batch_size=40, depth=100)
    one = influence.lissa(task, range(N_TEST), range(N_TRAIN), **kw)
    many = influence.lissa(task, range(N_TEST), range(N_TRAIN), repeat=8, **kw)
    assert one.settings["batches"] == "minibatches with replacement"
    err_one, err_many = rel(one.values, ref), rel(many.values, ref)
    assert err_many < 0.15 and err_many < err_one, (err_one, err_many)
    assert 0.2 * err_many < many.settings["relative_standard_error"] < 5 * err_many
    assert np.corrcoef(many.values.ravel(), ref.ravel())[0, 1] > 0.98
    again = influence.lissa(task, range(N_TEST), range(N_TRAIN), **kw)
    np.testing.assert_array_equal(one.values, again.values)  # deterministic given the seed


# -- agreement with actual leave-one-out retraining -------------------------------------------------
def test_influence_correlates_with_leave_one_out_retraining(task):
    X, y = task.train.inputs, task.train.targets
    Xt, yt = task.test.inputs, task.test.targets
    theta = flat_theta(task)
    base = measured_losses(theta, Xt, yt)
    actual = np.empty((N_TEST, N_TRAIN))
    for i in range(N_TRAIN):
        keep = torch.ones(N_TRAIN, dtype=torch.bool)
        keep[i] = False
        theta_i = newton(theta, X[keep], y[keep], tol=1e-10)
        actual[:, i] = (measured_losses(theta_i, Xt, yt) - base).numpy()
    corrs = {}
    for name in ("explicit", "cg", "arnoldi", "lissa", "generalized"):
        est = getattr(influence, name)(task, range(N_TEST), range(N_TRAIN), damping=0.0)
        corrs[name] = [np.corrcoef(est.values[t], actual[t])[0, 1] for t in range(N_TEST)]
        assert min(corrs[name]) >= 0.99, (name, corrs[name])
        # not only the ranking: the size too (the estimate is first order in 1/n)
        assert rel(est.values, actual) < 0.1, (name, rel(est.values, actual))


# -- curvature operators ---------------------------------------------------------------------------
def small_mlp_task(n=40, classes=3, hidden=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=DT)
    y = ((X[:, 0] > 0).long() + (X[:, 1] > 0).long()) % classes
    Xt = torch.randn(6, 4, generator=g, dtype=DT)
    yt = ((Xt[:, 0] > 0).long() + (Xt[:, 1] > 0).long()) % classes
    model = mlp(4, classes, hidden=hidden, seed=seed + 1).to(DT)
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, yt))


def flat_function(task, fn):
    """fn(theta_flat) in terms of the task's model, independent of fimo's own flattening."""
    names = list(task.params())
    shapes = [p.shape for p in task.params().values()]
    sizes = [math.prod(s) for s in shapes]

    def call(theta):
        parts = torch.split(theta, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return fn(params)

    return call


def dense_hessian(task, idx=None):
    X, y = task.train.inputs, task.train.targets
    if idx is not None:
        X, y = X[idx], y[idx]
    R = flat_function(task, lambda p: task.losses(p, X, y).mean())
    return torch.autograd.functional.hessian(R, flat_theta(task))


def dense_gauss_newton_ce(task, X, y):
    """(1/n) Σ J_iᵀ (diag(p_i) − p_i p_iᵀ) J_i with J_i from autograd, for cross-entropy."""
    theta = flat_theta(task)
    total = torch.zeros(len(theta), len(theta), dtype=DT)
    for i in range(len(X)):
        out = flat_function(task, lambda p, i=i: task.outputs(p, X[i : i + 1])[0])
        J = torch.autograd.functional.jacobian(out, theta)
        p = torch.softmax(out(theta), 0)
        total += J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return total / len(X)


def test_hvp_equals_the_autograd_hessian_and_a_finite_difference():
    task = small_mlp_task()
    P = task.num_params
    H = dense_hessian(task)
    V = torch.randn(3, P, generator=torch.Generator().manual_seed(1), dtype=DT)
    op = hvp(task, batch_size=7)
    torch.testing.assert_close(op(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op(V), V @ H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense_matrix(op), H, rtol=1e-10, atol=1e-12)
    sub = [0, 5, 9, 30]
    torch.testing.assert_close(
        hvp(task, data_indices=sub)(V[1]), dense_hessian(task, sub) @ V[1], rtol=1e-10, atol=1e-12
    )
    # central finite difference of the mean-loss gradient
    X, y = task.train.inputs, task.train.targets
    R = flat_function(task, lambda p: task.losses(p, X, y).mean())
    theta, eps = flat_theta(task), 1e-5
    v = V[2] / V[2].norm()
    fd = (
        torch.autograd.functional.jacobian(R, theta + eps * v)
        - torch.autograd.functional.jacobian(R, theta - eps * v)
    ) / (2 * eps)
    assert float((op(v) - fd).norm() / fd.norm()) < 1e-7


def test_gnvp_equals_explicit_gauss_newton_for_cross_entropy_and_is_psd():
    task = small_mlp_task()
    X, y = task.train.inputs, task.train.targets
    G = dense_gauss_newton_ce(task, X, y)
    V = torch.randn(4, task.num_params, generator=torch.Generator().manual_seed(2), dtype=DT)
    op = gnvp(task, batch_size=9)
    torch.testing.assert_close(op(V), V @ G, rtol=1e-10, atol=1e-12)
    dense = dense_matrix(op)
    torch.testing.assert_close(dense, G, rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-12
    # it is not the Hessian of this non-linear model
    assert float((G - dense_hessian(task)).abs().max()) > 1e-3


def test_gnvp_equals_hvp_for_a_linear_model_with_squared_error():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 4, generator=g, dtype=DT)
    Y = torch.randn(30, 2, generator=g, dtype=DT)
    model = nn.Linear(4, 2).to(DT)
    task = Task(model, ArrayDataset(X, Y), ArrayDataset(X[:3], Y[:3]), loss="mse")
    V = torch.randn(5, task.num_params, generator=g, dtype=DT)
    torch.testing.assert_close(gnvp(task)(V), hvp(task)(V), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense_matrix(gnvp(task)), dense_hessian(task), rtol=1e-12, atol=0)


def test_per_instance_products_average_to_the_operator():
    task = small_mlp_task()
    X, y = task.train.inputs, task.train.targets
    u = torch.randn(task.num_params, generator=torch.Generator().manual_seed(4), dtype=DT)
    for op in (hvp(task), gnvp(task)):
        grads, products = [], []
        for _, G, CU in op.per_instance(u, X, y, chunk_size=7):
            grads.append(G)
            products.append(CU)
        torch.testing.assert_close(torch.cat(products).mean(0), op(u), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.cat(grads).mean(0), op.gradient(), rtol=1e-10, atol=1e-12)


def test_lanczos_with_full_dimension_recovers_the_spectrum():
    task = small_mlp_task()
    H = dense_hessian(task)
    values, vectors, _, steps = lanczos(hvp(task), task.num_params, task.num_params, seed=0)
    assert steps == task.num_params
    torch.testing.assert_close(
        torch.sort(values).values, torch.linalg.eigvalsh(H), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(vectors @ H @ vectors.T, torch.diag(values), atol=1e-10, rtol=0)


# -- generalized influence (Proposition 1) ----------------------------------------------------
def test_generalized_equals_classical_at_a_stationary_point(task):
    lam = 1e-3
    classical = influence.explicit(task, range(N_TEST), range(N_TRAIN), damping=lam).values
    for solver in ("explicit", "cg"):
        s = influence.generalized(
            task, range(N_TEST), range(N_TRAIN), damping=lam, solver=solver, tol=1e-12
        )
        assert s.settings["gradient_norm"] < 1e-10
        assert s.settings["correction_relative_size"] < 1e-8
        assert rel(s.values, classical) < 1e-6


def finite_difference_target(task, theta, lam, curvature_of, eps=1e-4):
    """∇g_tᵀ d/dε [−(C(R_ε) + λI)⁻¹ ∇R_ε] at ε = 0, R_ε = R − (ε/n)ℓ_i, for all t, i.

    ``curvature_of(weights)`` returns the dense curvature of Σ_j w_j ℓ_j at θ; everything is
    recomputed at ±ε and differenced centrally.
    """
    X, y = task.train.inputs, task.train.targets
    n = len(X)
    losses = flat_function(task, lambda p: task.losses(p, X, y))
    Gt = torch.autograd.functional.jacobian(
        flat_function(task, lambda p: task.measure(p, task.test.inputs, task.test.targets)), theta
    )

    def delta(weights):
        grad = torch.autograd.functional.jacobian(lambda t: losses(t) @ weights, theta)
        A = curvature_of(weights) + lam * torch.eye(len(theta), dtype=DT)
        return -torch.linalg.solve(A, grad)

    out = np.empty((len(Gt), n))
    for i in range(n):
        w_plus = torch.full((n,), 1.0 / n, dtype=DT)
        w_minus = w_plus.clone()
        w_plus[i] -= eps / n
        w_minus[i] += eps / n
        out[:, i] = (Gt @ (delta(w_plus) - delta(w_minus)) / (2 * eps)).numpy()
    return out


def check_proposition_1(task, hessian, lam, curvature_of):
    theta = flat_theta(task)
    target = finite_difference_target(task, theta, lam, curvature_of)
    n_test, n = target.shape
    gen = influence.generalized(
        task, range(n_test), range(n), damping=lam, hessian=hessian, solver="explicit"
    )
    gen_cg = influence.generalized(
        task, range(n_test), range(n), damping=lam, hessian=hessian, tol=1e-12, max_iter=500
    )
    classical = influence.explicit(task, range(n_test), range(n), damping=lam, hessian=hessian)
    err_gen, err_classical = rel(gen.values, target), rel(classical.values, target)
    assert gen.settings["delta_theta_norm"] > 1e-2
    assert rel(gen.values, classical.values) > 0.05  # not a stationary point
    assert err_gen < 1e-6, err_gen
    assert err_gen < 1e-4 * err_classical, (err_gen, err_classical)
    assert rel(gen_cg.values, gen.values) < 1e-8
    return err_gen, err_classical


def test_generalized_matches_finite_differences_away_from_a_stationary_point(data):
    """Logistic regression moved off its optimum; GN = Hessian for this model."""
    task = logistic_task(*data)
    set_theta(task, flat_theta(task) + torch.tensor([0.4, -0.3, 0.2, 0.5, -0.2, 0.3], dtype=DT))
    X, y = task.train.inputs, task.train.targets

    def hessian_of(weights):
        return torch.autograd.functional.hessian(
            lambda t: instance_losses(t, X, y) @ weights, flat_theta(task)
        )

    for kind in ("hessian", "gauss_newton"):
        check_proposition_1(task, kind, 1e-3, hessian_of)


def test_generalized_with_each_curvature_on_a_nonlinear_model():
    """An MLP at its initial weights: true Hessian and Gauss-Newton versions differ."""
    task = small_mlp_task(n=25)
    X, y = task.train.inputs, task.train.targets
    theta = flat_theta(task)
    losses = flat_function(task, lambda p: task.losses(p, X, y))

    def hessian_of(weights):
        return torch.autograd.functional.hessian(lambda t: losses(t) @ weights, theta)

    per_instance_gn = [dense_gauss_newton_ce(task, X[i : i + 1], y[i : i + 1]) for i in range(25)]

    def gauss_newton_of(weights):
        return sum(w * gn for w, gn in zip(weights, per_instance_gn, strict=True))

    lam = 1.0  # covers the negative curvature of this Hessian
    assert (
        float(torch.linalg.eigvalsh(hessian_of(torch.full((25,), 1 / 25, dtype=DT))).min()) > -lam
    )
    check_proposition_1(task, "hessian", lam, hessian_of)
    check_proposition_1(task, "gauss_newton", lam, gauss_newton_of)


# -- sign: a duplicate of the test instance helps -------------------------------------------------
def test_a_duplicate_of_the_test_instance_is_scored_helpful_by_every_method(data):
    """An atypical test instance (a confident class-1 point labelled 0) with a copy in training.

    Only the copy pulls the model towards the test label, so leaving it out raises the test
    loss most: positive and the most helpful, for every method, with the paper's default
    damping and without damping. For ordinary test instances, whose duplicate competes with
    many similar training points, the duplicate is still positive.
    """
    X, y, Xt, yt = (t.clone() for t in data)
    Xt[0], yt[0] = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.5], dtype=DT), 0.0
    X[0], y[0] = Xt[0], yt[0]
    task = logistic_task(X, y, Xt, yt)
    for name in ("explicit", "cg", "lissa", "lissa_hessian", "arnoldi", "generalized"):
        for damping in (None, 0.0):
            kw = {"depth": 300} if name.startswith("lissa") else {}
            row = getattr(influence, name)(task, [0], range(N_TRAIN), damping=damping, **kw)
            row = row.values[0]
            assert row[0] > 0 and np.argmax(row) == 0, (name, damping, row[0], row.max())
    for t in range(1, N_TEST):
        X, y = data[0].clone(), data[1].clone()
        X[0], y[0] = Xt[t], yt[t]
        task = logistic_task(X, y, Xt, yt)
        for damping in (None, 0.0):
            assert influence.explicit(task, [t], [0], damping=damping).values[0, 0] > 0


# -- numerical trouble is reported -------------------------------------------------------------
def test_lissa_with_too_small_a_scale_raises_and_auto_picks_a_converging_grid_value(task):
    lam = 1e-3
    with pytest.raises(NumericalError, match=r"scale=0\.001.*top eigenvalue.*scale=0\.3\b"):
        influence.lissa(task, [0], range(N_TRAIN), damping=lam, scale=1e-3)
    s = influence.lissa(task, range(N_TEST), range(N_TRAIN), damping=lam, batch_size=N_TRAIN)
    chosen, top = s.settings["scale"], s.settings["top_eigenvalue"]
    mantissa = chosen / 10 ** math.floor(math.log10(chosen))
    assert any(
        math.isclose(mantissa * 10, g) or math.isclose(mantissa, g)
        for g in (1, 1.5, 2, 2.5, 3, 4, 5)
    )
    H = torch.autograd.functional.hessian(
        lambda t: objective(t, task.train.inputs, task.train.targets), flat_theta(task)
    )
    true_top = float(torch.linalg.eigvalsh(H).max())
    assert math.isclose(top, true_top, rel_tol=1e-8)
    assert chosen >= true_top + lam and s.settings["scale_tried"] == [chosen]
    assert rel(s.values, reference_if(task, lam)) < 1e-8


def test_cg_reports_non_convergence(task):
    with pytest.warns(RuntimeWarning, match="did not reach relative residual"):
        s = influence.cg(task, range(3), range(N_TRAIN), damping=1e-3, max_iter=2, tol=1e-12)
    assert s.settings["converged"] is False
    assert s.settings["iterations"] == [2, 2, 2]
    assert min(s.settings["relative_residuals"]) > 1e-12


def test_indefinite_hessians_and_oversized_models_are_refused():
    task = small_mlp_task()
    H = dense_hessian(task)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-3  # an MLP at its initial weights
    with pytest.raises(NumericalError, match=r"not positive definite.*larger damping"):
        influence.explicit(task, [0], [0, 1], damping=0.0, hessian="hessian")
    with pytest.raises(NumericalError, match="larger damping"):
        influence.arnoldi(task, [0], [0, 1], damping=0.0, hessian="hessian", rank=task.num_params)
    with pytest.raises(NumericalError, match=r"indefinite.*larger damping, above 0\.\d+ at least"):
        influence.lissa_hessian(task, [0], [0, 1], damping=0.0)
    # with damping that covers the negative curvature, LiSSA-H and the dense solve agree
    lam = 1.0
    exact = influence.explicit(task, range(6), range(40), damping=lam, hessian="hessian")
    series = influence.lissa_hessian(task, range(6), range(40), damping=lam, depth=200)
    assert rel(series.values, exact.values) < 1e-8
    with pytest.raises(InputError, match="max_params"):
        influence.explicit(task, [0], [0], max_params=10)
    with pytest.raises(InputError, match="hessian"):
        influence.cg(task, [0], [0], hessian="fisher")


# -- H from a subset of the training data (hessian_samples) -----------------------------------
def off_optimum_task(data):
    """The logistic task moved off its optimum, so that ∇R ≠ 0 and generalized has a term."""
    task = logistic_task(*data)
    set_theta(task, flat_theta(task) + torch.tensor([0.4, -0.3, 0.2, 0.5, -0.2, 0.3], dtype=DT))
    return task


def subset_reference(task, lam, rows):
    """(1/n) ∇g_t (H_S + λI)⁻¹ [∇ℓ_i + ∇²ℓ_i u] with H_S the mean Hessian over ``rows`` only,
    u = −(H_S + λI)⁻¹ ∇R over all n; returns (classical, generalized), from autograd."""
    X, y = task.train.inputs, task.train.targets
    Xt, yt = task.test.inputs, task.test.targets
    theta, n = flat_theta(task), len(X)
    H_S = torch.autograd.functional.hessian(lambda t: objective(t, X[rows], y[rows]), theta)
    A = H_S + lam * torch.eye(len(theta), dtype=DT)
    G = torch.autograd.functional.jacobian(lambda t: instance_losses(t, X, y), theta)
    Gt = torch.autograd.functional.jacobian(lambda t: measured_losses(t, Xt, yt), theta)
    u = -torch.linalg.solve(A, G.mean(0))
    Hu = torch.stack(
        [
            torch.autograd.functional.hessian(
                lambda t, i=i: instance_losses(t, X[i : i + 1], y[i : i + 1])[0], theta
            )
            @ u
            for i in range(n)
        ]
    )
    S = torch.linalg.solve(A, Gt.T).T
    return (S @ G.T / n).numpy(), (S @ (G + Hu).T / n).numpy()


def test_hessian_subset_is_a_seeded_sorted_draw_without_replacement():
    a = influence.hessian_subset(1000, 37, seed=3)
    np.testing.assert_array_equal(a, influence.hessian_subset(1000, 37, seed=3))
    np.testing.assert_array_equal(a, np.sort(np.random.default_rng(3).choice(1000, 37, False)))
    assert len(np.unique(a)) == 37 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, influence.hessian_subset(1000, 37, seed=4))
    np.testing.assert_array_equal(influence.hessian_subset(50, 50, seed=9), np.arange(50))
    np.testing.assert_array_equal(influence.hessian_subset(50, None), np.arange(50))


SUBSET_SETTINGS = {
    "explicit": {},
    "cg": {"tol": 1e-12, "max_iter": 200},
    # batch_size ≥ the sample: the full-sample series; H ⪰ ALPHA·I and the auto scale is
    # below 1, so the truncation is (1 − 0.05)^400 ≈ 1e-9 at most
    "lissa": {"batch_size": 10_000, "depth": 400},
    "lissa_hessian": {"batch_size": 10_000, "depth": 400},
    "arnoldi": {"rank": 6},
    "generalized": {"tol": 1e-12, "max_iter": 200},
}


def test_hessian_samples_equal_to_n_is_the_exact_computation(data):
    task = off_optimum_task(data)
    for name, kw in SUBSET_SETTINGS.items():
        exact = getattr(influence, name)(task, range(N_TEST), range(N_TRAIN), damping=1e-2, **kw)
        same = getattr(influence, name)(
            task, range(N_TEST), range(N_TRAIN), damping=1e-2, hessian_samples=N_TRAIN, **kw
        )
        np.testing.assert_array_equal(same.values, exact.values, err_msg=name)
        assert (
            same.settings["hessian_samples"] == N_TRAIN
            and exact.settings["hessian_samples"] is None
        )
        assert same.settings["hessian_data"] == f"all {N_TRAIN} training instances"


def test_hessian_samples_use_exactly_the_seeded_subset(data):
    task = off_optimum_task(data)
    lam, m, seed = 1e-2, 30, 7
    rows = influence.hessian_subset(N_TRAIN, m, seed)
    classical, general = subset_reference(task, lam, rows)
    full_classical, _ = subset_reference(task, lam, np.arange(N_TRAIN))
    assert rel(classical, full_classical) > 1e-2  # the subset matters
    for name, kw in SUBSET_SETTINGS.items():
        s = getattr(influence, name)(
            task,
            range(N_TEST),
            range(N_TRAIN),
            damping=lam,
            hessian_samples=m,
            hessian_seed=seed,
            progress=None,
            **kw,
        )
        want = general if name == "generalized" else classical
        tol = 1e-10 if name in ("explicit", "arnoldi") else 1e-8
        assert rel(s.values, want) < tol, (name, rel(s.values, want))
        assert s.values.shape == (N_TEST, N_TRAIN)  # scores for every training instance
        assert s.settings["hessian_samples"] == m and s.settings["hessian_seed"] == seed
        assert f"subset of {m} of the {N_TRAIN}" in s.settings["hessian_data"]
        json.dumps(s.settings)
    for batch, batches in ((m, "full Hessian sample every step"), (10, "minibatches")):
        lissa = influence.lissa(
            task, [0], [0], damping=lam, hessian_samples=m, batch_size=batch, depth=5
        )
        assert lissa.settings["batches"].startswith(batches)
    # another seed, another subset, other scores
    other = influence.explicit(
        task, range(N_TEST), range(N_TRAIN), damping=lam, hessian_samples=m, hessian_seed=8
    )
    assert rel(other.values, classical) > 1e-3


@pytest.mark.parametrize("bad", [0, -3, N_TRAIN + 1, 2.5, True, "all"])
def test_hessian_samples_are_validated(task, bad):
    with pytest.raises(InputError, match=rf"hessian_samples: got .*from 1 to n = {N_TRAIN}"):
        influence.cg(task, [0], [0], hessian_samples=bad)


def test_explicit_reports_and_refuses_the_memory_a_dense_matrix_needs(monkeypatch):
    # the adult preset's MLP: 30,466 parameters, within max_params (40,000) but 3.46 GiB dense
    X = torch.randn(4, 106)
    task = Task(
        mlp(106, 2, hidden=(128, 128), seed=0),
        ArrayDataset(X, torch.tensor([0, 1, 0, 1])),
        ArrayDataset(X, torch.tensor([0, 1, 0, 1])),
    )
    P = task.num_params
    assert P == 106 * 128 + 128 + 128 * 128 + 128 + 128 * 2 + 2 == 30_466
    gib = P * P * 4 / 2**30
    with pytest.raises(
        InputError,
        match=rf"dense 30,466 × 30,466 matrix \({gib:.2f} GiB in "
        r"float32.*does not fit in 2\.00 GiB \(max_memory_gb=2\).*'cg'",
    ):
        influence.explicit(task, [0], [0], max_memory_gb=2)
    with pytest.raises(InputError, match=rf"\({2 * gib:.2f} GiB in float64"):
        influence.generalized(task.to(dtype=DT), [0], [0], solver="explicit", max_memory_gb=2)
    # without a limit, what the machine has available now is the limit
    monkeypatch.setattr(influence, "available_memory", lambda: 2**30)
    with pytest.raises(InputError, match=r"1\.00 GiB \(the memory this machine has available now"):
        influence.explicit(task, [0], [0])
    with pytest.raises(InputError, match=r"max_memory_gb: got 0"):
        influence.explicit(task, [0], [0], max_memory_gb=0)


def test_explicit_within_the_memory_limit_records_it(task):
    s = influence.explicit(task, [0], range(N_TRAIN), damping=1e-3, max_memory_gb=4)
    assert s.settings["max_memory_gb"] == 4.0
    from fimo.methods.gradients import DEFAULT_BUDGET

    assert s.settings["dense_memory_gb"] == pytest.approx((36 * 8 + 2 * DEFAULT_BUDGET) / 2**30)
    assert rel(s.values, reference_if(task, 1e-3)[[0]]) < 1e-10


# -- the batch of a curvature product comes from the memory budget -------------------------
def test_curvature_batch_from_the_budget_and_products_independent_of_it():
    task = small_mlp_task()  # MLP 4-5-3: an instance makes 4 + 5 + 5 + 3 = 17 numbers
    from fimo.methods.curvature import BYTES_PER_ACTIVATION, PARAM_COPIES, CurvatureOperator

    P = 4 * 5 + 5 + 5 * 3 + 3
    assert task.num_params == P == 43
    H, G = dense_hessian(task), dense_gauss_newton_ce(task, task.train.inputs, task.train.targets)
    V = torch.randn(5, P, generator=torch.Generator().manual_seed(5), dtype=DT)
    per = BYTES_PER_ACTIVATION * 17 * 8  # bytes per instance and vector in flight (float64)
    fixed = PARAM_COPIES * P * 8  # bytes per vector in flight
    for kind, C in (("hessian", H), ("gauss_newton", G)):
        roomy = CurvatureOperator(task, kind)
        assert roomy.width == 17
        assert roomy.plan(5) == (40, 5)  # all 40 instances fit, and all 5 vectors
        budget = int(6 * 9 * per + 5 * fixed)  # 5 vectors (+1 for the graph) × 9 instances
        tight = CurvatureOperator(task, kind, budget=budget)
        assert tight.plan(5) == (9, 5)
        assert tight.plan(1)[0] == int((budget - fixed) // (2 * per)) == 34
        pinned = CurvatureOperator(task, kind, batch_size=13)
        assert pinned.plan(5)[0] == 13
        for op in (roomy, tight, pinned):
            torch.testing.assert_close(op(V), V @ C, rtol=1e-10, atol=1e-12)
        if kind == "hessian":  # the dense build through per-batch graphs, any block
            for op, block in ((roomy, None), (tight, 4), (pinned, 7)):
                torch.testing.assert_close(op.dense(block), H, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match=r"batch_size: got 0.*or None"):
        influence.cg(task, [0], [0], batch_size=0)
    s = influence.cg(task, [0, 1], range(40), damping=1.0)
    assert s.settings["batch_size"] is None and s.settings["curvature_batch"] == 40
    s = influence.cg(task, [0, 1], range(40), damping=1.0, batch_size=16)
    assert s.settings["batch_size"] == 16 and s.settings["curvature_batch"] == 16


# -- Gauss-Newton products through per-instance Jacobian factors ---------------------------
def test_gauss_newton_products_through_factors_equal_the_dense_matrix_for_any_rows():
    from fimo.methods.curvature import FACTOR_VECTORS, CurvatureOperator

    task = small_mlp_task()  # cross-entropy, 3 classes: factors of rank 2 per instance
    X, y = task.train.inputs, task.train.targets
    V = torch.randn(11, task.num_params, generator=torch.Generator().manual_seed(2), dtype=DT)
    cached = CurvatureOperator(task, "gauss_newton")
    assert cached.factors().shape == (40, 2, task.num_params)
    plain = CurvatureOperator(task, "gauss_newton", budget=4000)  # too small to hold them
    assert plain.factors() is None
    rows = [3, 3, 17, 0, 39]  # a minibatch drawn with replacement
    G_rows = dense_gauss_newton_ce(task, X[rows], y[rows])
    # half or more of the instances, with repeats: the held factors weighted by draw counts
    many = [*range(0, 40, 2), 3, 3, 3, 7]
    G_many = dense_gauss_newton_ce(task, X[many], y[many])
    for op in (cached, plain):
        torch.testing.assert_close(op.matmat(V), V @ dense_gauss_newton_ce(task, X, y))
        torch.testing.assert_close(op.matmat(V, rows=rows), V @ G_rows, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.matmat(V, rows=many), V @ G_many, rtol=1e-10, atol=1e-12)
        for k in (1, FACTOR_VECTORS):  # through the model, through the batch's factors
            got = op.matmat(V[:k], X[rows], y[rows])
            torch.testing.assert_close(got, V[:k] @ G_rows, rtol=1e-10, atol=1e-12)


def test_gauss_newton_factors_of_a_loss_with_negative_output_curvature():
    from fimo.methods.curvature import FACTOR_VECTORS, CurvatureOperator

    def saturating(outputs, targets):  # a non-convex loss of the outputs: 1 − exp(−(o − t)²)
        return 1 - torch.exp(-((outputs[:, 0] - targets) ** 2))

    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(30, 3, generator=g, dtype=DT), 2 * torch.randn(30, generator=g, dtype=DT)
    task = Task(mlp(3, 1, hidden=(4,), seed=2).to(DT), ArrayDataset(X, y), ArrayDataset(X, y),
                loss=saturating)  # fmt: skip
    op = CurvatureOperator(task, "gauss_newton")
    _, W = op._gn_factor(X, y)
    assert W is not None and bool((torch.linalg.eigvalsh(W)[:, 0] < 0).any())
    assert op.factors() is None  # no PSD factors: products go through the model
    dense = torch.zeros(task.num_params, task.num_params, dtype=DT)
    for i in range(len(X)):  # J_iᵀ h_i J_i with h_i = ℓ''(o_i) by autograd
        out = flat_function(task, lambda p, i=i: task.outputs(p, X[i : i + 1])[0, 0])
        J = torch.autograd.functional.jacobian(out, flat_theta(task))
        o = out(flat_theta(task)).detach().requires_grad_()
        h = torch.autograd.functional.hessian(
            lambda o, i=i: saturating(o[None, None], y[i : i + 1])[0], o
        )
        dense += h * torch.outer(J, J)
    dense /= len(X)
    V = torch.randn(FACTOR_VECTORS, task.num_params, generator=g, dtype=DT)
    torch.testing.assert_close(op.matmat(V), V @ dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V[:2]), V[:2] @ dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V, X, y), V @ dense, rtol=1e-10, atol=1e-12)


def test_damping_base_comes_from_the_hessian_subset(data):
    from fimo.methods.common import hessian_subset
    from fimo.methods.damping import mean_squared_gradient

    task = off_optimum_task(data)
    rows = hessian_subset(N_TRAIN, 30, 2)
    s = influence.cg(task, [0], [0, 1], hessian_samples=30, hessian_seed=2, damping_factor=10.0)
    sub = mean_squared_gradient(task, rows)
    assert s.settings["damping_base"] == pytest.approx(sub, rel=1e-12)
    assert s.settings["damping"] == pytest.approx(10.0 * sub, rel=1e-12)
    assert abs(sub - mean_squared_gradient(task)) > 1e-3 * sub  # the subset's own value
