"""The in-memory dataset that every task uses, and :class:`Fields`, its inputs when the model
takes keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils._pytree as pytree

from fimo.errors import InputError


class Fields:
    """Named input tensors with one row per instance, indexed like one tensor.

    The inputs of a model that takes keyword arguments (a Hugging Face model's ``input_ids``,
    ``attention_mask``, ``token_type_ids``, ...). ``fields[rows]`` (an int, slice, index array
    or tensor) selects the same rows of every field; ``fields["name"]`` is one field;
    ``len(fields)`` is the number of rows; ``**fields`` passes the fields as keyword
    arguments. It is a ``torch.func`` pytree, so ``vmap`` maps over the rows of every field.

    >>> f = Fields({"input_ids": torch.tensor([[5, 6], [7, 0]]), "attention_mask": torch.ones(2, 2)})
    >>> len(f), f[1]["input_ids"].tolist(), list(f.keys())
    (2, [7, 0], ['input_ids', 'attention_mask'])
    >>> Fields({"a": torch.zeros(3), "b": torch.zeros(2, 4)})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: inputs: field 'b' has 2 rows but field 'a' has 3; every field needs one row per instance
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, torch.Tensor]):
        if not isinstance(fields, Mapping) or not fields:
            raise InputError(
                f"inputs: expected a non-empty dict of tensors; got {type(fields).__name__}"
            )
        rows = None
        for name, value in fields.items():
            if not isinstance(name, str):
                raise InputError(f"inputs: field names must be strings; got {name!r}")
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise InputError(
                    f"inputs: field {name!r} must be a tensor with one row per instance; got "
                    f"{getattr(got, '__name__', got)} (torch.as_tensor converts numpy arrays)"
                )
            if rows is None:
                rows, first = value.shape[0], name
            elif value.shape[0] != rows:
                raise InputError(
                    f"inputs: field {name!r} has {value.shape[0]} rows but field {first!r} has "
                    f"{rows}; every field needs one row per instance"
                )
        self._fields = dict(fields)

    @classmethod
    def _trusted(cls, fields: dict) -> Fields:
        """Without checks: for ``vmap``'s per-instance views, whose tensors have no rows."""
        out = cls.__new__(cls)
        out._fields = fields
        return out

    def __len__(self) -> int:
        return int(next(iter(self._fields.values())).shape[0])

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._fields[key]
        if isinstance(key, list | np.ndarray):
            key = torch.as_tensor(np.asarray(key), dtype=torch.long)
        return Fields._trusted({k: v[key] for k, v in self._fields.items()})

    def __contains__(self, key) -> bool:
        return key in self._fields

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self._fields.items())
        return f"Fields({shapes})"

    def keys(self):
        """The field names, in order (so that ``model(**fields)`` works).

        >>> list(Fields({"input_ids": torch.zeros(2, 3), "attention_mask": torch.ones(2, 3)}).keys())
        ['input_ids', 'attention_mask']
        """
        return self._fields.keys()

    def values(self):
        """The tensors, in order.

        >>> [tuple(v.shape) for v in Fields({"a": torch.zeros(2, 3), "b": torch.ones(2)}).values()]
        [(2, 3), (2,)]
        """
        return self._fields.values()

    def items(self):
        """(name, tensor) pairs, in order.

        >>> [(k, v.tolist()) for k, v in Fields({"a": torch.tensor([1, 2])}).items()]
        [('a', [1, 2])]
        """
        return self._fields.items()

    def as_dict(self) -> dict[str, torch.Tensor]:
        """A plain dict of the fields (a new dict; the tensors are shared).

        >>> Fields({"x": torch.zeros(2)}).as_dict()
        {'x': tensor([0., 0.])}
        """
        return dict(self._fields)

    def unsqueeze(self, dim: int) -> Fields:
        """Every field with a new axis at ``dim`` (one instance as a batch of one).

        >>> Fields({"x": torch.zeros(3)}).unsqueeze(0)["x"].shape
        torch.Size([1, 3])
        """
        return Fields._trusted({k: v.unsqueeze(dim) for k, v in self._fields.items()})

    def to(self, device=None, dtype=None) -> Fields:
        """Every field moved to ``device``; floating fields cast to ``dtype`` (token ids and
        integer masks keep their dtype).

        >>> f = Fields({"ids": torch.tensor([[1]]), "w": torch.ones(1, 1)}).to(dtype=torch.float64)
        >>> f["ids"].dtype, f["w"].dtype
        (torch.int64, torch.float64)
        """
        out = {}
        for k, v in self._fields.items():
            v = v.to(device)
            out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        return Fields._trusted(out)

    def instance_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each field's shape without its leading row axis.

        >>> Fields({"ids": torch.zeros(4, 7, dtype=torch.long)}).instance_shapes()
        {'ids': (7,)}
        """
        return {k: tuple(v.shape[1:]) for k, v in self._fields.items()}


def _flatten_fields(fields: Fields):
    return list(fields.values()), list(fields.keys())


def _unflatten_fields(values, keys) -> Fields:
    return Fields._trusted(dict(zip(keys, values, strict=True)))


pytree.register_pytree_node(
    Fields, _flatten_fields, _unflatten_fields, serialized_type_name="fimo.data.base.Fields"
)


def tensors_of(inputs: torch.Tensor | Fields) -> list[torch.Tensor]:
    """The tensors that ``inputs`` holds: itself, or every field's.

    >>> [tuple(t.shape) for t in tensors_of(Fields({"a": torch.zeros(2, 3), "b": torch.zeros(2)}))]
    [(2, 3), (2,)]
    """
    return list(inputs.values()) if isinstance(inputs, Fields) else [inputs]


def instance_size(inputs: torch.Tensor | Fields) -> int:
    """How many numbers one instance's inputs hold (summed over fields).

    >>> instance_size(torch.zeros(3, 2, 4)), instance_size(Fields({"a": torch.zeros(3, 5), "b": torch.zeros(3)}))
    (8, 6)
    """
    return sum(int(np.prod(t.shape[1:])) for t in tensors_of(inputs))


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and targets held as tensors, one row per instance.

    ``inputs`` has shape (n, ...), or is a dict of such tensors (:class:`Fields`, for a model
    that takes keyword arguments such as a Hugging Face model's ``input_ids`` and
    ``attention_mask``); ``targets`` has shape (n,) (class indices, int64) or (n,) / (n, k)
    floats for regression, or (n, T) token ids for a language model's ``token_cross_entropy``.
    ``feature_names`` names the columns of a tabular ``inputs``; ``info`` carries anything a
    loader wants to keep (label names, raw rows).

    >>> ds = ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    >>> len(ds), ds[[0, 2]].targets.tolist()
    (3, [0, 0])
    >>> text = ArrayDataset({"input_ids": torch.ones(3, 5, dtype=torch.long)}, torch.tensor([0, 1, 0]))
    >>> text[[0, 2]].inputs
    Fields(input_ids: (2, 5) torch.int64)
    """

    inputs: torch.Tensor | Fields
    targets: torch.Tensor
    feature_names: tuple[str, ...] | None = None
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if isinstance(self.inputs, Mapping):
            object.__setattr__(self, "inputs", Fields(self.inputs))
        if not isinstance(self.inputs, torch.Tensor | Fields) or not isinstance(
            self.targets, torch.Tensor
        ):
            raise InputError(
                "ArrayDataset: inputs and targets must be torch tensors; "
                f"got {type(self.inputs).__name__} and {type(self.targets).__name__} "
                "(torch.as_tensor converts numpy arrays)"
            )
        if self.targets.dim() == 0 or (
            isinstance(self.inputs, torch.Tensor) and self.inputs.dim() == 0
        ):
            raise InputError(
                f"ArrayDataset: inputs and targets need one row per instance; got shapes "
                f"{_shapes(self.inputs)} and {tuple(self.targets.shape)}"
            )
        if len(self.inputs) != self.targets.shape[0]:
            raise InputError(
                f"ArrayDataset: inputs have {len(self.inputs)} rows but targets have "
                f"{self.targets.shape[0]}; they must match"
            )
        for what, values in (*_named_inputs(self.inputs), ("targets", self.targets)):
            _check_values(what, values)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index) -> ArrayDataset:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ArrayDataset(self.inputs[index], self.targets[index], self.feature_names, self.info)

    def to(self, device=None, dtype=None) -> ArrayDataset:
        """Move to a device; cast floating inputs (and float targets) to ``dtype``.

        >>> ds = ArrayDataset(torch.ones(2, 3), torch.tensor([0.5, 1.5])).to(dtype=torch.float64)
        >>> ds.inputs.dtype, ds.targets.dtype
        (torch.float64, torch.float64)
        >>> labelled = ArrayDataset(torch.ones(2, 3), torch.tensor([0, 1]))
        >>> labelled.to(dtype=torch.float64).targets.dtype  # class indices stay int64
        torch.int64
        """
        if isinstance(self.inputs, Fields):
            inputs = self.inputs.to(device, dtype)
        else:
            inputs = self.inputs.to(device)
            if dtype is not None and inputs.is_floating_point():
                inputs = inputs.to(dtype)
        targets = self.targets.to(device)
        if dtype is not None and targets.is_floating_point():
            targets = targets.to(dtype)
        return ArrayDataset(inputs, targets, self.feature_names, self.info)


