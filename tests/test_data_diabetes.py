"""The built-in diabetes regression dataset, checked against its raw files."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib.resources import files

import numpy as np
import pytest
import torch

from fimo.data import DATASETS, load_diabetes

FILES = files("fimo.data") / "files"
FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def recorded_sha256(name: str) -> tuple[int, str]:
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
    assert match, f"no SHA-256 recorded for {name}"
    return int(match.group(1)), match.group(2)


def text_of(name: str) -> str:
    return gzip.decompress((FILES / name).read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    x = np.array(
        [
            [float(v) for v in line.split()]
            for line in text_of("diabetes_data_raw.csv.gz").splitlines()
        ]
    )
    y = np.array([float(line) for line in text_of("diabetes_target.csv.gz").splitlines()])
    return x, y


@pytest.fixture(scope="module")
def splits():
    return load_diabetes()


@pytest.mark.parametrize("name", ["diabetes_data_raw.csv", "diabetes_target.csv"])
def test_files_match_recorded_sha256(name):
    size, digest = recorded_sha256(name)
    content = gzip.decompress((FILES / f"{name}.gz").read_bytes())
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest


def test_raw_files(raw):
    x, y = raw
    assert x.shape == (442, 10) and y.shape == (442,)
    assert x[0].tolist() == [59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87]
    assert y.mean() == pytest.approx(152.133484, abs=1e-6)  # Efron et al.'s response
    assert set(x[:, 1].tolist()) == {1.0, 2.0}


def test_sizes_types_and_registry(splits):
    train, test = splits
    assert (len(train), len(test)) == (397, 45)
    assert train.inputs.shape == (397, 10) and test.inputs.shape == (45, 10)
    assert train.inputs.dtype == test.inputs.dtype == torch.float32
    assert train.targets.dtype == test.targets.dtype == torch.float32
    assert train.targets.shape == (397,)
    assert train.feature_names == FEATURES
    assert train.info["name"] == "diabetes"
    assert DATASETS["diabetes"] is load_diabetes


def test_split_and_standardisation_on_train_only(splits, raw):
    train, test = splits
    x, y = raw
    perm = np.random.default_rng(0).permutation(442)
    assert train.info["rows"].tolist() == perm[:397].tolist()
    assert test.info["rows"].tolist() == perm[397:].tolist()
    rows_tr, rows_te = perm[:397], perm[397:]
    mean, std = x[rows_tr].mean(0), x[rows_tr].std(0)
    y_mean, y_std = y[rows_tr].mean(), y[rows_tr].std()
    np.testing.assert_allclose(train.inputs.double().numpy(), (x[rows_tr] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(test.inputs.double().numpy(), (x[rows_te] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(
        train.targets.double().numpy(), (y[rows_tr] - y_mean) / y_std, atol=1e-5
    )
    np.testing.assert_allclose(
        test.targets.double().numpy(), (y[rows_te] - y_mean) / y_std, atol=1e-5
    )
    np.testing.assert_allclose(train.inputs.double().numpy().std(0), 1.0, atol=1e-5)
    assert np.abs(test.inputs.double().numpy().mean(0)).max() > 1e-3
    assert train.info["target_mean"] == pytest.approx(y_mean, rel=1e-12)
    assert train.info["target_std"] == pytest.approx(y_std, rel=1e-12)
    np.testing.assert_array_equal(test.info["raw"], x[rows_te])
    np.testing.assert_array_equal(test.info["raw_targets"], y[rows_te])


def test_cached_and_deterministic(splits):
    train, _ = splits
    assert load_diabetes()[0] is train
    load_diabetes.cache_clear()
    try:
        fresh, _ = load_diabetes()
    finally:
        load_diabetes.cache_clear()
    assert fresh is not train and torch.equal(fresh.inputs, train.inputs)
    assert torch.equal(fresh.targets, train.targets)
