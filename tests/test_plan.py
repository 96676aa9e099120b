"""The leave-out schemes: which instances each run sees."""

import numpy as np
import pytest
import torch

from fimo.errors import InputError
from fimo.further.plan import Groups, schedule


def epoch_orders(n, left_out, B, epochs, seed, scheme):
    """Per run and epoch, the instances seen in order, with their weights."""
    runs = 1 + len(left_out)
    seen = [[[] for _ in range(epochs)] for _ in range(runs)]
    for step in schedule(n, np.array(left_out), B, epochs, seed, scheme):
        for r in range(runs):
            for j, w in zip(step.idx[r].tolist(), step.w[r].tolist(), strict=True):
                if w != 0:
                    seen[r][step.epoch].append((j, w))
    return seen


@pytest.mark.parametrize("n,B", [(50, 8), (49, 8), (17, 16)])
def test_drop_removes_exactly_one_instance_per_epoch(n, B):
    left_out = [0, 7, n - 1]
    seen = epoch_orders(n, left_out, B, epochs=3, seed=5, scheme="drop")
    gen = torch.Generator().manual_seed(5)
    for e in range(3):
        perm = torch.randperm(n, generator=gen).tolist()  # RandomSampler's order
        full = [j for j, _ in seen[0][e]]
        assert full == perm
        for r, i in enumerate(left_out, start=1):
            order = [j for j, _ in seen[r][e]]
            assert order == [j for j in perm if j != i]
            assert sorted([*order, i]) == list(range(n))


def test_drop_weights_are_batch_means():
    seen = epoch_orders(20, [3], 8, epochs=1, seed=0, scheme="drop")
    full_w = [w for _, w in seen[0][0]]
    assert full_w == [1 / 8] * 16 + [1 / 4] * 4
    left_w = [w for _, w in seen[1][0]]
    assert left_w == [1 / 8] * 16 + [1 / 3] * 3


def test_mask_keeps_batches_and_zeroes_the_instance():
    n, B = 30, 8
    steps = list(schedule(n, np.array([4, 11]), B, 1, seed=2, scheme="mask"))
    for st in steps:
        assert torch.equal(st.idx[1], st.idx[0]) and torch.equal(st.idx[2], st.idx[0])
        for r, i in ((1, 4), (2, 11)):
            has_i = st.idx[r] == i
            assert (st.w[r][has_i] == 0).all()
            assert st.w[r].sum().item() == pytest.approx(1.0)


def test_downweight_subtracts_one_over_n():
    n = 30
    st = next(schedule(n, np.array([4]), 8, 1, seed=2, scheme="downweight"))
    assert st.idx[1, -1].item() == 4 and st.w[1, -1].item() == pytest.approx(-1 / n)
    assert st.w[0, -1].item() == 0
    assert st.w[1, :-1].sum().item() == pytest.approx(1.0)


def test_same_seed_same_stream_different_seed_different():
    a = [s.idx for s in schedule(40, np.array([1]), 8, 1, 0, "drop")]
    b = [s.idx for s in schedule(40, np.array([1]), 8, 1, 0, "drop")]
    c = [s.idx for s in schedule(40, np.array([1]), 8, 1, 1, "drop")]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(InputError, match=r"further\.scheme.*'drop'"):
        next(schedule(10, np.array([1]), 4, 1, 0, "dorp"))


def reference_steps(n, groups, B, epochs, seed, scheme, max_steps=None):
    """Every step of :func:`schedule`, written plainly: for each epoch the seed's permutation,
    and for each run a Python list of the instances it sees, cut into batches of B.

    Conventions (the schedule's, spelled out): every row has B entries; a batch shorter than
    B is filled with the epoch's last instance at weight 0; under ``mask`` and ``downweight``
    every run holds the full run's batch, under ``mask`` with weight 0 for its members;
    under ``downweight`` every row then gets one column per member of the largest group
    (weight −1/n for the run's own members, index 0 and weight 0 elsewhere). A run's weights
    are 1 / (its instances in the batch); a run with none takes no step.
    """
    gen = torch.Generator().manual_seed(seed)
    runs = [[], *groups]  # run 0 leaves nothing out
    width = max(1, *(len(g) for g in groups))
    steps_each = -(-n // B)
    out = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).tolist()
        for b in range(steps_each):
            if max_steps is not None and len(out) == max_steps:
                return out
            idx, w = [], []
            for group in runs:
                left = set(group)
                order = [j for j in perm if j not in left] if scheme == "drop" else perm
                batch = order[b * B : (b + 1) * B]
                row = batch + [perm[-1]] * (B - len(batch))
                seen = [j not in left for j in batch] if scheme == "mask" else [True] * len(batch)
                seen += [False] * (B - len(batch))
                count = sum(seen)
                weights = [1.0 / count if s else 0.0 for s in seen]
                if scheme == "downweight":
                    pad = width - len(group)
                    row = row + list(group) + [0] * pad
                    weights = weights + [-1.0 / n] * len(group) + [0.0] * pad
                idx.append(row)
                w.append(weights)
            out.append((idx, w, [any(v > 0 for v in r) for r in w], epoch, b == steps_each - 1))
    return out


SCHEDULE_CASES = [  # n, groups, batch size, epochs, max_steps
    (37, [[5], [0], [36]], 8, 2, None),  # single left-out instances
    (37, [[0, 5, 9, 30], [17], list(range(11, 30)), list(range(0, 37, 2))], 8, 2, None),
    (40, [list(range(40))[:39], [3, 4]], 8, 1, None),  # a group of all but one
    (33, [[1, 2, 3], list(range(8, 33))], 4, 3, 20),  # stopped by max_steps mid-epoch
]


@pytest.mark.parametrize("scheme", ["drop", "mask", "downweight"])
@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=["singles", "groups", "all-but-one", "max"])
def test_schedule_is_the_plain_reference_bit_for_bit(case, scheme):
    n, groups, B, epochs, max_steps = case
    runs = Groups.of(groups)
    got = list(schedule(n, runs, B, epochs, seed=4, scheme=scheme, max_steps=max_steps))
    expected = reference_steps(n, groups, B, epochs, 4, scheme, max_steps)
    assert len(got) == len(expected)
    for step, (idx, w, active, epoch, last) in zip(got, expected, strict=True):
        assert step.idx.dtype == torch.long and step.w.dtype == torch.float64
        assert step.idx.tolist() == idx
        assert step.w.tolist() == w  # float64, exactly
        assert (step.active.tolist() if step.active is not None else [True] * len(w)) == active
        assert step.active is None or not all(active)
        assert (step.epoch, step.last_in_epoch) == (epoch, last)
    if len(groups) == 3 and scheme == "drop":  # the singles: the same as by index
        singles = list(schedule(n, np.array([5, 0, 36]), B, epochs, 4, scheme, max_steps))
        assert all(
            torch.equal(a.idx, b.idx) and torch.equal(a.w, b.w)
            for a, b in zip(singles, got, strict=True)
        )
