"""What every attribution method shares: its argument checks, the seeded subset of training
instances a curvature estimate may be fitted on (`hessian_samples`), and the last step of
every method, the score matrix from streamed training gradients (:func:`score_matrix`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from fimo.data.base import check_indices
from fimo.errors import InputError, check_choice
from fimo.methods.cost import CostProbe
from fimo.methods.ghost import dense_ghost_plan, ghost_products
from fimo.methods.gradients import per_instance_grads
from fimo.task import Task

Chunks = Iterable[tuple[slice, torch.Tensor]]


def test_and_train(task: Task, test, train, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``test`` and ``train`` as distinct int64 positions in the task's test and training sets,
    or an :class:`~fimo.errors.InputError` that names the method, the argument, the value and
    the allowed range.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> test_and_train(task, range(2), [3, 1, 4], "grad_dot")
    (array([0, 1]), array([3, 1, 4]))
    """
    test = check_indices(f"{method}: test", test, len(task.test), "test instances")
    train = check_indices(f"{method}: train", train, len(task.train), "training instances")
    return test, train


test_and_train.__test__ = False  # a checker, not a test: pytest must not collect it


def seed_value(name: str, value) -> int:
    """``value`` as an int, or an InputError naming ``name``.

    >>> seed_value("hessian_seed", np.int64(3))
    3
    """
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
    """What ``Scores.settings`` records about the training instances a fit used.

    >>> subset_record(10, 3, 0, hessian_subset(10, 3))["hessian_data"]
    'a random subset of 3 of the 10 training instances (hessian_subset(n=10, samples=3, seed=0))'
    """
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


def training_gradients(task: Task, train, chunk_size: int | None = None) -> Chunks:
    """``(rows, G)`` chunks of the per-instance loss gradients of the training instances
    ``train`` (rows index into ``train``), sized from the memory budget unless ``chunk_size``.

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> [(rows, G.shape) for rows, G in training_gradients(task, [4, 0, 2], chunk_size=2)]
    [(slice(0, 2, None), torch.Size([2, 8])), (slice(2, 3, None), torch.Size([1, 8]))]
    """
    idx = torch.as_tensor(np.asarray(train), dtype=torch.long)
    x, y = task.train.inputs[idx], task.train.targets[idx]
    return per_instance_grads(task, x, y, chunk_size=chunk_size)


def score_matrix(
    task: Task,
    train,
    test_side: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    per_n: bool = True,
    progress: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    chunks: Chunks | None = None,
    ghost: str = "auto",
) -> np.ndarray:
    """The (len(test_side), len(train)) float64 scores ``test_side · transform(G)ᵀ``, divided
    by n = len(task.train) when ``per_n``.

    G are the training-side vectors of the instances ``train``, streamed chunk by chunk (never
    all at once): the per-instance loss gradients (:func:`training_gradients`) unless
    ``chunks`` gives other ``(rows, G)`` pairs (rows index into ``train``). ``transform`` is
    applied to each chunk (e.g. normalising for Grad-Cos); ``test_side`` (k, D) is the test
    side, already preconditioned (and projected) by the method. ``progress(m)`` is called
    with the number of training instances each chunk scored; a pass estimated to take long
    is announced (:class:`fimo.methods.cost.CostProbe`).

    Plain loss gradients (no ``chunks``, no ``transform``) of a model whose trainable
    parameters are all Linear layers met once per instance (an MLP) are multiplied from
    layer factors without forming them (:func:`fimo.methods.ghost.ghost_products`; the same
    numbers to float rounding, and no n × P gradients through memory) when that is the
    cheaper way (:func:`factors_are_cheaper`: few test vectors against wide layers) and
    ``ghost`` is not ``"never"``.

    >>> from fimo.data.base import ArrayDataset
    >>> _ = torch.manual_seed(0)
    >>> data = ArrayDataset(torch.randn(5, 3), torch.randint(0, 2, (5,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)
    >>> V = torch.randn(2, 8)  # the test side: one row per test vector
    >>> S = score_matrix(task, [0, 1, 2], V, per_n=False, chunk_size=2)
    >>> G = torch.cat([g for _, g in training_gradients(task, [0, 1, 2])])
    >>> S.shape, bool(np.allclose(S, (V @ G.T).numpy(), atol=1e-6))
    ((2, 3), True)
    """
    check_choice("score_matrix ghost", ghost, ("auto", "never"))
    blocks = None
    if chunks is None and transform is None and ghost == "auto":
        layers = dense_ghost_plan(task)
        if layers is not None and factors_are_cheaper(task, layers, len(test_side)):
            blocks = (
                (rows, block.T)
                for rows, block in ghost_products(task, layers, test_side, train, chunk_size)
            )
    if blocks is None:
        if chunks is None:
            chunks = training_gradients(task, train, chunk_size)
        blocks = _products(test_side, chunks, transform)
    n = len(task.train)
    out = np.empty((len(test_side), len(train)), dtype=np.float64)
    probe = CostProbe(
        f"scoring {len(train)} training instances against {len(test_side)} test vectors",
        len(train),
        'score fewer training instances (methods.train = "left_out") or test instances',
    )
    for rows, block in blocks:
        if per_n:
            block = block / n
        out[:, rows] = block.double().cpu().numpy()
        if progress is not None:
            progress(rows.stop - rows.start)
        probe.tick(rows.stop - rows.start)
    return out


def factors_are_cheaper(task: Task, layers, k: int) -> bool:
    """Whether a dense test side of ``k`` rows is cheaper to multiply from layer factors
    (:func:`fimo.methods.ghost.ghost_products`) than with formed per-instance gradients.

    Both do k·in·out multiply-adds per Linear layer and instance; what differs is what passes
    through memory: the factor path writes and reads an intermediate of k·min(in, out)
    numbers per layer and instance, the formed path one gradient of in·out numbers. So the
    factors win for few test vectors on wide layers (50 against a 1024-wide MLP: 6.4×
    faster) and lose for many on narrow ones (200 test vectors on the 128-wide MLP took 1.6×
    as long from factors as from formed gradients, one thread, n = 4,000).

    >>> from fimo.data.base import ArrayDataset
    >>> data = ArrayDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    >>> task = Task(torch.nn.Linear(3, 2), data, data)  # min(in, out) = 2, in·out = 6
    >>> layers = dense_ghost_plan(task)
    >>> factors_are_cheaper(task, layers, 3), factors_are_cheaper(task, layers, 4)
    (True, False)
    """
    modules = dict(task.model.named_modules())
    through_factors = through_gradients = 0
    for layer in layers:
        module = modules[layer.module]
        if layer.weight:
            through_factors += k * min(module.in_features, module.out_features)
            through_gradients += module.in_features * module.out_features
    return through_factors <= through_gradients


def _products(test_side: torch.Tensor, chunks: Chunks, transform):
    """``(rows, test_side · transform(G)ᵀ)`` for each chunk of formed training vectors."""
    for rows, G in chunks:
        if transform is not None:
            G = transform(G)
        yield rows, test_side @ G.to(test_side.dtype).T
