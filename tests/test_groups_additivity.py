"""Additivity (issue 14): a group's measured effect against the sum of its members' measured
single-instance effects, in a nested design (groups drawn from the single left-out instances).

The metric is checked against a plain computation (loops over seeds, test instances, groups
and checkpoints); the nested groups against their definition; the pipeline writes
metrics/additivity.csv equal to the function on the stored gold standard, and the report shows it.
"""

import csv
import math

import numpy as np
import pytest
import torch

from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.evaluate.lds import additivity, group_tables
from fimo.experiments.config import from_dict, with_overrides
from fimo.experiments.pipeline import run
from fimo.further.gold import GoldStandard
from fimo.further.groups import make_groups, nested_groups

LEFT_OUT = [3, 8, 11, 20, 25, 31]
GROUPS = [[3, 8], [11, 20, 25], [8, 31], [3, 11, 25, 31], [20, 40]]  # the last is not nested


def _gold(seeds=5, checkpoints=2, tests=4, seed=0):
    """A gold standard with random losses, single runs for LEFT_OUT and group runs for
    GROUPS; the group losses are built to be roughly additive, with noise."""
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(seeds, checkpoints, tests))
    without = full[..., None] + rng.normal(0.1, 0.3, size=(seeds, checkpoints, tests, 6))
    effects = without - full[..., None]
    position = {i: k for k, i in enumerate(LEFT_OUT)}
    group = np.stack(
        [
            0.8 * sum(effects[..., position[i]] for i in g if i in position)
            + rng.normal(0, 0.2, size=full.shape)
            for g in GROUPS
        ],
        axis=-1,
    )
    return GoldStandard(
        full, without, [5, 10][:checkpoints], [1.0, 2.0][:checkpoints], LEFT_OUT,
        list(range(tests)), list(range(seeds)),
        loss_without_group=full[..., None] + group, groups=GROUPS,
    )  # fmt: skip


def _plain(gold, seeds):
    """cosine, relative gap and slope per checkpoint from the seeds ``seeds``, by loops."""
    position = {int(i): k for k, i in enumerate(gold.left_out)}
    nested = [g for g, m in enumerate(GROUPS) if all(i in position for i in m)]
    out = []
    for c in range(len(gold.steps)):
        dd = aa = da = diff = 0.0
        for t in range(len(gold.test)):
            for g in nested:
                d = np.mean([gold.loss_without_group[s, c, t, g] - gold.loss_full[s, c, t]
                             for s in seeds])  # fmt: skip
                singles = [
                    np.mean([gold.loss_without[s, c, t, position[i]] - gold.loss_full[s, c, t]
                             for s in seeds])
                    for i in GROUPS[g]
                ]  # fmt: skip
                a = sum(singles)
                dd, aa, da, diff = dd + d * d, aa + a * a, da + d * a, diff + (d - a) ** 2
        out.append(
            {"cosine": da / math.sqrt(dd * aa), "relative_gap": math.sqrt(diff / dd),
             "slope": da / aa}
        )  # fmt: skip
    return out


def test_additivity_equals_a_plain_computation_with_jackknife_errors():
    gold = _gold()
    rows = additivity(gold)
    S = len(gold.seeds)
    full = _plain(gold, range(S))
    leave_one = [_plain(gold, [s for s in range(S) if s != k]) for k in range(S)]
    assert len(rows) == 2 and all(r["groups"] == 4 for r in rows)  # group [20, 40] not nested
    for c, row in enumerate(rows):
        for key in ("cosine", "relative_gap", "slope"):
            assert row[key] == pytest.approx(full[c][key], rel=1e-12)
            each = [lo[c][key] for lo in leave_one]
            jack = math.sqrt((S - 1) / S * sum((v - np.mean(each)) ** 2 for v in each))
            assert row[f"{key}_se"] == pytest.approx(jack, rel=1e-10)
    # the roughly additive groups (0.8 × the sum, plus noise) show it
    assert 0.5 < rows[-1]["slope"] < 1.0 and rows[-1]["cosine"] > 0.8


def test_additivity_is_the_same_computed_a_checkpoint_at_a_time(monkeypatch):
    """The single differences are summed a block of checkpoints at a time (never the whole
    (S, C, T, L) array); blocks of one checkpoint give the same rows."""
    from fimo.further import gold as gold_module

    gold = _gold()
    whole = additivity(gold)
    monkeypatch.setattr(gold_module, "BLOCK_BYTES", 1)  # one checkpoint a block
    assert [p.steps.tolist() for p in gold.blocks()] == [[s] for s in gold.steps.tolist()]
    assert additivity(gold) == whole


def test_noise_gap_is_the_seed_spread_of_the_difference():
    gold = _gold(seeds=4)
    position = {int(i): k for k, i in enumerate(gold.left_out)}
    nested = [0, 1, 2, 3]
    for c, row in enumerate(additivity(gold)):
        spread = norm = 0.0
        for t in range(len(gold.test)):
            for g in nested:
                per_seed = [
                    gold.loss_without_group[s, c, t, g] - gold.loss_full[s, c, t]
                    - sum(gold.loss_without[s, c, t, position[i]] - gold.loss_full[s, c, t]
                          for i in GROUPS[g])
                    for s in range(4)
                ]  # fmt: skip
                spread += np.var(per_seed, ddof=1) / 4
                effect = np.mean(
                    [
                        gold.loss_without_group[s, c, t, g] - gold.loss_full[s, c, t]
                        for s in range(4)
                    ]
                )
                norm += effect**2
        assert row["noise_gap"] == pytest.approx(math.sqrt(spread / norm), rel=1e-12)


