"""End to end on Adult at a tiny size: files, numbers, caching, resuming, refusals, CLI."""

import csv
import shutil

import numpy as np
import pytest
import tomli_w

from fimo.cli import main
from fimo.errors import InputError
from fimo.experiments.config import load_config, with_overrides
from fimo.experiments.pipeline import run
from fimo.io import read_npz

TINY = {
    "name": "tiny",
    "data": {"dataset": "adult", "n_test": 12},
    "training": {"epochs": 2},
    # one whole epoch in 16 steps of 2048, so every left-out instance is met
    "further": {"seeds": 2, "left_out": 6, "epochs": 1, "batch_size": 2048, "record_every": 5,
                "lr": 0.05},
    "methods": {"names": ["grad_dot", "grad_cos"], "train": "left_out"},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return run(load_config(tiny_toml), out, quiet=True)


def test_run_directory_holds_the_contract(tiny_run):
    out = tiny_run.out
    for name in ("config.toml", "manifest.json", "model/final.pt", "further/gold.npz",
                 "scores/grad_dot.npz", "scores/grad_cos.npz", "metrics/by_checkpoint.csv",
                 "report.html"):  # fmt: skip
        assert (out / name).is_file(), name
    gold = read_npz(out / "further/gold.npz")
    S, C, T, L = 2, 4, 12, 6
    assert gold["steps"].tolist() == [5, 10, 15, 16]  # every 5 steps and the epoch's end
    assert gold["loss_full"].shape == (S, C, T)
    assert gold["loss_without"].shape == (S, C, T, L)
    assert gold["seeds"].tolist() == [0, 1] and gold["test"].tolist() == list(range(T))
    assert len(set(gold["left_out"].tolist())) == L
    scores = read_npz(out / "scores/grad_dot.npz")
    assert scores["scores"].shape == (T, L)
    assert scores["train"].tolist() == gold["left_out"].tolist()
    # the raw losses really differ between runs, and the left-out runs differ from each other
    diff = gold["loss_without"] - gold["loss_full"][..., None]
    assert np.abs(diff).max() > 0 and np.std(diff[0, -1], axis=-1).max() > 0


def test_metrics_equal_an_independent_computation(tiny_run):
    out = tiny_run.out
    gold = read_npz(out / "further/gold.npz")
    diff = gold["loss_without"] - gold["loss_full"][..., None]
    centred = (diff - diff.mean(-1, keepdims=True)).mean(0)  # (C, T, L)
    scores = read_npz(out / "scores/grad_dot.npz")["scores"]
    with open(out / "metrics/by_checkpoint.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "checkpoint", "step", "epoch", "metric", "centred",
                             "mean", "sem", "n"]  # fmt: skip
    for c in range(len(gold["steps"])):
        cos = [np.dot(centred[c, t], scores[t]) / np.linalg.norm(centred[c, t])
               / np.linalg.norm(scores[t]) for t in range(len(scores))]  # fmt: skip
        row = next(r for r in rows if r["method"] == "grad_dot" and r["metric"] == "cosine"
                   and r["centred"] == "true" and int(r["checkpoint"]) == c)  # fmt: skip
        assert float(row["mean"]) == pytest.approx(np.mean(cos), rel=1e-9)
        assert float(row["sem"]) == pytest.approx(np.std(cos, ddof=1) / np.sqrt(len(cos)), rel=1e-9)


def test_second_run_reuses_and_resume_is_bit_identical(tiny_run, tiny_toml):
    out = tiny_run.out
    before = read_npz(out / "further/gold.npz")
    shard = out / "further/shards/seed-00001_lo-00000-00006.npz"
    mtime = shard.stat().st_mtime_ns
    again = run(load_config(tiny_toml), out, quiet=True)
    assert shard.stat().st_mtime_ns == mtime  # reused, not recomputed
    np.testing.assert_array_equal(again.gold.loss_without, before["loss_without"])
    # a lost shard is recomputed, bit for bit
    shard.unlink()
    (out / "further/gold.npz").unlink()
    resumed = run(load_config(tiny_toml), out, quiet=True)
    np.testing.assert_array_equal(resumed.gold.loss_without, before["loss_without"])
    np.testing.assert_array_equal(resumed.gold.loss_full, before["loss_full"])
    # a truncated shard is never used as whole
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    resumed = run(load_config(tiny_toml), out, quiet=True)
    np.testing.assert_array_equal(resumed.gold.loss_without, before["loss_without"])


def test_other_settings_are_refused_then_overwritten(tiny_run, tiny_toml, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run.out, out)
    changed = with_overrides(load_config(tiny_toml), lr=0.02)
    with pytest.raises(InputError, match="--overwrite"):
        run(changed, out, quiet=True)
    # nothing was lost by the refusal
    assert len(list((out / "further/shards").glob("seed-*.npz"))) == 2
    result = run(changed, out, overwrite=True, quiet=True)
    assert result.gold.settings["lr"] == 0.02


def test_more_seeds_extend_the_gold_standard(tiny_run, tiny_toml, tmp_path):
    out = tmp_path / "more"
    shutil.copytree(tiny_run.out, out)
    result = run(with_overrides(load_config(tiny_toml), seeds=3), out, quiet=True)
    assert result.gold.seeds.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(result.gold.loss_without[:2], tiny_run.gold.loss_without)


def test_cli_runs_and_prints_the_report_path(tiny_run, tiny_toml, tmp_path, capsys):
    shutil.copytree(tiny_run.out, tmp_path / "cli")  # the CLI's path, on the run's results
    code = main(["run", str(tiny_toml), "--out", str(tmp_path / "cli"), "--quiet"])
    assert code == 0
    assert f"Report: {tmp_path / 'cli' / 'report.html'}" in capsys.readouterr().out.replace(
        "\n", ""
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "adlt"], "unknown preset 'adlt' (did you mean 'adult'?)"),
        (["run", "--lr", "-1"], "further.lr: got -1.0"),
        (["run", "--seeds", "0"], "further.seeds: got 0"),
        (["run", "--optimizer", "adamm"], "did you mean 'adam'"),
        (["run", "--methods", "grad_dot,lisa"], "methods.names"),
        (["run", "--left-out", "99999999"], "only 32561 training instances"),
        (["run", "--n-test", "99999999"], "only 16281 test instances"),
        (["run", "missing.toml"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code = main([*argv, "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) <= 2  # one message (rich may wrap a long line once)


def test_unknown_config_key_names_the_closest(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[further]\nseed = 3\n")
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "unknown key 'seed'" in capsys.readouterr().err


def test_a_further_extra_table_is_refused_in_one_line(tmp_path, capsys):
    # FurtherSettings once had an `extra` field no configuration could set; it is gone, and a
    # file that names it is refused as before, naming the key and what is allowed
    bad = tmp_path / "bad.toml"
    bad.write_text("[further]\nextra = {}\n")
    assert main(["run", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "further: unknown key 'extra'" in err and "allowed:" in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_type_in_config_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[further]\nepochs = "two"\n')
    with pytest.raises(InputError, match=r"further.epochs: got 'two'; expected a whole number"):
        load_config(bad)


def test_method_settings_tables_are_validated(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[methods]\nnames = ["grad_dot"]\n[methods.grad_dot]\nchunk_size = 64\n')
    assert load_config(good).methods.settings == {"grad_dot": {"chunk_size": 64}}
    assert "[methods.grad_dot]" in load_config(good).to_toml()
    bad = tmp_path / "bad.toml"
    bad.write_text("[methods.grad_dot]\nchunk = 64\n")
    with pytest.raises(InputError, match=r"methods.grad_dot: unknown setting 'chunk'.*chunk_size"):
        load_config(bad)


def test_chunked_shards_and_worker_processes_give_the_same_gold_standard(
    tiny_run, tiny_toml, tmp_path
):
    config = load_config(tiny_toml)
    config.gold.left_out_per_shard = 4  # chunks of 4 and 2 left-out runs per seed
    config.run.workers = 2
    shutil.copytree(tiny_run.out / "model", tmp_path / "chunked" / "model")  # its final model
    result = run(config, tmp_path / "chunked", quiet=True)
    names = sorted(p.name for p in (tmp_path / "chunked/further/shards").glob("*.npz"))
    assert names == [
        "seed-00000_lo-00000-00004.npz", "seed-00000_lo-00004-00006.npz",
        "seed-00001_lo-00000-00004.npz", "seed-00001_lo-00004-00006.npz",
    ]  # fmt: skip
    np.testing.assert_array_equal(result.gold.loss_full, tiny_run.gold.loss_full)
    np.testing.assert_allclose(result.gold.loss_without, tiny_run.gold.loss_without, rtol=1e-12)


def test_a_method_that_cannot_run_is_skipped_with_its_reason(tiny_run, tiny_toml, tmp_path, capsys):
    config = with_overrides(load_config(tiny_toml), methods=["grad_dot", "explicit"])
    config.methods.settings["explicit"] = {"max_params": 100}  # the MLP has ~30k parameters
    shutil.copytree(tiny_run.out, tmp_path / "skip")  # its final model and gold standard
    result = run(config, tmp_path / "skip", quiet=False)
    assert set(result.scores) == {"grad_dot"}
    manifest = __import__("json").loads((tmp_path / "skip/manifest.json").read_text())
    assert "max_params" in manifest["skipped_methods"]["explicit"]
    assert "skipped explicit" in capsys.readouterr().err
    assert "Skipped explicit" in (tmp_path / "skip/report.html").read_text()
