"""Bad input, round three (issue 16, the cases left open): the command line answers without
loading torch, damaged metadata costs one line and a recomputation (or a refusal with the fix),
and mistakes made from Python are refused in one line naming what came and what is allowed."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fimo import ArrayDataset, FurtherSettings, Scores, Task, gold_standard, grad_cos, grad_dot
from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.rundir import RunDir, run_lock
from fimo.io import DamagedFileError, checksum_path, read_npz


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def warning_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.fixture
def out(reference, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    return copy


def same_scores(a, b) -> None:
    for name in ("grad_dot", "grad_cos"):
        np.testing.assert_array_equal(
            read_npz(a / "scores" / f"{name}.npz")["scores"],
            read_npz(b / "scores" / f"{name}.npz")["scores"],
        )


# -- 1. the command line answers at once: no torch for help, presets and refusals -------------

#: runs fimo's CLI in a fresh process, then says whether torch was imported
PROBE = textwrap.dedent(
    """
    import sys
    from fimo.cli import main
    code = main(sys.argv[1:])
    print(code, "torch" in sys.modules, file=sys.stderr)
    """
)


def probe(argv: list[str]) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of ``fimo argv`` in a new process."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300
    )
    *err, last = done.stderr.strip().splitlines()
    code, loaded = last.split()
    return int(code), loaded == "True", "\n".join(err)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["presets"], 0),
        (["run", "--seeds", "two"], 2),
        (["compare", "x", "--scores", "a.npy", "--name", "b"], 2),
    ],
)
def test_help_presets_and_usage_errors_do_not_import_torch(argv, code):
    got, loaded, err = probe(argv)
    assert (got, loaded) == (code, False), err


def test_refusals_of_a_locked_or_foreign_directory_do_not_import_torch(tmp_path, out):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with run_lock(out):  # held by this process: the probe's second run must stop at once
        for argv in (
            ["run", "diabetes", "--out", str(out)],
            ["report", str(out)],
            ["compare", str(out), "--scores", "m.npy", "--name", "ext", "--orientation",
             "test,train"],
        ):  # fmt: skip
            code, loaded, err = probe(argv)
            assert (code, loaded) == (2, False), err
            assert "is in use by another fimo run (pid " in err
    code, loaded, err = probe(["run", "diabetes", "--out", str(foreign)])
    assert (code, loaded) == (2, False) and "is not a fimo run directory" in err
    code, loaded, err = probe(["verify", str(foreign)])
    assert (code, loaded) == (2, False) and "is not a fimo run directory" in err
    assert sorted(os.listdir(foreign)) == ["notes.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "further.seeds: got 0; need at least 1 seed"),
        (["--lr", "-1"], "further.lr: got -1.0; must be a positive number"),
        (["--seeds", "99999999999999999999999"], "the last seed must be ≤ 2147483647"),
        (["--methods", "lisa"], "methods.names: got 'lisa' (did you mean 'lissa'?)"),
        (["--methods", "cg,lissa", "--epochs", "0"], "further.epochs: got 0"),
        (["--address", "auto"], "--address: got 'auto', but the executor is local"),
    ],
)
def test_a_mistaken_option_is_refused_without_torch(tmp_path, argv, message):
    code, loaded, err = probe(["run", "diabetes", "--out", str(tmp_path / "run"), *argv])
    assert (code, loaded) == (2, False), err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[further]\nseeds = 0\n", "further.seeds: got 0; need at least 1 seed"),
        ("[further]\nmomentum = 2.0\n", "further.momentum: got 2.0; must be in [0, 1)"),
        ("[training]\nepochs = 0\n", "training.epochs: got 0"),
        ("[run]\ndevice = 'gpu'\n", "run.device: got 'gpu'"),
        ("[scales.paper.further]\nsead = 3\n", "unknown key 'sead' (did you mean 'seeds'?)"),
        (
            "[methods]\nnames = ['cg']\n[methods.cg]\ndamping = -0.1\n",
            "methods.cg.damping: got -0.1; must be a finite number ≥ 0",
        ),
        (
            "[methods]\nnames = ['trak']\n[methods.trak]\nproj_dim = 0\n",
            "methods.trak.proj_dim: got 0; must be a whole number ≥ 1",
        ),
    ],
)
def test_a_mistaken_setting_in_a_file_is_refused_without_torch(tmp_path, toml, message):
    """Every further, training, scale and run setting, and the ranges the methods share, are
    checked before torch loads: only a method's own keys need the methods imported."""
    config = tmp_path / "bad.toml"
    config.write_text(f"[data]\ndataset = 'diabetes'\n{toml}")
    code, loaded, err = probe(["run", str(config), "--out", str(tmp_path / "run")])
    assert (code, loaded) == (2, False), err
    assert message in err and len(err.splitlines()) == 1, err


