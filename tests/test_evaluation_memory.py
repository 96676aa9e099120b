"""The evaluation holds the gold standard once: it works a block of checkpoints at a time,
and the numbers are those of the whole arrays, to the last bit."""

import math
import tracemalloc

import numpy as np
import pytest

import fimo.further.gold as gold_module
from fimo import GoldStandard, Scores
from fimo.evaluate import compute


def synthetic(S=40, C=24, T=6, L=50, seed=0):
    """A gold standard whose left-out runs differ from the full run by small amounts, with
    one flat row (constant over the left-out instances), and two methods: one matrix for
    every checkpoint, and one matrix per checkpoint."""
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(S, C, T))
    without = full[..., None] + 1e-2 * rng.normal(size=(S, C, T, L))
    without += 1e-2 * rng.normal(size=(1, C, T, L))  # what every seed shares
    without[:, 3, 2, :] = full[:, 3, 2, None]
    steps = np.arange(1, C + 1) * 4
    gold = GoldStandard(full, without, steps, steps / 8, np.arange(L) * 3, np.arange(T),
                        np.arange(S))  # fmt: skip
    scores = {
        "one": Scores(rng.normal(size=(T, L)), np.arange(T), np.arange(L) * 3, "one"),
        "per_step": Scores(
            gold.view().mean(0) + 1e-3 * rng.normal(size=(C, T, L)), np.arange(T),
            np.arange(L) * 3, "per_step", steps=steps,
        ),
    }  # fmt: skip
    return gold, scores


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("centred", [True, False])
def test_mean_and_sem_by_blocks_are_those_of_the_whole_array(monkeypatch, centred):
    gold, _ = synthetic(S=7, C=13, T=5, L=33)
    whole = gold.view(centred)  # (S, C, T, L), as the evaluation once held it
    for block in (1, 7 * 5 * 33 * 8 * 3, 10**12):  # one checkpoint, three, all
        monkeypatch.setattr(gold_module, "BLOCK_BYTES", block)
        assert np.array_equal(gold.mean(centred), whole.mean(axis=0))
        assert np.array_equal(gold.sem(centred), whole.std(axis=0, ddof=1) / np.sqrt(7))


def test_every_table_is_the_same_whatever_the_blocks(monkeypatch):
    gold, scores = synthetic(S=11, C=13, T=6, L=20)
    tables = {}
    for block in (1, 10**12):  # a checkpoint at a time; every checkpoint in one block
        monkeypatch.setattr(gold_module, "BLOCK_BYTES", block)
        tables[block] = compute(gold, scores, frames=False, noise_splits=7).rows
    one, whole = tables[1], tables[10**12]
    assert one.keys() == whole.keys()
    for name in whole:
        assert len(one[name]) == len(whole[name]) > 0, name
        for a, b in zip(one[name], whole[name], strict=True):
            assert a.keys() == b.keys()
            assert all(same(a[k], b[k]) for k in a), (name, a, b)


def test_the_evaluation_holds_a_fraction_of_the_gold_standard(monkeypatch):
    gold, scores = synthetic(C=16)
    size = gold.loss_without.nbytes
    monkeypatch.setattr(gold_module, "BLOCK_BYTES", size // 16)  # a checkpoint a block
    tracemalloc.start()
    try:
        compute(gold, scores, frames=False, noise_splits=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # views of the whole (S, C, T, L) array took 9 times its size at once; blocks of a
    # sixteenth take a few blocks' worth, and the (C, T, L) seed means
    assert peak < size, f"peak {peak / size:.2f} × the gold standard's losses"
