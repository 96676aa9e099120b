"""GoldStandard views against direct numpy computations."""

import numpy as np
import pytest

from fimo.errors import InputError
from fimo.further.gold import GoldStandard


@pytest.fixture
def gold():
    rng = np.random.default_rng(0)
    S, C, T, L = 6, 3, 4, 5
    return GoldStandard(
        loss_full=rng.normal(size=(S, C, T)),
        loss_without=rng.normal(size=(S, C, T, L)),
        steps=[10, 20, 30], epochs=[0.5, 1.0, 1.5], left_out=[3, 8, 13, 21, 40],
        test=[0, 1, 2, 5], seeds=[10, 11, 12, 13, 14, 15],
    )  # fmt: skip


def test_views_follow_the_paper(gold):
    diff = gold.loss_without - gold.loss_full[..., None]  # eq. 17
    np.testing.assert_array_equal(gold.adjusted(), diff)
    centred = diff - diff.mean(-1, keepdims=True)  # eq. 13
    np.testing.assert_allclose(gold.centred(), centred)
    np.testing.assert_allclose(gold.centred().sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose(gold.mean(), centred.mean(0))
    np.testing.assert_allclose(gold.mean(centred=False), diff.mean(0))
    np.testing.assert_allclose(gold.sem(), centred.std(0, ddof=1) / np.sqrt(6))
    w = gold.windows(2)
    assert w.shape == (3, 3, 4, 5)
    np.testing.assert_allclose(w[1], centred[2:4].mean(0))
    assert gold.windows(4).shape[0] == 1  # 6 seeds: one whole window of 4
    with pytest.raises(InputError, match="windows"):
        gold.windows(7)


def test_select_by_value(gold):
    sub = gold.select(seeds=[12, 10], steps=[30], test=[5, 0], left_out=[21, 3])
    assert sub.seeds.tolist() == [12, 10] and sub.steps.tolist() == [30]
    assert sub.test.tolist() == [5, 0] and sub.left_out.tolist() == [21, 3]
    assert sub.epochs.tolist() == [1.5]
    np.testing.assert_array_equal(
        sub.loss_without, gold.loss_without[[2, 0]][:, [2]][:, :, [3, 0]][..., [3, 0]]
    )
    np.testing.assert_array_equal(sub.loss_full, gold.loss_full[[2, 0]][:, [2]][:, :, [3, 0]])
    with pytest.raises(InputError, match="no test index \\[7\\]"):
        gold.select(test=[7])


def test_save_and_load_a_run_directory(gold, tmp_path):
    gold.save(tmp_path / "further" / "gold.npz")
    loaded = GoldStandard.load(tmp_path)
    np.testing.assert_array_equal(loaded.loss_without, gold.loss_without)
    assert loaded.left_out.tolist() == gold.left_out.tolist()
    with pytest.raises(InputError, match="no gold standard"):
        GoldStandard.load(tmp_path / "elsewhere")
