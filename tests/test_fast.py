"""The fused MLP path gives the same gradients as vmap(grad) over stacked runs."""

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from fimo.data import ArrayDataset
from fimo.further.engine import stack
from fimo.further.fast import fused_mlp_grads
from fimo.task import Task


def check_same(model, loss, targets):
    n, d = 20, model[0].in_features
    X = torch.randn(n, d, dtype=torch.float64)
    task = Task(model.double(), ArrayDataset(X, targets), ArrayDataset(X, targets), loss=loss)
    fused = fused_mlp_grads(task)
    assert fused is not None
    R, B = 3, 7
    params = stack(task.params(), R)
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}  # runs differ
    idx = torch.randint(0, n, (R, B))
    w = torch.rand(R, B, dtype=torch.float64)
    w[1, 2] = 0.0

    def run_loss(p, x, y, w):
        return (task.losses(p, x, y) * w).sum()

    expected = vmap(grad(run_loss))(params, X[idx], targets[idx], w)
    got = fused(params, X[idx], targets[idx], w)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-12)


def test_relu_mlp_cross_entropy():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    check_same(model, "cross_entropy", torch.randint(0, 3, (20,)))


def test_tanh_mlp_without_bias_squared_error():
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 1))
    check_same(model, "mse", torch.randn(20, dtype=torch.float64))


def test_final_activation_and_multi_output_regression():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2), nn.ReLU())
    check_same(model, "mse", torch.randn(20, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.1), nn.Linear(6, 2)),
        nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)),
        nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)),
    ],
    ids=["dropout", "batchnorm", "gelu"],
)
def test_other_layers_fall_back_to_the_generic_path(model):
    X = torch.randn(10, 4)
    task = Task(
        model,
        ArrayDataset(X, torch.randint(0, 2, (10,))),
        ArrayDataset(X, torch.zeros(10, dtype=torch.long)),
    )
    assert fused_mlp_grads(task) is None


def test_frozen_layer_or_custom_loss_falls_back():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    X = torch.randn(10, 4)
    data = ArrayDataset(X, torch.randint(0, 2, (10,)))
    assert fused_mlp_grads(Task(model, data, data, trainable=["2.weight", "2.bias"])) is None
    custom = Task(model, data, data, loss=lambda out, y: out.logsumexp(-1))
    assert fused_mlp_grads(custom) is None
