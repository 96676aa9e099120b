"""`Scores`: one attribution method's matrix, with the indices that say what it covers.

The contract (DESIGN.md ◆ Score matrix): shape (n_test, n_train), row = test instance,
column = training instance; a value estimates
``g(test, θ further trained without i) − g(test, θ further trained with i)``, so
**positive = helpful** (removing the training instance would raise the test loss).

A method whose estimate depends on the amount of further training holds one such matrix per
checkpoint: ``values`` of shape (n_checkpoints, n_test, n_train) with ``steps`` (the
checkpoints' step counts, increasing). :meth:`Scores.at` gives the matrix at one step; the
evaluation compares each checkpoint of the gold standard with the matrix at the same step.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError, check_choice
from fimo.io import DamagedFileError, fingerprint, read_npz, write_npz

#: how other libraries lay out their matrices; ``test,train`` is fimo's own
ORIENTATIONS = {
    "test,train": "test,train",
    "train,test": "train,test",
    "dattri": "train,test",
    "trak": "train,test",
    "kronfluence": "test,train",
    "captum": "test,train",
}
#: ``helpful``: positive already means helpful (fimo's sign); ``harmful``: it means harmful
SIGNS = ("helpful", "harmful")
#: array names tried, in order, when a file holds several arrays and no key is given
MATRIX_KEYS = ("scores", "values", "influence", "influences", "attributions", "matrix")
MATRIX_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")

#: the largest magnitude an external score may have: its square (in norms, cosines) stays finite
LARGEST = 1e150


@dataclass
class Scores:
    """An attribution matrix of shape (n_test, n_train), positive = helpful; or one per
    checkpoint, (n_checkpoints, n_test, n_train), with their step counts in ``steps``.

    ``test`` and ``train`` hold the dataset indices of the rows and the columns.

    >>> s = Scores(np.array([[1.0, -2.0]]), test=[7], train=[3, 5], method="grad_dot")
    >>> s.select(train=[5]).values.tolist()
    [[-2.0]]
    >>> u = Scores(np.array([[[1.0, 2.0]], [[3.0, 4.0]]]), [7], [3, 5], "u", steps=[4, 8])
    >>> u.shape, u.at(8).values.tolist()
    ((2, 1, 2), [[3.0, 4.0]])
    """

    values: np.ndarray
    test: np.ndarray
    train: np.ndarray
    method: str
    settings: dict = field(default_factory=dict)
    units: str = ""
    steps: np.ndarray | None = None

    def __post_init__(self):
        self.values = _real_values(self.values, self.method)
        self.test = _dataset_indices(self.test, "test", self.method)
        self.train = _dataset_indices(self.train, "train", self.method)
        if self.values.ndim not in (2, 3):
            raise InputError(
                f"Scores({self.method!r}): values must be a 2-D (n_test, n_train) matrix or a "
                f"3-D (n_checkpoints, n_test, n_train) stack; got shape {self.values.shape}"
            )
        self.steps = _check_steps(self.steps, self.values, self.method)
        if self.values.shape[-2:] != (len(self.test), len(self.train)):
            raise InputError(
                f"Scores({self.method!r}): values have shape {self.values.shape} but there are "
                f"{len(self.test)} test and {len(self.train)} train indices; expected "
                f"(..., {len(self.test)}, {len(self.train)})"
            )
        _warn_non_finite(self.values, self.method)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``values``: (n_test, n_train), or (n_checkpoints, n_test, n_train).

        >>> Scores(np.zeros((2, 3)), test=[0, 1], train=[4, 5, 6], method="m").shape
        (2, 3)
        """
        return self.values.shape

    def select(self, test=None, train=None) -> Scores:
        """The sub-matrix for the given dataset indices (in the order given), every checkpoint
        kept.

        >>> s = Scores(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), [0, 1], [4, 5, 6], "m")
        >>> s.select(test=[1], train=[6, 4]).values.tolist()
        [[6.0, 4.0]]
        """
        rows = _positions(self.test, test, "test", self.method)
        cols = _positions(self.train, train, "train", self.method)
        return Scores(
            self.values[..., rows[:, None], cols[None, :]],
            self.test[rows],
            self.train[cols],
            self.method,
            dict(self.settings),
            self.units,
            self.steps,
        )

    def at(self, step: int) -> Scores:
        """The (n_test, n_train) matrix at the checkpoint after ``step`` steps (a Scores
        without the checkpoint axis is the same at every step and is returned as it is).

        >>> s = Scores(np.zeros((2, 1, 1)), [0], [0], "u", steps=[4, 8])
        >>> s.at(4).shape
        (1, 1)
        """
        if self.steps is None:
            return self
        where = np.flatnonzero(self.steps == int(step))
        if not where.size:
            raise InputError(
                f"Scores({self.method!r}) have no matrix at step {int(step)}; they hold the "
                f"steps {_listing(self.steps)}"
            )
        settings = dict(self.settings, step=int(step))
        return Scores(
            self.values[where[0]], self.test, self.train, self.method, settings, self.units
        )

    def save(self, path) -> Path:
        """Write ``scores``, ``test``, ``train`` (and ``steps`` for a stack of checkpoints) and
        the metadata to an .npz (numpy-readable).

        >>> import tempfile, os
        >>> s = Scores(np.ones((2, 1, 1)), [0], [0], "u", steps=[4, 8])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Scores.load(s.save(os.path.join(d, "u.npz"))).steps.tolist()
        [4, 8]
        """
        extra = {} if self.steps is None else {"steps": self.steps}
        return write_npz(
            path,
            scores=self.values,
            test=self.test,
            train=self.train,
            method=np.array(self.method),
            units=np.array(self.units),
            settings=np.array(json.dumps(self.settings, sort_keys=True)),
            **extra,
        )

    @classmethod
    def from_external(
        cls,
        matrix,
        orientation: str,
        sign: str = "helpful",
        test=None,
        train=None,
        name: str = "external",
        source: str | None = None,
    ) -> Scores:
        """Scores from another library's matrix, converted once to fimo's contract.

        ``orientation`` says how ``matrix`` is laid out: ``"test,train"`` (kronfluence's
        (query, train), captum) or ``"train,test"`` (dattri, TRAK's (train, target)); the
        library names are accepted too. ``sign="harmful"`` when a positive value means the
        training instance raises the test loss (it is negated). ``test`` and ``train`` are
        the dataset indices of the rows and columns *after* orientation (default 0, 1, ...).
        ``settings`` records where the matrix came from and its fingerprint.

        >>> m = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])   # (train, test), as dattri
        >>> s = Scores.from_external(m, "train,test", "harmful", test=[7, 8], name="if")
        >>> s.shape, s.values[0].tolist()
        ((2, 3), [-1.0, -3.0, -5.0])
        """
        check_choice("orientation", orientation, list(ORIENTATIONS))
        check_choice("sign", sign, list(SIGNS))
        values = _as_array(matrix, f"scores {name!r}")
        if values.ndim != 2:
            raise InputError(f"scores {name!r}: expected a 2-D matrix; got shape {values.shape}")
        values = _real_values(values, name)
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        layout = ORIENTATIONS[orientation]
        if layout == "train,test":
            values = values.T
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise InputError(
                f"scores {name!r}: the matrix holds {bad} NaN or infinite values; "
                "fix or drop them before comparing"
            )
        if values.size and float(np.abs(values).max()) > LARGEST:
            raise InputError(
                f"scores {name!r}: the matrix holds values up to {float(np.abs(values).max()):.3g}, "
                f"beyond {LARGEST:g}, whose squares overflow the metrics; divide it by a "
                "constant first (the rankings and cosines do not change)"
            )
        if sign == "harmful":
            values = -values
        values = np.ascontiguousarray(values)
        test = np.arange(values.shape[0]) if test is None else _dataset_indices(test, "test", name)
        train = (
            np.arange(values.shape[1]) if train is None else _dataset_indices(train, "train", name)
        )
        if values.shape != (len(test), len(train)):
            fits = (len(test), len(train)) == values.shape[::-1]
            raise InputError(
                f"scores {name!r}: read as {orientation} ({layout}) the matrix is "
                f"{values.shape[0]} test × {values.shape[1]} train, but there are "
                f"{len(test)} test and {len(train)} train indices"
                + ("; the other orientation would fit: check the orientation" if fits else "")
            )
        settings = {
            "origin": "external",
            "orientation": layout,
            "sign": sign,
            "fingerprint": fingerprint(values, test, train),
        }
        if source is not None:
            settings["source"] = str(source)
        return cls(values, test, train, name, settings)

    @classmethod
    def load(cls, path) -> Scores:
        """Read a file written by :meth:`save`.

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "grad_dot.npz")
        >>> s = Scores.load(Scores(np.array([[0.5, -1.0]]), [7], [3, 5], "grad_dot").save(path))
        >>> s.method, s.test.tolist(), s.train.tolist(), s.values.tolist()
        ('grad_dot', [7], [3, 5], [[0.5, -1.0]])
        """
        data = read_npz(path)
        missing = [k for k in ("scores", "test", "train", "method", "settings", "units")
                   if k not in data]  # fmt: skip
        if missing:
            raise DamagedFileError(
                f"{path} is not a fimo Scores file (it has no {', '.join(missing)}); save one "
                "with Scores.save, or bring a plain matrix in with `fimo compare`"
            )
        return cls(
            data["scores"],
            data["test"],
            data["train"],
            str(data["method"]),
            json.loads(str(data["settings"])),
            str(data["units"]),
            data.get("steps"),
        )


