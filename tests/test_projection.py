"""Projected gradients in Grad-Dot, Grad-Cos and DataInf (issue 15 part 4), against explicit
computations: gradients from a plain autograd loop, projected by the projector's own matrix,
and the Johnson-Lindenstrauss mean over many projections against the exact score."""

import numpy as np
import pytest
import torch

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.experiments.config import from_dict
from fimo.methods.datainf import datainf, parameter_blocks
from fimo.methods.first_order import grad_cos, grad_dot
from fimo.methods.projection import Projector, block_seed
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def small_task(n=30, n_test=6, hidden=(4,), seed=0):
    """An MLP 5 → hidden → 3 in float64 at random weights (P = 39 for hidden (4,))."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_test, 5, generator=g, dtype=DT)
    Y = torch.randint(0, 3, (n + n_test,), generator=g)
    model = mlp(5, 3, hidden=hidden, seed=1).to(DT)
    return Task(model, ArrayDataset(X[:n], Y[:n]), ArrayDataset(X[n:], Y[n:]))


def loop_gradients(task, data, measure=False):
    """Per-instance gradients (n, P) by a plain autograd loop, in parameter order."""
    rows = []
    for x, y in zip(data.inputs, data.targets, strict=True):
        out = task.model(x[None])
        loss = task.loss_fn(out, y[None]).sum()
        grads = torch.autograd.grad(loss, list(task.model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).detach()


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projected_grad_dot_is_unbiased_over_projections(kind):
    # E_P[(Pᵀa)·(Pᵀb)] = a·b: the mean over 120 seeds lies within 5 standard errors (from the
    # sample's own spread) of the exact Grad-Dot, entry by entry
    task = small_task()
    exact = grad_dot(task, range(6), range(30)).values
    draws = np.stack(
        [
            grad_dot(task, range(6), range(30), proj_dim=4, projection=kind, proj_seed=s).values
            for s in range(120)
        ]
    )
    mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-12)
    # and a single projection to 4 of 39 dimensions is far from exact, the mean much nearer
    # (the tolerance is not vacuous: about a tenth of one draw's error)
    one_error = np.abs(draws[0] - exact).max()
    assert one_error > 0.1 * np.abs(exact).max()
    assert float(se.max()) < 0.25 * one_error


def test_projected_grad_dot_and_grad_cos_equal_explicitly_projected_loop_gradients():
    task = small_task()
    k, seed = 7, 3
    P = Projector(task.num_params, k, seed=seed, dtype=DT).matrix
    Gt = loop_gradients(task, task.test) @ P
    G = loop_gradients(task, task.train) @ P
    dot = grad_dot(task, range(6), range(30), proj_dim=k, proj_seed=seed)
    np.testing.assert_allclose(dot.values, (Gt @ G.T).numpy(), rtol=1e-12, atol=1e-12)
    assert dot.settings["projected_dim"] == k and dot.settings["projection"] == "rademacher"
    cos = grad_cos(task, range(6), range(30), proj_dim=k, proj_seed=seed).values
    unit = lambda A: A / A.norm(dim=1, keepdim=True)  # noqa: E731
    np.testing.assert_allclose(cos, (unit(Gt) @ unit(G).T).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", [grad_dot, grad_cos, datainf])
def test_proj_dim_at_least_the_size_is_no_projection(method):
    task = small_task()
    exact = method(task, range(6), range(30)).values
    same = method(task, range(6), range(30), proj_dim=task.num_params)
    assert np.array_equal(same.values, exact)
    assert same.settings["projection"] == "identity"
    assert same.settings["projected_dim"] == task.num_params


@pytest.mark.parametrize("method", [grad_dot, grad_cos, datainf])
def test_projection_is_applied_chunk_by_chunk(method):
    # each chunk of training gradients is projected on its own: the scores do not depend on
    # how the training instances are chunked (float64)
    task = small_task()
    whole = method(task, range(6), range(30), proj_dim=6).values
    for size in (1, 4, 7):
        chunked = method(task, range(6), range(30), proj_dim=6, chunk_size=size).values
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12 * np.abs(whole).max())


def loop_datainf(task, test, train, k, seed, kind, lambda_const=10.0, sample=None):
    """DataInf on explicitly projected blocks, with explicit inverses: λ_l = mean ‖φ_il‖² /
    (p_l·c), score = (1/n) Σ_l φ_jlᵀ (1/m) Σ_i (φ_il φ_ilᵀ + λ_l I)⁻¹ P_lᵀ∇g_l(z_t)."""
    G, V = loop_gradients(task, task.train), loop_gradients(task, task.test)[test]
    n = len(G)
    H = G if sample is None else G[sample]
    out = torch.zeros(len(test), len(train), dtype=DT)
    for b, (_, cols) in enumerate(parameter_blocks(task)):
        p = len(cols)
        P = (
            Projector(p, k, block_seed(seed, b), kind, DT).matrix
            if k < p
            else torch.eye(p, dtype=DT)
        )
        phi_h, phi, v = H[:, cols] @ P, G[:, cols] @ P, V[:, cols] @ P
        lam = float(phi_h.pow(2).sum(1).mean()) / (p * lambda_const)
        eye = torch.eye(P.shape[1], dtype=DT)
        inv = sum(torch.linalg.inv(torch.outer(f, f) + lam * eye) for f in phi_h) / len(phi_h)
        out += (v @ inv) @ phi[train].T / n
    return out.numpy()


@pytest.mark.parametrize(("kind", "samples"), [("rademacher", None), ("gaussian", 12)])
def test_projected_datainf_equals_datainf_on_explicitly_projected_gradients(kind, samples):
    task = small_task(hidden=(6,))  # blocks of 36 and 21 entries, both projected to k = 8
    train = [0, 5, 7, 29, 13]
    got = datainf(
        task, range(6), train, proj_dim=8, projection=kind, proj_seed=4, hessian_samples=samples
    )
    sample = None
    if samples is not None:
        from fimo.methods.common import hessian_subset

        sample = hessian_subset(30, samples, 0)
    want = loop_datainf(task, list(range(6)), train, 8, 4, kind, sample=sample)
    np.testing.assert_allclose(got.values, want, rtol=1e-10, atol=1e-14)
    assert got.settings["projected_dim"] == 16
    # a projection to 8 of 36 and 21 dimensions changes the scores
    assert not np.allclose(got.values, datainf(task, range(6), train).values, rtol=0.01)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "512", True])
@pytest.mark.parametrize("method", [grad_dot, grad_cos, datainf])
def test_a_bad_proj_dim_is_refused_at_the_door(method, bad):
    with pytest.raises(InputError, match="proj_dim: got"):
        method(small_task(), range(2), range(3), proj_dim=bad)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_a_bad_proj_dim_in_a_configuration_is_refused_before_any_work(bad):
    with pytest.raises(InputError, match=r"methods\.datainf\.proj_dim: got"):
        from_dict({"methods": {"names": ["datainf"], "datainf": {"proj_dim": bad}}})
    good = from_dict({"methods": {"names": ["grad_dot"], "grad_dot": {"proj_dim": 256}}})
    assert good.methods.settings == {"grad_dot": {"proj_dim": 256}}
