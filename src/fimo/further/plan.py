"""Which instances each further-training run sees at each step.

Run 0 is the full run; run r ≥ 1 leaves out training index ``left_out[r - 1]``, or, when
``left_out`` is a :class:`Groups`, the set of training indices ``left_out[r - 1]`` (a single
index is the group of one, and gives the same steps bit for bit). Every
scheme is expressed the same way: for each step, an index matrix ``idx`` (R, W) and a
weight matrix ``w`` (R, W), so that run r's step loss is ``Σ_b w[r, b] · ℓ(z_idx[r, b])``,
plus ``active`` (R,), false for a run that takes no step (DESIGN.md ◆ Leave-out schemes):

- ``drop``: the reference code's tabular scheme. Each epoch draws one permutation
  (``torch.randperm(n, generator)`` as ``torch.utils.data.RandomSampler`` does); the full run
  takes it in batches, a left-out run takes the same permutation with i (every member of S)
  removed, so the later batches shift and the run may take fewer steps.
- ``mask``: every run sees the full run's batches; i (every member of S) gets weight zero in its
  batch and the batch mean is over the others; a batch of members only is no step.
- ``downweight``: the reference code's text scheme. Every run sees the full run's batches; at
  every step run i also subtracts ``ℓ(z_i) / n`` (run S: ``Σ_{i∈S} ℓ(z_i) / n``).

The generator is seeded with the seed alone, so all runs of one seed share its stream.

Under ``drop`` and ``mask`` a left-out run's steps equal the full run's until the first batch
that holds its instance (for a group: any of its members) (:func:`differs_from_full` tells which runs differ at a step); under
``downweight`` they differ from the first step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fimo.errors import check_choice
from fimo.settings import SCHEMES


@dataclass(frozen=True)
class Groups:
    """Sets of training indices, each left out by one run: the member lists laid end to end
    (``members``) and where each group starts (``offsets``, G + 1 entries).

    >>> g = Groups.of([[4, 1], [7]])
    >>> len(g), g[0].tolist(), g.sizes().tolist(), g.members.tolist(), g.offsets.tolist()
    (2, [4, 1], [2, 1], [4, 1, 7], [0, 2, 3])
    >>> Groups.singles([3, 5]).offsets.tolist(), Groups.of([[4, 1], [7]])[1:].members.tolist()
    ([0, 1, 2], [7])
    """

    members: np.ndarray  # (Σ sizes,) int64
    offsets: np.ndarray  # (G + 1,) int64, offsets[0] = 0

    def __post_init__(self):
        object.__setattr__(self, "members", np.asarray(self.members, dtype=np.int64))
        object.__setattr__(self, "offsets", np.asarray(self.offsets, dtype=np.int64))

    @classmethod
    def of(cls, groups) -> Groups:
        """Groups from a sequence of index lists (a :class:`Groups` is returned as it is).

        >>> Groups.of([[2, 0], [1]]).offsets.tolist()
        [0, 2, 3]
        """
        if isinstance(groups, Groups):
            return groups
        lists = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
        sizes = [len(g) for g in lists]
        members = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        return cls(members, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    @classmethod
    def singles(cls, indices) -> Groups:
        """One group of one per index.

        >>> [g.tolist() for g in Groups.singles([7, 3]).lists()]
        [[7], [3]]
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return cls(indices, np.arange(len(indices) + 1))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, g):
        if isinstance(g, slice):
            start, stop, step = g.indices(len(self))
            if step != 1:
                raise ValueError("Groups: only contiguous slices")
            stop = max(start, stop)
            lo, hi = self.offsets[start], self.offsets[stop]
            return Groups(self.members[lo:hi], self.offsets[start : stop + 1] - lo)
        return self.members[self.offsets[g] : self.offsets[g + 1]]

    def __add__(self, other: Groups) -> Groups:
        """The groups of ``self`` followed by those of ``other``.

        >>> (Groups.singles([5]) + Groups.of([[1, 2]])).offsets.tolist()
        [0, 1, 3]
        """
        return Groups(
            np.concatenate([self.members, other.members]),
            np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
        )

    def sizes(self) -> np.ndarray:
        """The number of members of each group.

        >>> Groups.of([[2, 0], [1]]).sizes().tolist()
        [2, 1]
        """
        return np.diff(self.offsets)

    def lists(self) -> list[np.ndarray]:
        """Each group's members as an array.

        >>> [g.tolist() for g in Groups.of([[2, 0], [1]]).lists()]
        [[2, 0], [1]]
        """
        return [self[g] for g in range(len(self))]

    def padded(self, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, K) long members, ``fill`` past each group's end, and the (G, K) bool mask of
        real members; K is the largest group size (at least 1).

        >>> members, real = Groups.of([[2, 0], [1]]).padded(fill=-1)
        >>> members.tolist(), real.tolist()
        ([[2, 0], [1, -1]], [[True, True], [True, False]])
        """
        sizes = torch.as_tensor(self.sizes())
        width = max(1, int(sizes.max()) if len(sizes) else 1)
        real = torch.arange(width).unsqueeze(0) < sizes.unsqueeze(1)
        out = torch.full((len(self), width), fill, dtype=torch.long)
        out[real] = torch.as_tensor(self.members)
        return out, real


@dataclass
class Step:
    """One optimizer step of all R runs of a seed: run r's step loss is
    ``Σ_b w[r, b] · ℓ(z_idx[r, b])``; ``active`` is None when every run steps.

    >>> step = next(schedule(5, np.array([0]), batch_size=2, epochs=1, seed=0))
    >>> tuple(step.idx.shape), step.w.sum(1).tolist(), step.active, step.epoch, step.last_in_epoch
    ((2, 2), [1.0, 1.0], None, 0, False)
    """

    idx: torch.Tensor  # (R, W) long
    w: torch.Tensor  # (R, W) float
    active: torch.Tensor | None  # (R,) bool, or None when every run steps
    epoch: int  # 0-based epoch of this step
    last_in_epoch: bool


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Steps in one epoch of the full run (a left-out run never takes more).

    >>> steps_per_epoch(5, batch_size=2)
    3
    """
    return math.ceil(n / batch_size)


