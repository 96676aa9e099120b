"""What every attribution method shares: its argument checks and the seeded subset of training
instances a curvature estimate may be fitted on (`hessian_samples`)."""

from __future__ import annotations

import numpy as np

from fimo.data.base import check_indices
from fimo.errors import InputError
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


def seed_value(name: str, value) -> int:
    """``value`` as an int, or an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name}: got {value!r}; must be an integer")
    return int(value)


def hessian_subset(n: int, samples: int | None, seed: int = 0) -> np.ndarray:
    """The training indices H is estimated from: all n, or ``samples`` of them drawn at random.

    A sorted draw without replacement from ``numpy.random.default_rng(seed)``, so it is a
    function of (n, samples, seed) only; ``samples=None`` or ``samples=n`` gives
    ``arange(n)``. Raises :class:`InputError` unless ``samples`` is None or an integer in
    [1, n].

    >>> hessian_subset(10, 3, seed=0)
    array([5, 6, 9])
    """
    if samples is None:
        return np.arange(n)
    if (
        isinstance(samples, bool)
        or not isinstance(samples, int | np.integer)
        or not 1 <= samples <= n
    ):
        raise InputError(
            f"hessian_samples: got {samples!r}; must be a whole number from 1 to n = {n} (the "
            "training set size), or None to use every training instance"
        )
    if samples == n:
        return np.arange(n)
    rng = np.random.default_rng(seed_value("hessian_seed", seed))
    return np.sort(rng.choice(n, int(samples), replace=False))


def subset_record(n: int, samples: int | None, seed: int, subset: np.ndarray) -> dict:
    """What ``Scores.settings`` records about the training instances a fit used."""
    return {
        "hessian_samples": None if samples is None else int(samples),
        "hessian_seed": int(seed),
        "hessian_data": (
            f"all {n} training instances"
            if len(subset) == n
            else f"a random subset of {len(subset)} of the {n} training instances "
            f"(hessian_subset(n={n}, samples={len(subset)}, seed={seed}))"
        ),
    }
