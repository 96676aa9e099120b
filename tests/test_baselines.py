"""The reference model printed beside the final model: the optimum it claims to be."""

import numpy as np
import torch
from torch import nn

from fimo import ArrayDataset, Task
from fimo.baselines import _features, _logistic, _standardise, baseline


def test_linear_regression_is_least_squares_on_standardised_features():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)) * [1, 10, 0.1, 3] + 5
    y = X @ [1.0, -0.2, 4.0, 0.5] + rng.normal(size=60) * 0.3
    Xt = rng.normal(size=(20, 4)) * [1, 10, 0.1, 3] + 5
    yt = Xt @ [1.0, -0.2, 4.0, 0.5]

    def data(a, b):
        return ArrayDataset(
            torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
        )

    task = Task(nn.Linear(4, 1), data(X, y), data(Xt, yt), loss="mse")
    got = baseline(task)
    # numpy: least squares with an intercept on the raw features gives the same predictions
    A = np.c_[X, np.ones(60)]
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    pred = np.c_[Xt, np.ones(20)] @ coef
    assert got["baseline"] == "linear regression"
    assert abs(got["baseline_test_loss"] - np.mean((pred - yt) ** 2)) < 1e-4


def test_logistic_regression_reaches_its_optimum():
    rng = np.random.default_rng(1)
    X = torch.tensor(rng.normal(size=(200, 3)))
    w = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, -2.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    y = (X @ w + torch.tensor(rng.gumbel(size=(200, 3)))).argmax(1)  # a softmax draw
    Xs, _ = _standardise(_features(X), _features(X))
    out = _logistic(Xs, y, Xs, classes=3, l2=1e-4)
    # the penalised mean cross-entropy has zero gradient at the fitted weights
    W = torch.linalg.lstsq(Xs, out).solution.requires_grad_(True)
    loss = nn.functional.cross_entropy(Xs @ W, y) + 0.5 * 1e-4 * (W[:-1] ** 2).sum()
    (g,) = torch.autograd.grad(loss, W)
    assert float(g.abs().max()) < 1e-6


def test_sequence_features_are_the_first_token_without_the_mask_channel():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    assert torch.equal(_features(x), x[:, 0, :4].double())
    assert _features(torch.ones(4, 1, 2, 2)).shape == (4, 4)