def _named_inputs(inputs: torch.Tensor | Fields) -> list[tuple[str, torch.Tensor]]:
    """(name for messages, tensor) for the inputs: "inputs", or "inputs field 'x'" per field."""
    if isinstance(inputs, Fields):
        return [(f"inputs field {k!r}", v) for k, v in inputs.items()]
    return [("inputs", inputs)]


def _shapes(inputs: torch.Tensor | Fields):
    """A tensor's shape, or each field's, for messages."""
    if isinstance(inputs, Fields):
        return {k: tuple(v.shape) for k, v in inputs.items()}
    return tuple(inputs.shape)


def _check_values(what: str, values: torch.Tensor) -> None:
    """Real numbers only, and no NaN or infinity (the row numbers of the first bad ones)."""
    if values.dtype == torch.bool or values.dtype.is_complex:
        raise InputError(
            f"ArrayDataset: {what} have dtype {values.dtype}; expected real numbers "
            "(floats, or integer class indices for targets)"
        )
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).reshape(len(values), -1).any(1)
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise InputError(
            f"ArrayDataset: {what} contain NaN or infinite values (rows {rows} ...); "
            "impute or drop them first"
        )


def check_pair(train, test, source: str = "data") -> None:
    """Check a (train, test) pair before any work: types, sizes, features and targets agree.

    ``source`` names where the data came from in messages (``"data.factory"``, ...).

    >>> x = torch.zeros(4, 3)
    >>> check_pair(ArrayDataset(x, torch.tensor([0, 1, 0, 1])), ArrayDataset(x, torch.zeros(4)))
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data: train targets are class indices (torch.int64) but test targets are floats (torch.float32); use one kind for both
    """
    for which, data in (("train", train), ("test", test)):
        if not isinstance(data, ArrayDataset):
            raise InputError(
                f"{source}: {which} must be a fimo ArrayDataset; got {type(data).__name__}"
            )
        if len(data) == 0:
            raise InputError(f"{source}: the {which} set is empty")
    if _instance_shapes(train.inputs) != _instance_shapes(test.inputs):
        raise InputError(
            f"{source}: train inputs have shape {_shapes(train.inputs)} but test inputs "
            f"{_shapes(test.inputs)}; every instance must have the same shape"
        )
    kinds = ["floats" if d.targets.is_floating_point() else "class indices" for d in (train, test)]
    if kinds[0] != kinds[1]:
        raise InputError(
            f"{source}: train targets are {kinds[0]} ({train.targets.dtype}) but test targets "
            f"are {kinds[1]} ({test.targets.dtype}); use one kind for both"
        )
    if train.targets.shape[1:] != test.targets.shape[1:]:
        raise InputError(
            f"{source}: train targets have shape {tuple(train.targets.shape)} but test targets "
            f"{tuple(test.targets.shape)}; every instance's target must have the same shape"
        )
    if kinds[0] == "class indices":
        for which, data in (("train", train), ("test", test)):
            if int(data.targets.min()) < 0:
                raise InputError(
                    f"{source}: {which} labels include {int(data.targets.min())}; class "
                    "indices must be 0, 1, ..., k-1"
                )


