"""Group runs: leaving out a set of training instances at once, under every scheme."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.further.gold import GoldStandard
from fimo.further.plan import Groups, differs_from_full, schedule
from fimo.further.runner import gold_standard
from fimo.further.store import ShardStore
from fimo.models import mlp
from fimo.task import Task

SCHEMES = ["drop", "mask", "downweight"]


def make_task(n=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    Xt = torch.randn(6, 5, generator=g, dtype=torch.float64)
    yt = (Xt[:, 0] > 0).long()
    model = mlp(5, 2, hidden=(8, 8), seed=seed).to(torch.float64)
    return Task(model, ArrayDataset(X, y), ArrayDataset(Xt, yt))


def hand_loop(task, settings, seed, group):
    """One run without the set ``group``, written plainly: a loop over the batches of the
    seed's permutations, torch.optim, and the scheme spelled out."""
    model = mlp(5, 2, hidden=(8, 8)).to(torch.float64)
    model.load_state_dict(task.model.state_dict())
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    X, Y = task.train.inputs, task.train.targets
    n, B, S = len(X), settings.batch_size, set(group)
    out = []
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        if settings.scheme == "drop":
            order = [j for j in order if j not in S]
        for start in range(0, len(order), B):
            batch = order[start : start + B]
            if settings.scheme == "mask":
                batch = [j for j in batch if j not in S]
            if not batch:
                continue  # nothing left in this batch: no step
            loss = F.cross_entropy(model(X[batch]), Y[batch])
            if settings.scheme == "downweight":
                members = sorted(S)
                loss = loss - F.cross_entropy(model(X[members]), Y[members], reduction="sum") / n
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(
                F.cross_entropy(model(task.test.inputs), task.test.targets, reduction="none")
            )
    return torch.stack(out).numpy()  # (C, T)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_group_of_one_is_the_single_instance_run_bit_for_bit(scheme):
    task = make_task()
    settings = FurtherSettings(lr=0.05, epochs=2, batch_size=8, scheme=scheme, momentum=0.9)
    test = np.arange(6)
    singles = further_train_seed(task, settings, 3, [4, 20], test)
    ones = further_train_seed(task, settings, 3, [], test, groups=[[20], [4]])
    assert np.array_equal(ones.loss_full, singles.loss_full)
    assert np.array_equal(ones.loss_without_group, singles.loss_without[..., ::-1])
    # beside a larger group, and with single runs in the same call
    both = further_train_seed(task, settings, 3, [4, 20], test, groups=[[20], [4], [1, 2]])
    assert np.array_equal(both.loss_full, singles.loss_full)
    assert np.array_equal(both.loss_without, singles.loss_without)  # unchanged by the groups
    mixed = both.loss_without_group[..., :2]
    if scheme == "downweight":  # a wider stack: the zero-weight padding changes the rounding
        np.testing.assert_allclose(mixed, singles.loss_without[..., ::-1], rtol=0, atol=1e-14)
    else:
        assert np.array_equal(mixed, singles.loss_without[..., ::-1])
    assert not np.allclose(both.loss_without_group[..., 2], singles.loss_full)


GROUPS = [[0, 5, 9, 30], [17], list(range(11, 24))]  # 4, 1 and 13 of 33


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_group_run_is_a_plain_loop_without_the_group(scheme, optimizer):
    task = make_task()
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    lr = 0.05 if optimizer == "sgd" else 0.01
    settings = FurtherSettings(
        optimizer=optimizer, lr=lr, epochs=2, batch_size=8, scheme=scheme, **extra
    )
    res = further_train_seed(task, settings, 7, [], np.arange(6), groups=GROUPS)
    assert res.loss_without_group.shape == (2, 6, 3)
    for g, group in enumerate(GROUPS):
        expected = hand_loop(task, settings, 7, group)
        np.testing.assert_allclose(res.loss_without_group[..., g], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.loss_full, hand_loop(task, settings, 7, []), atol=1e-12)
    # the groups matter: each run is measurably away from the full run
    assert (np.abs(res.loss_without_group - res.loss_full[..., None]) > 1e-6).any(axis=(0, 1)).all()


