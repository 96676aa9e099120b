"""Small file utilities: atomic writes and fingerprints.

Every file in a run directory is written to a temporary name in the same folder and
renamed into place, so a reader never sees half a file (DESIGN.md, "Runs are data").
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_npz(path, **arrays) -> Path:
    """Save arrays (numpy-readable, no pickles) atomically."""

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def read_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


#: Bumped whenever a default changes or a computation changes its numbers, so that results
#: made before are recomputed rather than mixed in. Settings at their default values are left
#: out of fingerprints (``non_default``), so a new option does not invalidate finished work.
RESULTS_VERSION = 1


def non_default(settings) -> dict:
    """The fields of a dataclass instance that differ from their defaults (for fingerprints)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(settings):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value, default = list(value), list(default) if isinstance(default, tuple) else default
        if value != default:
            out[f.name] = value
    return out


def fingerprint(*parts) -> str:
    """A short SHA-256 of tensors, arrays and JSON-able settings, in order."""
    h = hashlib.sha256()
    h.update(f"fimo-results-{RESULTS_VERSION}".encode())
    for part in parts:
        _update(h, part)
    return h.hexdigest()[:16]


def _update(h, part) -> None:
    import torch

    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().contiguous().numpy()
    if isinstance(part, np.ndarray):
        h.update(str((part.dtype.str, part.shape)).encode())
        h.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(part, Mapping):
        for key in sorted(part):
            h.update(str(key).encode())
            _update(h, part[key])
    else:
        h.update(json.dumps(part, sort_keys=True, default=_jsonable).encode())
