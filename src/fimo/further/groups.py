"""Which groups of training instances the gold standard leaves out together.

- :func:`random_groups`: ``count`` random subsets, each a fraction ``fraction`` of the training
  set, drawn with ``numpy.random.default_rng(seed)``: the same arguments give the same groups,
  and the groups themselves are stored with the gold standard (``group_members``,
  ``group_offsets``). α = 0.5 (the usual LDS choice, and the default of a ``[groups]`` table)
  measures the group effects far above the seed noise; small fractions (1 %) keep a run
  closer to the full one, but on small sets their effects are mostly noise (docs/groups.md).
- :func:`nested_groups`: ``count`` random subsets of the single left-out instances (a
  fraction of them): a nested design, in which each group's members were also left out one at
  a time, so that the group's effect can be set beside the sum of its members' (additivity).
- :func:`groups_by_label`: one group per class (target value).
- :func:`groups_by_feature`: one group per value of a column (an original column kept in
  ``info["raw"]``, such as Adult's ``sex``, or a column of a tabular ``inputs``), or, with
  ``bins``, one per quantile bin of a numeric column. A column with more than
  :data:`MAX_VALUE_GROUPS` distinct values (a continuous one, such as Adult's ``fnlwgt``) is
  refused without ``bins``: each group is a further-training run per seed.
- :func:`groups_from_file`: one group per line of a text file of indices.
- :func:`make_groups`: one of the above by name, as a ``[groups]`` table names it, with a
  name for each group (the class, the value, the line).

Every function returns the groups (a :class:`fimo.further.plan.Groups`) checked against the
training set: no empty group, no index out of range or named twice, no group of all the data.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.engine import checked_groups
from fimo.further.plan import Groups

#: the most groups one per distinct value may make (each is a further-training run per seed);
#: a column with more values needs ``bins``
MAX_VALUE_GROUPS = 100


def random_groups(n: int, count: int, fraction: float, seed: int = 0) -> Groups:
    """``count`` subsets of ``round(fraction · n)`` distinct training indices each (sorted),
    drawn independently with ``numpy.random.default_rng(seed)``.

    >>> g = random_groups(10, count=3, fraction=0.3, seed=0)
    >>> len(g), g.sizes().tolist(), (g.members == random_groups(10, 3, 0.3, 0).members).all()
    (3, [3, 3, 3], np.True_)
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"groups count: got {count!r}; must be a whole number ≥ 1")
    if not 0 < fraction < 1:
        raise InputError(f"groups fraction: got {fraction!r}; must lie strictly between 0 and 1")
    size = round(fraction * n)
    if not 1 <= size < n:
        raise InputError(
            f"groups fraction: {fraction} of {n} training instances is {size}; a group needs "
            f"at least 1 and fewer than {n} (raise or lower the fraction)"
        )
    rng = np.random.default_rng(seed)
    return checked_groups([np.sort(rng.choice(n, size, replace=False)) for _ in range(count)], n)


def nested_groups(left_out, count: int, fraction: float, seed: int = 0) -> Groups:
    """``count`` subsets of ``round(fraction · L)`` of the ``L`` single left-out instances
    (sorted), drawn independently with ``numpy.random.default_rng(seed)``: every member of a
    group is also left out alone, so the group's measured effect can be compared with the sum
    of its members' (:func:`fimo.evaluate.lds.additivity`).

    >>> g = nested_groups([3, 8, 20, 41], count=2, fraction=0.5, seed=0)
    >>> g.sizes().tolist(), set(g.members.tolist()) <= {3, 8, 20, 41}
    ([2, 2], True)
    """
    left_out = np.asarray(left_out, dtype=np.int64)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"groups count: got {count!r}; must be a whole number ≥ 1")
    size = round(fraction * len(left_out))
    if not 0 < fraction <= 1 or not 2 <= size <= len(left_out):
        raise InputError(
            f"groups fraction: {fraction} of the {len(left_out)} left-out instances is {size}; "
            f"a nested group needs at least 2 and at most {len(left_out)} (raise the fraction "
            "or leave out more instances, further.left_out)"
        )
    rng = np.random.default_rng(seed)
    return Groups.of([np.sort(rng.choice(left_out, size, replace=False)) for _ in range(count)])


