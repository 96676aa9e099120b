"""Bad input, round two (issue 16): each case exits 2 with one line naming the setting, the value
and what is allowed, and touches nothing of the user's."""

import os
import shutil

import pytest

from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.rundir import RunDir, run_lock
from fimo.io import remove_temporaries


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- 1. files that are not fimo's are never touched ------------------------------------------


def test_a_foreign_directory_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my report")
    (out / "notes.txt").write_text("my notes")
    (out / "deep").mkdir()
    (out / "deep" / ".draft.tmp").write_text("my draft")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", "adult", "--out", str(out), "--quiet"]) == 2
    line = one_line(capsys)
    assert line.startswith(f"error: {str(out)!r} is not a fimo run directory")
    assert "(deep, notes.txt)" in line and line.endswith("give a new or empty directory as --out")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (out / ".lock").exists()


def test_only_a_file_of_fimo_s_name_without_a_run_is_still_foreign(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my report")
    with pytest.raises(InputError, match=r"not a fimo run directory.*\(report.html\)"):
        RunDir(out).check_ours()


def test_the_current_directory_is_refused_when_it_holds_the_user_s_files(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "data.csv").write_text("x\n1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "adult", "--out", "", "--quiet"]) == 2
    assert "is not a fimo run directory" in one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["data.csv"]


def test_empty_and_fimo_s_own_directories_are_accepted(tmp_path, reference):
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty).check_ours()
    RunDir(tmp_path / "absent").check_ours()
    RunDir(reference).check_ours()  # a finished run
    killed = tmp_path / "killed"  # killed before its manifest: config.toml and model/ only
    killed.mkdir()
    shutil.copy(reference / "config.toml", killed)
    shutil.copytree(reference / "model", killed / "model")
    (killed / ".config.toml.ab3k_9zq.tmp").write_text("half")
    RunDir(killed).check_ours()


def test_only_fimo_s_temporaries_in_fimo_s_folders_are_removed(tmp_path):
    ours = [tmp_path / "scores/.grad_dot.npz.k3j2ab_9.tmp", tmp_path / ".config.toml.q1w2e3r4.tmp"]
    theirs = [tmp_path / "scores/.x.tmp", tmp_path / "data/.table.csv.k3j2ab_9.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    assert sorted(RunDir(tmp_path).remove_temporaries()) == sorted(ours)
    assert all(p.exists() for p in theirs)
    assert remove_temporaries([tmp_path / "absent"]) == []


@pytest.mark.parametrize("command", ["run", "report", "compare"])
def test_a_lock_that_is_a_link_is_refused_not_followed(tmp_path, reference, capsys, command):
    out = tmp_path / "received"
    shutil.copytree(reference, out)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (out / ".lock").unlink(missing_ok=True)
    (out / ".lock").symlink_to(victim)
    matrix = tmp_path / "m.npy"
    import numpy as np

    np.save(matrix, np.zeros((8, 4)))
    argv = {
        "run": ["run", str(out / "config.toml"), "--out", str(out), "--quiet"],
        "report": ["report", str(out), "--quiet"],
        "compare": ["compare", str(out), "--scores", str(matrix), "--name", "ext",
                    "--orientation", "test,train", "--quiet"],
    }[command]  # fmt: skip
    assert main(argv) == 2
    line = one_line(capsys)
    assert line == (
        f"error: {out / '.lock'} is a symbolic link; fimo never follows links in a run "
        "directory (it would write where the link points): delete it and start again"
    )
    assert victim.read_text() == "keep me"


def test_a_plain_lock_still_works(tmp_path):
    with run_lock(tmp_path / "fresh") as run:
        assert run.lock_file.read_text().startswith(f"pid {os.getpid()} ")


# -- 3. usage errors: exit 2, one line, no traceback -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--seeds", "two"], "error: Invalid value for '--seeds': "),
        (["run", "--seeds", "2.5"], "error: Invalid value for '--seeds': "),
        (["run", "--no-such-flag"], "error: No such option: --no-such-flag"),
        (["compare", "x", "--scores", "a.npy", "--name", "b"],
         "error: Missing option '--orientation'; see `fimo compare --help`"),
        (["no-such-command"], "error: No such command 'no-such-command'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_with_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    assert one_line(capsys).startswith(expected)


def test_the_supported_typer_is_the_one_installed():
    from importlib.metadata import requires, version

    spec = next(r for r in requires("fimo") if r.startswith("typer"))
    major, minor = (int(x) for x in version("typer").split(".")[:2])
    assert (0, 9) <= (major, minor) < (0, 30), spec
