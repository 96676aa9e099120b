"""One call that computes every table of an evaluation: :func:`evaluate`.

An :class:`Evaluation` holds the tables as lists of dicts (``ev.rows[name]``) and hands
them out as pandas DataFrames when pandas is importable (``ev["seed_count"]``,
``ev.seed_count``), so the same numbers serve the files, the report and a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fimo.errors import InputError
from fimo.evaluate.calibration import calibration
from fimo.evaluate.curves import sorted_score_curves
from fimo.evaluate.examples import describe_examples, most_influential
from fimo.evaluate.lds import group_tables
from fimo.evaluate.metrics import ALL_METRICS, agreement_by_checkpoint, check_metrics
from fimo.evaluate.seeds import NOISE_METRICS, noise_floor, seed_count_study
from fimo.evaluate.tables import GROUP_SCHEMAS, SCHEMAS, have_pandas, to_frame

#: the tables of an evaluation, in the order files and reports list them
TABLES = tuple(SCHEMAS)
#: the tables added when the gold standard has group runs (FT-LDS, docs/groups.md)
GROUP_TABLES = tuple(GROUP_SCHEMAS)


@dataclass
class Evaluation:
    """The tables of one evaluation, with the gold standard and scores they came from.

    ``rows`` maps each name in :data:`TABLES` to a list of dicts; ``ev[name]`` (or
    ``ev.<name>``) gives it as a pandas DataFrame when pandas is importable and ``frames``
    is not False, else the list. ``options`` records the settings used; ``descriptions``
    the readable form of the example instances (see :func:`fimo.evaluate.describe`).

    >>> import numpy as np
    >>> from fimo import GoldStandard, Scores
    >>> rng = np.random.default_rng(0)
    >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
    ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
    >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
    >>> ev = compute(gold, s, metrics=["cosine"], centred=[True], frames=False)
    >>> row = ev["by_checkpoint"][0]  # a list of dicts (frames=False), else a DataFrame
    >>> row["method"], row["metric"], row["step"], round(row["mean"], 3), row["n"]
    ('m', 'cosine', 5, 0.106, 2)
    >>> ev.by_checkpoint == ev["by_checkpoint"], ev.options["seed_counts"]
    (True, [1, 2, 3])
    """

    gold: object
    scores: dict
    rows: dict[str, list[dict]]
    options: dict = field(default_factory=dict)
    descriptions: dict = field(default_factory=lambda: {"test": {}, "train": {}})
    frames: bool | None = None

    def table(self, name: str):
        """One table: a DataFrame (pandas importable and ``frames`` not False) or a list.

        >>> import numpy as np
        >>> from fimo import GoldStandard, Scores
        >>> rng = np.random.default_rng(0)
        >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
        ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
        >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
        >>> ev = compute(gold, s, metrics=["cosine"], centred=[True], frames=False)
        >>> [r["k"] for r in ev.table("seed_count") if r["metric"] == "cosine"]
        [1, 2, 3]
        >>> ev.table("loo")
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: evaluation: no table 'loo'; tables: by_checkpoint, ...
        """
        if name not in self.rows:
            raise InputError(f"evaluation: no table {name!r}; tables: {', '.join(self.rows)}")
        if self.frames or (self.frames is None and have_pandas()):
            return to_frame(name, self.rows[name])
        return self.rows[name]

    def __getitem__(self, name: str):
        return self.table(name)

    def __getattr__(self, name: str):
        if name in (*TABLES, *GROUP_TABLES) and "rows" in self.__dict__:
            return self.table(name)
        raise AttributeError(name)

    def keys(self) -> list[str]:
        """The table names.

        >>> import numpy as np
        >>> from fimo import GoldStandard, Scores
        >>> rng = np.random.default_rng(0)
        >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
        ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
        >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
        >>> compute(gold, s, metrics=["cosine"], frames=False).keys()
        ['by_checkpoint', 'seed_count', 'noise_floor', 'calibration', 'sorted_curves', 'examples']
        """
        return list(self.rows)

    def tables(self) -> dict:
        """Every table, as :meth:`table` gives it.

        >>> import numpy as np
        >>> from fimo import GoldStandard, Scores
        >>> rng = np.random.default_rng(0)
        >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
        ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
        >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
        >>> ev = compute(gold, s, metrics=["cosine"], centred=[True], frames=False)
        >>> {name: len(rows) for name, rows in ev.tables().items()}
        {'by_checkpoint': 1, 'seed_count': 6, 'noise_floor': 3, 'calibration': 5,
         'sorted_curves': 8, 'examples': 24}
        """
        return {name: self.table(name) for name in self.rows}


def as_scores(scores) -> dict:
    """A name -> Scores mapping from a mapping, a list of Scores or one Scores.

    >>> from fimo import Scores
    >>> s = Scores([[0.5, -0.5]], test=[0], train=[3, 4], method="grad_dot")
    >>> list(as_scores(s)), list(as_scores([s])), list(as_scores({"mine": s}))
    (['grad_dot'], ['grad_dot'], ['mine'])
    >>> as_scores([s, s])
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: scores: the method name 'grad_dot' appears twice
    """
    from fimo.scores import Scores

    if scores is None:
        return {}
    if isinstance(scores, Scores):
        return {scores.method: scores}
    if isinstance(scores, Mapping):
        items = list(scores.items())
    elif isinstance(scores, Sequence):
        items = [(getattr(s, "method", None), s) for s in scores]
    else:
        raise InputError(
            f"scores: expected a Scores, a list of them or a mapping name -> Scores; got "
            f"{type(scores).__name__}"
        )
    out = {}
    for name, sc in items:
        if not isinstance(sc, Scores):
            raise InputError(f"scores[{name!r}]: expected a fimo.Scores; got {type(sc).__name__}")
        if name in out:
            raise InputError(f"scores: the method name {name!r} appears twice")
        out[str(name)] = sc
    return out


def _check_coverage(gold, scores: dict) -> None:
    for name, sc in scores.items():
        have_test, have_train = set(sc.test.tolist()), set(sc.train.tolist())
        no_test = [int(t) for t in gold.test if int(t) not in have_test]
        no_train = [int(i) for i in gold.left_out if int(i) not in have_train]
        if no_test or no_train:
            what = []
            if no_test:
                what.append(f"{len(no_test)} of its test instances (e.g. {no_test[:3]})")
            if no_train:
                what.append(f"{len(no_train)} of its left-out instances (e.g. {no_train[:3]})")
            raise InputError(
                f"scores {name!r} ({len(sc.test)} test × {len(sc.train)} train) do not cover the "
                f"gold standard: missing {' and '.join(what)}"
            )


def compute(
    gold,
    scores,
    *,
    metrics: Sequence[str] | None = None,
    centred: Sequence[bool] = (True, False),
    seed_counts: Sequence[int] | None = None,
    seed_metrics: Sequence[str] = ("cosine", "spearman"),
    noise_splits: int = 20,
    noise_seed: int = 0,
    curve_steps: Sequence[int] | None = None,
    example_test: Sequence[int] | None = None,
    example_k: int = 3,
    example_step: int | None = None,
    group_names: Sequence[str] | None = None,
    train=None,
    test=None,
    frames: bool | None = None,
) -> Evaluation:
    """Every table of an evaluation of ``scores`` against ``gold``; writes nothing.

    ``metrics`` (default: all) are compared at every checkpoint for each ``centred`` view;
    the seed-count study uses ``seed_metrics`` and the window sizes ``seed_counts``
    (default: 1, 2, 5, 10, 20, 50, 100 up to S, and S); the noise floor ``noise_splits``
    random splits drawn with ``noise_seed``; the sorted-score curves the checkpoints at
    ``curve_steps`` (default: the first at one epoch or later, and the last); the examples
    the test instances ``example_test`` (dataset indices, default: the first three), the
    ``example_k`` strongest picks at ``example_step``. ``train`` and ``test`` (datasets)
    let the examples be described readably. A gold standard with group runs adds the
    tables of :data:`GROUP_TABLES` (:func:`fimo.evaluate.lds.group_tables`: FT-LDS, its
    ceiling, and, for groups with ``group_names``, the group attribution).

    >>> import numpy as np
    >>> from fimo import GoldStandard, Scores
    >>> rng = np.random.default_rng(0)
    >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
    ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
    >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
    >>> ev = compute(gold, {"m": s}, metrics=["cosine", "spearman"], frames=False)
    >>> sorted({(r["metric"], r["centred"]) for r in ev["by_checkpoint"]})
    [('cosine', False), ('cosine', True), ('spearman', False), ('spearman', True)]
    >>> ev.options["example_test"], ev.options["curve_steps"]
    ([0, 1], [5])
    """
    scores = _checked_scores(gold, scores)
    metrics, seed_metrics = check_metrics(metrics), check_metrics(seed_metrics)
    flags = _centring_flags(centred)
    picks = most_influential(gold, scores, example_test, example_k, example_step, True)
    rows = {
        "by_checkpoint": agreement_by_checkpoint(gold, scores, metrics, flags),
        "seed_count": seed_count_study(gold, scores, seed_metrics, flags, seed_counts),
        "noise_floor": noise_floor(gold, _noise_metrics(metrics), flags, noise_splits, noise_seed),
        "calibration": calibration(gold, scores, flags),
        "sorted_curves": sorted_score_curves(gold, scores, curve_steps, flags),
        "examples": picks,
    }
    options = {
        "metrics": list(metrics),
        "centred": list(flags),
        "seed_metrics": list(seed_metrics),
        "noise_splits": noise_splits,
        "noise_seed": noise_seed,
        "example_k": example_k,
    }
    options.update(_options_found(rows, example_step))
    if gold.groups is not None:
        grouped, left = group_tables(gold, scores, group_names, noise_splits, noise_seed)
        rows.update(grouped)
        options["groups"] = _groups_option(gold, group_names, left)
    return Evaluation(
        gold=gold,
        scores=scores,
        rows=rows,
        options=_in_order(options),
        descriptions=describe_examples(picks, train=train, test=test),
        frames=frames,
    )


def _checked_scores(gold, scores) -> dict:
    """The scores as a name -> Scores mapping, checked to cover ``gold`` (a GoldStandard)."""
    from fimo.further.gold import GoldStandard

    if not isinstance(gold, GoldStandard):
        raise InputError(f"gold: expected a fimo GoldStandard; got {type(gold).__name__}")
    scores = as_scores(scores)
    _check_coverage(gold, scores)
    return scores


def _centring_flags(centred) -> tuple[bool, ...]:
    """``centred`` (one bool or several) as a non-empty tuple of bools.

    >>> _centring_flags(True), _centring_flags([True, False])
    ((True,), (True, False))
    """
    flags = tuple(bool(c) for c in ((centred,) if isinstance(centred, bool) else centred))
    if not flags:
        raise InputError("centred: give at least one of True (eq. 13) and False (eq. 17)")
    return flags


def _noise_metrics(metrics) -> list[str]:
    """The metrics the noise floor is computed for: those of ``metrics`` it supports, else
    the cosine."""
    return [m for m in NOISE_METRICS if m in metrics] or ["cosine"]


def _options_found(rows: dict, example_step) -> dict:
    """The options an evaluation settled on while computing ``rows``: the seed counts, the
    curves' steps, the example test instances and their step."""
    picks = rows["examples"]
    return {
        "seed_counts": sorted({int(r["k"]) for r in rows["seed_count"]}),
        "curve_steps": sorted({int(r["step"]) for r in rows["sorted_curves"] if r["step"]}),
        "example_test": list(dict.fromkeys(int(r["test"]) for r in picks)),
        "example_step": int(picks[0]["step"]) if picks else example_step,
    }