def test_a_batch_of_members_only_is_no_step_under_mask():
    task = make_task(n=24)
    first_batch = torch.randperm(24, generator=torch.Generator().manual_seed(2))[:8].tolist()
    settings = FurtherSettings(optimizer="adam", lr=0.01, epochs=1, batch_size=8, scheme="mask")
    res = further_train_seed(task, settings, 2, [], np.arange(6), groups=[first_batch])
    expected = hand_loop(task, settings, 2, first_batch)
    np.testing.assert_allclose(res.loss_without_group[..., 0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme", ["drop", "mask"])
def test_a_group_run_departs_from_the_full_run_at_its_first_members_batch(scheme):
    n, B, seed, group = 40, 8, 1, [25, 3, 38]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    first = min(perm.index(i) for i in group) // B
    steps = list(schedule(n, Groups.of([group, [perm[0]]]), B, epochs=1, seed=seed, scheme=scheme))
    departed = [bool(differs_from_full(step)[1]) for step in steps]
    assert departed.index(True) == first
    assert bool(differs_from_full(steps[0])[2])  # the group holding the first instance: at once


def test_groups_with_bad_members_are_refused():
    task = make_task(n=10)
    settings = FurtherSettings(lr=0.05, epochs=1, batch_size=4)
    for groups, what in (
        ([[1, 2], []], "group 1 is empty"),
        ([[1, 12]], "group 0 holds index 12"),
        ([list(range(10))], "holds all 10 training instances"),
        ([[3, 3]], "more than once"),
    ):
        with pytest.raises(InputError, match=what):
            further_train_seed(task, settings, 0, [], [0], groups=groups)


def test_gold_standard_with_groups_resumes_from_its_shards_and_round_trips(tmp_path):
    task = make_task(n=20)
    settings = FurtherSettings(lr=0.05, epochs=2, batch_size=6, scheme="drop")
    groups = [[0, 1, 2], [5], [7, 19], [3, 4, 6, 8]]
    args = (task, settings, [0, 1], [5, 9], [0, 3])
    store = ShardStore(tmp_path, fingerprint="f", description={})
    gold = gold_standard(*args, store=store, left_out_per_shard=3, groups=groups)
    names = sorted(p.name for p in (tmp_path / "shards").glob("*.npz"))
    assert names[:2] == ["seed-00000_gr-00000-00003.npz", "seed-00000_gr-00003-00004.npz"]
    assert len(names) == 6
    # each group's runs equal a seed run of that group alone, and group [5] the single run
    alone = further_train_seed(task, settings, 1, [], [0, 3], groups=[[7, 19]])
    assert np.array_equal(gold.loss_without_group[1, ..., 2], alone.loss_without_group[..., 0])
    assert np.array_equal(gold.loss_without_group[..., 1], gold.loss_without[..., 0])
    # a second call computes nothing: every shard is reused
    reused = []
    again = gold_standard(
        *args, store=store, left_out_per_shard=3, groups=groups,
        on_shard=lambda shard, was_reused: reused.append(was_reused),
    )  # fmt: skip
    assert reused == [True] * 6
    assert np.array_equal(again.loss_without_group, gold.loss_without_group)
    back = GoldStandard.load(tmp_path / "gold.npz")
    assert np.array_equal(back.loss_without_group, gold.loss_without_group)
    assert [g.tolist() for g in back.groups.lists()] == groups
    assert np.array_equal(
        back.adjusted_group(), gold.loss_without_group - gold.loss_full[..., None]
    )
    # a gold standard written before groups existed still loads, without them
    old = GoldStandard(*(getattr(gold, k) for k in ("loss_full", "loss_without", "steps")),
                       gold.epochs, gold.left_out, gold.test, gold.seeds)  # fmt: skip
    assert GoldStandard.load(old.save(tmp_path / "old.npz")).groups is None


def test_groups_alone_need_no_single_left_out_runs():
    task = make_task(n=12)
    gold = gold_standard(task, FurtherSettings(lr=0.05, batch_size=4), [0], [], [0], groups=[[1]])
    assert gold.loss_without.shape == (1, 2, 1, 0) and gold.loss_without_group.shape == (1, 2, 1, 1)
    with pytest.raises(InputError, match="left_out"):
        gold_standard(task, FurtherSettings(lr=0.05, batch_size=4), [0], [], [0])


# -- group definitions ----------------------------------------------------------------------


def test_random_groups_are_reproducible_subsets_of_the_asked_size():
    from fimo.further.groups import random_groups

    a, b = random_groups(200, 50, 0.01, seed=3), random_groups(200, 50, 0.01, seed=3)
    assert [g.tolist() for g in a.lists()] == [g.tolist() for g in b.lists()]
    assert a.sizes().tolist() == [2] * 50
    assert all(len(set(g.tolist())) == 2 and g.min() >= 0 and g.max() < 200 for g in a.lists())
    half = random_groups(200, 30, 0.5, seed=3)
    assert half.sizes().tolist() == [100] * 30
    # independent draws: each index is in about half of the subsets
    counts = np.bincount(half.members, minlength=200)
    assert counts.min() > 3 and counts.max() < 27
    assert [g.tolist() for g in random_groups(200, 3, 0.5, seed=4).lists()] != [
        g.tolist() for g in half[:3].lists()
    ]
    for args, what in (((10, 2, 0.01), "is 0"), ((10, 2, 1.0), "strictly between"),
                       ((10, 0, 0.5), "count")):  # fmt: skip
        with pytest.raises(InputError, match=what):
            random_groups(*args)


def test_groups_by_label_and_by_feature():
    from fimo.further.groups import groups_by_feature, groups_by_label

    task = make_task(n=30)
    y = task.train.targets.numpy()
    groups, labels = groups_by_label(task.train)
    assert labels == [0, 1]
    assert [g.tolist() for g in groups.lists()] == [np.flatnonzero(y == 0).tolist(),
                                                    np.flatnonzero(y == 1).tolist()]  # fmt: skip
    from fimo.data import ArrayDataset

    raw = np.array([["Male", "x"], ["Female", "y"], ["Male", "y"], ["Female", "x"]])
    info = {"raw_columns": ("sex", "other"), "raw": raw}
    data = ArrayDataset(torch.zeros(4, 2), torch.zeros(4), feature_names=("a", "b"), info=info)
    groups, values = groups_by_feature(data, "sex")
    assert values == ["Female", "Male"] and [g.tolist() for g in groups.lists()] == [[1, 3], [0, 2]]
    with pytest.raises(InputError, match="no such column; known"):
        groups_by_feature(data, "age")
    with pytest.raises(InputError, match="same value"):
        groups_by_feature(data, "a")  # all zeros: one group of all the data


def test_groups_from_file(tmp_path):
    from fimo.further.groups import groups_from_file

    path = tmp_path / "groups.txt"
    path.write_text("3 1 4\n\n# a comment\n1,5 , 9  # trailing\n0\n")
    assert [g.tolist() for g in groups_from_file(path, n=10).lists()] == [[3, 1, 4], [1, 5, 9], [0]]
    for text, what in (
        ("1 2\n3 10\n", "line 2: holds index 10; training indices are 0 to 9"),
        ("1 2\n3 x\n", "line 2: '3 x' is not a list of whole numbers"),
        ("# nothing\n\n", "holds no group"),
        (" ".join(map(str, range(10))) + "\n", "line 1: holds all 10 training instances"),
        ("2 2\n", "line 1: names an index more than once"),
    ):
        path.write_text(text)
        with pytest.raises(InputError, match=what):
            groups_from_file(path, n=10)
    with pytest.raises(InputError, match="not found"):
        groups_from_file(tmp_path / "missing.txt", n=10)


def test_label_groups_run_end_to_end():
    from fimo.evaluate.lds import additivity, ft_lds_noise_ceiling
    from fimo.further.groups import groups_by_label, random_groups

    task = make_task(n=16)
    by_label, _ = groups_by_label(task.train)
    groups = random_groups(16, 3, 0.25, seed=0) + by_label
    settings = FurtherSettings(lr=0.05, epochs=1, batch_size=4, scheme="mask")
    gold = gold_standard(task, settings, [0, 1], np.arange(16), [0, 1, 2], groups=groups)
    assert gold.loss_without_group.shape == (2, 1, 3, 5)
    for g, group in enumerate(groups.lists()):  # seed 1's run without each group, by hand
        expected = hand_loop(task, settings, 1, group.tolist())[:, :3]
        np.testing.assert_allclose(gold.loss_without_group[1, ..., g], expected, atol=1e-12)
    assert len(additivity(gold)) == 1 and len(ft_lds_noise_ceiling(gold)) == 3


def _dropout_task():
    """make_task's data with a Dropout layer: the runs' dropout draws must stay paired."""
    task = make_task()
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2)
    ).to(torch.float64)
    return Task(model, task.train, task.test)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("groups", [[[4, 9], [1, 2, 3, 20], [32]], [[32], [7]]])
