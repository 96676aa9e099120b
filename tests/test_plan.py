"""The leave-out schemes: which instances each run sees."""

import numpy as np
import pytest
import torch

from fimo.errors import InputError
from fimo.further.plan import schedule


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