def _by_value(values: np.ndarray, what: str) -> tuple[Groups, list]:
    """One group per distinct value (sorted), with the values; refused beyond
    :data:`MAX_VALUE_GROUPS` values."""
    distinct = sorted(set(values.tolist()))
    if len(distinct) > MAX_VALUE_GROUPS:
        raise InputError(
            f"groups = {what!r}: the column has {len(distinct)} distinct values, one group "
            f"(a further-training run per seed) each, more than {MAX_VALUE_GROUPS}; bin it by "
            f"quantiles with groups = '{what}:bins=5' (bins = 5 in [groups])"
        )
    groups = [np.flatnonzero(values == v) for v in distinct]
    if len(distinct) < 2:
        raise InputError(
            f"groups = {what!r}: every training instance has the same value {distinct[:1]}; "
            "a group would hold all the data"
        )
    return checked_groups(groups, len(values)), distinct


def groups_by_label(dataset) -> tuple[Groups, list]:
    """One group per class of a classification dataset, and the classes.

    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(5, 2), torch.tensor([1, 0, 1, 2, 0]))
    >>> groups, labels = groups_by_label(data)
    >>> labels, [g.tolist() for g in groups.lists()]
    ([0, 1, 2], [[1, 4], [0, 2], [3]])
    >>> groups_by_label(ArrayDataset(torch.zeros(2, 2), torch.tensor([0.5, 1.5])))
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: groups = 'label': the targets are float32 numbers, not classes (a regression); use groups = 'feature:<column>' or a file of indices
    """
    targets = np.asarray(dataset.targets)
    if targets.ndim != 1:
        raise InputError(
            f"groups = 'label': the targets have shape {targets.shape}; one label per "
            "instance is needed (use groups = 'feature:<column>' or a file of indices)"
        )
    if targets.dtype.kind not in "iub":
        raise InputError(
            f"groups = 'label': the targets are {targets.dtype} numbers, not classes (a "
            "regression); use groups = 'feature:<column>' or a file of indices"
        )
    return _by_value(targets, "label")


def groups_by_feature(dataset, column: str | int, bins: int = 0) -> tuple[Groups, list]:
    """One group per value of a column, and the values: an original column the loader kept
    (``info["raw_columns"]`` and ``info["raw"]``), else a named (``feature_names``) or numbered
    column of a tabular ``inputs``. With ``bins``, one group per quantile bin of a numeric
    column, and the bins (:func:`quantile_bins`).

    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> X = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    >>> data = ArrayDataset(X, torch.zeros(3), feature_names=("sex", "age"))
    >>> groups, values = groups_by_feature(data, "sex")
    >>> values, [g.tolist() for g in groups.lists()]
    ([0.0, 1.0], [[0, 2], [1]])
    """
    info = getattr(dataset, "info", {}) or {}
    raw_columns = list(info.get("raw_columns", ()))
    names = list(getattr(dataset, "feature_names", None) or ())
    if column in raw_columns and "raw" in info:
        values = np.asarray(info["raw"])[:, raw_columns.index(column)]
        if len(values) != len(dataset):
            raise InputError(
                f"groups = 'feature:{column}': the dataset keeps {len(values)} original rows "
                f"for {len(dataset)} instances; give a dataset whose info['raw'] matches it"
            )
    elif column in names or isinstance(column, int):
        inputs = np.asarray(dataset.inputs)
        j = names.index(column) if column in names else column
        if inputs.ndim != 2 or not 0 <= j < inputs.shape[1]:
            raise InputError(
                f"groups = 'feature:{column}': the inputs of shape {inputs.shape} have no "
                "such column"
            )
        values = inputs[:, j]
    else:
        known = raw_columns + [c for c in names if c not in raw_columns]
        raise InputError(
            f"groups = 'feature:{column}': no such column; known: {known[:12]}"
            f"{' ...' if len(known) > 12 else ''}"
        )
    if bins:
        values, names = quantile_bins(values, bins, f"feature:{column}")
        groups, found = _by_value(values, f"feature:{column}:bins={bins}")
        return groups, [names[int(b)] for b in found]
    return _by_value(values, f"feature:{column}")