def differs_from_full(step: Step) -> torch.Tensor:
    """(R,) bool: the runs whose step differs from the full run's (run 0) in the instances,
    their weights or whether the run steps at all.

    A run none of whose steps so far differed is still the full run, bit for bit: the engine
    computes it only from its first differing step on.

    >>> left_out = np.array([3, 5])
    >>> first = next(schedule(8, left_out, batch_size=4, epochs=1, seed=0, scheme="mask"))
    >>> first.idx[0].tolist(), differs_from_full(first).tolist()
    ([4, 0, 7, 3], [False, True, False])
    """
    same = (step.idx == step.idx[:1]).all(1) & (step.w == step.w[:1]).all(1)
    if step.active is not None:
        same &= step.active == step.active[0]
    return ~same


def schedule(
    n: int,
    left_out: np.ndarray | Groups,
    batch_size: int,
    epochs: int,
    seed: int,
    scheme: str = "drop",
    max_steps: int | None = None,
) -> Iterator[Step]:
    """Yield the steps of all runs of one seed (run 0 full, then one per left-out index, or
    one per group when ``left_out`` is a :class:`Groups`).

    Five instances in batches of two, the full run and the run without instance 0; each line
    is one step, the instances each run sees (weight > 0):

    >>> for step in schedule(5, np.array([0]), batch_size=2, epochs=1, seed=0):
    ...     print([row[w > 0].tolist() for row, w in zip(step.idx, step.w)], step.active)
    [[4, 0], [4, 1]] None
    [[1, 3], [3, 2]] None
    [[2], []] tensor([ True, False])
    >>> for step in schedule(5, np.array([0]), batch_size=2, epochs=1, seed=0, scheme="mask"):
    ...     print([row[w > 0].tolist() for row, w in zip(step.idx, step.w)])
    [[4, 0], [4]]
    [[1, 3], [1, 3]]
    [[2], [2]]

    Leaving out the group {0, 3} under ``drop``: the same order without both:

    >>> for step in schedule(5, Groups.of([[0, 3]]), batch_size=2, epochs=1, seed=0):
    ...     print([row[w > 0].tolist() for row, w in zip(step.idx, step.w)])
    [[4, 0], [4, 1]]
    [[1, 3], [2]]
    [[2], []]
    """
    check_choice("further.scheme", scheme, SCHEMES)
    groups = left_out if isinstance(left_out, Groups) else Groups.singles(left_out)
    gen = torch.Generator().manual_seed(int(seed))
    offsets = torch.arange(batch_size)
    n_batches = steps_per_epoch(n, batch_size)
    members, real = groups.padded(fill=0)
    excluded = _exclusion(scheme, members, real, n)
    downweighted = _downweighted(members, real, n) if scheme == "downweight" else None
    sizes = torch.as_tensor(groups.sizes())
    taken = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        before = _kept_before(perm, members, real) if scheme == "drop" else None
        for b in range(n_batches):
            if max_steps is not None and taken >= max_steps:
                return
            k = b * batch_size + offsets  # positions in the (shortened) sequence, (B,)
            if scheme == "drop":
                idx, valid = _drop_rows(perm, before, k, n, sizes)
            else:
                idx, valid = _shared_rows(perm, k, n, 1 + len(groups), excluded)
            counts = valid.sum(1, keepdim=True)
            w = valid.double() / counts.clamp(min=1)
            if downweighted is not None:  # the same columns at every step
                idx, w = torch.cat([idx, downweighted[0]], 1), torch.cat([w, downweighted[1]], 1)
            active = counts.squeeze(1) > 0
            yield Step(idx, w, None if bool(active.all()) else active, epoch, b == n_batches - 1)
            taken += 1


