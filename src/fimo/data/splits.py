"""Shared by the built-in loaders: the seeded split and the standardised regression table."""

from __future__ import annotations

import math

import numpy as np
import torch

from fimo.data.base import ArrayDataset


def split_indices(n: int, test_fraction: float, seed: int):
    """(train, test) row indices: ``numpy.random.default_rng(seed).permutation(n)``, the
    last ``ceil(test_fraction * n)`` rows of the permutation are the test split (both in
    permutation order).

    >>> train, test = split_indices(10, 0.25, seed=0)
    >>> len(train), len(test), sorted([*train, *test]) == list(range(10))
    (7, 3, True)
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - math.ceil(test_fraction * n)
    return perm[:n_train], perm[n_train:]


def standardised_regression(x, y, features, test_fraction: float, seed: int, info: dict):
    """(train, test) with features and target standardised by training-split statistics.

    ``info`` holds the loader's own keys (name, target name, descriptions, source...); the
    split, raw values, row numbers and statistics are added here.

    >>> x = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [4.0, 40.0], [5.0, 50.0]])
    >>> y = np.array([1.0, 3.0, 2.0, 4.0, 5.0])
    >>> train, test = standardised_regression(x, y, ("a", "b"), 0.2, 0, {"name": "toy"})
    >>> len(train), len(test), train.info["split"], train.info["name"]
    (4, 1, 'train', 'toy')
    >>> train.inputs.mean(0).abs().max() < 1e-6, round(float(train.targets.std(correction=0)), 4)
    (tensor(True), 1.0)
    """
    train_rows, test_rows = split_indices(len(y), test_fraction, seed)
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    y_mean = float(y[train_rows].mean())
    y_std = float(y[train_rows].std())
    datasets = []
    for split, rows in (("train", train_rows), ("test", test_rows)):
        raw, raw_y, split_rows = x[rows], y[rows], rows.copy()
        for a in (raw, raw_y, split_rows):
            a.flags.writeable = False
        split_info = {
            **info,
            "split": split,
            "raw_columns": features,
            "raw": raw,
            "raw_targets": raw_y,
            "rows": split_rows,
            "mean": dict(zip(features, mean.tolist(), strict=True)),
            "std": dict(zip(features, std.tolist(), strict=True)),
            "target_mean": y_mean,
            "target_std": y_std,
            "seed": seed,
            "test_fraction": test_fraction,
        }
        inputs = torch.from_numpy(((raw - mean) / std).astype(np.float32))
        targets = torch.from_numpy(((raw_y - y_mean) / y_std).astype(np.float32))
        datasets.append(ArrayDataset(inputs, targets, features, split_info))
    return datasets[0], datasets[1]
