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

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.adjoint import DEFAULT_BUDGET, unrolled_seed
from fimo.further.engine import FurtherSettings
from fimo.io import fingerprint, read_npz, remove_temporaries, write_npz
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
    partial_dir=None,
) -> UnrolledEstimate:
    """`unrolled` for ``seeds`` (a count, from 0, or a list), with the seed statistics.

    ``keep``: training indices (within ``train``) whose per-seed values are kept.
    ``steps``: the checkpoints wanted (default: all the further-training settings record);
    only they are computed (the runs are differentiated up to the last of them).
    ``partial_dir``: a folder where the seed statistics so far are saved after each seed
    (:class:`_Partial`); the same call after an interruption resumes at the next seed and
    gives the same numbers. The file is removed when every seed is done.

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
    keep, keep_cols = _kept(keep, train)
    key = _call_key(task, settings, test, train, seed_list, keep, steps, mode, budget_mb)
    partial = _Partial.resumed(partial_dir, key, len(seed_list))
    resumed = partial.work(len(partial.per_seed))  # what the seeds read back took
    if progress is not None and partial.per_seed:  # the seeds read back
        progress(len(train) * len(partial.per_seed) // len(seed_list))
    first = len(partial.per_seed) + 1  # the first seed computed: it announces the rest
    for k in range(first, len(seed_list) + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        one = unrolled_seed(
            task, settings, seed_list[k - 1], test, train, steps=steps, mode=mode,
            budget_bytes=budget_mb * 2**20, announce_for=len(seed_list) - k + 1 if k == first else 0,
        )  # fmt: skip
        cols = _checkpoints(one.steps, steps)
        partial.add(one.values[cols], keep_cols, one.loss_full[cols], one.steps[cols],
                    one.epochs[cols], (time.perf_counter() - wall, time.process_time() - cpu))  # fmt: skip
        partial.save(partial_dir, key)
        if progress is not None:  # in training instances, as every method: a share per seed
            progress(len(train) * k // len(seed_list) - len(train) * (k - 1) // len(seed_list))
    _Partial.remove(partial_dir)
    record = {
        "further": settings.as_dict(),
        "seeds": seed_list,
        "mode": mode,
        "budget_mb": budget_mb,
        "drop_as_mask": settings.scheme == "drop",
    }
    if resumed is not None:  # seeds of an earlier, interrupted call: their work counts too
        record["resumed_seconds"] = resumed
    return partial.estimate(keep, seed_list, test, train, record)


def _kept(keep, train) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` training indices and their columns among ``train``; an index that is not
    scored is an InputError.

    >>> [a.tolist() for a in _kept([7, 3], np.array([3, 5, 7]))]
    [[7, 3], [2, 0]]
    """
    keep = np.empty(0, np.int64) if keep is None else np.asarray(keep, dtype=np.int64)
    where = {int(i): j for j, i in enumerate(train)}
    missing = [int(i) for i in keep if int(i) not in where]
    if missing:
        raise InputError(f"unrolled: keep: {missing[:5]} are not among the scored train indices")
    return keep, np.array([where[int(i)] for i in keep], dtype=np.int64)


def _call_key(task: Task, settings: FurtherSettings, test, train, seeds, keep, steps, mode,
              budget_mb) -> str:  # fmt: skip
    """A fingerprint of everything a call's numbers depend on: the final weights, the data,
    the further-training settings, the instances, the seeds and the checkpoints."""
    data = task.train.inputs, task.train.targets, task.test.inputs, task.test.targets
    return fingerprint(
        dict(task.model.state_dict()), *data, settings.as_dict(), np.asarray(test),
        np.asarray(train), np.asarray(seeds), np.asarray(keep),
        {"steps": None if steps is None else np.ravel(steps).tolist(), "mode": mode,
         "budget_mb": budget_mb},
    )  # fmt: skip


