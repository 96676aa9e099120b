"""Tidy tables: one row per observation, written as CSV (always) and Parquet (with pyarrow).

Every table of an evaluation has a fixed list of typed columns (:data:`SCHEMAS`). CSV cells
are written so that they read back exactly: floats by ``repr``, booleans as ``true`` /
``false``, a missing value as an empty cell. ``metrics/by_checkpoint.csv`` keeps the
contract columns of :data:`fimo.evaluate.metrics.COLUMNS`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from fimo.errors import InputError
from fimo.evaluate.metrics import COLUMNS
from fimo.io import atomic_write, write_text

_METRIC_TYPES = {
    "method": str,
    "checkpoint": int,
    "step": int,
    "epoch": float,
    "metric": str,
    "centred": bool,
    "mean": float,
    "sem": float,
    "n": int,
}

#: column name -> type, per table, in column order
SCHEMAS: dict[str, dict[str, type]] = {
    "by_checkpoint": {c: _METRIC_TYPES[c] for c in COLUMNS},
    "seed_count": {
        "method": str,
        "k": int,
        "windows": int,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "metric": str,
        "centred": bool,
        "mean": float,
        "sem": float,
        "n": int,
        "best": bool,
    },
    "noise_floor": {
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "metric": str,
        "centred": bool,
        "estimate": str,
        "seeds": int,
        "splits": int,
        "mean": float,
        "sem": float,
        "n": int,
    },
    "calibration": {
        "method": str,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "centred": bool,
        "quantity": str,
        "value": float,
        "sem": float,
        "n": int,
    },
    "sorted_curves": {
        "source": str,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "centred": bool,
        "rank": int,
        "value": float,
    },
    "examples": {
        "test": int,
        "source": str,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "direction": str,
        "rank": int,
        "train": int,
        "score": float,
        "gold": float,
        "gold_rank": int,
    },
}


#: the tables of a gold standard with group runs (docs/groups.md), written only for one
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "ft_lds": {
        "method": str,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "metric": str,
        "groups": int,
        "mean": float,
        "sem": float,
        "n": int,
    },
    "ft_lds_ceiling": dict(SCHEMAS["noise_floor"]),
    "group_attribution": {
        "group": int,
        "name": str,
        "size": int,
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "source": str,
        "mean": float,
        "sem": float,
        "n": int,
        "seed_sem": float,
    },
    "additivity": {
        "checkpoint": int,
        "step": int,
        "epoch": float,
        "groups": int,
        "cosine": float,
        "cosine_se": float,
        "relative_gap": float,
        "relative_gap_se": float,
        "slope": float,
        "slope_se": float,
        "noise_gap": float,
        "spearman": float,
        "spearman_sem": float,
    },
}


def have_pyarrow() -> bool:
    """True when pyarrow is importable (then tables are also written as Parquet).

    >>> import importlib.util
    >>> have_pyarrow() == (importlib.util.find_spec("pyarrow") is not None)
    True
    """
    return importlib.util.find_spec("pyarrow") is not None


def have_pandas() -> bool:
    """True when pandas is importable (then :func:`fimo.evaluate` returns DataFrames).

    >>> import importlib.util
    >>> have_pandas() == (importlib.util.find_spec("pandas") is not None)
    True
    """
    return importlib.util.find_spec("pandas") is not None


def _cell(kind: type, value) -> str:
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return repr(float(value))
    if kind is int:
        return str(int(value))
    return str(value)


def _parse(kind: type, text: str):
    if text == "":
        return None
    if kind is bool:
        low = text.strip().lower()
        if low not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return low == "true"
    return kind(text)


def _schema(name: str) -> dict[str, type]:
    known = {**SCHEMAS, **GROUP_SCHEMAS}
    if name not in known:
        raise InputError(f"table: unknown table {name!r}; known: {', '.join(known)}")
    return known[name]


def _check(name: str, rows: list[Mapping]) -> dict[str, type]:
    schema = _schema(name)
    for i, row in enumerate(rows):
        missing = [c for c in schema if c not in row]
        if missing:
            raise InputError(f"table {name}: row {i} lacks the columns {missing}")
    return schema


def table_csv(name: str, rows: Iterable[Mapping]) -> str:
    """The CSV text of a table (header = the schema's columns).

    >>> table_csv("examples", []).split(",")[:3]
    ['test', 'source', 'checkpoint']
    """
    rows = list(rows)
    schema = _check(name, rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(schema)
    for row in rows:
        writer.writerow([_cell(kind, row[c]) for c, kind in schema.items()])
    return buf.getvalue()


def write_table(directory, name: str, rows: Iterable[Mapping], parquet: bool | None = None):
    """Write ``<directory>/<name>.csv`` (and ``.parquet`` when pyarrow is importable, or
    when ``parquet=True``; otherwise an older ``.parquet`` is removed), atomically; returns
    the paths written.

    >>> import tempfile, pathlib
    >>> row = {"method": "a", "checkpoint": 0, "step": 5, "epoch": 1.0, "metric": "cosine",
    ...        "centred": True, "mean": 0.1 + 0.2, "sem": float("nan"), "n": 4}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_table(tmp, "by_checkpoint", [row], parquet=False)
    ...     text = paths[0].read_text()
    >>> [p.name for p in paths], text.splitlines()[1]
    (['by_checkpoint.csv'], 'a,0,5,1.0,cosine,true,0.30000000000000004,nan,4')
    """
    rows = list(rows)
    directory = Path(directory)
    paths = [write_text(directory / f"{name}.csv", table_csv(name, rows))]
    if parquet is None:
        parquet = have_pyarrow()
    target = directory / f"{name}.parquet"
    if parquet:
        paths.append(_write_parquet(target, name, rows))
    else:
        target.unlink(missing_ok=True)  # never leave a stale copy next to the new CSV
    return paths


_ARROW = {str: "string", int: "int64", float: "float64", bool: "bool_"}


def _write_parquet(path: Path, name: str, rows: list[Mapping]) -> Path:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"writing {path.name} needs pyarrow (pip install pyarrow); the CSV is written"
        ) from None
    schema = _schema(name)
    arrow = pa.schema([(c, getattr(pa, _ARROW[kind])()) for c, kind in schema.items()])
    columns = {c: [_arrow_value(kind, r[c]) for r in rows] for c, kind in schema.items()}
    table = pa.Table.from_pydict(columns, schema=arrow)
    return atomic_write(path, lambda p: pq.write_table(table, p))


def _arrow_value(kind: type, value):
    if value is None:
        return None
    if kind is float:
        return float(value)
    return kind(value)


def read_table(path, name: str | None = None) -> list[dict]:
    """Read a table written by :func:`write_table` (CSV), restoring the column types.

    ``name`` defaults to the file name without its extension.

    >>> import tempfile, pathlib
    >>> row = {"method": "a", "checkpoint": 0, "step": 5, "epoch": 1.0, "metric": "cosine",
    ...        "centred": True, "mean": 0.1 + 0.2, "sem": 0.01, "n": 4}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_table(tmp, "by_checkpoint", [row], parquet=False)
    ...     back = read_table(pathlib.Path(tmp) / "by_checkpoint.csv")
    [...]
    >>> back == [row]  # every value back with its type, floats to the last bit
    True
    """
    path = Path(path)
    name = name or path.stem
    schema = _schema(name)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != tuple(schema):
            raise InputError(
                f"{path}: not a fimo {name} table; expected the header {','.join(schema)}, "
                f"got {','.join(header or [])!r}"
            )
        rows = []
        for line, rec in enumerate(reader, start=2):
            if not rec:
                continue
            try:
                rows.append(
                    {c: _parse(kind, v) for (c, kind), v in zip(schema.items(), rec, strict=True)}
                )
            except ValueError as exc:
                raise InputError(f"{path}:{line}: cannot read the row {rec!r} ({exc})") from None
    return rows


def to_frame(name: str, rows: Iterable[Mapping]):
    """A pandas DataFrame of a table, with the schema's columns (needs pandas).

    >>> row = {"test": 3, "source": "gold", "checkpoint": 0, "step": 5, "epoch": 1.0,
    ...        "direction": "helpful", "rank": 1, "train": 8, "score": 0.5, "gold": 0.5,
    ...        "gold_rank": 1}
    >>> try:
    ...     frame = to_frame("examples", [row])
    ... except InputError as err:  # pandas is optional: the error says how to get it
    ...     ok = "pip install pandas" in str(err)
    ... else:
    ...     ok = frame.shape == (1, 11) and str(frame["train"].dtype) == "int64"
    >>> ok
    True
    """
    try:
        import pandas as pd
    except ImportError:
        raise InputError(
            "DataFrames need pandas (pip install pandas); pass frames=False for lists of dicts"
        ) from None
    schema = _schema(name)
    frame = pd.DataFrame(list(rows), columns=list(schema))
    for c, kind in schema.items():
        if kind is float:
            frame[c] = frame[c].astype("float64")
        elif kind is str:
            frame[c] = frame[c].astype("string")
        elif kind is int and frame[c].notna().all():
            frame[c] = frame[c].astype("int64")
        elif kind is bool and frame[c].notna().all():
            frame[c] = frame[c].astype("bool")
    return frame
