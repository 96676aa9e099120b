"""Groups by a continuous column: refused beyond MAX_VALUE_GROUPS distinct values (one line
that names the column, the count and the fix), or binned by quantiles with bins = K."""

import numpy as np
import pytest
import torch

from fimo.cli import main
from fimo.data import ArrayDataset
from fimo.errors import InputError
from fimo.experiments.config import from_dict, with_overrides
from fimo.further.groups import MAX_VALUE_GROUPS, groups_by_feature, make_groups, quantile_bins


def _data(values, name="age"):
    x = torch.as_tensor(np.asarray(values, dtype=np.float64))
    return ArrayDataset(torch.stack([x, torch.zeros_like(x)], 1), torch.zeros(len(x)),
                        feature_names=(name, "other"))  # fmt: skip


def test_a_column_with_too_many_values_is_refused_with_the_fix():
    values = np.arange(MAX_VALUE_GROUPS + 1) * 0.5
    with pytest.raises(InputError) as caught:
        groups_by_feature(_data(values), "age")
    message = str(caught.value)
    assert "\n" not in message
    assert f"has {MAX_VALUE_GROUPS + 1} distinct values" in message
    assert "'feature:age'" in message and "feature:age:bins=5" in message
    # at the cap it is allowed: one group per value
    groups, found = groups_by_feature(_data(values[:MAX_VALUE_GROUPS]), "age")
    assert len(groups) == MAX_VALUE_GROUPS and found == sorted(values[:MAX_VALUE_GROUPS].tolist())


def test_quantile_bins_equal_a_direct_numpy_computation():
    rng = np.random.default_rng(3)
    values = rng.normal(40, 12, size=500).round(1)
    groups, names = groups_by_feature(_data(values), "age", bins=5)
    edges = np.quantile(values, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    expected = []
    for k in range(5):
        low, high = edges[k], edges[k + 1]
        inside = (values >= low) & ((values < high) if k < 4 else (values <= high))
        expected.append(np.flatnonzero(inside).tolist())
    assert [g.tolist() for g in groups.lists()] == expected
    assert all(95 <= len(g) <= 105 for g in expected)  # quantiles: about 100 each
    assert names[0] == f"[{edges[0]:.4g}, {edges[1]:.4g})" and names[-1].endswith("]")
    assert sorted(groups.members.tolist()) == list(range(500))  # every instance, once


def test_ties_merge_empty_bins_and_text_columns_cannot_be_binned():
    values = np.array([1.0] * 8 + [2.0, 3.0])  # the first quantiles all equal 1
    bin_of, names = quantile_bins(values, 4)
    assert len(names) == len(set(bin_of.tolist())) and bin_of[:8].tolist() == [0] * 8
    with pytest.raises(InputError, match="bins need a numeric column"):
        quantile_bins(np.array(["a", "b"]), 2, "feature:sex")
    with pytest.raises(InputError, match="bins = 1; must be a whole number ≥ 2"):
        quantile_bins(values, 1)


def test_bins_through_the_configuration_and_make_groups():
    config = with_overrides(from_dict({}), groups="feature:age:bins=4")
    g = config.groups
    assert (g.kind, g.feature, g.bins, g.describe()) == ("feature", "age", 4, "feature:age:bins=4")
    assert from_dict(config.to_dict()).groups == g
    assert "bins" not in with_overrides(from_dict({}), groups="feature:age").to_dict()["groups"]
    with pytest.raises(InputError, match=r"groups\.bins: got 1"):
        from_dict({"groups": {"kind": "feature", "feature": "age", "bins": 1}})
    with pytest.raises(InputError, match="expected feature:NAME:bins=K"):
        from_dict({"groups": {"kind": "feature:age:bins=many"}})
    groups, names = make_groups(_data(np.arange(12.0)), "feature", feature="age", bins=3)
    assert [m.tolist() for m in groups.lists()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert names == ["age in [0, 3.667)", "age in [3.667, 7.333)", "age in [7.333, 11]"]


def test_fimo_run_refuses_a_continuous_column_in_one_line(tmp_path, capsys):
    # diabetes' bmi has 159 distinct values among the 397 training instances
    code = main(["run", "diabetes", "--groups", "feature:bmi", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "feature:bmi" in err and "159 distinct values" in err and "bins=5" in err
