"""Sorted-score curves (PAPER.md §6, the paper's Fig. 10): the shape of the score distribution.

Each test instance's scores over the left-out instances are sorted (ascending: the most
harmful first, the most helpful last), the sorted vectors are averaged over test instances
and the average is scaled to unit ℓ2 norm, so that curves of different units can be laid
over each other. A gold-standard curve that is flat in the middle with a few large values at
the ends says that a handful of training instances matter; a method whose curve has the same
shape puts its mass in the same places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fimo.errors import InputError
from fimo.evaluate.metrics import method_at, method_values


def reference_checkpoint(gold) -> int:
    """The position of the first checkpoint at one epoch or later (the paper's usual
    choice), else of the last checkpoint.


    >>> from fimo.further.gold import GoldStandard
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 3, 1)), loss_without=np.zeros((1, 3, 1, 2)),
    ...     steps=[5, 10, 20], epochs=[0.5, 1.0, 2.0], left_out=[0, 1], test=[0], seeds=[0])
    >>> reference_checkpoint(gold)  # epoch 1.0
    1
    """
    epochs = np.asarray(gold.epochs, dtype=np.float64)
    late = np.flatnonzero(epochs >= 1.0 - 1e-9)
    return int(late[0]) if late.size else len(epochs) - 1


def default_curve_checkpoints(gold) -> list[int]:
    """Positions of the checkpoints whose gold-standard curves are drawn by default: the
    reference checkpoint (:func:`reference_checkpoint`) and the last one.


    >>> from fimo.further.gold import GoldStandard
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 3, 1)), loss_without=np.zeros((1, 3, 1, 2)),
    ...     steps=[5, 10, 20], epochs=[0.5, 1.0, 2.0], left_out=[0, 1], test=[0], seeds=[0])
    >>> default_curve_checkpoints(gold)  # epochs 1.0 and 2.0
    [1, 2]
    """
    return sorted({reference_checkpoint(gold), len(gold.steps) - 1})


def checkpoint_positions(gold, steps) -> list[int]:
    """Positions of the checkpoints with the given step counts (InputError for others).


    >>> from fimo.further.gold import GoldStandard
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 3, 1)), loss_without=np.zeros((1, 3, 1, 2)),
    ...     steps=[5, 10, 20], epochs=[0.5, 1.0, 2.0], left_out=[0, 1], test=[0], seeds=[0])
    >>> checkpoint_positions(gold, [20, 5])
    [2, 0]
    >>> checkpoint_positions(gold, 15)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: checkpoint: no checkpoint at step 15; the steps are [5, 10, 20]
    """
    have = [int(s) for s in gold.steps]
    if isinstance(steps, int | np.integer):
        steps = [steps]
    out = []
    for s in steps:
        if int(s) not in have:
            raise InputError(f"checkpoint: no checkpoint at step {int(s)}; the steps are {have}")
        out.append(have.index(int(s)))
    return out


def sorted_curve(rows) -> np.ndarray:
    """Sort each row of a (T, L) array, average over rows, scale to unit ℓ2 norm (NaN if 0).

    >>> sorted_curve(np.array([[3.0, 0.0, -4.0], [0.0, 3.0, -4.0]])).tolist()
    [-0.8, 0.0, 0.6]
    """
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if rows.size == 0:
        return np.full(np.asarray(rows).shape[-1], np.nan)
    mean = np.sort(rows, axis=1).mean(axis=0)
    norm = np.linalg.norm(mean)
    return mean / norm if norm > 0 else np.full_like(mean, np.nan)


def sorted_score_curves(
    gold,
    scores: Mapping[str, object],
    steps: Sequence[int] | None = None,
    centred: Sequence[bool] = (True,),
) -> list[dict]:
    """Sorted-score curves of the gold standard at chosen checkpoints and of each method.

    ``steps`` are checkpoint step counts (default: :func:`default_curve_checkpoints`). The
    methods' curves use the same test and left-out instances as the gold standard's; a
    method with a checkpoint axis has one curve per drawn checkpoint, the others one. One
    row per point: ``source`` ("gold" or the method's name), ``checkpoint, step, epoch``
    (None for a method without a checkpoint axis), ``centred`` (None for methods), ``rank``
    (0 = most harmful) and ``value``.


    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 1, 2)), loss_without=[[[[3.0, 0.0, -4.0], [0.0, 3.0, -4.0]]]],
    ...     steps=[10], epochs=[1.0], left_out=[4, 5, 6], test=[0, 1], seeds=[0])
    >>> s = Scores([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], test=[0, 1], train=[4, 5, 6], method="m")
    >>> rows = sorted_score_curves(gold, {"grad_dot": s}, centred=False)
    >>> [(r["source"], r["rank"], round(r["value"], 4)) for r in rows]
    [('gold', 0, -0.8), ('gold', 1, 0.0), ('gold', 2, 0.6),
     ('grad_dot', 0, -0.7071), ('grad_dot', 1, 0.0), ('grad_dot', 2, 0.7071)]
    """
    positions = (
        default_curve_checkpoints(gold) if steps is None else checkpoint_positions(gold, steps)
    )
    flags = [bool(c) for c in ((centred,) if isinstance(centred, bool) else centred)]
    rows: list[dict] = []
    for flag in flags:
        mean = np.asarray(gold.mean(flag), dtype=np.float64)
        for c in positions:
            for rank, value in enumerate(sorted_curve(mean[c])):
                rows.append(
                    {
                        "source": "gold",
                        "checkpoint": c,
                        "step": int(gold.steps[c]),
                        "epoch": float(gold.epochs[c]),
                        "centred": flag,
                        "rank": rank,
                        "value": float(value),
                    }
                )
    for method, sc in scores.items():
        values = method_values(gold, sc)
        for c in [None] if values.ndim == 2 else positions:
            where = {
                "checkpoint": c,
                "step": None if c is None else int(gold.steps[c]),
                "epoch": None if c is None else float(gold.epochs[c]),
            }
            for rank, value in enumerate(sorted_curve(method_at(values, c))):
                rows.append(
                    {
                        "source": str(method),
                        **where,
                        "centred": None,
                        "rank": rank,
                        "value": float(value),
                    }
                )
    return rows