def test_a_method_setting_that_needs_the_method_is_still_refused_before_work(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[methods]\nnames = ['cg']\n[methods.cg]\ndampin = 0.1\n")
    code, _, err = probe(["run", str(config), "--out", str(tmp_path / "run")])
    assert code == 2 and "methods.cg: unknown setting 'dampin' (did you mean 'damping'?)" in err
    assert not (tmp_path / "run").exists()


def test_presets_lists_the_settings_a_run_uses():
    from fimo.experiments.config import load_config, preset_names

    for name in preset_names():
        for scale in ("quick", "paper"):
            listed = load_config(name, scale, check_methods=False)
            run = load_config(name, scale)
            assert listed.gold == run.gold and listed.further == run.further
            assert listed.data == run.data and listed.methods.names == run.methods.names


def test_a_held_lock_is_seen_without_taking_it(tmp_path):
    run = RunDir(tmp_path / "fresh")
    run.check_free()
    assert not run.path.exists()  # a check writes nothing
    with run_lock(run.path):
        with pytest.raises(InputError, match=r"is in use by another fimo run \(pid "):
            run.check_free()
    run.check_free()  # released


# -- 2. damaged metadata: one line, recomputed or refused with the fix -------------------------


def run_again(out, *extra) -> int:
    return main(["run", str(out / "config.toml"), "--out", str(out), "--quiet", *extra])


@pytest.mark.parametrize("how", ["not utf-8", "a folder", "a link to /dev/zero"])
def test_a_damaged_checksum_file_is_reported_and_its_file_recomputed(out, reference, capsys, how):
    sidecar = checksum_path(out / "scores" / "grad_dot.npz")
    sidecar.unlink()
    if how == "not utf-8":
        sidecar.write_bytes(b"\xff\xfe garbage")
    elif how == "a folder":
        sidecar.mkdir()
    else:
        sidecar.symlink_to("/dev/zero")
    assert main(["verify", str(out)]) == 2
    line = one_line(capsys)
    assert "1 do not match their checksums (scores/grad_dot.npz)" in line
    if how == "a folder":  # fimo never deletes a folder it did not make: it says so
        assert run_again(out) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"error: cannot write {sidecar}: Is a directory; a folder stands where fimo writes a "
            "file: remove it and start again (finished work is kept)"
        )
        sidecar.rmdir()
    assert run_again(out) == 0
    warnings_ = warning_lines(capsys)
    if how != "a folder":
        assert warnings_ == [
            f"warning: {out / 'scores' / 'grad_dot.npz'} is damaged or incomplete (no checksum, "
            "or its bytes do not match it); recomputing it"
        ]
    assert sidecar.is_file() and not sidecar.is_symlink()
    same_scores(out, reference)
    assert main(["verify", str(out)]) == 0


def test_metadata_that_is_a_link_to_dev_zero_is_never_read_endlessly(out, reference, capsys):
    meta = out / "model" / "meta.json"
    meta.unlink()
    meta.symlink_to("/dev/zero")
    stamp = out / "further" / "fingerprint.json"
    stamp.unlink()
    stamp.symlink_to("/dev/zero")
    assert run_again(out) == 2
    assert one_line(capsys) == (
        f"error: {stamp} is damaged (not a JSON table); pass --overwrite to compute the gold "
        "standard afresh"
    )
    assert run_again(out, "--overwrite") == 0
    assert warning_lines(capsys) == [
        f"warning: {meta} is damaged (not a JSON table); training the final model again"
    ]
    assert not meta.is_symlink() and not stamp.is_symlink()
    assert json.loads(meta.read_text()) == json.loads((reference / "model/meta.json").read_text())
    same_scores(out, reference)