@dataclass
class _Partial:
    """The seed statistics after the first seeds: the running mean and sum of squared
    deviations (Welford), the kept per-seed values and each seed's full-run measurements.

    Saved as ``state.npz`` in a folder after each seed, under the call's key; a call with the
    same key reads it back and goes on at the next seed, adding the same values in the same
    order, so its numbers are those of an uninterrupted call. A missing, damaged or foreign
    file (another key, more seeds than asked) is ignored: the call starts from the first seed.

    >>> state = _Partial()
    >>> state.add(np.array([[[1.0, 3.0]]]), np.array([1]), np.zeros((1, 1)), np.array([4]),
    ...           np.array([1.0]))
    >>> state.add(np.array([[[3.0, 3.0]]]), np.array([1]), np.zeros((1, 1)), np.array([4]),
    ...           np.array([1.0]))
    >>> state.mean.tolist(), state.m2.tolist(), [v.tolist() for v in state.per_seed]
    ([[[2.0, 3.0]]], [[[2.0, 0.0]]], [[[[3.0]]], [[[3.0]]]])
    """

    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    per_seed: list = field(default_factory=list)
    loss_full: list = field(default_factory=list)
    steps: np.ndarray | None = None
    epochs: np.ndarray | None = None
    #: each seed's (wall, CPU) seconds; NaN for seeds saved before fimo recorded them
    seconds: list = field(default_factory=list)

    def add(self, values, keep_cols, loss_full, steps, epochs, seconds=(np.nan, np.nan)) -> None:
        """One more seed's (C, T, N) values and (C, T) full-run measurements, and what
        computing it took (wall, CPU seconds)."""
        if self.mean is None:
            self.mean, self.m2 = np.zeros_like(values), np.zeros_like(values)
        k = len(self.per_seed) + 1
        delta = values - self.mean  # Welford: the mean and the sum of squared deviations
        self.mean += delta / k
        self.m2 += delta * (values - self.mean)
        self.per_seed.append(values[..., keep_cols])
        self.loss_full.append(loss_full)
        self.steps, self.epochs = steps, epochs
        self.seconds.append(tuple(map(float, seconds)))

    def work(self, seeds: int) -> dict | None:
        """The wall and CPU seconds of the first ``seeds`` seeds, with how many of them did
        not record it; None for none.

        >>> state = _Partial(seconds=[(2.0, 1.5), (np.nan, np.nan), (3.0, 2.5)])
        >>> state.work(3), state.work(0)
        ({'wall': 5.0, 'cpu': 4.0, 'seeds': 3, 'seeds_without_time': 1}, None)
        """
        if seeds == 0:
            return None
        known = [t for t in self.seconds[:seeds] if not np.isnan(t[0])]
        return {
            "wall": sum(t[0] for t in known),
            "cpu": sum(t[1] for t in known),
            "seeds": seeds,
            "seeds_without_time": seeds - len(known),
        }

    def save(self, folder, key: str) -> None:
        """``folder/state.npz`` (atomic, with a checksum), when a folder is given."""
        if folder is None:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_npz(
            Path(folder) / _STATE, key=np.array(key), mean=self.mean, m2=self.m2,
            per_seed=np.stack(self.per_seed), loss_full=np.stack(self.loss_full),
            steps=self.steps, epochs=self.epochs, seconds=np.array(self.seconds, dtype=float),
        )  # fmt: skip

    @classmethod
    def resumed(cls, folder, key: str, seeds: int) -> _Partial:
        """The state saved in ``folder`` under ``key`` (at most ``seeds`` seeds), else a
        fresh one."""
        path = None if folder is None else Path(folder) / _STATE
        if path is None or not path.exists():
            return cls()
        try:
            saved = read_npz(path)
        except (InputError, ValueError, OSError):
            return cls()
        if str(saved.get("key")) != key or len(saved["per_seed"]) > seeds:
            return cls()
        count = len(saved["per_seed"])
        seconds = saved.get("seconds", np.full((count, 2), np.nan))  # older states: none
        return cls(
            saved["mean"], saved["m2"], list(saved["per_seed"]), list(saved["loss_full"]),
            saved["steps"], saved["epochs"], [tuple(map(float, t)) for t in seconds],
        )  # fmt: skip

    def estimate(self, keep, seeds: list[int], test, train, settings: dict) -> UnrolledEstimate:
        """The finished statistics as an :class:`UnrolledEstimate`: the seed mean and its
        standard error (NaN with one seed), the kept per-seed values and measurements."""
        S = len(seeds)
        sem = np.sqrt(self.m2 / (S - 1) / S) if S > 1 else np.full_like(self.mean, np.nan)
        return UnrolledEstimate(
            self.mean, sem, np.stack(self.per_seed), keep, np.stack(self.loss_full), self.steps,
            self.epochs, np.asarray(seeds, dtype=np.int64), test, train, settings,
        )  # fmt: skip

    @staticmethod
    def remove(folder) -> None:
        """Delete the state, its checksum, temporaries a stopped write left, and the folder
        when nothing else is in it."""
        if folder is None or not Path(folder).is_dir():
            return
        remove_temporaries([Path(folder)])
        for name in (_STATE, _STATE + ".sha256"):
            (Path(folder) / name).unlink(missing_ok=True)
        if not any(Path(folder).iterdir()):
            Path(folder).rmdir()


_STATE = "state.npz"


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
    partial_dir=None,
) -> Scores:
    """The derivative of the further-training runs, seed mean: Scores (C, n_test, n_train).

    ``further``: the further-training settings (a run passes its own, with its gold
    standard's checkpoint ``steps``); ``seeds``: a count (seeds 0, 1, ...) or a list;
    ``partial_dir``: where the seeds done so far are kept, so that an interrupted call resumes
    (``fimo run`` passes ``scores/unrolled.partial``).
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
        budget_mb=budget_mb, progress=progress, partial_dir=partial_dir,
    )  # fmt: skip
    return estimate.scores()
