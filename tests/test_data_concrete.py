"""The built-in Concrete dataset (the paper's regression set), checked against its raw file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from importlib.resources import files

import numpy as np
import pytest
import torch

from fimo.data import DATASETS, load_concrete

FILES = files("fimo.data") / "files"
FEATURES = (
    "cement blast_furnace_slag fly_ash water superplasticizer coarse_aggregate fine_aggregate age"
).split()


def recorded_sha256(name: str) -> tuple[int, str]:
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
    assert match, f"no SHA-256 recorded for {name}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    text = gzip.decompress((FILES / "concrete.csv.gz").read_bytes()).decode("ascii")
    rows = list(csv.DictReader(io.StringIO(text)))
    x = np.array([[float(r[c]) for c in FEATURES] for r in rows])
    y = np.array([float(r["compressive_strength"]) for r in rows])
    return x, y


@pytest.fixture(scope="module")
def splits():
    return load_concrete()


def test_file_matches_recorded_sha256():
    size, digest = recorded_sha256("concrete.csv")
    content = gzip.decompress((FILES / "concrete.csv.gz").read_bytes())
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest


def test_raw_file_is_the_uci_table(raw):
    x, y = raw
    assert x.shape == (1030, 8)
    # Known UCI figures: mean strength 35.818 MPa, first row 540 kg cement, 79.99 MPa.
    assert y.mean() == pytest.approx(35.817961, abs=1e-5)
    assert x[0].tolist() == [540.0, 0.0, 0.0, 162.0, 2.5, 1040.0, 676.0, 28.0] and y[0] == 79.99
    table = np.column_stack([x, y])
    assert len(table) - len(np.unique(table, axis=0)) == 25


def test_sizes_types_and_registry(splits):
    train, test = splits
    assert (len(train), len(test)) == (927, 103)  # PAPER.md §5
    assert train.inputs.shape == (927, 8) and test.inputs.shape == (103, 8)
    assert train.inputs.dtype == test.inputs.dtype == torch.float32
    assert train.targets.dtype == test.targets.dtype == torch.float32
    assert train.targets.shape == (927,) and test.targets.shape == (103,)
    assert train.feature_names == tuple(FEATURES)
    assert train.info["name"] == "concrete" and train.info["target_name"] == "compressive_strength"
    assert DATASETS["concrete"] is load_concrete


def test_split_is_the_documented_permutation(splits, raw):
    train, test = splits
    perm = np.random.default_rng(0).permutation(1030)
    assert train.info["rows"].tolist() == perm[:927].tolist()
    assert test.info["rows"].tolist() == perm[927:].tolist()
    x, y = raw
    for ds in splits:
        np.testing.assert_array_equal(ds.info["raw"], x[ds.info["rows"]])
        np.testing.assert_array_equal(ds.info["raw_targets"], y[ds.info["rows"]])


def test_features_and_target_standardised_on_train_only(splits, raw):
    train, test = splits
    x, y = raw
    rows_tr, rows_te = train.info["rows"], test.info["rows"]
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
    assert train.targets.double().mean().item() == pytest.approx(0.0, abs=1e-6)
    assert train.targets.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert abs(test.targets.double().mean().item()) > 1e-3
    assert train.info["target_mean"] == pytest.approx(y_mean, rel=1e-12)
    assert test.info["target_std"] == pytest.approx(y_std, rel=1e-12)
    assert list(train.info["std"].values()) == pytest.approx(std.tolist(), rel=1e-12)
    # Back to MPa with the recorded statistics.
    back = test.targets.double().numpy() * test.info["target_std"] + test.info["target_mean"]
    np.testing.assert_allclose(back, y[rows_te], atol=1e-4)


def test_cached_and_deterministic(splits):
    train, _ = splits
    assert load_concrete()[0] is train
    load_concrete.cache_clear()
    try:
        fresh, _ = load_concrete()
    finally:
        load_concrete.cache_clear()
    assert fresh is not train and torch.equal(fresh.inputs, train.inputs)
    assert torch.equal(fresh.targets, train.targets)
