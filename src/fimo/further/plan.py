"""Which instances each further-training run sees at each step.

Run 0 is the full run; run r ≥ 1 leaves out training index ``left_out[r - 1]``. Every
scheme is expressed the same way: for each step, an index matrix ``idx`` (R, W) and a
weight matrix ``w`` (R, W), so that run r's step loss is ``Σ_b w[r, b] · ℓ(z_idx[r, b])``,
plus ``active`` (R,), false for a run that takes no step (DESIGN.md ◆ Leave-out schemes):

- ``drop``: the reference code's tabular scheme. Each epoch draws one permutation
  (``torch.randperm(n, generator)`` as ``torch.utils.data.RandomSampler`` does); the full run
  takes it in batches, a left-out run takes the same permutation with i removed, so the batches
  after i's position shift by one and the last batch may be one shorter.
- ``mask``: every run sees the full run's batches; i gets weight zero in its batch and the batch
  mean is over the others.
- ``downweight``: the reference code's text scheme. Every run sees the full run's batches; at
  every step run i also subtracts ``ℓ(z_i) / n``.

The generator is seeded with the seed alone, so all runs of one seed share its stream.

Under ``drop`` and ``mask`` a left-out run's steps equal the full run's until the batch that
holds its instance (:func:`differs_from_full` tells which runs differ at a step); under
``downweight`` they differ from the first step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fimo.errors import check_choice

SCHEMES = ("drop", "mask", "downweight")


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
    left_out: np.ndarray,
    batch_size: int,
    epochs: int,
    seed: int,
    scheme: str = "drop",
    max_steps: int | None = None,
) -> Iterator[Step]:
    """Yield the steps of all runs of one seed (run 0 full, then one per left-out index).

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
    """
    check_choice("further.scheme", scheme, SCHEMES)
    left = torch.as_tensor(np.asarray(left_out), dtype=torch.long)
    n_runs = 1 + len(left)
    gen = torch.Generator().manual_seed(int(seed))
    offsets = torch.arange(batch_size)
    n_batches = steps_per_epoch(n, batch_size)
    taken = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        if scheme == "drop":
            position = torch.empty(n, dtype=torch.long)
            position[perm] = torch.arange(n)
            pos = position[left]  # where each left-out index sits in this epoch's order
        for b in range(n_batches):
            if max_steps is not None and taken >= max_steps:
                return
            k = b * batch_size + offsets  # positions in the (shortened) sequence, (B,)
            if scheme == "drop":
                valid_full = (k < n).unsqueeze(0)
                valid_left = (k.unsqueeze(0) < n - 1).expand(len(left), -1)
                shifted = k.unsqueeze(0) + (k.unsqueeze(0) >= pos.unsqueeze(1)).long()
                idx = torch.cat([k.clamp(max=n - 1).unsqueeze(0), shifted.clamp(max=n - 1)])
                idx = perm[idx]
                valid = torch.cat([valid_full, valid_left])
            else:
                valid = (k < n).unsqueeze(0).expand(n_runs, -1).clone()
                idx = perm[k.clamp(max=n - 1)].unsqueeze(0).expand(n_runs, -1).clone()
                if scheme == "mask":
                    valid[1:] &= idx[1:] != left.unsqueeze(1)
            counts = valid.sum(1, keepdim=True)
            w = valid.double() / counts.clamp(min=1)
            if scheme == "downweight":
                extra_idx = torch.cat([left[:1] * 0, left]).unsqueeze(1)
                extra_w = torch.full((n_runs, 1), -1.0 / n, dtype=torch.float64)
                extra_w[0] = 0.0
                idx = torch.cat([idx, extra_idx], 1)
                w = torch.cat([w, extra_w], 1)
            active = counts.squeeze(1) > 0
            yield Step(idx, w, None if bool(active.all()) else active, epoch, b == n_batches - 1)
            taken += 1