#: no dataset index is larger (far beyond any dataset; past 2**63 a number is not even an int64)
MAX_INDEX = 2**62


def _real_values(values, method: str) -> np.ndarray:
    """``values`` as an array of real numbers (InputError for text, objects or complex).

    >>> _real_values([[1, 2]], "m").dtype.kind
    'i'
    >>> _real_values([[1j]], "m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: Scores('m'): values must be real numbers; got dtype complex128 ...
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"Scores({method!r}): values are not a numeric matrix ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"Scores({method!r}): values must be real numbers; got dtype {array.dtype} "
            "(convert the matrix to float64 first)"
        )
    return array


def _dataset_indices(indices, axis: str, method: str) -> np.ndarray:
    """``indices`` as distinct, non-negative whole numbers (int64), or an InputError.

    >>> _dataset_indices([3, 1], "train", "m").tolist()
    [3, 1]
    >>> _dataset_indices([3, 3], "train", "m")
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: Scores('m'): train indices must be distinct; 3 appears more than once
    """
    raw = np.asarray(indices)
    if raw.ndim > 1:
        raise InputError(
            f"Scores({method!r}): {axis} indices must be a flat list; got nested lists (shape "
            f"{raw.shape})"
        )
    raw = raw.reshape(-1)
    whole = raw.dtype.kind in "iu" or (
        raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (np.mod(raw, 1) == 0)))
    )
    if raw.size and not whole:
        raise InputError(
            f"Scores({method!r}): {axis} indices must be whole numbers; got {raw[:5].tolist()}"
        )
    if raw.size and raw.min() < 0:
        raise InputError(
            f"Scores({method!r}): {axis} indices must be ≥ 0 (dataset indices); got {raw.min():.6g}"
        )
    if raw.size and raw.max() > MAX_INDEX:
        raise InputError(
            f"Scores({method!r}): {axis} indices must be dataset indices, below 2**62; got "
            f"{raw.max():.6g}"
        )
    out = raw.astype(np.int64)
    unique, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"Scores({method!r}): {axis} indices must be distinct; "
            f"{int(unique[counts > 1][0])} appears more than once"
        )
    return out


def _listing(steps: np.ndarray) -> str:
    shown = ", ".join(str(int(s)) for s in steps[:8])
    return f"[{shown}{', ...' if len(steps) > 8 else ''}] ({len(steps)} checkpoints)"


def _check_steps(steps, values: np.ndarray, method: str) -> np.ndarray | None:
    """``steps`` as an int64 array fitting ``values``: None for a matrix, and for a stack of
    checkpoints one increasing, non-negative whole number per checkpoint."""
    if values.ndim == 2:
        if steps is not None:
            raise InputError(
                f"Scores({method!r}): steps are given but values are one (n_test, n_train) "
                "matrix; give a (n_checkpoints, n_test, n_train) stack, or no steps"
            )
        return None
    if steps is None:
        raise InputError(
            f"Scores({method!r}): a (n_checkpoints, n_test, n_train) stack needs steps= (the "
            "step count of each checkpoint)"
        )
    raw = np.asarray(steps).reshape(-1)
    whole = raw.size == 0 or (
        np.issubdtype(raw.dtype, np.number) and bool(np.all(np.equal(np.mod(raw, 1), 0)))
    )
    if not whole or (raw.size and raw.min() < 0):
        raise InputError(f"Scores({method!r}): steps must be whole numbers ≥ 0; got {raw[:5]}")
    out = raw.astype(np.int64)
    if len(out) != values.shape[0] or len(out) == 0:
        raise InputError(
            f"Scores({method!r}): {len(out)} steps for {values.shape[0]} checkpoints; give one "
            "step count per checkpoint (at least one)"
        )
    if np.any(np.diff(out) <= 0):
        raise InputError(
            f"Scores({method!r}): steps must increase strictly; got {out.tolist()[:8]}"
        )
    return out


def _as_array(obj, what: str) -> np.ndarray:
    """A numpy array from an array, a torch tensor or a list."""
    if hasattr(obj, "detach"):  # a torch tensor: half precision has no numpy counterpart
        import torch

        t = obj.detach().to("cpu")
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float32)
        return t.numpy()
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: cannot read as an array ({exc})") from None


def _pick(arrays: dict, key: str | None, path: Path) -> object:
    names = list(arrays)
    if key is not None:
        if key not in arrays:
            raise InputError(f"{path}: no array {key!r}; it holds {names}")
        return arrays[key]
    if len(names) == 1:
        return arrays[names[0]]
    for candidate in MATRIX_KEYS:
        if candidate in arrays:
            return arrays[candidate]
    raise InputError(
        f"{path}: holds several arrays {names} and none is called "
        f"{' or '.join(repr(k) for k in MATRIX_KEYS[:3])}; name the one to use (--key)"
    )


def load_matrix(path, key: str | None = None) -> np.ndarray:
    """A score matrix from a .npy, .npz, .pt / .pth or .safetensors file.

    A file with several arrays needs ``key`` unless one is called ``scores``, ``values``,
    ``influence``, ``attributions`` or ``matrix``. ``.pt`` files are read with
    ``torch.load(weights_only=True)`` (a tensor or a dict of tensors, no pickled code);
    ``.safetensors`` files need the ``safetensors`` package.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "other.npz")
    >>> np.savez(path, all_modules=np.arange(6.0).reshape(2, 3), labels=np.arange(3))
    >>> load_matrix(path, key="all_modules").shape
    (2, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scores file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in MATRIX_SUFFIXES:
        raise InputError(
            f"scores file {path.name!r}: unknown type {suffix or '(none)'}; "
            f"allowed: {', '.join(MATRIX_SUFFIXES)}"
        )
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            return _as_array(_pick(read_npz(path), key, path), str(path))
        if suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(path, weights_only=True, map_location="cpu")
            if isinstance(obj, dict):
                obj = _pick(obj, key, path)
            return _as_array(obj, str(path))
        if importlib.util.find_spec("safetensors") is None:
            raise InputError(
                f"{path.name}: reading .safetensors needs the safetensors package, which is "
                "not installed (pip install safetensors); or save the matrix with numpy.save"
            )
        from safetensors.numpy import load_file

        return _as_array(_pick(load_file(str(path)), key, path), str(path))
    except InputError:
        raise
    except Exception as exc:  # a damaged or foreign file: say which and why, in one line
        reason = " ".join(str(exc).split())
        refused = re.search(r"WeightsUnpickler error: ([^.]*)", reason)
        if refused:  # torch.load(weights_only=True) refused pickled code: say what it was
            reason = f"it holds pickled Python objects, which fimo never loads ({refused[1]})"
        elif len(reason) > 300:
            reason = reason[:297] + "..."
        raise InputError(
            f"{path}: cannot read a score matrix ({type(exc).__name__}: {reason}); is it a "
            "matrix saved with numpy.save, numpy.savez, torch.save or safetensors?"
        ) from None


def load_indices(path) -> np.ndarray:
    """Dataset indices from a .npy / .npz / .pt file or a text file (.txt, .csv: integers
    separated by commas, spaces or new lines).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "test_indices.txt")
    >>> with open(path, "w") as f:
    ...     print("4, 0", file=f)
    ...     print("7 2", file=f)
    >>> load_indices(path).tolist()
    [4, 0, 7, 2]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"index file {str(path)!r} does not exist")
    if path.suffix.lower() in MATRIX_SUFFIXES:
        raw = np.asarray(load_matrix(path)).reshape(-1)
    else:
        try:
            text = path.read_text(encoding="utf-8").replace(",", " ").split()
        except UnicodeDecodeError:
            raise InputError(
                f"{path}: not a text file of indices and not a matrix file; expected whole "
                "numbers separated by commas, spaces or new lines, or a .npy / .npz / .pt file"
            ) from None
        try:
            raw = np.array([float(t) for t in text])
        except ValueError as exc:
            raise InputError(f"{path}: expected whole numbers; {exc}") from None
    if raw.size and not np.all(np.equal(np.mod(raw, 1), 0)):
        raise InputError(f"{path}: expected whole numbers (dataset indices)")
    if raw.size and raw.min() < 0:
        raise InputError(f"{path}: dataset indices must not be negative; got {raw.min():.6g}")
    if raw.size and raw.max() > MAX_INDEX:
        raise InputError(
            f"{path}: {raw.max():.6g} is not a dataset index (indices are below 2**62)"
        )
    out = raw.astype(np.int64)
    if len(set(out.tolist())) != len(out):
        raise InputError(f"{path}: an index appears more than once")
    return out


def _positions(have: np.ndarray, want, which: str, method: str) -> np.ndarray:
    if want is None:
        return np.arange(len(have))
    want = np.asarray(want, dtype=np.int64).reshape(-1)
    where = {int(v): k for k, v in enumerate(have)}
    missing = [int(v) for v in want if int(v) not in where]
    if missing:
        raise InputError(
            f"Scores({method!r}) has no {which} index {missing[:5]}; it covers "
            f"{len(have)} {which} instances"
        )
    return np.array([where[int(v)] for v in want], dtype=np.int64)


def _warn_non_finite(values: np.ndarray, method: str) -> None:
    """A RuntimeWarning (not an error: the evaluation skips non-finite rows) when scores hold
    NaN or infinite values, which usually means a method failed numerically.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _warn_non_finite(np.array([[1.0, np.nan]]), "m")
    >>> str(caught[0].message)
    "Scores('m'): 1 of 2 values are NaN or infinite; the evaluation skips the test instances they belong to"
    """
    bad = int(values.size - np.isfinite(values).sum())
    if bad:
        warnings.warn(
            f"Scores({method!r}): {bad} of {values.size} values are NaN or infinite; the "
            "evaluation skips the test instances they belong to",
            RuntimeWarning,
            stacklevel=3,
        )