def _instance_shapes(inputs: torch.Tensor | Fields):
    if isinstance(inputs, Fields):
        return inputs.instance_shapes()
    return tuple(inputs.shape[1:])


def check_indices(setting: str, values, size: int, what: str = "instances") -> np.ndarray:
    """``values`` as distinct int64 positions in ``range(size)``, or an InputError naming
    ``setting``, what came and what is allowed.

    >>> check_indices("left_out", [3, 1], 5).tolist()
    [3, 1]
    """
    try:
        raw = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{setting}: cannot read {values!r} as indices ({exc})") from None
    if raw.ndim > 1:
        raise InputError(
            f"{setting}: got nested lists (shape {raw.shape}); give a flat list of indices"
        )
    raw = raw.reshape(-1)
    if raw.dtype == np.bool_:
        raise InputError(
            f"{setting}: got a boolean mask; give the positions instead (numpy.flatnonzero)"
        )
    with np.errstate(invalid="ignore"):
        whole = raw.dtype.kind in "iu" or (
            raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (np.mod(raw, 1) == 0)))
        )
    if not whole:
        raise InputError(
            f"{setting}: got {raw[:5].tolist()}{' ...' if raw.size > 5 else ''}; "
            "expected whole numbers (indices)"
        )
    outside = raw[(raw < 0) | (raw >= size)]
    if outside.size:
        raise InputError(
            f"{setting}: index {outside[0]:.6g} is out of range; there are {size} {what} "
            f"(indices 0 to {size - 1})"
        )
    out = raw.astype(np.int64)
    unique, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"{setting}: index {int(unique[counts > 1][0])} appears more than once; "
            "each index may appear once"
        )
    return out
