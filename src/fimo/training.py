"""Final-model training: the recipe that produces θ^f when the user brings no model.

A plain loop with ``torch.optim``, the way the paper's reference code trains: a
``RandomSampler``-style permutation per epoch from a generator seeded with ``seed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from fimo.errors import NumericalError
from fimo.settings import TrainingSettings
from fimo.task import LossKind, Task


def train_final(
    task: Task,
    settings: TrainingSettings,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``task.model`` in place; returns the mean training loss of each epoch.

    >>> from fimo.data.base import ArrayDataset
    >>> x = torch.randn(32, 3)
    >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> history = train_final(task, TrainingSettings(lr=0.5, epochs=20, batch_size=8))
    >>> len(history), history[-1] < history[0]
    (20, True)
    """
    model, s = task.model, settings
    params = [dict(model.named_parameters())[n] for n in task.trainable]
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    elif s.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    X, Y = task.train.inputs, task.train.targets
    n = len(X)
    gen = torch.Generator().manual_seed(s.seed)
    history = []
    model.train()
    with torch.random.fork_rng(devices=[]), _frozen_without_gradients(model, task.trainable):
        torch.manual_seed(s.seed)
        for epoch in range(s.epochs):
            perm = torch.randperm(n, generator=gen).to(Y.device)
            total = torch.zeros((), dtype=torch.float64, device=Y.device)
            for start in range(0, n, s.batch_size):
                batch = perm[start : start + s.batch_size]
                loss = task.loss_fn(task.forward(X[batch]), Y[batch]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(batch)
            mean = float(total) / n
            if mean != mean or mean == float("inf"):
                raise NumericalError(
                    f"final training diverged (loss {mean}) in epoch {epoch + 1}; "
                    f"lower training.lr (now {s.lr})"
                )
            history.append(mean)
            if on_epoch is not None:
                on_epoch(epoch + 1, mean)
    model.eval()
    return history


@contextlib.contextmanager
def _frozen_without_gradients(model: torch.nn.Module, trainable) -> Iterator[None]:
    """Parameters outside ``trainable`` get no gradients while training (backward stops where
    nothing below is trained, e.g. under a transformers model's top layer); restored after."""
    frozen = [p for n, p in model.named_parameters() if n not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def evaluate_model(task: Task) -> dict[str, float]:
    """Test loss, and accuracy for classification, of the current model (in eval mode).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> task.load_params({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})
    >>> evaluate_model(task)  # equal logits: loss log 2, argmax picks class 0
    {'test_loss': 0.6931471824645996, 'test_accuracy': 0.5}
    """
    with torch.no_grad(), task.eval_mode():
        out = task.forward(task.test.inputs)
    result = {"test_loss": float(task.loss_fn(out, task.test.targets).mean())}
    if task.loss_kind == LossKind.CROSS_ENTROPY:
        result["test_accuracy"] = float((out.argmax(-1) == task.test.targets).double().mean())
    return result
