"""Small file utilities: atomic writes, checksums and fingerprints.

Every file in a run directory is written to a temporary name in the same folder and
renamed into place, so a reader never sees half a file (DESIGN.md, "Runs are data").
Data files (``.npz``, ``.csv``, ``.parquet``, ``.pt``) get a checksum file beside them,
``<name>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it), so that a file cut
short or altered after it was written is recognised and never used as whole.

A write the system refuses (a full disk, a read-only or unwritable directory) raises
:class:`StorageError`, whose message names the file and what to do; the file's previous
version and its checksum are left as they were.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import signal
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fimo.errors import InputError

#: suffixes of the files that get a ``.sha256`` checksum file when written
CHECKSUMMED = (".npz", ".csv", ".parquet", ".pt")

#: For tests only: a glob pattern; a process about to rename a matching file into place
#: stops itself (SIGSTOP), so that a test can kill it at exactly that moment.
STOP_AT_ENV = "FIMO_TEST_STOP_AT"


class StorageError(OSError):
    """A file could not be written: the message names it, the reason and what to do.

    >>> full = OSError(errno.ENOSPC, "No space left on device")
    >>> error = StorageError("runs/adult/gold.npz", full)
    >>> print(error)
    cannot write runs/adult/gold.npz: No space left on device; free some space on that disk
    (or write the run elsewhere with --out) and start again: finished work is kept
    >>> isinstance(error, OSError), error.errno == errno.ENOSPC
    (True, True)
    """

    def __init__(self, path: str | os.PathLike, exc: OSError):
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))
        self.message = f"cannot write {path}: {exc.strerror or exc}; {_fix(exc.errno, path)}"

    def __str__(self) -> str:
        return self.message


def _fix(code: int | None, path) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            "free some space on that disk (or write the run elsewhere with --out) and start "
            "again: finished work is kept"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {Path(path).parent} writable, or write the run elsewhere with --out"
    if code == errno.EISDIR:
        return (
            "a folder stands where fimo writes a file: remove it and start again (finished "
            "work is kept)"
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a folder is needed (or the reverse); choose another --out"
    return "check the disk and the folder, then start again: finished work is kept"


def describe_os_error(exc: OSError) -> str:
    """A one-line message for an error the operating system raised, naming the file.

    >>> print(describe_os_error(PermissionError(errno.EACCES, "Permission denied", "runs/a.csv")))
    runs/a.csv: Permission denied; make runs writable, or write the run elsewhere with --out
    """
    if isinstance(exc, StorageError):
        return str(exc)
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {reason}; {_fix(exc.errno, where)}"


class DamagedFileError(InputError):
    """A file whose bytes no longer match its checksum, or that cannot be read as written.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = root / "gold.npz"
    >>> _ = path.write_text("not a zip archive")
    >>> try:
    ...     read_npz(path)
    ... except InputError as error:  # a DamagedFileError is an InputError
    ...     print(type(error).__name__, str(error).endswith("(fimo recomputes its own files)"))
    DamagedFileError True
    >>> folder.cleanup()
    """


#: the most a metadata file (a checksum, JSON, a configuration) may hold: more is damage
MAX_METADATA_BYTES = 16 << 20


def read_small_text(path: str | os.PathLike, limit: int = MAX_METADATA_BYTES) -> str:
    """The UTF-8 text of a small file (a checksum, JSON, a configuration), read safely.

    A file that is not a regular file (a folder, a device such as ``/dev/zero``, reached
    through a link or not), larger than ``limit`` bytes, or not UTF-8 raises
    :class:`DamagedFileError` naming it; an absent one raises ``FileNotFoundError``. So a
    damaged file costs one line, never an endless read.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.json").write_text("{}")
    >>> read_small_text(folder / "a.json")
    '{}'
    >>> read_small_text("/dev/zero")
    Traceback (most recent call last):
    ...
    fimo.io.DamagedFileError: /dev/zero is not a regular file (a character device); ...
    >>> _ = (folder / "b.json").write_bytes(bytes([0xFF]) + b"{}")
    >>> read_small_text(folder / "b.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.io.DamagedFileError: .../b.json is not UTF-8 text (byte 0xff at 0); it is damaged: ...
    """
    fix = "it is damaged: delete it (fimo recomputes its own files)"
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe must not block the open
    kind = _file_kind(os.fstat(fd).st_mode)
    if kind != "regular file":
        os.close(fd)
        raise DamagedFileError(f"{path} is not a regular file (a {kind}); {fix}")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DamagedFileError(
            f"{path} holds more than {limit} bytes, too many for metadata; {fix}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFileError(
            f"{path} is not UTF-8 text (byte {data[exc.start]:#04x} at {exc.start}); {fix}"
        ) from None


def _file_kind(mode: int) -> str:
    import stat

    for test, kind in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the checksum of ``path`` is kept: ``<name>.sha256`` beside it.

    >>> checksum_path("runs/adult/further/gold.npz").as_posix()
    'runs/adult/further/gold.npz.sha256'
    """
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> _ = (root / "a.txt").write_bytes(b"abc")
    >>> sha256_file(root / "a.txt")[:16]
    'ba7816bf8f01cfea'
    >>> folder.cleanup()
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksum_matches(path: str | os.PathLike, sidecar: str | os.PathLike | None = None):
    """True if ``path`` matches its recorded checksum, False if not, None if none is recorded.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_text(root / "a.csv", "x,1")  # a .csv gets a checksum file
    >>> checksum_matches(path)
    True
    >>> _ = path.write_text("x,2")  # altered afterwards
    >>> checksum_matches(path)
    False
    >>> print(checksum_matches(write_text(root / "a.txt", "x")))  # a .txt gets none
    None
    >>> folder.cleanup()
    """
    sidecar = Path(sidecar) if sidecar is not None else checksum_path(path)
    try:
        recorded = read_small_text(sidecar).split()
    except FileNotFoundError:
        return None
    except DamagedFileError:  # a damaged checksum: the file is not trusted, it is recomputed
        return False
    return bool(recorded) and recorded[0] == sha256_file(path)


def verify(path: str | os.PathLike) -> None:
    """Raise :class:`DamagedFileError` if ``path`` no longer matches its recorded checksum.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_text(root / "a.csv", "x,1")
    >>> verify(path)  # matches: nothing happens
    >>> _ = path.write_text("x,2")
    >>> verify(path)
    Traceback (most recent call last):
    ...
    fimo.io.DamagedFileError: .../a.csv is damaged: its bytes no longer match a.csv.sha256 ...
    >>> folder.cleanup()
    """
    if checksum_matches(path) is False:
        raise DamagedFileError(
            f"{path} is damaged: its bytes no longer match {checksum_path(path).name} (cut "
            "short or altered after it was written); delete it and run `fimo run` again to "
            "recompute it"
        )


def verify_folder(folder: str | os.PathLike) -> tuple[int, list[Path]]:
    """Check every file under ``folder`` that has a checksum file: (number checked, the
    files that are damaged or missing).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> _ = write_text(root / "a.csv", "1")
    >>> _ = write_text(root / "sub" / "b.csv", "2").write_text("3")  # b.csv is altered
    >>> checked, damaged = verify_folder(root)
    >>> checked, [p.relative_to(root).as_posix() for p in damaged]
    (2, ['sub/b.csv'])
    >>> folder.cleanup()
    """
    checked, damaged = 0, []
    for sidecar in sorted(Path(folder).rglob("*.sha256")):
        if sidecar.name.startswith("."):
            continue  # a temporary
        data = sidecar.with_suffix("")
        if data.suffix not in CHECKSUMMED:  # a shard's checksum as earlier versions named it
            data = sidecar.with_suffix(".npz")
        checked += 1
        if not data.is_file() or not checksum_matches(data, sidecar):
            damaged.append(data)
    return checked, damaged


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], checksum: bool | None = None
) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``.

    With ``checksum`` (by default for the suffixes in :data:`CHECKSUMMED`) the file's
    SHA-256 is written to ``<name>.sha256``, renamed into place just after the file. A
    failure before the renames leaves the old file and its checksum untouched; a stop
    between the two renames leaves a checksum that does not match, so the file is taken as
    damaged and recomputed, never used.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = atomic_write(root / "table.csv", lambda tmp: tmp.write_text("x,1"))
    >>> sorted(p.name for p in root.iterdir()), checksum_matches(path)
    (['table.csv', 'table.csv.sha256'], True)
    >>> def stopped(tmp):
    ...     tmp.write_text("x,2")
    ...     raise RuntimeError("stopped halfway")
    >>> atomic_write(path, stopped)
    Traceback (most recent call last):
    ...
    RuntimeError: stopped halfway
    >>> path.read_text(), sorted(p.name for p in root.iterdir())  # as before
    ('x,1', ['table.csv', 'table.csv.sha256'])
    >>> folder.cleanup()
    """
    path = Path(path)
    if checksum is None:
        checksum = path.suffix in CHECKSUMMED
    made: list[Path] = []
    try:
        tmp = _temporary(path, made)
        write(tmp)
        _fsync(tmp)
        if checksum:
            sidecar = checksum_path(path)
            side_tmp = _temporary(sidecar, made)
            side_tmp.write_text(f"{sha256_file(tmp)}  {path.name}\n", encoding="utf-8")
            _fsync(side_tmp)
        _stop_for_tests(path)
        os.replace(tmp, path)
        if checksum:
            _stop_for_tests(sidecar)
            os.replace(side_tmp, sidecar)
    except BaseException as exc:
        for leftover in made:
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            target = exc.filename2 if isinstance(exc, IsADirectoryError) else None
            raise StorageError(target or path, exc) from exc  # a rename names its target
        raise
    return path


def _temporary(path: Path, made: list[Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    made.append(Path(tmp))
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    return Path(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _stop_for_tests(path: Path) -> None:
    pattern = os.environ.get(STOP_AT_ENV)
    if pattern and fnmatch.fnmatch(path.as_posix(), pattern):
        os.kill(os.getpid(), signal.SIGSTOP)


#: the names :func:`_temporary` gives: ``.<file name>.<8 characters of mkstemp>.tmp``
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_temporaries(folders) -> list[Path]:
    """Delete the temporary files a stopped writer left in ``folders`` (not below them).

    Only files named as :func:`atomic_write` names its temporaries are removed, and only in the
    folders given (those fimo writes): a user's own ``.something.tmp`` elsewhere is never
    touched. Call only while holding the folder's run lock: another writer's temporaries look
    the same.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> _ = (root / ".table.csv.k3j2ab_9.tmp").write_text("half a table")
    >>> _ = (root / ".notes.tmp").write_text("the user's")
    >>> [p.name for p in remove_temporaries([root])], [p.name for p in root.iterdir()]
    (['.table.csv.k3j2ab_9.tmp'], ['.notes.tmp'])
    >>> folder.cleanup()
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for tmp in sorted(folder.iterdir()):
            if TEMPORARY_NAME.match(tmp.name) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) with :func:`atomic_write`; the path.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_text(root / "notes.txt", "hello")
    >>> path.read_text(), checksum_path(path).exists()
    ('hello', False)
    >>> folder.cleanup()
    """
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON with sorted keys (numpy values and paths as plain
    JSON) with :func:`atomic_write`; the path.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_json(root / "settings.json", {"seeds": np.arange(2), "lr": np.float32(0.5)})
    >>> print(path.read_text())
    {
      "lr": 0.5,
      "seeds": [
        0,
        1
      ]
    }
    <BLANKLINE>
    >>> folder.cleanup()
    """
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_npz(path, **arrays) -> Path:
    """Save arrays (numpy-readable, no pickles) atomically.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_npz(root / "losses.npz", loss=np.array([0.5, 0.25]), step=np.array(3))
    >>> sorted(p.name for p in root.iterdir()), checksum_matches(path)
    (['losses.npz', 'losses.npz.sha256'], True)
    >>> folder.cleanup()
    """

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def read_npz(path, verify_checksum: bool = True) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), after checking its recorded checksum.

    A file that is damaged, or holds pickled Python objects (which are never loaded, as
    loading them could run code), raises :class:`DamagedFileError` naming it.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> path = write_npz(root / "losses.npz", loss=np.array([0.5, 0.25]), step=np.array(3))
    >>> {name: array.tolist() for name, array in read_npz(path).items()}
    {'loss': [0.5, 0.25], 'step': 3}
    >>> np.savez(root / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    >>> read_npz(root / "objects.npz")
    Traceback (most recent call last):
    ...
    fimo.io.DamagedFileError: .../objects.npz holds pickled Python objects, which fimo never ...
    >>> folder.cleanup()
    """
    if verify_checksum:
        verify(path)
    with open(path, "rb") as fh:
        if fh.read(2) != b"PK":  # every zip archive, hence every .npz, starts so
            raise DamagedFileError(
                f"{path} cannot be read as .npz (it is not a zip archive); it is damaged or "
                "not an .npz file: delete it (fimo recomputes its own files)"
            )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DamagedFileError(
                f"{path} holds pickled Python objects, which fimo never loads (they could run "
                "code); save plain numeric arrays instead"
            ) from None
        raise DamagedFileError(
            f"{path} cannot be read as .npz ({_one_line(exc)}); it is damaged or not an .npz "
            "file: delete it (fimo recomputes its own files)"
        ) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DamagedFileError(
            f"{path} cannot be read as .npz ({type(exc).__name__}: {_one_line(exc)}); it is "
            "damaged or not an .npz file: delete it (fimo recomputes its own files)"
        ) from None


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


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
    """The fields of a dataclass instance that differ from their defaults (for fingerprints).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Settings:
    ...     lr: float = 0.1
    ...     epochs: int = 1
    >>> non_default(Settings(lr=0.5)), non_default(Settings())
    ({'lr': 0.5}, {})
    """
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
    """A short SHA-256 of tensors, arrays, dicts of them (also the named input fields of a
    dataset, :class:`fimo.data.Fields`) and JSON-able settings, in order.

    >>> import torch
    >>> a = fingerprint(np.arange(3), {"lr": 0.1})
    >>> a == fingerprint(torch.arange(3), {"lr": 0.1}), a == fingerprint(np.arange(3), {"lr": 0.2})
    (True, False)
    >>> len(a)
    16
    >>> from fimo.data import Fields
    >>> ids = Fields({"input_ids": torch.tensor([[5, 6]]), "mask": torch.ones(1, 2)})
    >>> fingerprint(ids) == fingerprint(ids[[0]]), fingerprint(ids) == fingerprint(ids.as_dict())
    (True, False)
    """
    h = hashlib.sha256()
    h.update(f"fimo-results-{RESULTS_VERSION}".encode())
    for part in parts:
        _update(h, part)
    return h.hexdigest()[:16]


def _update(h, part) -> None:
    import torch

    from fimo.data.base import Fields  # here: hashing settings needs no data package

    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().contiguous().numpy()
    if isinstance(part, Fields):  # named fields in their own order, told apart from a plain dict
        h.update(b"fields")
        for key, value in part.items():
            h.update(str(key).encode())
            _update(h, value)
    elif isinstance(part, np.ndarray):
        h.update(str((part.dtype.str, part.shape)).encode())
        part = np.ascontiguousarray(part)
        # the array's own bytes (a gold standard's take gigabytes: no copy of them)
        h.update(part.tobytes() if part.dtype.hasobject else part.reshape(-1).view(np.uint8))
    elif isinstance(part, Mapping):
        for key in sorted(part):
            h.update(str(key).encode())
            _update(h, part[key])
    else:
        h.update(json.dumps(part, sort_keys=True, default=_jsonable).encode())
