"""The most influential training instances, and a readable description of any instance.

:func:`most_influential` picks, for chosen test instances, the left-out training instances
with the largest (most helpful) and smallest (most harmful) scores by the gold standard and
by each method; :func:`describe` shows an instance as the data is: decoded features and the
label for tables, a thumbnail for images, the sentence for text.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence

import numpy as np

from fimo.data.base import Fields
from fimo.errors import InputError
from fimo.evaluate.curves import checkpoint_positions, reference_checkpoint
from fimo.evaluate.metrics import method_at, method_values

#: at most this many features are listed for a dataset with no readable form
MAX_FEATURES = 16


def most_influential(
    gold,
    scores: Mapping[str, object],
    test: Sequence[int] | None = None,
    k: int = 3,
    step: int | None = None,
    centred: bool = True,
) -> list[dict]:
    """The k most helpful and k most harmful left-out instances for chosen test instances.

    ``test`` are dataset indices of test instances in the gold standard (default: its first
    three); ``step`` the checkpoint whose gold standard is used (default: the first at one
    epoch or later, as in the paper's Table 2). Only the left-out instances are ranked, so
    every pick has a gold-standard score to compare with. One row per pick: ``test,
    source`` ("gold" or a method), ``checkpoint, step, epoch, direction`` ("helpful" or
    "harmful"), ``rank`` (1 = strongest), ``train`` (dataset index), ``score``, ``gold``
    (the gold standard's score for the same pair) and ``gold_rank`` (its place in the gold
    standard's order, 1 = most helpful, L = most harmful). Ties keep the left-out order. A
    method with a checkpoint axis ranks by its matrix at the same step.


    >>> from fimo.further.gold import GoldStandard
    >>> from fimo.scores import Scores
    >>> gold = GoldStandard(
    ...     loss_full=np.zeros((1, 1, 1)), loss_without=[[[[0.5, -0.2, 0.1]]]],
    ...     steps=[10], epochs=[1.0], left_out=[4, 5, 6], test=[7], seeds=[0])
    >>> s = Scores([[0.3, 0.1, -0.4]], test=[7], train=[4, 5, 6], method="m")
    >>> picks = most_influential(gold, {"m": s}, k=1)
    >>> [(r["source"], r["direction"], r["train"], r["gold_rank"]) for r in picks]
    [('gold', 'helpful', 4, 1), ('gold', 'harmful', 5, 3),
     ('m', 'helpful', 4, 1), ('m', 'harmful', 6, 2)]
    """
    if k < 1:
        raise InputError(f"most influential: k must be at least 1; got {k}")
    c = reference_checkpoint(gold) if step is None else checkpoint_positions(gold, [step])[0]
    chosen = list(gold.test[:3]) if test is None else [int(t) for t in np.atleast_1d(test)]
    where = {int(t): j for j, t in enumerate(gold.test)}
    missing = [t for t in chosen if t not in where]
    if missing:
        raise InputError(
            f"most influential: test instances {missing} are not in the gold standard; "
            f"it has {gold.test.tolist()[:10]}{' ...' if len(gold.test) > 10 else ''}"
        )
    g = np.asarray(gold.mean(centred), dtype=np.float64)[c]  # (T, L)
    sources = {"gold": g}
    sources.update(
        {str(name): method_at(method_values(gold, sc), c) for name, sc in scores.items()}
    )
    kk = min(k, len(gold.left_out))
    rows: list[dict] = []
    for t in chosen:
        j = where[t]
        gold_order = np.argsort(-g[j], kind="stable")
        gold_rank = np.empty(len(gold_order), dtype=np.int64)
        gold_rank[gold_order] = np.arange(1, len(gold_order) + 1)
        for source, values in sources.items():
            row = values[j]
            helpful = np.argsort(-row, kind="stable")[:kk]
            harmful = np.argsort(row, kind="stable")[:kk]
            for direction, picks in (("helpful", helpful), ("harmful", harmful)):
                for rank, i in enumerate(picks, start=1):
                    rows.append(
                        {
                            "test": t,
                            "source": source,
                            "checkpoint": c,
                            "step": int(gold.steps[c]),
                            "epoch": float(gold.epochs[c]),
                            "direction": direction,
                            "rank": rank,
                            "train": int(gold.left_out[i]),
                            "score": float(row[i]),
                            "gold": float(g[j, i]),
                            "gold_rank": int(gold_rank[i]),
                        }
                    )
    return rows


# -- describing instances ------------------------------------------------------------------------
def _number(x) -> str:
    x = float(x)
    return f"{x:.4g}" if x != int(x) or abs(x) >= 1e6 else str(int(x))


def _label(dataset, index: int) -> str:
    info = dataset.info or {}
    y = dataset.targets[index]
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    names = info.get("label_names")
    if y.ndim == 0 and np.issubdtype(y.dtype, np.integer):
        v = int(y)
        return str(names[v]) if names is not None and 0 <= v < len(names) else str(v)
    if info.get("raw_targets") is not None:  # regression: the target in its own units
        y = np.asarray(info["raw_targets"][index])
    elif "target_std" in info and "target_mean" in info:
        y = y * np.asarray(info["target_std"]) + np.asarray(info["target_mean"])
    if y.ndim == 0:
        return _with_unit(_number(y), info, info.get("target_name"))
    return "[" + ", ".join(_number(v) for v in y.reshape(-1)[:MAX_FEATURES]) + "]"


def _with_unit(text: str, info: Mapping, column) -> str:
    units = info.get("units")
    if isinstance(units, Mapping) and column in units and units[column]:
        return f"{text} {units[column]}"
    return text


def _decode(value, column: str, info: Mapping) -> str:
    """A raw value as text: a documented code by its meaning (``info["codes"]``; a key
    ``"PAY_*"`` stands for the numbered columns ``PAY_0``, ``PAY_2``, ...), a number with
    its unit (``info["units"]``)."""
    codes = info.get("codes") or {}
    for pattern, meaning in codes.items():
        pattern = str(pattern)
        if pattern.endswith("*"):
            match = re.fullmatch(re.escape(pattern[:-1]) + r"\d+", column) is not None
        else:
            match = pattern == column
        if match and isinstance(meaning, Mapping):
            try:
                key = int(float(value))
            except (TypeError, ValueError):
                break
            if key in meaning and float(value) == key:
                return str(meaning[key])
            break
    if isinstance(value, str):
        return value
    try:
        return _with_unit(_number(value), info, column)
    except (TypeError, ValueError):
        return str(value)


def _image_shape(dataset, x: np.ndarray) -> tuple[int, ...] | None:
    shape = dataset.info.get("image_shape")
    if shape is not None:
        return tuple(int(s) for s in shape)
    if x.ndim == 3 and (x.shape[0] in (1, 3) or x.shape[-1] in (1, 3, 4)):
        return tuple(x.shape)
    return None


def thumbnail(image, min_size: int = 64) -> str:
    """A PNG data URI of an image array: (H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4.

    Each image is scaled to its own range; small images are enlarged by whole pixels to at
    least ``min_size`` on the shorter side.

    >>> thumbnail(np.eye(8)).startswith("data:image/png;base64,")
    True
    """
    from matplotlib.image import imsave

    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] in (1, 3):  # channels first, as torch stores images
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise InputError(f"thumbnail: expected a 2-D or 3-D image; got shape {x.shape}")
    lo, hi = np.nanmin(x), np.nanmax(x)
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    factor = max(1, -(-min_size // max(1, min(x.shape[:2]))))
    x = np.repeat(np.repeat(x, factor, axis=0), factor, axis=1)
    buf = io.BytesIO()
    imsave(buf, x, format="png", cmap="gray" if x.ndim == 2 else None, vmin=0, vmax=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def describe(dataset, index: int) -> dict:
    """A readable description of one instance of an :class:`~fimo.data.ArrayDataset`.

    ``{"label": ..., ...}``, using what the dataset's ``info`` offers: ``raw`` with
    ``raw_columns`` (tables: the original values, codes decoded by ``codes`` and numbers
    given their ``units``), ``text`` (the sentence), images
    (``inputs`` of shape (n, C, H, W) or ``info["image_shape"]``: ``"image"`` holds a PNG
    data URI); named input fields (:class:`~fimo.data.Fields`: token ids, masks) by their
    values; otherwise the feature vector, by ``feature_names`` when there are any (the
    non-zero features first, at most 16).

    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> ds = ArrayDataset(torch.tensor([[0.5, 0.0]]), torch.tensor([1]), ("x", "y"),
    ...                   {"label_names": ("no", "yes")})
    >>> describe(ds, 0)
    {'label': 'yes', 'x': '0.5', 'y': '0'}
    """
    index = int(index)
    if not 0 <= index < len(dataset):
        raise InputError(f"describe: index {index} is outside the dataset (0..{len(dataset) - 1})")
    out = {"label": _label(dataset, index)}
    info = dataset.info or {}
    if info.get("raw") is not None and info.get("raw_columns") is not None:
        values = info["raw"][index]
        for column, value in zip(info["raw_columns"], values, strict=False):
            out[str(column)] = _decode(value, str(column), info)
        return out
    if info.get("text") is not None:
        out["text"] = str(info["text"][index])
        return out
    x = dataset.inputs[index]
    if isinstance(x, Fields):  # named fields (token ids, masks, ...): each one's values
        for name, values in x.items():
            out[name] = _values_text(values.detach().cpu().numpy().reshape(-1))
        return out
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    shape = _image_shape(dataset, x)
    if shape is not None:
        out["image"] = thumbnail(x.reshape(shape))
        return out
    flat = x.reshape(-1)
    names = dataset.feature_names or tuple(f"x{j}" for j in range(flat.size))
    order = list(range(flat.size))
    if flat.size > MAX_FEATURES:
        order = [j for j in order if flat[j] != 0] + [j for j in order if flat[j] == 0]
    for j in order[:MAX_FEATURES]:
        out[str(names[j])] = _number(flat[j])
    if flat.size > MAX_FEATURES:
        out["…"] = f"{flat.size - MAX_FEATURES} more features"
    return out


def _values_text(flat: np.ndarray) -> str:
    """A field's values as text: the first MAX_FEATURES, then how many more.

    >>> _values_text(np.arange(20))
    '0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 … (20 values)'
    """
    shown = " ".join(_number(v) for v in flat[:MAX_FEATURES])
    return shown if flat.size <= MAX_FEATURES else f"{shown} … ({flat.size} values)"


def describe_examples(picks: Sequence[Mapping], train=None, test=None) -> dict:
    """Descriptions of every instance named in :func:`most_influential`'s rows.

    Returns ``{"test": {index: description}, "train": {index: description}}``; empty when
    the datasets are not given. A description that fails is replaced by a note.


    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> data = ArrayDataset(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 1]), ("x",),
    ...                     {"label_names": ("no", "yes")})
    >>> picks = [{"test": 0, "train": 2}, {"test": 0, "train": 1}]
    >>> described = describe_examples(picks, train=data, test=data)
    >>> described["test"], described["train"]
    ({0: {'label': 'no', 'x': '1'}}, {2: {'label': 'yes', 'x': '3'}, 1: {'label': 'yes', 'x': '2'}})
    """
    out: dict[str, dict[int, dict]] = {"test": {}, "train": {}}
    for role, dataset, key in (("test", test, "test"), ("train", train, "train")):
        if dataset is None:
            continue
        for row in picks:
            index = int(row[key])
            if index in out[role]:
                continue
            try:
                out[role][index] = describe(dataset, index)
            except Exception as exc:  # a description must never stop the report
                out[role][index] = {"note": f"cannot describe: {exc}"}
    return out