def test_single_and_group_runs_together_equal_them_apart_with_one_full_run(
    scheme, dropout, groups, monkeypatch
):
    task = _dropout_task() if dropout else make_task()
    settings = FurtherSettings(lr=0.05, batch_size=8, epochs=2, scheme=scheme, momentum=0.9,
                               record_every=3)  # fmt: skip
    left_out, test = [4, 17, 30], [0, 3, 5]  # the groups [32], [7] join after step 1
    # before: one call for the single runs, one for the groups, each with its full run
    alone = further_train_seed(task, settings, 5, left_out, test)
    grouped = further_train_seed(task, settings, 5, [], test, groups=groups)
    import fimo.further.engine as engine

    full_steps = []  # how often a stack steps the full run (row 0: member 0)
    advance = engine._RunStack.advance

    def counting(self, item):
        advance(self, item)
        full_steps.append(int((self.members == 0).sum()))

    monkeypatch.setattr(engine._RunStack, "advance", counting)
    both = further_train_seed(task, settings, 5, left_out, test, groups=groups)
    np.testing.assert_array_equal(both.loss_full, alone.loss_full)
    np.testing.assert_array_equal(both.loss_without, alone.loss_without)
    np.testing.assert_array_equal(both.loss_without_group, grouped.loss_without_group)
    np.testing.assert_array_equal(both.steps, alone.steps)
    steps = 2 * 5  # 33 instances in batches of 8: 5 steps an epoch
    # the full run steps once a step, in one of the stacks (apart, it stepped in both)
    assert sum(full_steps) == steps and len(full_steps) > steps
