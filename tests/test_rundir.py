"""Run directories made by earlier versions stay readable, and the RunDir names their files.

``tests/data/run-19e9dbc`` is the TINY experiment of conftest.py run by fimo at commit
19e9dbc (before the run directory had a module of its own), without its plots and report:
config, manifest, final model, shards, gold standard, scores, metrics tables and checksums.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from fimo.cli import main
from fimo.experiments.config import load_config
from fimo.experiments.pipeline import run
from fimo.experiments.rundir import RunDir
from fimo.further.gold import GoldStandard
from fimo.scores import Scores

OLD = Path(__file__).parent / "data" / "run-19e9dbc"
TABLES = ("by_checkpoint", "seed_count", "noise_floor", "calibration", "sorted_curves")


@pytest.fixture
def old_run(tmp_path) -> Path:
    path = tmp_path / "run"
    shutil.copytree(OLD, path)
    return path


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _numbers(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def test_the_old_run_directory_is_verified(old_run, capsys):
    sidecars = sorted(old_run.rglob("*.sha256"))
    assert len(sidecars) == 12  # final.pt, 2 shards, the gold standard, 2 scores, 6 tables
    assert {p.parent.name for p in sidecars} == {"model", "shards", "further", "scores", "metrics"}
    assert main(["verify", str(old_run)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert out == f"{len(sidecars)} files in {old_run} match their checksums."
    data = RunDir(old_run).gold_file
    raw = bytearray(data.read_bytes())
    raw[-20] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert main(["verify", str(old_run)]) == 2
    assert "further/gold.npz" in capsys.readouterr().err


def test_fimo_report_on_the_old_run_directory_gives_its_numbers(old_run, capsys):
    before = {name: _rows(old_run / "metrics" / f"{name}.csv") for name in TABLES}
    for name in TABLES:  # the new report must write them again, not find them
        (old_run / "metrics" / f"{name}.csv").unlink()
    assert main(["report", str(old_run), "--quiet"]) == 0
    assert "".join(capsys.readouterr().out.split()) == f"Report:{old_run / 'report.html'}"
    assert (old_run / "report.html").stat().st_size > 10_000
    for name in TABLES:
        after = [_numbers(r) for r in _rows(old_run / "metrics" / f"{name}.csv")]
        assert len(after) == len(before[name]) > 0, name
        for old, new in zip(before[name], after, strict=True):
            for key, value in _numbers(old).items():  # the old columns, same values
                if isinstance(value, float) and not np.isnan(value):
                    assert new[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (name, key)
                else:
                    assert str(new[key]) == str(value), (name, key)


def test_fimo_run_reuses_everything_in_the_old_run_directory(old_run):
    run_dir = RunDir(old_run)
    kept = [run_dir.final_weights, run_dir.gold_file, *run_dir.scores_dir.glob("*.npz")]
    kept += sorted((run_dir.further / "shards").glob("*.npz"))
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    result = run(load_config(run_dir.config_file), old_run, quiet=True)
    # nothing was trained or scored again: no shard left to do, no method timed
    assert "further_training_per_seed" not in result.timings
    assert not [k for k in result.timings if k.startswith("method_")]
    for path, (mtime, data) in stamps.items():
        if path != run_dir.gold_file:  # assembled again from the same shards
            assert path.stat().st_mtime_ns == mtime, path
        assert path.read_bytes() == data, path
    old_gold = GoldStandard.load(OLD / "further" / "gold.npz")
    np.testing.assert_array_equal(result.gold.loss_without, old_gold.loss_without)
    for name, sc in result.scores.items():
        np.testing.assert_array_equal(sc.values, Scores.load(OLD / "scores" / f"{name}.npz").values)


def test_rundir_names_every_file_the_old_run_holds(old_run):
    d = RunDir(old_run)
    named = {
        d.config_file,
        d.manifest_file,
        d.final_weights,
        d.model_meta,
        d.further / "fingerprint.json",
        d.gold_file,
        d.scores_file("grad_dot"),
        d.scores_file("grad_cos"),
        *(d.metrics_dir / f"{name}.csv" for name in (*TABLES, "examples")),
    }
    shards = set((d.further / "shards").glob("*.npz"))
    files = {p for p in old_run.rglob("*") if p.is_file() and p.suffix != ".sha256"}
    assert files == named | shards
    files = d.load()
    assert list(files.scores) == ["grad_dot", "grad_cos"]
    assert files.gold.settings["lr"] == 0.05
    assert files.notes == []
