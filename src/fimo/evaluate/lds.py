"""FT-LDS: how well a method's scores, summed over a group, predict leaving the group out.

The linear datamodeling score (LDS) asks whether the sum of a method's scores over a subset of
the training set ranks subsets the way retraining without them does. FT-LDS asks the same of
further training: for each test instance, the Spearman correlation across the groups g between

- the predicted effect ``Σ_{i∈g} score[t, i]`` (positive = the group helps the test instance),
- the measured effect: the seed mean of ``loss_without_group − loss_full`` (paper eq. 17, per
  seed and checkpoint, then averaged over seeds; positive = leaving g out raised the loss),

averaged over test instances with its standard error, at every checkpoint, for every method.
Centring (eq. 13) subtracts one number per test instance and checkpoint, which moves no group's
rank: FT-LDS is the same with or without it, and the adjusted difference is what is used.

:func:`ft_lds_noise_ceiling` is the gold standard's own agreement with itself by split-half over
seeds (Spearman–Brown corrected, :func:`fimo.evaluate.seeds.noise_floor`); :func:`additivity`
compares a group's measured effect with the sum of its members' measured single effects;
:func:`group_attribution` sets each method's predicted effect of named groups (a class, a
value of a column) beside the measured one; :func:`group_tables` makes all of them for an
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np

from fimo.errors import InputError
from fimo.evaluate.metrics import gold_flat, method_values, per_test_values, summarise
from fimo.evaluate.seeds import noise_floor
from fimo.further.gold import GoldStandard


def _check_groups(gold) -> None:
    if getattr(gold, "groups", None) is None or len(gold.groups) == 0:
        raise InputError(
            "FT-LDS needs a gold standard with group runs (gold_standard(..., groups=...))"
        )


def group_view(gold: GoldStandard) -> GoldStandard:
    """The group runs as a gold standard of their own: ``loss_without`` is
    ``loss_without_group`` and ``left_out`` the group numbers 0 … G − 1.

    >>> g = GoldStandard(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 0)), [5], [1.0], [], [0], [0],
    ...                  loss_without_group=[[[[0.2, 0.1]]]], groups=[[1, 2], [0]])
    >>> group_view(g).left_out.tolist(), group_view(g).adjusted()[0, 0, 0].tolist()
    ([0, 1], [0.2, 0.1])
    """
    _check_groups(gold)
    return GoldStandard(
        gold.loss_full,
        gold.loss_without_group,
        gold.steps,
        gold.epochs,
        np.arange(len(gold.groups)),
        gold.test,
        gold.seeds,
        dict(gold.settings),
    )


def group_sums(gold: GoldStandard, scores) -> np.ndarray:
    """A method's scores summed over each group's members: (T, G), or (C, T, G) for scores
    with a checkpoint axis (at the gold standard's checkpoint steps).

    >>> from fimo.scores import Scores
    >>> g = GoldStandard(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 0)), [5], [1.0], [], [0], [0],
    ...                  loss_without_group=[[[[0.2, 0.1]]]], groups=[[1, 2], [0]])
    >>> group_sums(g, Scores([[1.0, 2.0, 4.0]], test=[0], train=[0, 1, 2], method="m")).tolist()
    [[6.0, 1.0]]
    """
    _check_groups(gold)
    members = np.unique(gold.groups.members)
    on = SimpleNamespace(test=gold.test, left_out=members, steps=gold.steps)
    values = method_values(on, scores)  # (..., T, U)
    where = np.searchsorted(members, gold.groups.members)
    which = np.repeat(np.arange(len(gold.groups)), gold.groups.sizes())
    belongs = np.zeros((len(members), len(gold.groups)))
    np.add.at(belongs, (where, which), 1.0)
    return values @ belongs


def measured_group_effects(gold: GoldStandard) -> np.ndarray:
    """The seed mean of ``loss_without_group − loss_full`` (eq. 17), (C, T, G).

    >>> g = GoldStandard(np.ones((2, 1, 1)), np.zeros((2, 1, 1, 0)), [5], [1.0], [], [0],
    ...                  [0, 1], loss_without_group=[[[[2.0]]], [[[4.0]]]], groups=[[3]])
    >>> measured_group_effects(g).tolist()
    [[[2.0]]]
    """
    return gold.adjusted_group().mean(axis=0)


def ft_lds(gold: GoldStandard, scores: Mapping[str, object]) -> list[dict]:
    """FT-LDS of every method at every checkpoint (the module docstring says what it is).

    Rows: ``method, checkpoint, step, epoch, metric ('ft_lds'), groups, mean, sem, n``, where
    ``n`` counts the test instances whose measured or predicted effects are not all equal.

    Three groups; the method's sums over them rank them as the measured effects do for test
    instance 0 and in reverse for test instance 1:

    >>> from fimo.scores import Scores
    >>> g = GoldStandard(np.zeros((1, 1, 2)), np.zeros((1, 1, 2, 0)), [5], [1.0], [], [0, 1],
    ...                  [0], loss_without_group=[[[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]]],
    ...                  groups=[[0], [1, 2], [3]])
    >>> s = Scores([[1.0, 1.0, 0.5, 3.0]] * 2, test=[0, 1], train=[0, 1, 2, 3], method="m")
    >>> [(r["method"], r["mean"], round(r["sem"], 6), r["n"]) for r in ft_lds(g, {"m": s})]
    [('m', 0.0, 1.0, 2)]
    """
    measured = measured_group_effects(gold)  # (C, T, G)
    if len(gold.groups) < 3:
        raise InputError(
            f"FT-LDS: got {len(gold.groups)} groups; a rank correlation across groups needs "
            "at least 3 (use many, e.g. 100)"
        )
    flat = gold_flat(gold, measured)
    rows = []
    for method, sc in scores.items():
        predicted = group_sums(gold, sc)
        per_test = per_test_values(measured, predicted, ["spearman"], undefined=flat)
        mean, sem, n = summarise(per_test["spearman"])  # (C,)
        for c in range(len(gold.steps)):
            rows.append(
                {
                    "method": str(method),
                    "checkpoint": c,
                    "step": int(gold.steps[c]),
                    "epoch": float(gold.epochs[c]),
                    "metric": "ft_lds",
                    "groups": len(gold.groups),
                    "mean": float(mean[c]),
                    "sem": float(sem[c]),
                    "n": int(n[c]),
                }
            )
    return rows


def ft_lds_noise_ceiling(gold: GoldStandard, splits: int = 20, seed: int = 0) -> list[dict]:
    """How well the measured group effects agree with themselves over seeds: the rows of
    :func:`fimo.evaluate.seeds.noise_floor` for the Spearman correlation across groups
    (``split_half``, ``spearman_brown`` and ``ceiling`` estimates, per checkpoint), with
    ``metric`` set to ``'ft_lds'``. The ceiling is what a method whose group sums were the
    noise-free group effects would reach against this gold standard.

    Two seeds that rank three groups 0.5 alike (per test instance):

    >>> g = GoldStandard(np.zeros((2, 1, 1)), np.zeros((2, 1, 1, 0)), [5], [1.0], [], [0],
    ...                  [0, 1], loss_without_group=[[[[1.0, 2.0, 3.0]]], [[[1.0, 3.0, 2.0]]]],
    ...                  groups=[[0], [1], [2]])
    >>> [(r["estimate"], round(r["mean"], 4)) for r in ft_lds_noise_ceiling(g)]
    [('split_half', 0.5), ('spearman_brown', 0.6667), ('ceiling', 0.8165)]
    """
    rows = noise_floor(group_view(gold), ["spearman"], centred=False, splits=splits, seed=seed)
    return [{**row, "metric": "ft_lds"} for row in rows]


def additivity(gold: GoldStandard) -> list[dict]:
    """How far each group's measured effect D is from the sum A of its members' measured
    single-instance effects, per checkpoint, over the groups all of whose members were also
    left out one at a time (a nested design: ``[groups] kind = "nested"``).

    D and A are seed means of eq. 17 (A sums the members' seed-mean single effects), arrays
    over test instances × groups. Columns: ``checkpoint, step, epoch, groups`` (how many
    count); ``cosine`` (of D and A: 1 when additive); ``relative_gap`` (``‖D − A‖ / ‖D‖``:
    0 when additive); ``slope`` (``⟨D, A⟩ / ‖A‖²``, the least-squares factor from A to D:
    below 1 when the group does less than its parts); each with its jackknife standard error
    over seeds (``*_se``); ``noise_gap``, the relative gap the seed noise alone would give
    (``sqrt(Σ var_s(D − A) / S) / ‖D‖``, from the spread of the per-seed D − A); and
    ``spearman`` and ``spearman_sem`` (across groups per test instance, mean and SEM over test
    instances; NaN with fewer than 3 groups).

    >>> g = GoldStandard(np.zeros((1, 1, 1)), [[[[1.0, 2.0, 4.0]]]], [5], [1.0], [0, 1, 2],
    ...                  [0], [0], loss_without_group=[[[[3.0, 5.0, 7.0]]]],
    ...                  groups=[[0, 1], [0, 2], [1, 2]])
    >>> row = additivity(g)[0]  # sums 3, 5, 6 against 3, 5, 7: gap sqrt(1/83), slope 76/70
    >>> [round(row[k], 4) for k in ("groups", "relative_gap", "slope", "spearman")]
    [3, 0.1098, 1.0857, 1.0]
    """
    kept, group, summed = _nested_effects(gold)  # (S, C, T, G') each
    S = group.shape[0]
    stats = _additivity_stats(group.mean(axis=0), summed.mean(axis=0))
    if S > 1:
        keep = ~np.eye(S, dtype=bool)
        each = [_additivity_stats(group[k].mean(0), summed[k].mean(0)) for k in keep]
        se = {
            key: np.sqrt((S - 1) / S * ((np.stack([e[key] for e in each]) - np.mean(
                [e[key] for e in each], axis=0)) ** 2).sum(axis=0))
            for key in stats
        }  # fmt: skip
        spread = (group - summed).var(axis=0, ddof=1).sum(axis=(1, 2)) / S  # (C,)
        noise_gap = np.sqrt(spread / (group.mean(axis=0) ** 2).sum(axis=(1, 2)))
    else:
        se = {key: np.full_like(value, np.nan) for key, value in stats.items()}
        noise_gap = np.full(group.shape[1], np.nan)
    mean_d, mean_a = group.mean(axis=0), summed.mean(axis=0)
    rank = per_test_values(mean_d, mean_a, ["spearman"])["spearman"] if len(kept) >= 3 else None
    rows = []
    for c in range(len(gold.steps)):
        mean, sem = (np.nan, np.nan) if rank is None else summarise(rank[c])[:2]
        row = {
            "checkpoint": c,
            "step": int(gold.steps[c]),
            "epoch": float(gold.epochs[c]),
            "groups": len(kept),
        }
        for key in ("cosine", "relative_gap", "slope"):
            row[key], row[f"{key}_se"] = float(stats[key][c]), float(se[key][c])
        row.update(noise_gap=float(noise_gap[c]), spearman=float(mean), spearman_sem=float(sem))
        rows.append(row)
    return rows


def nested_groups_of(gold: GoldStandard) -> list[int]:
    """The groups all of whose members were also left out one at a time (whose additivity
    can be measured).

    >>> g = GoldStandard(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 2)), [5], [1.0], [4, 7], [0],
    ...                  [0], loss_without_group=[[[[0.2, 0.1]]]], groups=[[4, 7], [4, 5]])
    >>> nested_groups_of(g)
    [0]
    """
    _check_groups(gold)
    single = set(np.asarray(gold.left_out).tolist())
    return [g for g, m in enumerate(gold.groups.lists()) if set(m.tolist()) <= single]


def _nested_effects(gold: GoldStandard) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The nested groups, their measured effects per seed and the sums of their members'
    measured single effects per seed, both (S, C, T, G')."""
    kept = nested_groups_of(gold)
    if not kept:
        raise InputError(
            "additivity: no group has all its members among the single left-out instances; "
            "draw the groups from them ([groups] kind = 'nested')"
        )
    position = {int(i): k for k, i in enumerate(gold.left_out)}
    members = [[position[int(i)] for i in gold.groups[g]] for g in kept]
    # a block of checkpoints at a time: the (S, C, T, L) single differences are never whole
    summed = np.concatenate(
        [
            np.stack([part.adjusted()[..., m].sum(axis=-1) for m in members], axis=-1)
            for part in gold.blocks()
        ],
        axis=1,
    )
    return kept, gold.adjusted_group()[..., kept], summed


