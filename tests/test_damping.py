"""The damping base: its value, and its memo (one pass per weights, rows and dtype)."""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.methods import damping, influence
from fimo.models import mlp
from fimo.task import Task

DT = torch.float64


def make_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 4, generator=g, dtype=DT)
    y = (X[:, 0] > 0).long()
    return Task(
        mlp(4, 2, hidden=(5,), seed=seed).to(DT), ArrayDataset(X, y), ArrayDataset(X[:4], y[:4])
    )


def by_hand(task, rows):
    """Σ_i Σ_p (∂ℓ_i/∂θ_p)² / (n · P), one autograd call per instance."""
    params = [p for p in task.model.parameters()]
    total = 0.0
    for i in rows:
        loss = nn.functional.cross_entropy(
            task.model(task.train.inputs[i : i + 1]), task.train.targets[i : i + 1]
        )
        total += sum(float(g.pow(2).sum()) for g in torch.autograd.grad(loss, params))
    return total / (len(rows) * sum(p.numel() for p in params))


@pytest.fixture
def passes(monkeypatch):
    """How many passes over the training rows (per-instance gradients or layer factors) the
    damping base made."""
    count = [0]
    original = damping._squared_norms_sum

    def counting(*args, **kw):
        count[0] += 1
        return original(*args, **kw)

    monkeypatch.setattr(damping, "_squared_norms_sum", counting)
    return count


def test_the_base_is_computed_once_per_weights_rows_and_dtype(passes):
    task = make_task()
    rows = [0, 3, 7, 11]
    first = damping.mean_squared_gradient(task, rows)
    assert first == pytest.approx(by_hand(task, rows), rel=1e-12)
    assert damping.mean_squared_gradient(task, rows) == first and passes[0] == 1  # memoised
    # other rows: a new pass (and the right value)
    assert damping.mean_squared_gradient(task, [0, 3, 7]) == pytest.approx(
        by_hand(task, [0, 3, 7]), rel=1e-12
    )
    assert passes[0] == 2
    # changed weights, in place: a new pass, the new value
    with torch.no_grad():
        task.model[0].weight.mul_(1.5)
    changed = damping.mean_squared_gradient(task, rows)
    assert passes[0] == 3 and changed == pytest.approx(by_hand(task, rows), rel=1e-12)
    assert abs(changed - first) > 1e-3 * first
    # another dtype: a new pass
    task.to(dtype=torch.float32)
    single = damping.mean_squared_gradient(task, rows)
    assert passes[0] == 4 and single == pytest.approx(changed, rel=1e-5) and single != changed
    # changed training data under the same indices: a new pass
    task.to(dtype=DT)
    damping.mean_squared_gradient(task, rows)
    task.train = ArrayDataset(task.train.inputs * 2, task.train.targets)
    assert damping.mean_squared_gradient(task, rows) == pytest.approx(
        by_hand(task, rows), rel=1e-12
    )
    assert passes[0] == 6


def test_methods_share_the_base_and_their_scores_do_not_change(passes):
    task = make_task(1)
    kw = dict(hessian_samples=20, hessian_seed=3, damping_factor=10.0)
    cg = influence.cg(task, [0, 1], range(30), **kw)
    lissa = influence.lissa(task, [0, 1], range(30), depth=20, scale=10.0, **kw)
    assert passes[0] == 1  # one pass for both methods (same subset)
    assert cg.settings["damping_base"] == lissa.settings["damping_base"]
    fresh = influence.cg(make_task(1), [0, 1], range(30), **kw)  # a new task: a new pass
    assert passes[0] == 2
    np.testing.assert_array_equal(cg.values, fresh.values)
    assert cg.settings["damping"] == fresh.settings["damping"]


def test_the_base_from_layer_factors_equals_the_one_from_formed_gradients(monkeypatch):
    """An MLP's base comes from layer factors; with the factor path switched off the formed
    per-instance gradients give the same number (1e-12, float64)."""
    task = make_task(seed=3)
    rows = np.arange(0, 30, 2)
    from_factors = damping.mean_squared_gradient(task, rows)
    monkeypatch.setattr(damping, "dense_ghost_plan", lambda task: None)
    task._damping_bases.clear()
    formed = damping.mean_squared_gradient(task, rows)
    assert from_factors == pytest.approx(formed, rel=1e-12)
    assert from_factors == pytest.approx(by_hand(task, rows), rel=1e-12)
