"""Bad input, round two (issue 16): each case exits 2 with one line naming the setting, the value
and what is allowed, and touches nothing of the user's."""

import json
import os
import shutil

import numpy as np
import pytest

from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.rundir import RunDir, run_lock
from fimo.io import read_npz, remove_temporaries


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


# -- 4. accepted silently before, refused at the door now -------------------------------------


def write_config(tmp_path, further=None, methods=None, extra=None):
    import tomli_w

    raw = {
        "name": "door",
        "data": {"dataset": "diabetes", "n_test": 4},
        "further": {"seeds": 1, "left_out": 2, "epochs": 1, **(further or {})},
        "methods": {"names": ["grad_dot"], **(methods or {})},
        **(extra or {}),
    }
    path = tmp_path / "door.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.mark.parametrize(
    ("further", "expected"),
    [
        ({"momentum": 2.0}, "further.momentum: got 2.0; must be in [0, 1)"),
        ({"momentum": 1.0}, "further.momentum: got 1.0; must be in [0, 1)"),
        ({"max_steps": 0},
         "further.max_steps: got 0; must be a whole number ≥ 1 (or absent, to run all epochs)"),
        ({"optimizer": "adam", "eps": -1e-8}, "further.eps: got -1e-08; must be a finite number ≥ 0"),
        ({"lr": 1e-320},
         "further.lr: got 1e-320; must be at least 1e-30 (smaller steps vanish in floating point)"),
        ({"weight_decay": float("nan")},
         "further.weight_decay: got nan; must be a finite number ≥ 0"),
        ({"clip_norm": float("inf")}, "further.clip_norm: got inf; must be a finite number ≥ 0"),
    ],
)  # fmt: skip
def test_further_settings_out_of_range(tmp_path, capsys, further, expected):
    path = write_config(tmp_path, further=further)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert one_line(capsys) == f"error: {expected}"
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        ({"names": ["cg"], "cg": {"damping": -0.1}},
         "methods.cg.damping: got -0.1; must be a finite number ≥ 0"),
        ({"names": ["ekfac"], "ekfac": {"damping_factor": float("nan")}},
         "methods.ekfac.damping_factor: got nan; must be a finite number ≥ 0"),
        ({"names": ["datainf"], "datainf": {"damping": -1.0}},
         "methods.datainf.damping: got -1.0; must be a finite number ≥ 0"),
        ({"names": ["trak"], "trak": {"chunk_size": -1}},
         "methods.trak.chunk_size: got -1; must be a whole number ≥ 1 (or absent)"),
    ],
)  # fmt: skip
def test_method_settings_out_of_range_stop_before_further_training(
    tmp_path, capsys, methods, expected
):
    from fimo.methods import ALL_METHOD_NAMES

    name = methods["names"][0]
    if name not in ALL_METHOD_NAMES:
        pytest.skip(f"no method {name}")
    path = write_config(tmp_path, methods=methods)
    out = tmp_path / "run"
    try:
        code = main(["run", str(path), "--out", str(out), "--quiet"])
    finally:
        line = one_line(capsys)
    if "unknown setting" in line:  # this method has no such setting: nothing to check here
        pytest.skip(line)
    assert (code, line) == (2, f"error: {expected}")
    assert not (out / "further").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--methods", ",,"], "error: --methods: got ',,', which names no method; "),
        (["--methods", ""], "error: --methods: got '', which names no method; "),
        (["--address", "auto"],
         "error: --address: got 'auto', but the executor is local; pass --executor ray"),
        (["--seeds", "99999999999999999999999"],
         "error: further.seeds: got 99999999999999999999999 from first_seed 0; the last seed "
         "must be ≤ 2147483647"),
        (["--left-out", "99999999999999999999999"],
         "error: further.left_out: got 99999999999999999999999; must be ≤ 2147483647"),
    ],
)  # fmt: skip
def test_command_line_values_refused(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    assert main(["run", "diabetes", "--out", str(out), "--quiet", *argv]) == 2
    assert one_line(capsys).startswith(expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"scales": {"paper": {"further": {"sead": 100}}}},
         "error: scales.paper.further: unknown key 'sead' (did you mean 'seeds'?)"),
        ({"scales": {"paper": {"furthr": {"seeds": 100}}}},
         "error: scales.paper: unknown key 'furthr' (did you mean 'further'?)"),
        ({"about": {"sumary": "mine"}},
         "error: about: unknown key 'sumary' (did you mean 'summary'?)"),
    ],
)  # fmt: skip
def test_unknown_keys_under_scales_and_about(tmp_path, capsys, extra, expected):
    path = write_config(tmp_path, extra=extra)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert one_line(capsys).startswith(expected)


