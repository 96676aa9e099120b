"""`unrolled`: the further-training runs' own first-order answer, seed by seed.

For each seed, the derivative of the gold standard's full run (run 0: same batches, dropout
draws, optimizer, checkpoints) with respect to every training instance's weight, under the
run's leave-out scheme (:mod:`fimo.further.adjoint`; ``drop`` is computed as ``mask``). It is
the gold standard's first-order limit: per seed it misses what a removal changes beyond first
order (a ReLU unit switching, a batch shifting under ``drop``), averaged over seeds it tracks
the gold standard's seed mean closely.

The seeds are kept apart, as the gold standard keeps them: the estimate is the seed mean with
its standard error, and the per-seed values of a chosen subset of training instances (e.g.
the gold standard's left-out instances, for the seed-count study) are kept too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.adjoint import DEFAULT_BUDGET, unrolled_seed
from fimo.further.engine import FurtherSettings
from fimo.io import write_npz
from fimo.methods.common import test_and_train
from fimo.scores import Scores
from fimo.task import Task


@dataclass
class UnrolledEstimate:
    """`unrolled` over several seeds: the seed mean, its standard error, per-seed values.

    ``mean``/``sem``: (C, n_test, n_train), positive = helpful; ``sem`` is NaN with one seed.
    ``per_seed``: (S, C, n_test, len(kept)) for the training instances ``kept``.
    ``loss_full``: (S, C, n_test), the measurement on each seed's full run.

    >>> from fimo.data import ArrayDataset
    >>> from fimo.models import mlp
    >>> import torch
    >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
    >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
    >>> tiny = {"lr": 0.1, "batch_size": 4, "epochs": 2}  # 2 epochs of 3 steps
    >>> est = unrolled_estimate(task, [0, 1], range(12), further=tiny, seeds=2, keep=[3])
    >>> est.mean.shape, est.per_seed.shape, est.steps.tolist(), est.seeds.tolist()
    ((2, 2, 12), (2, 2, 2, 1), [3, 6], [0, 1])
    """

    mean: np.ndarray
    sem: np.ndarray
    per_seed: np.ndarray
    kept: np.ndarray
    loss_full: np.ndarray
    steps: np.ndarray
    epochs: np.ndarray
    seeds: np.ndarray
    test: np.ndarray
    train: np.ndarray
    settings: dict = field(default_factory=dict)

    def scores(self) -> Scores:
        """The seed mean as Scores with a checkpoint axis (C, n_test, n_train).

        >>> from fimo.data import ArrayDataset
        >>> from fimo.models import mlp
        >>> import torch
        >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
        >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
        >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
        >>> tiny = {"lr": 0.1, "batch_size": 4, "epochs": 2}  # 2 epochs of 3 steps
        >>> est = unrolled_estimate(task, [0], range(12), further=tiny, seeds=1)
        >>> scores = est.scores()
        >>> scores.shape, scores.method, bool(np.all(scores.values == est.mean))
        ((2, 1, 12), 'unrolled', True)
        """
        return Scores(
            self.mean,
            self.test,
            self.train,
            "unrolled",
            dict(self.settings),
            "first-order change of the test measurement",
            steps=self.steps,
        )

    def save(self, path) -> Path:
        """Every array in one .npz (numpy-readable), beside the Scores file.

        >>> import tempfile
        >>> from fimo.data import ArrayDataset
        >>> from fimo.models import mlp
        >>> import torch
        >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
        >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
        >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
        >>> tiny = {"lr": 0.1, "batch_size": 4, "epochs": 2}  # 2 epochs of 3 steps
        >>> est = unrolled_estimate(task, [0], range(12), further=tiny, seeds=1)
        >>> path = est.save(Path(tempfile.mkdtemp()) / "unrolled.npz")
        >>> np.load(path, allow_pickle=False)["mean"].shape
        (2, 1, 12)
        """
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        return write_npz(path, **arrays)


_ARRAYS = (
    "mean", "sem", "per_seed", "kept", "loss_full", "steps", "epochs", "seeds", "test", "train",
)  # fmt: skip


def _further_settings(further) -> FurtherSettings:
    if further is None:
        return FurtherSettings()
    if isinstance(further, FurtherSettings):
        return further
    if isinstance(further, dict):
        return FurtherSettings(**further)
    raise InputError(
        f"unrolled: further: got {type(further).__name__}; give the further-training settings "
        "(a FurtherSettings or a dict of them)"
    )


def _seed_list(seeds) -> list[int]:
    if isinstance(seeds, bool) or not isinstance(seeds, int | Iterable):
        raise InputError(f"unrolled: seeds: got {seeds!r}; give a count or a list of seeds")
    values = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not values or any(
        isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in values
    ):
        raise InputError(f"unrolled: seeds: got {seeds!r}; expected whole numbers ≥ 0")
    if len(set(values)) != len(values):
        raise InputError(f"unrolled: seeds: got {values[:8]}; a seed appears more than once")
    return [int(s) for s in values]


def unrolled_estimate(
    task: Task,
    test,
    train,
    *,
    further=None,
    seeds=8,
    keep=None,
    steps=None,
    mode: str = "auto",
    budget_mb: int = DEFAULT_BUDGET // 2**20,
    progress=None,
) -> UnrolledEstimate:
    """`unrolled` for ``seeds`` (a count, from 0, or a list), with the seed statistics.

    ``keep``: training indices (within ``train``) whose per-seed values are kept.
    ``steps``: the checkpoints wanted (default: all the further-training settings record);
    only they are computed (the runs are differentiated up to the last of them).

    >>> from fimo.data import ArrayDataset
    >>> from fimo.models import mlp
    >>> import torch
    >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
    >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
    >>> tiny = {"lr": 0.1, "batch_size": 4, "epochs": 2}  # 2 epochs of 3 steps
    >>> est = unrolled_estimate(task, [0, 1], range(12), further=tiny, seeds=2, keep=[3])
    >>> est.sem.shape, bool(np.isfinite(est.sem).all()), est.loss_full.shape
    ((2, 2, 12), True, (2, 2, 2))
    """
    test, train = test_and_train(task, test, train, "unrolled")
    settings = _further_settings(further)
    seed_list = _seed_list(seeds)
    keep = np.empty(0, np.int64) if keep is None else np.asarray(keep, dtype=np.int64)
    where = {int(i): j for j, i in enumerate(train)}
    missing = [int(i) for i in keep if int(i) not in where]
    if missing:
        raise InputError(f"unrolled: keep: {missing[:5]} are not among the scored train indices")
    keep_cols = np.array([where[int(i)] for i in keep], dtype=np.int64)
    mean = m2 = None
    per_seed, loss_full = [], []
    for k, seed in enumerate(seed_list, start=1):
        one = unrolled_seed(
            task, settings, seed, test, train, steps=steps, mode=mode,
            budget_bytes=budget_mb * 2**20, announce_for=len(seed_list) if k == 1 else 0,
        )  # fmt: skip
        if progress is not None:  # in training instances, as every method: a share per seed
            progress(len(train) * k // len(seed_list) - len(train) * (k - 1) // len(seed_list))
        cols = _checkpoints(one.steps, steps)
        values = one.values[cols]
        if mean is None:
            mean, m2 = np.zeros_like(values), np.zeros_like(values)
        delta = values - mean  # Welford: the mean and the sum of squared deviations
        mean += delta / k
        m2 += delta * (values - mean)
        per_seed.append(values[..., keep_cols])
        loss_full.append(one.loss_full[cols])
    S = len(seed_list)
    sem = np.sqrt(m2 / (S - 1) / S) if S > 1 else np.full_like(mean, np.nan)
    return UnrolledEstimate(
        mean,
        sem,
        np.stack(per_seed),
        keep,
        np.stack(loss_full),
        one.steps[cols],
        one.epochs[cols],
        np.asarray(seed_list, dtype=np.int64),
        test,
        train,
        {
            "further": settings.as_dict(),
            "seeds": seed_list,
            "mode": mode,
            "budget_mb": budget_mb,
            "drop_as_mask": settings.scheme == "drop",
        },
    )


def _checkpoints(have: np.ndarray, wanted) -> np.ndarray:
    """Positions of the ``wanted`` step counts, in the order asked, among the ones a seed
    computed (``have``: the wanted ones sorted, each once; all of them by default).

    >>> _checkpoints(np.array([3, 6]), [6, 3, 6]).tolist()
    [1, 0, 1]
    """
    if wanted is None:
        return np.arange(len(have))
    position = {int(s): j for j, s in enumerate(have)}
    return np.array([position[int(s)] for s in np.ravel(wanted)], dtype=np.int64)


def unrolled(
    task: Task,
    test,
    train,
    *,
    progress=None,
    further=None,
    steps=None,
    seeds=8,
    mode: str = "auto",
    budget_mb: int = DEFAULT_BUDGET // 2**20,
) -> Scores:
    """The derivative of the further-training runs, seed mean: Scores (C, n_test, n_train).

    ``further``: the further-training settings (a run passes its own, with its gold
    standard's checkpoint ``steps``); ``seeds``: a count (seeds 0, 1, ...) or a list.
    :func:`unrolled_estimate` also gives the standard error and per-seed values.

    >>> from fimo.data import ArrayDataset
    >>> from fimo.models import mlp
    >>> import torch
    >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    >>> data = ArrayDataset(x, (x[:, 0] > 0).long())
    >>> task = Task(mlp(3, 2, hidden=(4,)), data, data)
    >>> tiny = {"lr": 0.1, "batch_size": 4, "epochs": 2}  # 2 epochs of 3 steps
    >>> scores = unrolled(task, [0], range(12), further=tiny, seeds=1, steps=[6])
    >>> scores.shape, scores.steps.tolist()
    ((1, 1, 12), [6])
    """
    estimate = unrolled_estimate(
        task, test, train, further=further, seeds=seeds, steps=steps, mode=mode,
        budget_mb=budget_mb, progress=progress,
    )  # fmt: skip
    return estimate.scores()
