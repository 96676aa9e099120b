"""Grad-Dot and Grad-Cos against hand-computed gradients and a first-order finite difference."""

import numpy as np
import torch

from fimo.data import ArrayDataset
from fimo.methods import grad_cos, grad_dot
from fimo.models import mlp
from fimo.task import Task


def small_task(n=30, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g, dtype=dtype)
    y = (X[:, 1] > 0).long()
    Xt = torch.randn(5, 4, generator=g, dtype=dtype)
    yt = (Xt[:, 1] > 0).long()
    return Task(mlp(4, 2, hidden=(6,), seed=1).to(dtype), ArrayDataset(X, y), ArrayDataset(Xt, yt))


def loop_grad(task, x, y):
    task.model.zero_grad()
    loss = torch.nn.functional.cross_entropy(task.model(x[None]), y[None])
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in task.model.parameters()]).clone()


def test_grad_dot_equals_hand_computed_dot_products():
    task = small_task()
    train = [3, 0, 17, 29]
    s = grad_dot(task, test=[1, 4], train=train, chunk_size=3)
    assert s.values.shape == (2, 4) and s.train.tolist() == train
    for r, t in enumerate([1, 4]):
        gt = loop_grad(task, task.test.inputs[t], task.test.targets[t])
        for c, i in enumerate(train):
            gi = loop_grad(task, task.train.inputs[i], task.train.targets[i])
            assert s.values[r, c] == np.float64(gt @ gi).item() or np.isclose(
                s.values[r, c], float(gt @ gi), rtol=1e-10
            )
            cos = float(gt @ gi / (gt.norm() * gi.norm()))
            assert np.isclose(grad_cos(task, [t], [i]).values[0, 0], cos, rtol=1e-10)


def test_duplicate_of_test_instance_is_helpful():
    task = small_task()
    # put test instance 2 into the training set as instance 0
    X = task.train.inputs.clone()
    Y = task.train.targets.clone()
    X[0], Y[0] = task.test.inputs[2], task.test.targets[2]
    task = Task(task.model, ArrayDataset(X, Y), task.test)
    for method in (grad_dot, grad_cos):
        row = method(task, [2], range(len(X))).values[0]
        assert row[0] > 0
    assert np.isclose(grad_cos(task, [2], [0]).values[0, 0], 1.0)


def test_grad_dot_predicts_a_small_gradient_step_without_i():
    """One full-batch GD step of size η without i changes the centred test loss by ≈ (η/n)·Grad-Dot."""
    task = small_task(n=40)
    n, eta = 40, 1e-3
    params = task.params()
    X, Y = task.train.inputs, task.train.targets
    xt, yt = task.test.inputs[:1], task.test.targets[:1]

    def test_loss_after_step(weights):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = (task.losses(p, X, Y) * weights).sum()
        grads = torch.autograd.grad(loss, list(p.values()))
        stepped = {k: v - eta * g for (k, v), g in zip(p.items(), grads, strict=True)}
        return float(task.losses(stepped, xt, yt)[0].detach())

    full = test_loss_after_step(torch.full((n,), 1 / n, dtype=torch.float64))
    diffs = []
    for i in range(n):
        w = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        w[i] = 0
        diffs.append(test_loss_after_step(w) - full)
    diffs = np.array(diffs)
    predicted = grad_dot(task, [0], range(n)).values[0] * eta / (n - 1)
    centred = diffs - diffs.mean()
    pred_centred = predicted - predicted.mean()
    np.testing.assert_allclose(centred, pred_centred, rtol=1e-2, atol=1e-3 * np.abs(centred).max())
    assert np.corrcoef(centred, pred_centred)[0, 1] > 0.999
