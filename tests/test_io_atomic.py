"""Atomic writes under failure: the previous file and its checksum survive every failure before
the rename; a stop between the file's rename and its checksum's is detected, never trusted."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from fimo.io import (
    DamagedFileError,
    StorageError,
    atomic_write,
    checksum_matches,
    checksum_path,
    describe_os_error,
    read_npz,
    remove_temporaries,
    verify_folder,
    write_npz,
    write_text,
)


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def old(tmp_path):
    """An existing file with its checksum, and their bytes."""
    path = write_npz(tmp_path / "scores.npz", scores=np.arange(6.0))
    return path, path.read_bytes(), checksum_path(path).read_bytes()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_write_cut_short_keeps_the_old_file(old, tmp_path):
    path, data, checksum = old

    def half_then_full(p: Path) -> None:
        p.write_bytes(b"PK\x03\x04 half a file")
        disk_full()

    with pytest.raises(StorageError) as info:
        atomic_write(path, half_then_full)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"cannot write {path}: No space left on device; free some space on that disk (or write "
        "the run elsewhere with --out) and start again: finished work is kept"
    )
    assert path.read_bytes() == data and checksum_path(path).read_bytes() == checksum
    assert listing(tmp_path) == ["scores.npz", "scores.npz.sha256"]


@pytest.mark.parametrize("call", [1, 2, 3])
def test_a_refused_fsync_or_rename_keeps_the_old_file_and_checksum(
    old, tmp_path, monkeypatch, call
):
    """Fail the 1st or 2nd fsync (file, checksum) or the first rename (the file's)."""
    path, data, checksum = old
    count = {"fsync": 0}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        count["fsync"] += 1
        if count["fsync"] == call:
            disk_full()
        return real_fsync(fd)

    def replace(src, dst):
        if call == 3:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageError, match=f"cannot write {path}"):
        write_npz(path, scores=np.zeros(3))
    monkeypatch.undo()
    assert path.read_bytes() == data and checksum_path(path).read_bytes() == checksum
    assert listing(tmp_path) == ["scores.npz", "scores.npz.sha256"]
    assert read_npz(path)["scores"].tolist() == list(np.arange(6.0))


def test_a_stop_between_the_two_renames_is_detected(old, tmp_path, monkeypatch):
    path, data, _ = old
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".sha256"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageError):
        write_npz(path, scores=np.zeros(3))
    monkeypatch.undo()
    assert path.read_bytes() != data  # the new file is in place, its checksum is not
    assert checksum_matches(path) is False
    with pytest.raises(DamagedFileError, match=r"bytes no longer match scores\.npz\.sha256"):
        read_npz(path)
    assert listing(tmp_path) == ["scores.npz", "scores.npz.sha256"]


def test_an_interrupt_is_passed_on_and_leaves_nothing(tmp_path):
    def interrupted(p: Path) -> None:
        p.write_text("partial")
        raise KeyboardInterrupt

    write_text(tmp_path / "table.csv", "x")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "table.csv", interrupted)
    assert listing(tmp_path) == ["table.csv", "table.csv.sha256"]
    assert (tmp_path / "table.csv").read_text() == "x"


def test_only_data_files_get_checksums(tmp_path):
    write_text(tmp_path / "report.html", "<html></html>")
    write_text(tmp_path / "by_checkpoint.csv", "a,b\n")
    assert listing(tmp_path) == ["by_checkpoint.csv", "by_checkpoint.csv.sha256", "report.html"]


def test_unreadable_npz_files_are_named(tmp_path):
    bad = tmp_path / "gold.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(
        DamagedFileError, match=r"gold\.npz cannot be read as \.npz \(it is not a zip"
    ):
        read_npz(bad)
    write_npz(bad, x=np.arange(3))
    bad.write_bytes(bad.read_bytes()[:-30])  # cut short, checksum left as it was
    with pytest.raises(DamagedFileError, match="no longer match"):
        read_npz(bad)
    checksum_path(bad).unlink()  # no checksum: the zip structure still gives it away
    with pytest.raises(DamagedFileError, match=r"cannot be read as \.npz \(BadZipFile"):
        read_npz(bad)
    with pytest.raises(FileNotFoundError):
        read_npz(tmp_path / "missing.npz")


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "scores").mkdir()
    stale = [tmp_path / "scores/.grad_dot.npz.k3j2ab_9.tmp", tmp_path / ".final.pt.a1b2c3d4.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = write_npz(tmp_path / "scores/grad_dot.npz", scores=np.ones(2))
    assert sorted(remove_temporaries([tmp_path, tmp_path / "scores"])) == sorted(stale)
    assert listing(tmp_path / "scores") == ["grad_dot.npz", "grad_dot.npz.sha256"]
    assert keep.exists()


def test_verify_folder_checks_every_recorded_file(tmp_path):
    a = write_npz(tmp_path / "a.npz", x=np.arange(3))
    b = write_text(tmp_path / "m" / "b.csv", "x\n1\n")
    legacy = tmp_path / "shards" / "seed-00000_lo-00000-00002.npz"
    legacy.parent.mkdir()
    legacy.write_bytes(a.read_bytes())
    legacy.with_suffix(".sha256").write_text(checksum_path(a).read_text().split()[0] + "\n")
    assert verify_folder(tmp_path) == (3, [])
    b.write_text("x\n2\n")
    legacy.unlink()
    assert verify_folder(tmp_path) == (3, [b, legacy])


def test_os_errors_are_described_in_one_line():
    exc = PermissionError(errno.EACCES, "Permission denied", "/data/runs/x")
    assert describe_os_error(exc) == (
        "/data/runs/x: Permission denied; make /data/runs writable, or write the run elsewhere "
        "with --out"
    )
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == (
        "a file: Input/output error; check the disk and the folder, then start again: finished "
        "work is kept"
    )
