"""The diabetes regression data of Efron et al. (2004), as bundled with scikit-learn.

442 diabetes patients, ten baseline variables (age, sex, body mass index, average blood
pressure and six blood serum measurements); the target is a quantitative measure of
disease progression one year after baseline. fimo uses it as the stand-in for the paper's
Energy Efficiency set, which cannot be had offline. The raw (unscaled) files are read;
scikit-learn is not needed. See ``files/LICENSES.md`` for source, citation and licence.

Preprocessing as the paper does for its regression sets: a 90/10 split with seed 0,
features and target standardised with training-split statistics.
"""

from __future__ import annotations

import functools
import gzip
import io
from importlib.resources import files

import numpy as np

from fimo.data import splits
from fimo.data.base import ArrayDataset

__all__ = ["load_diabetes"]

DATA_FILE = "diabetes_data_raw.csv.gz"
TARGET_FILE = "diabetes_target.csv.gz"
FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
DESCRIPTIONS = {
    "age": "age in years",
    "sex": "sex (coded 1 / 2)",
    "bmi": "body mass index",
    "bp": "average blood pressure",
    "s1": "tc, total serum cholesterol",
    "s2": "ldl, low-density lipoproteins",
    "s3": "hdl, high-density lipoproteins",
    "s4": "tch, total cholesterol / HDL",
    "s5": "ltg, possibly log of serum triglycerides level",
    "s6": "glu, blood sugar level",
}
TARGET = "progression"
TEST_FRACTION = 0.1
SEED = 0
SOURCE = (
    "Diabetes data of Efron, Hastie, Johnstone & Tibshirani (2004); raw files "
    "diabetes_data_raw.csv.gz and diabetes_target.csv.gz from the scikit-learn 1.9.1 "
    "wheel (BSD-3-Clause), unchanged"
)


def _read() -> tuple[np.ndarray, np.ndarray]:
    """(features (442, 10), target (442,)) as float64, in file order."""
    root = files("fimo.data") / "files"
    x = np.loadtxt(io.BytesIO(gzip.decompress((root / DATA_FILE).read_bytes())))
    y = np.loadtxt(io.BytesIO(gzip.decompress((root / TARGET_FILE).read_bytes())))
    if x.shape != (len(y), len(FEATURES)):
        raise RuntimeError(
            f"fimo data files {DATA_FILE} / {TARGET_FILE}: shapes {x.shape} and {y.shape} "
            "do not match"
        )
    return x, y


def split_indices(n: int, test_fraction: float = TEST_FRACTION, seed: int = SEED):
    """(train, test) row indices of this dataset's split (:func:`fimo.data.splits.split_indices`).

    >>> train, test = split_indices(442)
    >>> len(train), len(test)
    (397, 45)
    """
    return splits.split_indices(n, test_fraction, seed)


@functools.lru_cache(maxsize=1)
def load_diabetes() -> tuple[ArrayDataset, ArrayDataset]:
    """The diabetes dataset as ``(train, test)``: 397 and 45 rows, 10 features.

    The split is ``numpy.random.default_rng(0).permutation(442)``: its first 397 rows
    train, its last 45 (10 %, rounded up) test, each in permutation order.

    ``inputs`` (float32, (n, 10)) are the raw features (``sex`` included, as a number)
    standardised with the training split's mean and population standard deviation; the
    scaling scikit-learn applies by default is not used. ``targets`` (float32, (n,)) are
    the progression measure standardised with the training split's mean and std.

    ``info`` holds ``name``, ``split``, ``target_name``, ``descriptions``,
    ``raw_columns``, ``raw`` / ``raw_targets`` (float64 original values, read-only),
    ``rows`` (0-based rows of the shipped files), ``mean`` / ``std``, ``target_mean`` /
    ``target_std``, ``seed``, ``test_fraction`` and ``source``.

    Cached: later calls return the same objects; do not modify the tensors in place.

    >>> train, test = load_diabetes()
    >>> len(train), len(test), tuple(train.inputs.shape), train.targets.dtype
    (397, 45, (397, 10), torch.float32)
    """
    x, y = _read()
    info = {
        "name": "diabetes",
        "target_name": TARGET,
        "descriptions": dict(DESCRIPTIONS),
        "source": SOURCE,
    }
    return splits.standardised_regression(x, y, FEATURES, TEST_FRACTION, SEED, info)
