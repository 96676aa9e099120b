"""A full disk or an unwritable directory: one clear line naming the file and the fix, exit
code 1, and nothing already on disk damaged (files byte-identical, no partial file under its
final name, no temporary left behind).

Tests run as root here, so permission bits are ignored: refusals are provoked by making the
system calls fail (``os.fsync``, ``os.replace``, a write cut short) at named moments, and one
test fills a real (tmpfs) disk when mounting one is allowed.
"""

import errno
import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fimo.cli import main
from fimo.io import checksum_matches, read_npz

SHARD = "further/shards/seed-00001_lo-00000-00004.npz"


def copy_of(reference: Path, tmp_path: Path, remove=()) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in remove:
        for path in out.glob(name):
            path.unlink()
    return out


def files(folder: Path) -> dict[str, bytes]:
    """Every file by relative path (the lock file holds the last holder's pid: left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def assert_nothing_lost(folder: Path, before: dict[str, bytes], absent=()) -> None:
    after = files(folder)
    changed = [name for name, data in before.items() if after.get(name) != data]
    assert not changed, f"damaged or lost: {changed}"
    assert not [n for n in after if n.endswith(".tmp")], "a temporary file was left behind"
    for name in absent:
        assert name not in after, f"{name} appeared although its write failed"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def fail_fsync(monkeypatch, pattern: str, code: int) -> None:
    """os.fsync raises OSError(code) for files whose path matches ``pattern``."""
    real = os.fsync

    def fsync(fd):
        if fnmatch.fnmatch(os.readlink(f"/proc/self/fd/{fd}"), pattern):
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def fail_replace(monkeypatch, pattern: str, code: int) -> None:
    """os.replace raises OSError(code) when its target matches ``pattern``."""
    real = os.replace

    def replace(src, dst, **kw):
        if fnmatch.fnmatch(str(dst), pattern):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_full_disk_while_a_shard_is_written(reference, config_path, tmp_path, monkeypatch, capsys):
    out = copy_of(reference, tmp_path, remove=[SHARD, SHARD + ".sha256", "further/gold.npz*"])
    before = files(out)
    fail_fsync(monkeypatch, f"*/further/shards/.{Path(SHARD).name}.*.tmp", errno.ENOSPC)
    code = main(["run", str(config_path), "--out", str(out), "--quiet"])
    assert code == 1
    assert one_line(capsys) == (
        f"error: cannot write {out / SHARD}: No space left on device; free some space on that "
        "disk (or write the run elsewhere with --out) and start again: finished work is kept"
    )
    assert_nothing_lost(out, before, absent=[SHARD, SHARD + ".sha256", "further/gold.npz"])
    # with space again, the run finishes with the numbers of a run never stopped
    monkeypatch.undo()
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    gold, ref = read_npz(out / "further/gold.npz"), read_npz(reference / "further/gold.npz")
    np.testing.assert_array_equal(gold["loss_without"], ref["loss_without"])
    assert checksum_matches(out / SHARD) is True


def test_unwritable_scores_folder(reference, config_path, tmp_path, monkeypatch, capsys):
    out = copy_of(reference, tmp_path, remove=["scores/grad_cos.npz*"])
    before = files(out)
    fail_replace(monkeypatch, "*/scores/grad_cos.npz", errno.EACCES)
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 1
    assert one_line(capsys) == (
        f"error: cannot write {out / 'scores/grad_cos.npz'}: Permission denied; make "
        f"{out / 'scores'} writable, or write the run elsewhere with --out"
    )
    assert_nothing_lost(out, before, absent=["scores/grad_cos.npz", "scores/grad_cos.npz.sha256"])


@pytest.mark.parametrize("target", ["report.html", "metrics/by_checkpoint.csv"])
def test_full_disk_while_the_report_is_rebuilt(reference, tmp_path, monkeypatch, capsys, target):
    """The old report and tables (and their checksums) survive a rebuild the disk refuses, even
    when the temporary was cut short mid-write."""
    out = copy_of(reference, tmp_path)
    before = files(out)
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        if fnmatch.fnmatch(str(self), f"*/.{Path(target).name}.*.tmp"):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    assert main(["report", str(out), "--quiet"]) == 1
    message = one_line(capsys)
    assert message.startswith(f"error: cannot write {out / target}: No space left on device;")
    assert_nothing_lost(out, before)
    assert checksum_matches(out / "metrics/by_checkpoint.csv") is True


def test_failed_checksum_write_keeps_the_old_file_and_checksum(reference, tmp_path, monkeypatch):
    out = copy_of(reference, tmp_path)
    before = files(out)
    fail_fsync(monkeypatch, "*/metrics/.by_checkpoint.csv.sha256.*.tmp", errno.EDQUOT)
    assert main(["report", str(out), "--quiet"]) == 1
    assert_nothing_lost(out, before)


def test_output_path_through_a_file(tmp_path, config_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder\n")
    assert main(["run", str(config_path), "--out", str(blocker / "run"), "--quiet"]) == 1
    message = one_line(capsys)
    assert message.startswith(f"error: {blocker / 'run'}: ")
    assert "choose another --out" in message
    assert blocker.read_text() == "not a folder\n"


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs), or a skip when mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_really_full_disk_while_the_report_is_written(reference, small_disk, capsys):
    out = small_disk / "run"
    shutil.copytree(reference, out)
    # fill the disk, then free less than report.html needs
    ballast = small_disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    report = (out / "report.html").stat().st_size
    assert report > 300_000
    os.truncate(ballast, max(0, ballast.stat().st_size - 200_000))
    before = files(out)
    assert main(["report", str(out), "--quiet"]) == 1
    assert one_line(capsys).startswith(
        f"error: cannot write {out / 'report.html'}: No space left on device; free some space"
    )
    assert_nothing_lost(out, before)
    ballast.unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    after = files(out)
    assert not [n for n in after if n.endswith(".tmp")]
    assert after["metrics/by_checkpoint.csv"] == before["metrics/by_checkpoint.csv"]
    assert len(after["report.html"]) > 300_000