def test_exactly_additive_groups_have_cosine_one_and_no_gap():
    gold = _gold(seeds=3)
    position = {int(i): k for k, i in enumerate(gold.left_out)}
    effects = gold.loss_without - gold.loss_full[..., None]
    summed = np.stack([effects[..., [position[i] for i in g]].sum(-1) for g in GROUPS[:4]], -1)
    exact = GoldStandard(
        gold.loss_full, gold.loss_without, gold.steps, gold.epochs, gold.left_out, gold.test,
        gold.seeds, loss_without_group=gold.loss_full[..., None] + summed, groups=GROUPS[:4],
    )  # fmt: skip
    for row in additivity(exact):
        assert row["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert row["relative_gap"] == pytest.approx(0.0, abs=1e-7)
        assert row["slope"] == pytest.approx(1.0, abs=1e-12)
        assert row["spearman"] == pytest.approx(1.0, abs=1e-12)


def test_additivity_needs_nested_groups_and_group_tables_skip_it_without():
    gold = _gold()
    apart = GoldStandard(
        gold.loss_full, gold.loss_without, gold.steps, gold.epochs, gold.left_out, gold.test,
        gold.seeds, loss_without_group=gold.loss_without_group[..., 4:], groups=GROUPS[4:],
    )  # fmt: skip
    with pytest.raises(InputError, match="kind = 'nested'"):
        additivity(apart)
    assert group_tables(apart, {})[0]["additivity"] == []
    assert group_tables(gold, {})[0]["additivity"] == additivity(gold)


def test_nested_groups_are_reproducible_subsets_of_the_left_out_instances():
    left_out = np.array([40, 2, 17, 9, 33, 5, 21, 12])
    groups = nested_groups(left_out, count=30, fraction=0.25, seed=4)
    again = nested_groups(left_out, count=30, fraction=0.25, seed=4)
    assert np.array_equal(groups.members, again.members)
    assert groups.sizes().tolist() == [2] * 30
    for members in groups.lists():
        assert set(members.tolist()) <= set(left_out.tolist())
        assert members.tolist() == sorted(set(members.tolist()))
    # the draw is numpy's default_rng(seed).choice over the left-out indices, group by group
    rng = np.random.default_rng(4)
    assert [sorted(rng.choice(left_out, 2, replace=False).tolist()) for _ in range(30)] == [
        m.tolist() for m in groups.lists()
    ]
    with pytest.raises(InputError, match="a nested group needs at least 2"):
        nested_groups(left_out, count=3, fraction=0.1)
    data = ArrayDataset(torch.zeros(50, 2), torch.zeros(50))
    made, names = make_groups(data, "nested", 5, 0.5, 1, left_out=left_out)
    assert names is None and made.sizes().tolist() == [4] * 5


def test_a_nested_spec_parses_and_describes_itself():
    config = with_overrides(from_dict({}), groups="nested:20:0.25")
    g = config.groups
    assert (g.kind, g.count, g.fraction, g.describe()) == ("nested", 20, 0.25, "nested:20:0.25")
    assert from_dict(config.to_dict()).groups == g
    assert from_dict({"groups": {"kind": "nested", "fraction": 1.0}}).groups.fraction == 1.0


# -- through the pipeline ----------------------------------------------------------------------
TINY = {
    "name": "tiny-nested",
    "data": {"dataset": "diabetes", "n_test": 6},
    "model": {"hidden": [16]},
    "training": {"epochs": 20, "lr": 0.01},
    "further": {"seeds": 3, "left_out": 6, "epochs": 2, "batch_size": 128, "record_every": 4,
                "lr": 0.05},
    "methods": {"names": ["grad_dot"], "train": "left_out"},
    "groups": {"kind": "nested", "count": 5, "fraction": 0.5},
}  # fmt: skip


def test_a_nested_run_writes_the_additivity_table_and_report(tmp_path):
    result = run(from_dict(TINY), tmp_path / "run", quiet=True)
    gold = result.gold
    assert set(gold.groups.members.tolist()) <= set(gold.left_out.tolist())
    assert gold.groups.sizes().tolist() == [3] * 5
    with open(tmp_path / "run" / "metrics" / "additivity.csv") as fh:
        written = list(csv.DictReader(fh))
    expected = additivity(GoldStandard.load(tmp_path / "run"))
    assert len(written) == len(expected) == len(gold.steps)
    for got, want in zip(written, expected, strict=True):
        for key in ("cosine", "relative_gap", "slope", "noise_gap", "cosine_se"):
            assert float(got[key]) == pytest.approx(want[key], rel=1e-9)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<h3>Additivity</h3>" in page and "nested groups have cosine" in page
