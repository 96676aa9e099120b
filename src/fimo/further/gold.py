"""`GoldStandard`: the raw further-training losses and the views derived from them.

Only raw losses are stored (DESIGN.md ◆ Gold standard):
``loss_full[s, c, t]`` — seed s, checkpoint c, test instance t, run on the full data;
``loss_without[s, c, t, i]`` — the same, run without left-out instance i;
optionally ``loss_without_group[s, c, t, g]`` — the same, run without every member of group g,
with the groups' member lists (on disk: ``group_members``, the lists end to end, and
``group_offsets``, where each starts).
Everything else (paper eq. 17 adjustment, eq. 13 centring, seed means) is a view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.plan import Groups
from fimo.io import read_npz, write_npz

_ARRAYS = ("loss_full", "loss_without", "steps", "epochs", "left_out", "test", "seeds")
#: the most bytes of float64 left-out losses a block of checkpoints holds
#: (:meth:`GoldStandard.blocks`): the evaluation's working arrays are a few times this
BLOCK_BYTES = 32 * 2**20


@dataclass
class GoldStandard:
    """Further-training losses of paired runs, and the attribution they define.

    >>> g = GoldStandard(
    ...     loss_full=np.zeros((1, 1, 1)), loss_without=np.array([[[[1.0, 3.0]]]]),
    ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0])
    >>> g.adjusted()[0, 0, 0].tolist(), g.centred()[0, 0, 0].tolist()
    ([1.0, 3.0], [-1.0, 1.0])
    """

    loss_full: np.ndarray  # (S, C, T)
    loss_without: np.ndarray  # (S, C, T, L)
    steps: np.ndarray  # (C,) optimizer steps taken at each checkpoint
    epochs: np.ndarray  # (C,) epochs (fractional for mid-epoch checkpoints)
    left_out: np.ndarray  # (L,) training indices left out
    test: np.ndarray  # (T,) test indices
    seeds: np.ndarray  # (S,)
    settings: dict = field(default_factory=dict)
    loss_without_group: np.ndarray | None = None  # (S, C, T, G), runs without whole groups
    groups: Groups | None = None  # the G groups' member lists (training indices)

    def __post_init__(self):
        self.loss_full = np.asarray(self.loss_full)
        self.loss_without = np.asarray(self.loss_without)
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.epochs = np.asarray(self.epochs, dtype=np.float64)
        self.left_out = np.asarray(self.left_out, dtype=np.int64)
        self.test = np.asarray(self.test, dtype=np.int64)
        self.seeds = np.asarray(self.seeds, dtype=np.int64)
        S, C, T, L = len(self.seeds), len(self.steps), len(self.test), len(self.left_out)
        if self.loss_full.shape != (S, C, T) or self.loss_without.shape != (S, C, T, L):
            raise InputError(
                f"GoldStandard: loss_full {self.loss_full.shape} and loss_without "
                f"{self.loss_without.shape} do not match (S, C, T)=({S}, {C}, {T}) and L={L}"
            )
        if (self.loss_without_group is None) != (self.groups is None):
            raise InputError("GoldStandard: loss_without_group and groups come together")
        if self.groups is not None:
            self.groups = Groups.of(self.groups)
            self.loss_without_group = np.asarray(self.loss_without_group)
            if self.loss_without_group.shape != (S, C, T, len(self.groups)):
                raise InputError(
                    f"GoldStandard: loss_without_group {self.loss_without_group.shape} does not "
                    f"match (S, C, T)=({S}, {C}, {T}) and G={len(self.groups)} groups"
                )

    # -- views -----------------------------------------------------------------------------
    def adjusted(self) -> np.ndarray:
        """Paper eq. 17: loss without i minus loss of the full run, same seed and checkpoint.

        Shape (S, C, T, L); positive = removing i raised the test loss (i was helpful).

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.adjusted()[:, 0, 0].tolist()  # seeds x left-out instances
        [[-1.0, 0.0], [1.0, 2.0]]
        """
        return self.loss_without - self.loss_full[..., None]

    def adjusted_group(self) -> np.ndarray:
        """Paper eq. 17 for groups: loss without group g minus the full run's, (S, C, T, G).

        >>> g = GoldStandard(
        ...     loss_full=np.ones((1, 1, 1)), loss_without=np.ones((1, 1, 1, 0)), steps=[10],
        ...     epochs=[1.0], left_out=[], test=[0], seeds=[0],
        ...     loss_without_group=[[[[3.0, 0.5]]]], groups=[[1, 2], [0]])
        >>> g.adjusted_group()[0, 0, 0].tolist(), g.groups[0].tolist()
        ([2.0, -0.5], [1, 2])
        """
        if self.groups is None:
            raise InputError("this gold standard has no group runs (gold_standard(groups=...))")
        return self.loss_without_group - self.loss_full[..., None]

    def centred(self) -> np.ndarray:
        """Paper eq. 13: the adjusted difference minus its mean over the left-out instances.

        Centring removes the term common to every i (further training moves the model
        even on the full data). Shape (S, C, T, L).

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.centred()[:, 0, 0].tolist()
        [[-0.5, 0.5], [-0.5, 0.5]]
        """
        diff = self.adjusted()
        return diff - diff.mean(axis=-1, keepdims=True)

    def view(self, centred: bool = True) -> np.ndarray:
        """:meth:`centred` (eq. 13) or :meth:`adjusted` (eq. 17) differences, (S, C, T, L).

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.view(centred=False)[1, 0, 0].tolist(), g.view()[1, 0, 0].tolist()
        ([1.0, 2.0], [-0.5, 0.5])
        """
        return self.centred() if centred else self.adjusted()

    def mean(self, centred: bool = True) -> np.ndarray:
        """The gold-standard attribution: the seed mean of the (centred) difference, (C, T, L).

        Computed a block of checkpoints at a time (:meth:`blocks`): the (S, C, T, L)
        differences are never held whole, and the numbers are those of the whole array.

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.mean(centred=False)[0, 0].tolist(), g.mean()[0, 0].tolist()
        ([0.0, 1.0], [-0.5, 0.5])
        """
        return _joined_blocks(part.view(centred).mean(axis=0) for part in self.blocks())

    def sem(self, centred: bool = True) -> np.ndarray:
        """Standard error of :meth:`mean` over seeds, (C, T, L); NaN with a single seed.

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.sem(centred=False)[0, 0].tolist()  # sample std of (-1, 1) over sqrt(2)
        [1.0, 1.0]
        """
        S = len(self.seeds)
        if S < 2:
            return np.full(self.loss_without.shape[1:], np.nan)
        return _joined_blocks(
            part.view(centred).std(axis=0, ddof=1) / np.sqrt(S) for part in self.blocks()
        )

    def blocks(self, max_bytes: int | None = None):
        """The gold standard cut into consecutive blocks of checkpoints, each a GoldStandard
        whose arrays are views of this one's (nothing is copied), with at most ``max_bytes``
        (default :data:`BLOCK_BYTES`) of left-out losses in float64, and at least one
        checkpoint. The views of a block (:meth:`adjusted`, :meth:`centred`,
        :meth:`windows`) are the same numbers as those checkpoints of the whole: every
        reduction runs over seeds or left-out instances, never across checkpoints.

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 3, 1)), loss_without=np.arange(12.0).reshape(2, 3, 1, 2),
        ...     steps=[10, 20, 30], epochs=[1, 2, 3], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> [part.steps.tolist() for part in g.blocks(max_bytes=2 * 2 * 8 * 2)]  # 2 a block
        [[10, 20], [30]]
        >>> np.array_equal(np.concatenate([p.adjusted() for p in g.blocks(32)], 1), g.adjusted())
        True
        """
        S, C, T, L = self.loss_without.shape
        per_checkpoint = max(1, S * T * L * 8)
        size = max(1, int((BLOCK_BYTES if max_bytes is None else max_bytes) // per_checkpoint))
        for start in range(0, max(C, 1), size):  # no checkpoint: one empty block
            yield self.at_checkpoints(slice(start, min(start + size, C)))

    def at_checkpoints(self, positions: slice) -> GoldStandard:
        """The checkpoints at ``positions`` (a slice), as views of this gold standard's arrays.

        >>> g = GoldStandard(
        ...     loss_full=np.ones((1, 3, 1)), loss_without=np.arange(6.0).reshape(1, 3, 1, 2),
        ...     steps=[10, 20, 30], epochs=[1, 2, 3], left_out=[4, 9], test=[0], seeds=[0])
        >>> part = g.at_checkpoints(slice(1, 3))
        >>> part.steps.tolist(), part.loss_without[0, :, 0].tolist()
        ([20, 30], [[2.0, 3.0], [4.0, 5.0]])
        >>> np.shares_memory(part.loss_without, g.loss_without)
        True
        """
        groups = None if self.groups is None else self.loss_without_group[:, positions]
        return GoldStandard(
            self.loss_full[:, positions],
            self.loss_without[:, positions],
            self.steps[positions],
            self.epochs[positions],
            self.left_out,
            self.test,
            self.seeds,
            self.settings,
            groups,
            self.groups,
        )

    def windows(self, k: int, centred: bool = True) -> np.ndarray:
        """Means over non-overlapping windows of k seeds (paper Fig. 3), (S // k, C, T, L).

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.windows(1, centred=False).shape, g.windows(2, centred=False)[:, 0, 0].tolist()
        ((2, 1, 1, 2), [[0.0, 1.0]])
        """
        S = len(self.seeds)
        if not 1 <= k <= S:
            raise InputError(f"windows: k must be between 1 and the number of seeds {S}; got {k}")
        v = self.view(centred)[: (S // k) * k]
        return v.reshape(S // k, k, *v.shape[1:]).mean(axis=1)

    def select(self, seeds=None, steps=None, test=None, left_out=None) -> GoldStandard:
        """A gold standard restricted by value: seed numbers, step counts, dataset indices.


        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> g.select(seeds=[1], left_out=[9]).loss_without.tolist()  # by value, not position
        [[[[3.0]]]]
        """
        s = _positions(self.seeds, seeds, "seed")
        c = _positions(self.steps, steps, "checkpoint step")
        t = _positions(self.test, test, "test index")
        i = _positions(self.left_out, left_out, "left-out index")
        groups = None
        if self.groups is not None:  # every group is kept
            groups = self.loss_without_group[np.ix_(s, c, t, np.arange(len(self.groups)))]
        return GoldStandard(
            self.loss_full[np.ix_(s, c, t)],
            self.loss_without[np.ix_(s, c, t, i)],
            self.steps[c],
            self.epochs[c],
            self.left_out[i],
            self.test[t],
            self.seeds[s],
            dict(self.settings),
            groups,
            self.groups,
        )

    # -- files -----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the raw arrays to ``path`` (a ``.npz`` with a checksum beside it); the path.

        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = g.save(Path(folder) / "gold.npz")
        ...     print(path.name, sorted(p.name for p in path.parent.iterdir()))
        gold.npz ['gold.npz', 'gold.npz.sha256']
        """
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        if self.groups is not None:
            arrays["loss_without_group"] = self.loss_without_group
            arrays["group_members"] = self.groups.members
            arrays["group_offsets"] = self.groups.offsets
        return write_npz(path, **arrays)

    @classmethod
    def load(cls, path, settings: dict | None = None) -> GoldStandard:
        """Load ``gold.npz``, or the gold standard of a run directory (``further/gold.npz``).


        >>> g = GoldStandard(
        ...     loss_full=np.ones((2, 1, 1)), loss_without=np.arange(4.0).reshape(2, 1, 1, 2),
        ...     steps=[10], epochs=[1.0], left_out=[4, 9], test=[0], seeds=[0, 1])
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     back = GoldStandard.load(g.save(Path(folder) / "gold.npz"))
        >>> back.loss_without.tolist() == g.loss_without.tolist(), back.left_out.tolist()
        (True, [4, 9])
        """
        path = Path(path)
        if path.is_dir():
            stamp = path / "further" / "fingerprint.json"
            path = path / "further" / "gold.npz"
            if settings is None and stamp.exists():
                settings = json.loads(stamp.read_text()).get("settings")
        if not path.exists():
            raise InputError(f"{path}: no gold standard here (run `fimo run` first)")
        data = read_npz(path)
        missing = [k for k in _ARRAYS if k not in data]
        if missing:
            raise InputError(f"{path}: not a fimo gold standard (missing arrays {missing})")
        return cls.from_arrays(data, settings)

    @classmethod
    def from_arrays(cls, data: dict, settings: dict | None = None) -> GoldStandard:
        """The gold standard of the arrays :meth:`save` writes (others are ignored).

        >>> g = GoldStandard.from_arrays({
        ...     "loss_full": np.ones((1, 1, 1)), "loss_without": np.zeros((1, 1, 1, 2)),
        ...     "steps": [10], "epochs": [1.0], "left_out": [4, 9], "test": [0], "seeds": [0]})
        >>> g.left_out.tolist(), g.groups is None
        ([4, 9], True)
        """
        groups = None
        if "group_members" in data:  # gold standards made before groups have none
            groups = Groups(data["group_members"], data["group_offsets"])
        return cls(
            **{k: data[k] for k in _ARRAYS},
            settings=settings or {},
            loss_without_group=data["loss_without_group"] if groups is not None else None,
            groups=groups,
        )


def _joined_blocks(parts) -> np.ndarray:
    """Per-block results (n, ...) joined along the checkpoint axis (one block: as it is)."""
    parts = list(parts)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _positions(have: np.ndarray, want, what: str) -> np.ndarray:
    if want is None:
        return np.arange(len(have))
    where = {int(v): k for k, v in enumerate(have)}
    want = np.atleast_1d(np.asarray(want, dtype=np.int64))
    missing = [int(v) for v in want if int(v) not in where]
    if missing:
        raise InputError(
            f"GoldStandard.select: no {what} {missing[:5]}; available: {have.tolist()[:10]}"
            f"{' ...' if len(have) > 10 else ''}"
        )
    return np.array([where[int(v)] for v in want], dtype=np.int64)