#: the order of an evaluation's options (as they were always recorded)
_OPTION_ORDER = (
    "metrics", "centred", "seed_counts", "seed_metrics", "noise_splits", "noise_seed",
    "curve_steps", "example_test", "example_k", "example_step", "groups",
)  # fmt: skip


def _in_order(options: dict) -> dict:
    """``options`` with its keys in :data:`_OPTION_ORDER`."""
    return {k: options[k] for k in _OPTION_ORDER if k in options}


def _groups_option(gold, group_names, left: list[str]) -> dict:
    """What an evaluation records of the gold standard's groups: how many, their names, and
    the methods left out of the group tables."""
    return {
        "count": len(gold.groups),
        "names": None if group_names is None else [str(x) for x in group_names],
        "methods_without_members": left,
    }


def evaluate(source, scores=None, *, frames: bool | None = None, **options) -> Evaluation:
    """Evaluate attribution scores against a gold standard; returns an :class:`Evaluation`.

    ``source`` is a run directory (its gold standard, its methods' scores and any scores
    added with ``fimo compare``; the data named in its configuration for the examples) or a
    :class:`~fimo.further.gold.GoldStandard` (then ``scores`` is required). ``scores`` (a
    Scores, a list or a mapping name -> Scores) adds to or replaces a run's scores. Further
    keyword arguments go to :func:`compute`. Nothing is written; ``fimo report`` writes.

    Tables (DataFrames when pandas is importable, else lists of dicts; ``frames=False``
    forces lists): ``by_checkpoint``, ``seed_count``, ``noise_floor``, ``calibration``,
    ``sorted_curves``, ``examples``.

    >>> import numpy as np
    >>> from fimo import GoldStandard, Scores
    >>> rng = np.random.default_rng(0)
    >>> gold = GoldStandard(rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 2, 4)),
    ...                     [5], [1], [0, 1, 2, 3], [0, 1], [0, 1, 2])
    >>> s = Scores(rng.normal(size=(2, 4)), [0, 1], [0, 1, 2, 3], "m")
    >>> ev = evaluate(gold, {"m": s}, frames=False)
    >>> [r["k"] for r in ev["seed_count"] if r["metric"] == "cosine" and r["centred"]]
    [1, 2, 3]
    >>> evaluate("no/such/run")  # a run directory: its gold standard and scores
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: run directory 'no/such/run' does not exist
    """
    from fimo.further.gold import GoldStandard

    if isinstance(source, GoldStandard):
        if scores is None:
            raise InputError("evaluate: give scores to compare with the gold standard")
        return compute(source, scores, frames=frames, **options)
    if isinstance(source, str | Path):  # the thin entry: the run directory reads its files
        from fimo.experiments.rundir import load_run

        run = load_run(source)
        merged = dict(run.scores)
        merged.update(as_scores(scores))
        options.setdefault("train", run.train)
        options.setdefault("test", run.test)
        return compute(run.gold, merged, frames=frames, **options)
    raise InputError(
        f"evaluate: expected a run directory or a GoldStandard; got {type(source).__name__}"
    )


__all__ = ["ALL_METRICS", "TABLES", "Evaluation", "as_scores", "compute", "evaluate"]
