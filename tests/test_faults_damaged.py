"""Damaged and unsafe files in a run directory: scores, metrics, the gold standard and the final
model carry checksums (``<file>.sha256``); a file cut short or altered is recomputed or
reported, never used, and a file holding pickled Python objects is never loaded."""

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fimo.cli import main
from fimo.further.engine import SeedResult
from fimo.further.store import Shard, ShardStore
from fimo.io import checksum_matches, checksum_path, read_npz


@pytest.fixture
def out(reference, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    return copy


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one byte altered, the length unchanged
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


def stderr(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def record_checksum(path: Path) -> None:
    """Give a planted file a matching checksum, as if fimo had written it."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    checksum_path(path).write_text(f"{digest}  {path.name}\n")


class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- checksums ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncate", "alter"])
def test_damaged_scores_are_recomputed_when_the_run_resumes(
    out, reference, config_path, capsys, how
):
    damage(out / "scores/grad_cos.npz", how)
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    assert (
        f"warning: {out / 'scores/grad_cos.npz'} is damaged or incomplete (no checksum, or its "
        "bytes do not match it); recomputing it" in stderr(capsys)
    )
    assert checksum_matches(out / "scores/grad_cos.npz") is True
    got, want = read_npz(out / "scores/grad_cos.npz"), read_npz(reference / "scores/grad_cos.npz")
    np.testing.assert_array_equal(got["scores"], want["scores"])
    for name in ("by_checkpoint.csv", "seed_count.csv", "noise_floor.csv"):
        assert (out / "metrics" / name).read_bytes() == (reference / "metrics" / name).read_bytes()


def test_damaged_scores_are_left_out_of_a_rebuilt_report(out, capsys):
    damage(out / "scores/grad_cos.npz", "alter")
    damaged = (out / "scores/grad_cos.npz").read_bytes()
    assert main(["report", str(out), "--quiet"]) == 0
    report = " ".join((out / "report.html").read_text().split())
    assert "scores/grad_cos.npz could not be read" in report
    assert "its bytes no longer match grad_cos.npz.sha256" in report
    methods = {line.split(",")[0] for line in (out / "metrics/by_checkpoint.csv").open()}
    assert "grad_dot" in methods and "grad_cos" not in methods
    assert (out / "scores/grad_cos.npz").read_bytes() == damaged  # reported, left for the user


def test_damaged_gold_standard_stops_the_report_and_a_run_rebuilds_it(
    out, reference, config_path, capsys
):
    damage(out / "further/gold.npz", "truncate")
    before = files(out)
    assert main(["report", str(out), "--quiet"]) == 2
    assert stderr(capsys) == (
        f"error: {out / 'further/gold.npz'} is damaged: its bytes no longer match gold.npz.sha256 "
        "(cut short or altered after it was written); delete it and run `fimo run` again to "
        "recompute it"
    )
    assert files(out) == before
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    got, want = read_npz(out / "further/gold.npz"), read_npz(reference / "further/gold.npz")
    np.testing.assert_array_equal(got["loss_without"], want["loss_without"])


def test_damaged_final_model_is_trained_again_to_the_same_weights(
    out, reference, config_path, capsys
):
    damage(out / "model/final.pt", "alter")
    shard = out / "further/shards/seed-00000_lo-00000-00004.npz"
    mtime = shard.stat().st_mtime_ns
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    assert (
        f"warning: {out / 'model/final.pt'} is damaged (its checksum does not match); training "
        "the final model again" in stderr(capsys)
    )
    got = torch.load(out / "model/final.pt", weights_only=True)
    want = torch.load(reference / "model/final.pt", weights_only=True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert shard.stat().st_mtime_ns == mtime  # same weights: the gold standard is reused


def test_verify_names_every_damaged_file(out, capsys):
    assert main(["verify", str(out)]) == 0
    ok = " ".join(capsys.readouterr().out.split())
    checked = int(ok.split()[0])
    assert checked >= 12 and ok.endswith("match their checksums.")
    damage(out / "metrics/by_checkpoint.csv", "alter")
    (out / "scores/grad_dot.npz").unlink()
    before = files(out)
    assert main(["verify", str(out)]) == 2
    assert stderr(capsys) == (
        f"error: of {checked} files in {out}, 1 do not match their checksums "
        "(metrics/by_checkpoint.csv) and 1 are missing (scores/grad_dot.npz); run `fimo run` "
        "with the same configuration again to recompute them"
    )
    assert files(out) == before


def test_shards_with_the_checksum_name_of_earlier_versions_are_still_used(tmp_path):
    store = ShardStore(tmp_path, "abc", {})
    shard = Shard(0, 0, 2)
    rng = np.random.default_rng(0)
    made = SeedResult(rng.normal(size=(1, 3)), rng.normal(size=(1, 3, 2)), np.array([4]),
                      np.array([1.0]))  # fmt: skip
    path = store.save(shard, made)
    legacy = path.with_suffix(".sha256")
    legacy.write_text(checksum_path(path).read_text().split()[0] + "\n")  # hash only, old name
    checksum_path(path).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = store.load(shard)
    np.testing.assert_array_equal(loaded.loss_without, made.loss_without)
    legacy.write_text("0" * 64 + "\n")
    with pytest.warns(RuntimeWarning, match="damaged or incomplete"):
        assert store.load(shard) is None


# -- files that would run code ---------------------------------------------------------------
def test_a_final_model_holding_pickled_objects_is_refused(out, config_path, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"0.weight": Payload(marker)}, out / "model/final.pt")
    record_checksum(out / "model/final.pt")
    before = files(out)
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 2
    assert stderr(capsys) == (
        f"error: {out / 'model/final.pt'} holds pickled Python objects beyond plain tensors, "
        "which fimo never loads (they could run code); delete it (or pass --overwrite) to "
        "train the final model again"
    )
    assert not marker.exists()
    assert files(out) == before


def test_scores_holding_pickled_objects_are_never_loaded(out, reference, config_path, tmp_path,
                                                         capsys):  # fmt: skip
    marker = tmp_path / "code-ran"
    target = out / "scores/grad_cos.npz"
    np.savez(target, scores=np.array([Payload(marker)], dtype=object))
    record_checksum(target)
    assert main(["report", str(out), "--quiet"]) == 0
    assert "holds pickled Python objects" in (out / "report.html").read_text()
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    assert "holds pickled Python objects, which fimo never loads" in stderr(capsys)
    assert not marker.exists()
    np.testing.assert_array_equal(
        read_npz(target)["scores"], read_npz(reference / "scores/grad_cos.npz")["scores"]
    )


def test_a_gold_standard_holding_pickled_objects_is_refused(out, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    gold = out / "further/gold.npz"
    arrays = dict(read_npz(gold))
    arrays["seeds"] = np.array([Payload(marker)], dtype=object)
    np.savez(gold, **arrays)
    record_checksum(gold)
    before = files(out)
    assert main(["report", str(out), "--quiet"]) == 2
    assert stderr(capsys) == (
        f"error: {gold} holds pickled Python objects, which fimo never loads (they could run "
        "code); save plain numeric arrays instead"
    )
    assert not marker.exists()
    assert files(out) == before


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_compare_refuses_a_matrix_holding_pickled_objects(out, tmp_path, capsys, suffix):
    marker = tmp_path / "code-ran"
    evil = tmp_path / f"evil{suffix}"
    if suffix == ".npy":
        np.save(evil, np.array([[Payload(marker)]], dtype=object), allow_pickle=True)
    else:
        torch.save({"scores": Payload(marker)}, evil)
    before = files(out)
    argv = ["compare", str(out), "--scores", str(evil), "--name", "evil",
            "--orientation", "test,train", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    message = stderr(capsys)
    assert message.startswith(f"error: {evil}: cannot read a score matrix")
    assert ("allow_pickle=False" if suffix == ".npy" else "Unsupported global") in message
    assert not marker.exists()
    assert files(out) == before