def quantile_bins(values, bins: int, what: str = "feature") -> tuple[np.ndarray, list[str]]:
    """Each value's quantile bin (0 … ``bins`` − 1, by the ``bins`` + 1 quantiles of the
    values; bins that ties leave empty are merged away) and each bin's name, ``[a, b)`` (the
    last closed).

    >>> bin_of, names = quantile_bins(np.array([1.0, 2, 3, 4, 5, 6, 7, 8]), 4)
    >>> bin_of.tolist(), names
    ([0, 0, 1, 1, 2, 2, 3, 3], ['[1, 2.75)', '[2.75, 4.5)', '[4.5, 6.25)', '[6.25, 8]'])
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise InputError(f"groups = {what!r}: bins = {bins!r}; must be a whole number ≥ 2")
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"groups = {what!r}: bins need a numeric column; this one holds "
            f"{np.asarray(values).dtype} values (drop bins: one group per value)"
        ) from None
    edges = np.unique(np.quantile(numbers, np.linspace(0, 1, bins + 1)))
    bin_of = np.searchsorted(edges[1:-1], numbers, side="right")
    names = [
        f"[{a:.4g}, {b:.4g}{']' if k == len(edges) - 2 else ')'}"
        for k, (a, b) in enumerate(itertools.pairwise(edges))
    ]
    return bin_of, names


def groups_from_file(path, n: int) -> Groups:
    """One group per non-blank line of a text file: training indices separated by white space
    or commas (``#`` starts a comment).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "groups.txt"
    ...     _ = path.write_text("# two groups\\n0 3 4\\n2, 5\\n")
    ...     [g.tolist() for g in groups_from_file(path, n=6).lists()]
    [[0, 3, 4], [2, 5]]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"groups file {path}: not found")
    groups = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].replace(",", " ").strip()
        if not text:
            continue
        try:
            group = [int(word) for word in text.split()]
        except ValueError:
            raise InputError(
                f"groups file {path}, line {number}: {line.strip()!r} is not a list of whole "
                "numbers (training indices separated by spaces or commas)"
            ) from None
        try:
            checked_groups([group], n)
        except InputError as exc:
            detail = str(exc).removeprefix("groups: group 0 ")
            raise InputError(f"groups file {path}, line {number}: {detail}") from None
        groups.append(group)
    if not groups:
        raise InputError(f"groups file {path}: holds no group (one line of indices per group)")
    return checked_groups(groups, n)


def make_groups(
    dataset, kind: str, count=50, fraction=0.01, seed=0, feature="", file="", bins=0,
    left_out=(),
) -> tuple[Groups, list[str] | None]:  # fmt: skip
    """The groups of a ``[groups]`` table (``kind``: ``random``, ``nested`` (random subsets of
    ``left_out``), ``label``, ``feature`` (with ``bins``: quantile bins) or ``file``, with the
    keys that kind reads) and a name for each group: the class (by its label name when the
    dataset has them), the column's value or bin, or the file's line; None for random groups,
    which are interchangeable.

    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.zeros(6, 2), torch.tensor([1, 0, 1, 1, 0, 1]),
    ...                     info={"label_names": ["no", "yes"]})
    >>> groups, names = make_groups(data, "label")
    >>> [g.tolist() for g in groups.lists()], names
    ([[1, 4], [0, 2, 3, 5]], ['no', 'yes'])
    >>> groups, names = make_groups(data, "random", count=3, fraction=0.5, seed=1)
    >>> groups.sizes().tolist(), names
    ([3, 3, 3], None)
    """
    n = len(dataset)
    if kind == "random":
        return random_groups(n, count, fraction, seed), None
    if kind == "nested":
        return checked_groups(nested_groups(left_out, count, fraction, seed), n), None
    if kind == "label":
        groups, values = groups_by_label(dataset)
        label_names = list((getattr(dataset, "info", None) or {}).get("label_names", ()))
        known = all(isinstance(v, int) and 0 <= v < len(label_names) for v in values)
        return groups, [str(label_names[v]) if known else str(v) for v in values]
    if kind == "feature":
        groups, values = groups_by_feature(dataset, feature, bins)
        return groups, [f"{feature} {'in' if bins else '='} {v}" for v in values]
    if kind == "file":
        groups = groups_from_file(file, n)
        return groups, [f"group {g}" for g in range(len(groups))]
    raise InputError(
        f"groups.kind: got {kind!r}; allowed: 'random', 'nested', 'label', 'feature', 'file'"
    )