def test_report_refuses_an_unparsable_manifest_and_run_rebuilds_it(out, reference, capsys):
    manifest = out / "manifest.json"
    manifest.write_text('{"fingerprints": {"scores": ')
    assert main(["report", str(out), "--quiet"]) == 2
    assert one_line(capsys) == (
        f"error: {manifest} is damaged (not a JSON table); rebuild it with `fimo run "
        f"{out / 'config.toml'} --out {out}` (finished results are reused)"
    )
    assert manifest.read_text() == '{"fingerprints": {"scores": '  # not rewritten
    assert run_again(out) == 0
    rebuilt, original = (json.loads(p.read_text()) for p in (manifest, reference / "manifest.json"))
    for key in ("fingerprints", "model", "gold_standard", "evaluation"):
        assert rebuilt[key] == original[key]
    assert main(["report", str(out), "--quiet"]) == 0


def test_a_deleted_or_altered_score_file_is_reported_on_the_terminal(out, capsys):
    (out / "scores" / "grad_cos.npz").unlink()
    data = bytearray((out / "scores" / "grad_dot.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (out / "scores" / "grad_dot.npz").write_bytes(bytes(data))
    assert main(["report", str(out), "--quiet"]) == 0
    lines = warning_lines(capsys)
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        f"warning: scores/grad_dot.npz could not be read ({out / 'scores' / 'grad_dot.npz'} is "
        "damaged: its bytes no longer match grad_dot.npz.sha256"
    )
    assert lines[1] == (
        "warning: scores/grad_cos.npz is missing; left out (`fimo run` with the run's "
        "configuration recomputes it)."
    )
    assert "scores/grad_cos.npz is missing" in (out / "report.html").read_text()


def test_verify_lists_files_deleted_with_their_checksums(out, capsys):
    for path in (out / "scores" / "grad_cos.npz", out / "metrics" / "examples.csv"):
        path.unlink()
        checksum_path(path).unlink()
    damaged = out / "further" / "gold.npz"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    checked = len(list(out.rglob("*.sha256"))) + 2
    assert main(["verify", str(out)]) == 2
    assert one_line(capsys) == (
        f"error: of {checked} files in {out}, 1 do not match their checksums (further/gold.npz) "
        "and 2 are missing (scores/grad_cos.npz, metrics/examples.csv); run `fimo run` with the "
        "same configuration again to recompute them"
    )


@pytest.mark.parametrize("folder", ["scores", "further/shards"])
def test_a_run_folder_that_is_a_link_is_refused(out, tmp_path, capsys, folder):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / folder, elsewhere)
    (out / folder).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    for argv in (["run", str(out / "config.toml"), "--out", str(out), "--quiet"],
                 ["report", str(out), "--quiet"]):  # fmt: skip
        assert main(argv) == 2
        assert one_line(capsys) == (
            f"error: {out / folder} is a symbolic link; fimo never follows links in a run "
            "directory (it would write where the link points): replace it with a copy of the "
            "folder (cp -rL) or delete it"
        )
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_a_configuration_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert one_line(capsys) == (
        f"error: configuration file {str(path)!r} is not UTF-8 text (byte 0xe9 at 11); save it "
        "as UTF-8"
    )


# -- 3. inputs from Python ---------------------------------------------------------------------

X = torch.linspace(-1, 1, 16).reshape(8, 2)


def tiny_task(**options) -> Task:
    data = ArrayDataset(X, X.sum(1))
    return Task(torch.nn.Linear(2, 1), data, ArrayDataset(X[:2], X[:2].sum(1)), **options)


FACTORIES = """
import torch
from fimo import ArrayDataset

def broken_data():
    raise FileNotFoundError("no such file: 'data/train.csv'")

def empty_train():
    x = torch.zeros(4, 3)
    return ArrayDataset(x[:0], x[:0, 0]), ArrayDataset(x, x[:, 0])

def empty_test():
    x = torch.zeros(4, 3)
    return ArrayDataset(x, x[:, 0]), ArrayDataset(x[:0], x[:0, 0])

def good_data():
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    return ArrayDataset(x, x.sum(1)), ArrayDataset(x[:4], x[:4].sum(1))

def broken_model(train, test):
    raise RuntimeError("the hidden sizes\\ndo not fit")
"""


