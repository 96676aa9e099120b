"""FT-LDS, its noise ceiling and additivity against direct scipy / numpy computations."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from fimo.errors import InputError
from fimo.evaluate.lds import additivity, ft_lds, ft_lds_noise_ceiling
from fimo.further.gold import GoldStandard
from fimo.scores import Scores

S, C, T, N = 4, 2, 5, 12  # seeds, checkpoints, test instances, training instances
GROUPS = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10, 11], [1, 5, 9], [0, 11]]


def case(seed=0):
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(S, C, T))
    effects = rng.normal(size=(C, T, len(GROUPS)))  # shared by the seeds, plus seed noise
    without_group = full[..., None] + effects + 0.5 * rng.normal(size=(S, C, T, len(GROUPS)))
    without = full[..., None] + rng.normal(size=(S, C, T, N))
    gold = GoldStandard(
        full, without, [4, 8], [0.5, 1.0], np.arange(N), 10 + np.arange(T), np.arange(S),
        loss_without_group=without_group, groups=GROUPS,
    )  # fmt: skip
    return gold, rng


def test_ft_lds_is_the_mean_spearman_across_groups_computed_directly():
    gold, rng = case()
    flat = rng.normal(size=(T, N))
    steps = rng.normal(size=(3, T, N))  # a method with a checkpoint axis at steps 2, 4, 8
    scores = {
        "flat": Scores(flat, 10 + np.arange(T), np.arange(N), "flat"),
        "steps": Scores(steps, 10 + np.arange(T), np.arange(N), "steps", steps=[2, 4, 8]),
    }
    rows = ft_lds(gold, scores)
    assert [(r["method"], r["step"]) for r in rows] == [
        ("flat", 4), ("flat", 8), ("steps", 4), ("steps", 8)
    ]  # fmt: skip
    measured = (gold.loss_without_group - gold.loss_full[..., None]).mean(axis=0)
    for row in rows:
        c = row["checkpoint"]
        values = flat if row["method"] == "flat" else steps[c + 1]
        rhos = []
        for t in range(T):
            sums = [values[t, g].sum() for g in GROUPS]
            rhos.append(spearmanr(sums, measured[c, t]).statistic)
        assert row["mean"] == pytest.approx(np.mean(rhos), abs=1e-12)
        assert row["sem"] == pytest.approx(np.std(rhos, ddof=1) / np.sqrt(T), abs=1e-12)
        assert row["n"] == T and row["groups"] == len(GROUPS)


def test_ft_lds_noise_ceiling_is_the_split_half_spearman_stepped_up():
    gold, _ = case(1)
    two = gold.select(seeds=[0, 1])  # one split: seed 0 against seed 1
    rows = ft_lds_noise_ceiling(two)
    adjusted = two.loss_without_group - two.loss_full[..., None]
    for c in range(C):
        r = np.mean([spearmanr(adjusted[0, c, t], adjusted[1, c, t]).statistic for t in range(T)])
        by = {row["estimate"]: row["mean"] for row in rows if row["checkpoint"] == c}
        assert by["split_half"] == pytest.approx(r, abs=1e-12)
        assert by["spearman_brown"] == pytest.approx(2 * r / (1 + r), abs=1e-12)
        if r > 0:
            assert by["ceiling"] == pytest.approx(np.sqrt(2 * r / (1 + r)), abs=1e-12)


def test_additivity_compares_group_effects_with_sums_of_single_effects():
    gold, _ = case(2)
    rows = additivity(gold)
    single = (gold.loss_without - gold.loss_full[..., None]).mean(axis=0)
    group = (gold.loss_without_group - gold.loss_full[..., None]).mean(axis=0)
    for row in rows:
        c = row["checkpoint"]
        a = np.stack([single[c][:, g].sum(axis=1) for g in GROUPS], axis=1)
        d = group[c]
        assert row["relative_gap"] == pytest.approx(np.linalg.norm(d - a) / np.linalg.norm(d))
        assert row["slope"] == pytest.approx((d * a).sum() / (a * a).sum())
        rho = np.mean([spearmanr(d[t], a[t]).statistic for t in range(T)])
        assert row["spearman"] == pytest.approx(rho, abs=1e-12)
    # exactly additive group effects: no gap, slope 1
    additive = gold.loss_full[..., None] + np.stack(
        [(gold.loss_without - gold.loss_full[..., None])[..., g].sum(-1) for g in GROUPS], -1
    )
    exact = GoldStandard(
        gold.loss_full, gold.loss_without, gold.steps, gold.epochs, gold.left_out, gold.test,
        gold.seeds, loss_without_group=additive, groups=GROUPS,
    )  # fmt: skip
    assert all(
        abs(r["relative_gap"]) < 1e-12 and r["slope"] == pytest.approx(1) for r in additivity(exact)
    )


def test_ft_lds_needs_groups():
    gold, _ = case()
    plain = GoldStandard(gold.loss_full, gold.loss_without, gold.steps, gold.epochs,
                         gold.left_out, gold.test, gold.seeds)  # fmt: skip
    scores = {"m": Scores(np.ones((T, N)), 10 + np.arange(T), np.arange(N), "m")}
    with pytest.raises(InputError, match="group runs"):
        ft_lds(plain, scores)
