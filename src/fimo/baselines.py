"""A simple reference model beside the final model: is the final model decent?

Logistic regression (classification) or ridge-free linear least squares (regression) on the
inputs the trainable part of the model receives: the raw features for an MLP, the flattened
pixels for an image model, the first token of the frozen trunk's output for a text model
whose lower layers are frozen (:meth:`fimo.Task.with_cached_trunk`). Features are
standardised with the training statistics; logistic regression is fitted in float64 with
L-BFGS and a small L2 penalty (1e-4 on the mean loss), so the result is deterministic.
"""

from __future__ import annotations

import torch

from fimo.task import LossKind, Task

__all__ = ["baseline"]


def _features(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    if x.dim() == 3:  # sequences (n, T, d): the first token, without a trailing mask channel
        x = x[:, 0, :-1]
    return x.reshape(len(x), -1)


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    ones = torch.ones(1, dtype=train.dtype, device=train.device)
    add = lambda a: torch.cat([(a - mean) / std, ones.expand(len(a), 1)], dim=1)  # noqa: E731
    return add(train), add(test)


def _logistic(X, y, Xt, classes: int, l2: float = 1e-4, iterations: int = 100):
    W = torch.zeros(X.shape[1], classes, dtype=X.dtype, device=X.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W],
        lr=1,
        max_iter=iterations,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W, y) + 0.5 * l2 * (W[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return Xt @ W


def baseline(task: Task) -> dict:
    """``{"baseline": name, "baseline_test_loss": …, "baseline_test_accuracy": …}`` of the
    simple model fitted on ``task``'s training data and evaluated on its test data (the
    accuracy only for classification; the loss is the task's own, mean over the test set).

    >>> from torch import nn
    >>> from fimo.data.base import ArrayDataset
    >>> x = torch.randn(40, 3)
    >>> data = ArrayDataset(x, (x[:, 0] > 0).long())  # linearly separable
    >>> result = baseline(Task(nn.Linear(3, 2), data, data))
    >>> result["baseline"], result["baseline_test_accuracy"]
    ('logistic regression', 1.0)
    """
    if task.loss_kind not in (LossKind.CROSS_ENTROPY, LossKind.SQUARED_ERROR) or not isinstance(
        task.train.inputs, torch.Tensor
    ):
        return {}  # a custom loss or keyword inputs: no standard reference model to compare with
    task = task.with_cached_trunk()
    X, Xt = _standardise(_features(task.train.inputs), _features(task.test.inputs))
    y, yt = task.train.targets, task.test.targets
    if task.loss_kind == LossKind.CROSS_ENTROPY:
        classes = int(max(int(y.max()), int(yt.max())) + 1)
        out = _logistic(X, y, Xt, classes)
        return {
            "baseline": "logistic regression",
            "baseline_test_loss": float(task.loss_fn(out, yt).mean()),
            "baseline_test_accuracy": float((out.argmax(-1) == yt).double().mean()),
        }
    Y = y.double().reshape(len(y), -1)
    coef = torch.linalg.lstsq(X, Y).solution
    out = (Xt @ coef).reshape(yt.shape).to(yt.dtype)
    return {
        "baseline": "linear regression",
        "baseline_test_loss": float(task.loss_fn(out, yt).mean()),
    }
