"""Left-out runs start at their first step that differs from the full run, bit for bit.

The reference is the engine with the skip switched off (``SKIP_SHARED_STEPS = False``): every
run advanced from step 0 in one stack, as fimo did before. The arrays must be *equal*, not
close: the skip only leaves out computations whose results are already known.
"""

import numpy as np
import pytest
import torch
from torch import nn

from fimo.data import ArrayDataset
from fimo.further import engine
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.models import mlp
from fimo.task import Task


def tabular_task(n=45, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=dtype) > 0).long()
    Xt = torch.randn(7, 5, generator=g, dtype=dtype)
    model = mlp(5, 2, hidden=(16, 16), seed=0).to(dtype)
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, (Xt[:, 0] > 0).long()))


def image_task(n=30, dtype=torch.float64):
    """A small CNN with dropout: the generic path's convolutions under vmap, shared draws."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n + 6, 1, 8, 8, generator=g, dtype=dtype)
    y = (X.mean((1, 2, 3)) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(), nn.Flatten(), nn.Linear(36, 3),
    ).to(dtype)  # fmt: skip
    return Task(model, ArrayDataset(X[:n], y[:n]), ArrayDataset(X[n:], y[n:]))


def both_ways(monkeypatch, task, settings, seed, left_out):
    """(with the skip, without it) for one seed."""
    test = np.arange(len(task.test))
    fast = further_train_seed(task, settings, seed, left_out, test)
    monkeypatch.setattr(engine, "SKIP_SHARED_STEPS", False)
    slow = further_train_seed(task, settings, seed, left_out, test)
    monkeypatch.setattr(engine, "SKIP_SHARED_STEPS", True)
    return fast, slow


def assert_identical(fast, slow):
    np.testing.assert_array_equal(fast.steps, slow.steps)
    np.testing.assert_array_equal(fast.epochs, slow.epochs)
    np.testing.assert_array_equal(fast.loss_full, slow.loss_full)
    np.testing.assert_array_equal(fast.loss_without, slow.loss_without)


OPTIMIZERS = [
    dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    dict(optimizer="adamw", lr=0.01, weight_decay=0.1, clip_norm=0.5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine_name", ["auto", "generic"])
@pytest.mark.parametrize("scheme", ["drop", "mask"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=["sgd-momentum", "adamw-clip"])
def test_skip_is_bit_identical_on_mlps(monkeypatch, case, scheme, engine_name, dtype):
    task = tabular_task(n=21, dtype=dtype)  # 21 = 2·8 + 5: under drop a run may sit out a step
    settings = FurtherSettings(
        epochs=2, batch_size=8, scheme=scheme, engine=engine_name, record_every=1, **case
    )
    left_out = np.array([0, 3, 9, 9, 14, 20])  # one index twice: two identical runs
    fast, slow = both_ways(monkeypatch, task, settings, 5, left_out)
    assert_identical(fast, slow)
    assert np.abs(fast.loss_without - fast.loss_full[..., None]).max() > 1e-5  # runs moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ["drop", "mask"])
def test_skip_is_bit_identical_on_a_cnn_with_dropout(monkeypatch, scheme, dtype):
    """Bit for bit in float64. In float32 a vmap'd convolution's rounding can depend on the
    stack's size on some CPUs (an AMD EPYC: the last bit of 11 of 18 test losses), so there
    the two agree to float32 rounding (docs/gold-standard.md, *Never a single row*)."""
    settings = FurtherSettings(
        optimizer="adam", lr=0.01, epochs=1, batch_size=4, scheme=scheme, record_steps=[1, 3]
    )
    task = image_task(n=18, dtype=dtype)
    fast, slow = both_ways(monkeypatch, task, settings, 2, np.array([1, 8, 12, 17]))
    if dtype == torch.float64:
        assert_identical(fast, slow)
    else:
        np.testing.assert_array_equal(fast.steps, slow.steps)
        for got, want in ((fast.loss_full, slow.loss_full), (fast.loss_without, slow.loss_without)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert fast.steps.tolist() == [1, 3, 5]
    assert np.abs(fast.loss_without - fast.loss_full[..., None]).max() > 1e-4  # runs moved


def first_batches(n, batch_size, seed, left_out):
    """The step (1-based) whose batch holds each left-out index in epoch 1, from the permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return np.array([perm.index(int(i)) // batch_size + 1 for i in left_out])


@pytest.mark.parametrize("scheme", ["drop", "mask", "downweight"])
def test_runs_join_the_stack_at_their_instances_batch(monkeypatch, scheme):
    task = tabular_task()
    left_out = np.array([2, 11, 25, 40])
    settings = FurtherSettings(lr=0.05, epochs=2, batch_size=8, scheme=scheme)
    sizes = []
    advance = engine._RunStack.advance

    def counting(self, item):
        advance(self, item)
        assert len(self.members) >= 2  # never a single row (see _RunStack)
        sizes.append(int((self.members != self.SPARE).sum()))

    monkeypatch.setattr(engine._RunStack, "advance", counting)
    further_train_seed(task, settings, 7, left_out, np.arange(7))
    steps = np.arange(1, len(sizes) + 1)
    if scheme == "downweight":  # ℓ(z_i)/n is subtracted from the first step on
        expected = np.full(len(steps), 1 + len(left_out))
    else:
        joined = first_batches(len(task.train), 8, 7, left_out)
        expected = 1 + (joined[None, :] <= steps[:, None]).sum(1)
        assert expected[0] < 1 + len(left_out)  # some run really starts later
    np.testing.assert_array_equal(sizes, expected)


def test_a_run_whose_instance_never_comes_is_the_full_run():
    """With max_steps before i's batch the run without i is the full run throughout."""
    task = tabular_task()
    first = first_batches(len(task.train), 8, 4, np.arange(len(task.train)))
    late, early = int(np.argmax(first)), int(np.argmin(first))
    settings = FurtherSettings(lr=0.05, epochs=1, batch_size=8, max_steps=int(first.max()) - 1)
    res = further_train_seed(task, settings, 4, [late, early], np.arange(7))
    np.testing.assert_array_equal(res.loss_without[..., 0], res.loss_full)
    assert np.abs(res.loss_without[..., 1] - res.loss_full).max() > 1e-6


@pytest.mark.parametrize("scheme", ["drop", "mask"])
def test_skip_is_bit_identical_on_a_small_bert_layer(monkeypatch, scheme):
    """Attention, LayerNorm, GELU and dropout under vmap, in float32 (the reviews preset's
    kind of model, with AdamW and clipping)."""
    from fimo.text import EncoderLayer, FirstTokenHead, TokenEmbedding

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 40, (24, 10), generator=g)
    ids[::3, 7:] = 0  # padding
    y = (ids[:, 1] > 20).long()
    torch.manual_seed(0)
    model = nn.Sequential(
        TokenEmbedding(40, 16, 12), EncoderLayer(16, 2, 32), FirstTokenHead(16, 2)
    )
    trainable = [n for n, _ in model.named_parameters() if not n.startswith("0.")]
    task = Task(
        model, ArrayDataset(ids[:16], y[:16]), ArrayDataset(ids[16:], y[16:]), trainable=trainable
    )
    settings = FurtherSettings(
        optimizer="adamw", lr=1e-3, clip_norm=1.0, epochs=1, batch_size=4, scheme=scheme,
        record_every=2,
    )  # fmt: skip
    fast, slow = both_ways(monkeypatch, task, settings, 1, np.array([0, 5, 10, 15]))
    assert_identical(fast, slow)
    assert np.abs(fast.loss_without - fast.loss_full[..., None]).max() > 0


def groups_both_ways(monkeypatch, task, settings, seed, left_out, groups):
    """(with the skip, without it) for one seed with group runs, and the rows whose gradients
    each way computed, summed over the steps."""
    computed = []
    gradients = engine._RunStack._gradients

    def counting(self, item, runs, rows):
        computed[-1] += len(rows)
        return gradients(self, item, runs, rows)

    monkeypatch.setattr(engine._RunStack, "_gradients", counting)
    test = np.arange(len(task.test))
    results = []
    for skip in (True, False):
        monkeypatch.setattr(engine, "SKIP_SHARED_STEPS", skip)
        computed.append(0)
        results.append(further_train_seed(task, settings, seed, left_out, test, groups=groups))
    monkeypatch.setattr(engine, "SKIP_SHARED_STEPS", True)
    return results[0], results[1], computed


def assert_groups_identical(fast, slow):
    assert_identical(fast, slow)
    np.testing.assert_array_equal(fast.loss_without_group, slow.loss_without_group)


@pytest.mark.parametrize("with_singles", [False, True], ids=["groups", "singles-and-groups"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine_name", ["auto", "generic"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=["sgd-momentum", "adamw-clip"])
def test_group_runs_sitting_steps_out_are_bit_identical(
    monkeypatch, case, engine_name, dtype, with_singles
):
    """Under drop a group of about half the data sits out the second half of every epoch:
    those steps are not computed, and the numbers are those of computing every run."""
    task = tabular_task(n=21, dtype=dtype)  # 6 steps an epoch of 4; 3 without 10 or 11
    settings = FurtherSettings(
        epochs=2, batch_size=4, scheme="drop", engine=engine_name, record_every=1, **case
    )
    groups = [list(range(0, 21, 2)), list(range(1, 21, 2)), list(range(5, 16))]
    left_out = np.array([4, 17]) if with_singles else np.array([], dtype=np.int64)
    fast, slow, computed = groups_both_ways(monkeypatch, task, settings, 3, left_out, groups)
    assert_groups_identical(fast, slow)
    assert computed[0] < computed[1]  # rows were left out
    assert np.abs(fast.loss_without_group - fast.loss_full[..., None]).max() > 1e-5


@pytest.mark.parametrize("with_singles", [False, True], ids=["groups", "singles-and-groups"])
@pytest.mark.parametrize("scheme", ["drop", "mask"])
def test_group_runs_sitting_steps_out_keep_the_dropout_draws(monkeypatch, scheme, with_singles):
    """A CNN with dropout (the generic path, draws shared by the runs): a step no group run
    takes still takes its draws, so the later steps draw as before, bit for bit. Under mask
    the first group is the seed's first batch: a batch of members only, no step."""
    task = image_task(n=18)
    settings = FurtherSettings(optimizer="adam", lr=0.01, epochs=2, batch_size=4, scheme=scheme)
    first = torch.randperm(18, generator=torch.Generator().manual_seed(2))[:4].tolist()
    evens, odds = list(range(0, 18, 2)), list(range(1, 18, 2))
    groups = [first, [*evens, 1]] if scheme == "mask" else [evens, odds]
    left_out = np.array([6]) if with_singles else np.array([], dtype=np.int64)
    fast, slow, computed = groups_both_ways(monkeypatch, task, settings, 2, left_out, groups)
    assert_groups_identical(fast, slow)
    assert computed[0] < computed[1]
    assert np.abs(fast.loss_without_group - fast.loss_full[..., None]).max() > 1e-5