@pytest.mark.parametrize(
    ("data", "model", "expected"),
    [
        ("broken_data", "", "data.factory: factories_r3:broken_data raised FileNotFoundError: "
         "no such file: 'data/train.csv'"),
        ("good_data", "factories_r3:broken_model",
         "model.factory: factories_r3:broken_model raised RuntimeError: the hidden sizes do not "
         "fit"),
        ("empty_train", "", "data.factory: the train set is empty"),
        ("empty_test", "", "data.factory: the test set is empty"),
    ],
)  # fmt: skip
def test_factories_that_fail_are_named_in_one_line(
    tmp_path, monkeypatch, capsys, data, model, expected
):
    import tomli_w

    (tmp_path / "factories_r3.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "name": "factory",
        "data": {"factory": f"factories_r3:{data}", "n_test": 2},
        "further": {"seeds": 1, "left_out": 2, "epochs": 1},
        "model": {"factory": model} if model else {},
    }
    path = tmp_path / "factory.toml"
    path.write_text(tomli_w.dumps(config))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert one_line(capsys) == f"error: {expected}"
    assert not (out / "model").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"loss": lambda out, y: (out - y[:, None]) ** 2},
         "Task: the loss must return one value per instance, shape (2,); got (2, 1)"),
        ({"loss": "mse", "measurement": lambda out, y: out},
         "Task: the measurement must return one value per instance, shape (2,); got (2, 1)"),
        ({"loss": lambda out, y: (out.squeeze(-1) > y).long()},
         "Task: the loss must return floating-point values (the methods use its gradient, which "
         "is zero for integers); got dtype torch.int64"),
        ({"loss": "mse", "measurement": lambda out, y: (out.squeeze(-1) > y).int()},
         "Task: the measurement must return floating-point values (the methods use its "
         "gradient, which is zero for integers); got dtype torch.int32"),
    ],
)  # fmt: skip
def test_losses_and_measurements_of_the_wrong_shape_or_kind(options, expected):
    with pytest.raises(InputError) as caught:
        tiny_task(**options)
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda t: gold_standard(t, FurtherSettings(), seeds=[2**64], left_out=[0, 3], test=[0]),
         "seeds: got 18446744073709551616; a seed must be at most 2**63 - 1"),
        (lambda t: grad_dot(t, [0, 1], [0, 3], chunk_size=-1),
         "chunk_size: got -1; must be a whole number ≥ 1 (or None: sized from the memory budget)"),
        (lambda t: grad_cos(t, [0, 1], [0, 3], chunk_size=0),
         "chunk_size: got 0; must be a whole number ≥ 1 (or None: sized from the memory budget)"),
        (lambda t: grad_dot(t, [[0], [1]], [0, 3]),
         "grad_dot: test: got nested lists (shape (2, 1)); give a flat list of indices"),
        (lambda t: gold_standard(t, FurtherSettings(), seeds=[0], left_out=[[0, 3]], test=[0]),
         "left_out: got nested lists (shape (1, 2)); give a flat list of indices"),
    ],
)  # fmt: skip
def test_settings_and_indices_from_python(call, expected):
    with pytest.raises(InputError) as caught:
        call(tiny_task(loss="mse"))
    assert str(caught.value) == expected


def test_the_largest_seed_still_runs():
    task = tiny_task(loss="mse")
    settings = FurtherSettings(lr=0.1, batch_size=4, epochs=1)
    big = gold_standard(task, settings, seeds=[2**63 - 1], left_out=[0, 3], test=[0, 1])
    assert big.loss_without.shape == (1, 1, 2, 2) and np.isfinite(big.loss_without).all()


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ([[0]], "Scores('m'): test indices must be a flat list; got nested lists (shape (1, 1))"),
        ([1e300], "Scores('m'): test indices must be dataset indices, below 2**62; got 1e+300"),
        ([-2.0], "Scores('m'): test indices must be ≥ 0 (dataset indices); got -2"),
    ],
)
def test_scores_indices_nested_or_huge(test, expected):
    with pytest.raises(InputError) as caught:
        Scores(np.zeros((1, 2)), test, [0, 1], "m")
    assert str(caught.value) == expected


def test_a_score_file_of_text_is_refused(tmp_path):
    path = tmp_path / "text.npz"
    np.savez(
        path, scores=np.array([["a", "b"]]), test=np.array([0]), train=np.array([0, 1]),
        method=np.array("m"), settings=np.array("{}"), units=np.array(""),
    )  # fmt: skip
    with pytest.raises(InputError) as caught:
        Scores.load(path)
    assert str(caught.value) == (
        "Scores('m'): values must be real numbers; got dtype <U1 (convert the matrix to "
        "float64 first)"
    )
    np.savez(path, scores=np.zeros((1, 2)))  # a matrix, not a Scores file
    with pytest.raises(DamagedFileError) as caught:
        Scores.load(path)
    assert str(caught.value) == (
        f"{path} is not a fimo Scores file (it has no test, train, method, settings, units); "
        "save one with Scores.save, or bring a plain matrix in with `fimo compare`"
    )


