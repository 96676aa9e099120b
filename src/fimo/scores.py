"""`Scores`: one attribution method's matrix, with the indices that say what it covers.

The contract (DESIGN.md ◆ Score matrix): shape (n_test, n_train), row = test instance,
column = training instance; a value estimates
``g(test, θ further trained without i) − g(test, θ further trained with i)``, so
**positive = helpful** (removing the training instance would raise the test loss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.io import read_npz, write_npz


@dataclass
class Scores:
    """An attribution matrix of shape (n_test, n_train), positive = helpful.

    ``test`` and ``train`` hold the dataset indices of the rows and the columns.

    >>> s = Scores(np.array([[1.0, -2.0]]), test=[7], train=[3, 5], method="grad_dot")
    >>> s.select(train=[5]).values.tolist()
    [[-2.0]]
    """

    values: np.ndarray
    test: np.ndarray
    train: np.ndarray
    method: str
    settings: dict = field(default_factory=dict)
    units: str = ""

    def __post_init__(self):
        self.values = np.asarray(self.values)
        self.test = np.asarray(self.test, dtype=np.int64).reshape(-1)
        self.train = np.asarray(self.train, dtype=np.int64).reshape(-1)
        if self.values.ndim != 2:
            raise InputError(
                f"Scores({self.method!r}): values must be a 2-D (n_test, n_train) matrix; "
                f"got shape {self.values.shape}"
            )
        if self.values.shape != (len(self.test), len(self.train)):
            raise InputError(
                f"Scores({self.method!r}): values have shape {self.values.shape} but there are "
                f"{len(self.test)} test and {len(self.train)} train indices; expected "
                f"({len(self.test)}, {len(self.train)})"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def select(self, test=None, train=None) -> Scores:
        """The sub-matrix for the given dataset indices (in the order given)."""
        rows = _positions(self.test, test, "test", self.method)
        cols = _positions(self.train, train, "train", self.method)
        return Scores(
            self.values[np.ix_(rows, cols)],
            self.test[rows],
            self.train[cols],
            self.method,
            dict(self.settings),
            self.units,
        )

    def save(self, path) -> Path:
        """Write ``scores``, ``test``, ``train`` and the metadata to an .npz (numpy-readable)."""
        return write_npz(
            path,
            scores=self.values,
            test=self.test,
            train=self.train,
            method=np.array(self.method),
            units=np.array(self.units),
            settings=np.array(json.dumps(self.settings, sort_keys=True)),
        )

    @classmethod
    def load(cls, path) -> Scores:
        data = read_npz(path)
        return cls(
            data["scores"],
            data["test"],
            data["train"],
            str(data["method"]),
            json.loads(str(data["settings"])),
            str(data["units"]),
        )


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