def test_gold_standard_needs_two_left_out_instances():
    import torch

    from fimo import ArrayDataset, FurtherSettings, Task, gold_standard

    data = ArrayDataset(torch.randn(10, 3), torch.randn(10))
    task = Task(torch.nn.Linear(3, 1), data, data, loss="mse")
    with pytest.raises(InputError) as caught:
        gold_standard(task, FurtherSettings(epochs=1), seeds=[0], left_out=[3], test=[0, 1])
    assert str(caught.value) == (
        "left_out: got [3]; need at least 2 left-out instances (centring subtracts their "
        "mean, so one alone gives a gold standard of zeros)"
    )


def test_verify_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert main(["verify", str(tmp_path)]) == 2
    assert one_line(capsys) == (
        f"error: {str(tmp_path)!r} is not a fimo run directory (it has no config.toml or "
        "manifest.json); give the directory `fimo run` wrote (its --out)"
    )


def test_verify_still_checks_a_run(reference, capsys):
    assert main(["verify", str(reference)]) == 0
    assert "match their checksums" in capsys.readouterr().out


# -- 5. score matrices: real, finite, comparable numbers; indices distinct and ≥ 0 ------------


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        (np.array([[1.0, np.nan]]), "scores 'ext': the matrix holds 1 NaN or infinite values"),
        (np.array([["a", "b"]]),
         "Scores('ext'): values must be real numbers; got dtype <U1 (convert the matrix to "
         "float64 first)"),
        (np.array([[1 + 1j, 2]]), "Scores('ext'): values must be real numbers; got dtype complex128"),
        (np.array([[object(), 1]], dtype=object),
         "Scores('ext'): values must be real numbers; got dtype object"),
        (np.array([[1e308, -1e308]]),
         "scores 'ext': the matrix holds values up to 1e+308, beyond 1e+150, whose squares "
         "overflow the metrics"),
    ],
)  # fmt: skip
def test_external_matrices_that_cannot_be_compared(matrix, expected):
    from fimo.scores import Scores

    with pytest.raises(InputError) as caught:
        Scores.from_external(matrix, "test,train", "helpful", name="ext")
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize(
    ("test", "train", "expected"),
    [
        ([0], [2, 2], "Scores('m'): train indices must be distinct; 2 appears more than once"),
        ([-1], [0, 1], "Scores('m'): test indices must be ≥ 0 (dataset indices); got -1"),
        ([0.5], [0, 1], "Scores('m'): test indices must be whole numbers; got [0.5]"),
    ],
)
def test_scores_indices_must_be_distinct_whole_and_non_negative(test, train, expected):
    from fimo.scores import Scores

    with pytest.raises(InputError) as caught:
        Scores(np.zeros((1, 2)), test, train, "m")
    assert str(caught.value) == expected


def test_a_large_but_comparable_matrix_is_accepted():
    from fimo.scores import Scores

    s = Scores.from_external(np.array([[1e100, -2e100]]), "test,train", "helpful", name="ext")
    assert s.values.tolist() == [[1e100, -2e100]]


# -- 5. damaged metadata: a warning and a recomputation, or --overwrite recovers --------------


def test_a_garbled_model_meta_trains_the_final_model_again(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "model" / "meta.json").write_text("{garbled")
    assert main(["run", str(out / "config.toml"), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert " ".join(err.split()).startswith(
        f"warning: {out / 'model' / 'meta.json'} is damaged (not a JSON table); training the "
        "final model again"
    )
    ref_meta = json.loads((reference / "model" / "meta.json").read_text())
    assert json.loads((out / "model" / "meta.json").read_text()) == ref_meta
    np.testing.assert_array_equal(
        read_npz(out / "scores" / "grad_dot.npz")["scores"],
        read_npz(reference / "scores" / "grad_dot.npz")["scores"],
    )


def test_a_garbled_gold_fingerprint_is_refused_and_overwrite_recovers(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    stamp = out / "further" / "fingerprint.json"
    stamp.write_text('{"fingerprint": ')
    argv = ["run", str(out / "config.toml"), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert one_line(capsys) == (
        f"error: {stamp} is damaged (not a JSON table); pass --overwrite to compute the gold "
        "standard afresh"
    )
    assert main(["report", str(out), "--quiet"]) == 2
    assert "is damaged (not a JSON table)" in one_line(capsys)
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    for key in ("loss_full", "loss_without", "left_out", "test"):
        np.testing.assert_array_equal(
            read_npz(out / "further" / "gold.npz")[key],
            read_npz(reference / "further" / "gold.npz")[key],
        )