@pytest.mark.parametrize(("text", "shown"), [("1e300", "1e+300"), ("0, 9.3e18", "9.3e+18")])
def test_test_indices_far_beyond_any_dataset(out, tmp_path, capsys, text, shown):
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.zeros((len(text.split(",")), 4)))
    indices = tmp_path / "test.txt"
    indices.write_text(text)
    argv = ["compare", str(out), "--scores", str(matrix), "--name", "ext", "--orientation",
            "test,train", "--test-indices", str(indices), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    line = one_line(capsys)
    assert line == f"error: {indices}: {shown} is not a dataset index (indices are below 2**62)"
    assert not (out / "scores" / "ext.npz").exists()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ray//10.0.0.5",
         "run.address: got 'ray//10.0.0.5'; expected auto, local, ray://HOST:PORT or HOST:PORT"),
        ("ray://10.0.0.5:99999",
         "run.address: got 'ray://10.0.0.5:99999'; expected auto, local, ray://HOST:PORT or "
         "HOST:PORT"),
        ("127.0.0.1:1",
         "run.address: nothing answers at 127.0.0.1:1 (Connection refused); start the cluster "
         "there (ray start --head) or correct the address"),
    ],
)  # fmt: skip
def test_ray_addresses_malformed_or_unreachable(tmp_path, capsys, address, expected):
    out = tmp_path / "run"
    argv = ["run", "diabetes", "--executor", "ray", "--address", address, "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    assert one_line(capsys) == f"error: {expected}"
    assert not (out / "model").exists()  # refused before the final model


def test_ray_executor_checks_its_address_without_starting_ray():
    pytest.importorskip("ray")
    import ray

    from fimo.further.runner import RayExecutor

    with pytest.raises(InputError, match=r"^run.address: got 'ray//x'; expected auto"):
        RayExecutor("ray//x")
    assert not ray.is_initialized()


def test_joining_no_cluster_is_one_line_naming_the_address():
    """``--address auto`` with no cluster on the machine: Ray's ConnectionError ("Could not
    find any running Ray instance", which read as a file's error) becomes one line naming the
    address and the fixes. Ray itself is stood in for: a real ``auto`` would join any cluster
    another process started on this machine."""
    from fimo.further.runner import _join_ray

    class NoCluster:
        def init(self, address, **options):
            raise ConnectionError(
                "Could not find any running Ray instance. Please specify the one to connect to "
                "by setting `--address` flag or `RAY_ADDRESS` environment variable."
            )

    with pytest.raises(InputError) as caught:
        _join_ray(NoCluster(), "auto")
    assert str(caught.value) == (
        "run.address: cannot join the Ray cluster at 'auto' (Could not find any running Ray "
        "instance. Please specify the one to connect to by setting `--address` flag or "
        "`RAY_ADDRESS` environment variable.); start one (ray start --head), correct --address, "
        "or use --address local"
    )


@pytest.mark.parametrize("empty", ["train", "test"])
def test_a_task_with_an_empty_split_is_one_line(empty):
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    data, nothing = ArrayDataset(x, x.sum(1)), ArrayDataset(x[:0], x[:0].sum(1))
    train, test = (nothing, data) if empty == "train" else (data, nothing)
    with pytest.raises(InputError) as caught:
        Task(torch.nn.Linear(3, 1), train, test, loss="mse")
    assert str(caught.value) == f"Task: the {empty} set is empty; give at least one instance"


def test_scores_with_nan_or_infinite_values_warn_and_keep_their_values():
    """Issue 16: Scores made from Python holding NaN were accepted silently; they now warn
    (a method that failed numerically) and keep the values, which the evaluation skips."""
    import warnings

    import numpy as np

    from fimo.scores import Scores

    values = np.array([[1.0, np.nan, 2.0], [np.inf, 0.5, 1.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = Scores(values, [0, 1], [0, 1, 2], "m")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        "Scores('m'): 2 of 6 values are NaN or infinite; the evaluation skips the test "
        "instances they belong to"
    ]
    assert np.array_equal(np.isnan(scores.values), np.isnan(values))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Scores(np.ones((2, 3)), [0, 1], [0, 1, 2], "m")  # finite: no warning