def _additivity_stats(d: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine, relative gap and slope of the group effects ``d`` against the sums ``a``, both
    (C, T, G): one number per checkpoint (NaN where a norm is zero)."""
    dd, aa, da = ((x * y).sum(axis=(1, 2)) for x, y in ((d, d), (a, a), (d, a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "cosine": da / np.sqrt(dd * aa),
            "relative_gap": np.sqrt(((d - a) ** 2).sum(axis=(1, 2)) / dd),
            "slope": da / aa,
        }


def group_attribution(gold: GoldStandard, scores: Mapping[str, object], names=None) -> list[dict]:
    """Each group's measured effect beside each method's predicted one, at every checkpoint.

    Rows: ``group, name, size, checkpoint, step, epoch, source`` (``'gold'`` or a method),
    ``mean`` and ``sem`` over the test instances of the effect on each (gold: the seed mean of
    ``loss_without_group − loss_full``; a method: the sum of its scores over the members, in
    the method's own units), ``n`` test instances, and ``seed_sem`` (gold only: the standard
    error over seeds of the test-set mean effect; NaN for a method).

    >>> from fimo.scores import Scores
    >>> g = GoldStandard(np.zeros((2, 1, 2)), np.zeros((2, 1, 2, 0)), [5], [1.0], [], [0, 1],
    ...                  [0, 1], loss_without_group=[[[[1.0], [3.0]]], [[[3.0], [5.0]]]],
    ...                  groups=[[0, 2]])
    >>> s = Scores([[1.0, 5.0, 2.0], [0.0, 5.0, 1.0]], test=[0, 1], train=[0, 1, 2], method="m")
    >>> [(r["source"], r["name"], r["mean"], r["sem"], r["seed_sem"])
    ...  for r in group_attribution(g, {"m": s}, names=["a"])]
    [('gold', 'a', 3.0, 1.0, 1.0), ('m', 'a', 2.0, 1.0, nan)]
    """
    _check_groups(gold)
    G = len(gold.groups)
    names = [f"group {g}" for g in range(G)] if names is None else [str(x) for x in names]
    if len(names) != G:
        raise InputError(f"group names: got {len(names)} for {G} groups")
    per_seed = gold.adjusted_group().mean(axis=2)  # (S, C, G): the test-set mean, per seed
    S, C = per_seed.shape[:2]
    seed_sem = per_seed.std(axis=0, ddof=1) / np.sqrt(S) if S > 1 else np.full((C, G), np.nan)
    sources = {"gold": (measured_group_effects(gold), seed_sem)}
    for method, sc in scores.items():
        sums = np.broadcast_to(group_sums(gold, sc), (C, len(gold.test), G))
        sources[str(method)] = (sums, np.full((C, G), np.nan))
    sizes = gold.groups.sizes()
    rows = []
    for source, (effects, spread) in sources.items():
        mean, sem, n = summarise(np.moveaxis(effects, 1, -1))  # over test instances: (C, G)
        for g in range(G):
            for c in range(C):
                rows.append(
                    {
                        "group": g,
                        "name": names[g],
                        "size": int(sizes[g]),
                        "checkpoint": c,
                        "step": int(gold.steps[c]),
                        "epoch": float(gold.epochs[c]),
                        "source": source,
                        "mean": float(mean[c, g]),
                        "sem": float(sem[c, g]),
                        "n": int(n[c, g]),
                        "seed_sem": float(spread[c, g]),
                    }
                )
    return rows


def covers_groups(gold: GoldStandard, sc) -> bool:
    """Whether a method scored every member of every group (its scores can be summed).

    >>> from fimo.scores import Scores
    >>> g = GoldStandard(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 0)), [5], [1.0], [], [0], [0],
    ...                  loss_without_group=[[[[0.2]]]], groups=[[1, 2]])
    >>> covers_groups(g, Scores([[1.0, 2.0]], [0], [1, 2], "m")), covers_groups(
    ...     g, Scores([[1.0]], [0], [1], "m"))
    (True, False)
    """
    return bool(np.isin(gold.groups.members, np.asarray(sc.train)).all())


def group_tables(
    gold: GoldStandard,
    scores: Mapping[str, object],
    names=None,
    splits: int = 20,
    seed: int = 0,
) -> tuple[dict[str, list[dict]], list[str]]:
    """The group tables of an evaluation and the methods left out of them (they did not
    score every group member): ``ft_lds`` (:func:`ft_lds`) and ``ft_lds_ceiling``
    (:func:`ft_lds_noise_ceiling`, with two seeds or more), empty with fewer than 3 groups;
    ``group_attribution`` (:func:`group_attribution`) when the groups have ``names`` (groups
    defined by the user; random groups have none); ``additivity`` (:func:`additivity`) when
    some groups are nested in the single left-out instances.

    >>> from fimo.scores import Scores
    >>> g = GoldStandard(np.zeros((2, 1, 1)), np.zeros((2, 1, 1, 0)), [5], [1.0], [], [0],
    ...                  [0, 1], loss_without_group=[[[[1.0, 2.0, 3.0]]], [[[1.0, 3.0, 2.0]]]],
    ...                  groups=[[0], [1], [2]])
    >>> tables, left = group_tables(g, {"m": Scores([[1.0, 2.0, 2.0]], [0], [0, 1, 2], "m"),
    ...                                 "few": Scores([[1.0]], [0], [0], "few")})
    >>> {k: len(v) for k, v in tables.items()}, left, tables["ft_lds"][0]["mean"]
    ({'ft_lds': 1, 'ft_lds_ceiling': 3, 'group_attribution': 0, 'additivity': 0}, ['few'], 1.0)
    """
    _check_groups(gold)
    usable = {name: sc for name, sc in scores.items() if covers_groups(gold, sc)}
    left = [name for name in scores if name not in usable]
    ranked = len(gold.groups) >= 3
    tables = {
        "ft_lds": ft_lds(gold, usable) if ranked else [],
        "ft_lds_ceiling": (
            ft_lds_noise_ceiling(gold, splits, seed) if ranked and len(gold.seeds) > 1 else []
        ),
        "group_attribution": [] if names is None else group_attribution(gold, usable, names),
        "additivity": additivity(gold) if nested_groups_of(gold) else [],
    }
    return tables, left
