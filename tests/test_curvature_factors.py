"""Gauss-Newton factors of softmax cross-entropy for confident predictions.

For p ≈ 0.99 the zero eigenvalue of diag(p) − ppᵀ carries a rounding error of about eps · p,
larger than eps times its largest eigenvalue 2p(1 − p); the factors must still be built (one
such instance used to send every product of the whole set through the model), and their
products must equal the Gauss-Newton matrix written out for softmax regression.
"""

import pytest
import torch
from torch import nn
from torch.func import grad, jacrev

from fimo.data import ArrayDataset
from fimo.methods.curvature import FACTOR_VECTORS, CurvatureOperator
from fimo.task import Task

DT = torch.float64


def confident_softmax_regression(n=300, d=5, classes=2, seed=0):
    """Logistic (softmax) regression whose weights fit the labels: most p between 0.93 and 1."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    W = 2 * torch.randn(classes, d, generator=g, dtype=DT)
    y = (X @ W.T).argmax(1)
    model = nn.Sequential(nn.Linear(d, classes)).to(DT)
    with torch.no_grad():
        model[0].weight.copy_(W)
        model[0].bias.zero_()
    return Task(model, ArrayDataset(X, y), ArrayDataset(X[:5], y[:5])), X, W


def closed_form_gauss_newton(X, W):
    """(1/n) Σ_j J_jᵀ (diag(p_j) − p_j p_jᵀ) J_j with J_j = [I_C ⊗ x_jᵀ, I_C] (weight rows,
    then bias), the Gauss-Newton matrix of softmax regression."""
    n, d = X.shape
    C = W.shape[0]
    p = torch.softmax(X @ W.T, 1)
    eye = torch.eye(C, dtype=DT)
    J = torch.cat(
        [torch.einsum("ab,nk->nabk", eye, X).reshape(n, C, C * d), eye.expand(n, C, C)], 2
    )
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nap,nab,nbq->pq", J, H, J) / n


def old_tolerance_refuses(task, X):
    """Whether some instance's output-space Hessian (by autograd, as the operator computes
    it) has an eigenvalue below −C · eps · its largest |eigenvalue| (the tolerance before)."""
    y = task.train.targets
    out = task.outputs(task.params(), X).detach()

    def loss(o, t):
        return nn.functional.cross_entropy(o[None], t[None])

    H = torch.stack([jacrev(grad(loss))(o, t) for o, t in zip(out, y, strict=True)])
    vals = torch.linalg.eigvalsh((H + H.mT) / 2)
    tol = vals.abs().amax(1) * out.shape[1] * torch.finfo(DT).eps
    return bool((vals[:, 0] < -tol).any())


@pytest.mark.parametrize("classes", [2, 3])
def test_confident_predictions_keep_the_factored_path(classes):
    task, X, W = confident_softmax_regression(classes=classes)
    p = torch.softmax(X @ W.T, 1).amax(1)
    assert float(p.median()) > 0.93  # ordinary confident predictions
    assert old_tolerance_refuses(task, X)  # the case the tolerance used to refuse
    op = CurvatureOperator(task, "gauss_newton")
    A = op.factors()
    assert A is not None and A.shape == (len(X), classes - 1, task.num_params)
    G = closed_form_gauss_newton(X, W)
    V = torch.randn(
        FACTOR_VECTORS + 3, task.num_params, generator=torch.Generator().manual_seed(1), dtype=DT
    )
    scale = float((V @ G).abs().max())
    torch.testing.assert_close(op.matmat(V), V @ G, rtol=1e-10, atol=1e-10 * scale)
    torch.testing.assert_close(op(V[0]), V[0] @ G, rtol=1e-10, atol=1e-10 * scale)
    rows = [4, 4, 250, 17]
    G_rows = closed_form_gauss_newton(X[rows], W)
    torch.testing.assert_close(op.matmat(V, rows=rows), V @ G_rows, rtol=1e-10, atol=1e-10 * scale)
