"""Data as the user has it, in memory as an :class:`ArrayDataset`.

- :func:`from_torch_dataset`: a ``torch.utils.data.Dataset`` of ``(inputs, target)`` pairs,
  the inputs a tensor or a dict of tensors (keyword inputs, :class:`Fields`);
- :func:`from_hf_dataset`: a Hugging Face ``datasets.Dataset`` (built in memory, or loaded from
  local files: ``Dataset.from_csv``, ``load_from_disk``, ...), its numeric columns as the
  inputs and one column as the targets.

Everything must fit in memory and every instance must have the same shape (pad token ids to
one length first). A ragged or non-numeric column, or a missing label column, is an
InputError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fimo.data.base import ArrayDataset
from fimo.errors import InputError, closest


def from_torch_dataset(dataset) -> ArrayDataset:
    """All ``(inputs, target)`` pairs of a torch ``Dataset`` stacked into an ArrayDataset.

    Inputs are tensors (or numbers, numpy arrays) or dicts of them with the same keys in
    every item; targets are class indices, floats or token ids.

    >>> from torch.utils.data import TensorDataset
    >>> ds = from_torch_dataset(TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])))
    >>> tuple(ds.inputs.shape), ds.targets.tolist()
    ((4, 3), [0, 1, 1, 0])
    """
    try:
        count = len(dataset)
    except TypeError:
        raise InputError(
            f"from_torch_dataset: {type(dataset).__name__} has no length; fimo needs a "
            "map-style Dataset that fits in memory (not an IterableDataset)"
        ) from None
    if count == 0:
        raise InputError("from_torch_dataset: the dataset is empty")
    inputs, targets = [], []
    for i in range(count):
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InputError(
                f"from_torch_dataset: item {i} is a {type(item).__name__}"
                f"{f' of {len(item)}' if isinstance(item, tuple | list) else ''}; expected a "
                "pair (inputs, target)"
            )
        inputs.append(item[0])
        targets.append(item[1])
    if isinstance(inputs[0], Mapping):
        keys = list(inputs[0])
        for i, x in enumerate(inputs):
            if not isinstance(x, Mapping) or list(x) != keys:
                got = list(x) if isinstance(x, Mapping) else type(x).__name__
                raise InputError(
                    f"from_torch_dataset: item {i} has inputs {got} but item 0 has {keys}; "
                    "every item needs the same fields"
                )
        stacked = {k: _stack([x[k] for x in inputs], f"inputs field {k!r}") for k in keys}
    else:
        stacked = _stack(inputs, "inputs")
    return ArrayDataset(stacked, _stack(targets, "targets"))


def _stack(values: list, what: str) -> torch.Tensor:
    """One tensor of the items' values; InputError naming the first item that does not fit."""
    tensors = []
    for i, value in enumerate(values):
        try:
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError):
            raise InputError(
                f"from_torch_dataset: item {i}'s {what} is a {type(value).__name__}, not numbers"
            ) from None
        if t.dtype == torch.bool:
            t = t.long()
        if not (t.is_floating_point() or t.dtype in _INTEGERS):
            raise InputError(
                f"from_torch_dataset: item {i}'s {what} has dtype {t.dtype}; expected numbers"
            )
        if tensors and t.shape != tensors[0].shape:
            raise InputError(
                f"from_torch_dataset: item {i}'s {what} has shape {tuple(t.shape)} but item 0's "
                f"{tuple(tensors[0].shape)}; pad every item to one shape"
            )
        tensors.append(t)
    return torch.stack(tensors)


_INTEGERS = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def from_hf_dataset(
    dataset, label: str = "label", columns: Sequence[str] | None = None
) -> ArrayDataset:
    """A Hugging Face ``datasets.Dataset`` as an ArrayDataset: ``columns`` (default: every
    column but ``label``) become the input fields, ``label`` the targets.

    Integer columns become int64 (token ids, masks, class labels), float columns float32. A
    label column that is also an input (a language model's ``input_ids``) is both.

    >>> import datasets
    >>> table = datasets.Dataset.from_dict(
    ...     {"input_ids": [[101, 7, 102], [101, 9, 0]], "attention_mask": [[1, 1, 1], [1, 1, 0]],
    ...      "label": [1, 0]})
    >>> ds = from_hf_dataset(table)
    >>> ds.inputs, ds.targets.tolist()
    (Fields(input_ids: (2, 3) torch.int64, attention_mask: (2, 3) torch.int64), [1, 0])
    """
    names = list(getattr(dataset, "column_names", None) or [])
    if not names:
        raise InputError(
            f"from_hf_dataset: expected a datasets.Dataset with columns; got "
            f"{type(dataset).__name__} (a DatasetDict: pick a split, e.g. ds['train'])"
        )
    if label not in names:
        raise InputError(
            f"from_hf_dataset: label column {label!r} is not in the dataset{closest(label, names)}"
            f"; columns: {names}; name the label column with label=..."
        )
    if columns is None:
        columns = [c for c in names if c != label]
    columns = list(columns)
    for c in columns:
        if c not in names:
            raise InputError(
                f"from_hf_dataset: column {c!r} is not in the dataset{closest(c, names)}; "
                f"columns: {names}"
            )
    if not columns:
        raise InputError(f"from_hf_dataset: no input columns; columns: {names}")
    table = dataset.with_format("numpy", columns=list(dict.fromkeys([*columns, label])))[:]
    inputs = {c: _column(table[c], c) for c in columns}
    return ArrayDataset(inputs, inputs[label] if label in inputs else _column(table[label], label))


def _column(values: np.ndarray, name: str) -> torch.Tensor:
    """One column as a tensor: int64 or float32, rectangular; InputError otherwise."""
    if values.dtype == object:
        lengths = {len(v) for v in values if hasattr(v, "__len__") and not isinstance(v, str)}
        if len(lengths) > 1:
            raise InputError(
                f"from_hf_dataset: column {name!r} is ragged (rows of {min(lengths)} to "
                f"{max(lengths)} values); pad it to one length (tokenizer(..., "
                "padding='max_length', truncation=True, max_length=...))"
            )
        values = np.asarray(values.tolist())
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        return torch.as_tensor(values.astype(np.int64))
    if values.dtype.kind == "f":
        return torch.as_tensor(values.astype(np.float32))
    kind = "text" if values.dtype.kind in "USO" else f"{values.dtype}"
    raise InputError(
        f"from_hf_dataset: column {name!r} holds {kind} values, not numbers; tokenize "
        "or encode it first, or leave it out with columns=[...]"
    )