def _exclusion(scheme: str, members: torch.Tensor, real: torch.Tensor, n: int):
    """For ``mask``, a function of a (runs − 1, B) index block giving which entries belong to
    the run's left-out instance or group; None for the other schemes."""
    if scheme != "mask":
        return None
    if members.shape[1] == 1:
        return lambda idx: idx == members
    is_member = torch.zeros(len(members), n, dtype=torch.bool)
    rows = torch.arange(len(members)).unsqueeze(1).expand_as(members)
    is_member[rows[real], members[real]] = True
    return lambda idx: is_member.gather(1, idx)


def _kept_before(perm: torch.Tensor, members: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(groups, size): for each group's members in this epoch's order (sorted), the count of
    kept instances before member m, i.e. its position minus its rank m.

    Member m precedes the j-th kept instance (0-based) iff that count is ≤ j, so the j-th kept
    one sits at j + #{m: count ≤ j}.
    """
    n = len(perm)
    position = torch.empty(n, dtype=torch.long)
    position[perm] = torch.arange(n)
    pos = torch.where(real, position[members], n + members.shape[1]).sort(1).values
    return (pos - torch.arange(members.shape[1])).contiguous()


def _drop_rows(perm, before, k, n: int, sizes: torch.Tensor):
    """``drop``: (indices, valid) of the batch at positions ``k`` for the full run and for
    each run's order without its members (shifted past them)."""
    valid_full = (k < n).unsqueeze(0)
    valid_left = k.unsqueeze(0) < (n - sizes).unsqueeze(1)
    kk = k.unsqueeze(0).expand(len(before), -1).contiguous()
    shifted = kk + torch.searchsorted(before, kk, right=True)
    idx = torch.cat([k.clamp(max=n - 1).unsqueeze(0), shifted.clamp(max=n - 1)])
    return perm[idx], torch.cat([valid_full, valid_left])


def _shared_rows(perm, k, n: int, n_runs: int, excluded):
    """``mask`` and ``downweight``: every run sees the full run's batch; under ``mask`` the
    run's own members are not valid."""
    valid = (k < n).unsqueeze(0).expand(n_runs, -1).clone()
    idx = perm[k.clamp(max=n - 1)].unsqueeze(0).expand(n_runs, -1).clone()
    if excluded is not None:
        valid[1:] &= ~excluded(idx[1:])
    return idx, valid


def _downweighted(members, real, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``downweight``: the columns appended to every step's batch, (R, K) indices and weights:
    each run's members with weight −1/n (none for run 0; index 0 at weight 0 past a group's
    end). Built once: they are the same at every step."""
    extra_idx = torch.cat([torch.zeros(1, members.shape[1], dtype=torch.long), members])
    extra_real = torch.cat([torch.zeros_like(real[:1]), real])
    extra_w = torch.zeros(extra_real.shape, dtype=torch.float64)
    extra_w.masked_fill_(extra_real, -1.0 / n)
    return extra_idx, extra_w
