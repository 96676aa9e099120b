"""Checks every attribution method makes on its arguments before any work."""

from __future__ import annotations

import numpy as np

from fimo.data.base import check_indices
from fimo.task import Task


def test_and_train(task: Task, test, train, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``test`` and ``train`` as distinct int64 positions in the task's test and training sets,
    or an :class:`~fimo.errors.InputError` that names the method, the argument, the value and
    the allowed range.

    >>> # test, train = test_and_train(task, range(10), [3, 1, 4], "grad_dot")
    """
    test = check_indices(f"{method}: test", test, len(task.test), "test instances")
    train = check_indices(f"{method}: train", train, len(task.train), "training instances")
    return test, train
