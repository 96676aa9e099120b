"""Groups through the configuration, the command line and the pipeline (issue 14).

A tiny diabetes run with four groups from a file: the group shards, FT-LDS and the group
attribution in metrics/ and the report equal direct computations on the stored arrays; a lost
group shard is recomputed alone; another group definition is never mixed in.
"""

import csv
import json
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

from fimo.cli import main
from fimo.errors import InputError
from fimo.evaluate.lds import ft_lds
from fimo.experiments.config import from_dict, load_config, parse_groups, with_overrides
from fimo.experiments.pipeline import run
from fimo.further.gold import GoldStandard
from fimo.io import read_npz
from fimo.scores import Scores

# 397 training instances in 4 batches of 128 per epoch; two epochs, a checkpoint every 2 steps
TINY = {
    "name": "tiny-groups",
    "data": {"dataset": "diabetes", "n_test": 8},
    "model": {"hidden": [16]},
    "training": {"epochs": 20, "lr": 0.01},
    "further": {"seeds": 3, "left_out": 4, "epochs": 2, "batch_size": 128, "record_every": 2,
                "lr": 0.05},
    "methods": {"names": ["grad_dot", "grad_cos"], "train": "left_out"},
}  # fmt: skip
GROUPS = [[0, 5, 9], [1, 2], [30, 31, 32, 33], [100, 200]]
MEMBERS = [i for g in GROUPS for i in g]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("groups")
    path = folder / "groups.txt"
    path.write_text("".join(" ".join(map(str, g)) + "\n" for g in GROUPS))
    config = from_dict({**TINY, "groups": {"kind": "file", "file": str(path)}})
    return run(config, folder / "run", quiet=True), config


# -- configuration and command line ------------------------------------------------------------
def test_groups_tables_and_specs_parse_to_the_same_settings():
    table = from_dict({"groups": {"kind": "random", "count": 20, "fraction": 0.5}}).groups
    assert (table.kind, table.count, table.fraction) == ("random", 20, 0.5)
    spec = with_overrides(from_dict({}), groups="random:20:50%").groups
    assert spec == table
    assert from_dict({"groups": {"feature": "sex"}}).groups.kind == "feature"
    assert from_dict({"groups": {"kind": "feature:sex"}}).groups.feature == "sex"
    assert parse_groups("random:7") == {"kind": "random", "count": 7}
    assert with_overrides(from_dict({}), groups="random:7").groups.fraction == 0.5  # default
    assert from_dict({}).groups.active is False and "groups" not in from_dict({}).to_dict()
    # written and read back: config.toml records the groups
    config = with_overrides(from_dict({}), groups="file:g.txt")
    assert from_dict(config.to_dict()).groups == config.groups
    assert config.to_dict()["groups"] == {"kind": "file", "file": "g.txt"}


def test_the_adult_groups_preset_is_adult_with_random_groups():
    adult, grouped = load_config("adult"), load_config("adult-groups")
    assert grouped.groups.describe() == "random:50:0.5"
    mine, theirs = grouped.to_dict(), adult.to_dict()
    assert mine.pop("groups") == {"kind": "random", "count": 50, "fraction": 0.5, "seed": 0}
    assert mine.pop("name") == "adult-groups" and theirs.pop("name") == "adult"
    assert mine == theirs  # the same model, further training, left-out instances, methods
    assert load_config("adult-groups", scale="paper").gold.seeds == 100


@pytest.mark.parametrize(
    "table, message",
    [
        ({"kind": "randm"}, "groups.kind: got 'randm' (did you mean 'random'?)"),
        ({"kind": "random", "count": 2}, "groups.count: got 2; FT-LDS ranks the groups"),
        ({"kind": "random", "fraction": 1.0}, "groups.fraction: got 1.0; must lie strictly"),
        ({"kind": "random", "fraction": "1%"}, "groups.fraction: got '1%'; expected a number"),
        ({"kind": "label", "count": 5}, "groups.count: only read with kind = 'random'"),
        ({"kind": "feature"}, "groups.feature: empty"),
        ({"kind": "file:a.txt", "file": "b.txt"}, "groups.file: got 'b.txt' and kind"),
        ({"kind": "random", "size": 5}, "groups: unknown key 'size'"),
    ],
)
def test_bad_groups_tables_are_refused_in_one_line(table, message):
    with pytest.raises(InputError) as caught:
        from_dict({"groups": table})
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random:many", "--groups: got 'random:many'; expected random:COUNT:FRACTION"),
        ("random:2:0.01", "groups.count: got 2"),
        ("random:50:0", "groups.fraction: got 0.0"),
        ("labels", "groups.kind: got 'labels' (did you mean 'label'?)"),
        ("feature:no_such_column", "groups = 'feature:no_such_column': no such column"),
        ("file:no/such/file.txt", "groups file no/such/file.txt: not found"),
        ("label", "not classes (a regression)"),  # diabetes: no classes
    ],
)
def test_cli_groups_refusals_exit_2_with_one_line(spec, message, tmp_path, capsys):
    code = main(["run", "diabetes", "--groups", spec, "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) <= 2  # one message (rich may wrap a long line once)
    assert not (tmp_path / "x" / "further").exists()  # refused before any work


# -- the pipeline --------------------------------------------------------------------------------
def test_a_group_run_writes_group_shards_and_the_groups(grouped):
    result, _ = grouped
    shards = result.out / "further" / "shards"
    names = sorted(p.name for p in shards.glob("*_gr-*.npz"))
    assert names == [f"seed-0000{s}_gr-00000-00004.npz" for s in range(3)]
    gold = read_npz(result.out / "further" / "gold.npz")
    assert gold["loss_without_group"].shape == (3, 4, 8, 4)  # seeds, checkpoints, test, groups
    assert gold["group_members"].tolist() == MEMBERS
    assert gold["group_offsets"].tolist() == [0, 3, 5, 9, 11]
    # a group shard's full run is the single-instance shards' full run, bit for bit
    for s in range(3):
        single = read_npz(shards / f"seed-0000{s}_lo-00000-00004.npz")["loss_full"]
        np.testing.assert_array_equal(read_npz(shards / names[s])["loss_full"], single)
    # by the end every group has changed the test losses, and by different amounts (earlier,
    # under drop, a group none of whose members has been met yet has changed nothing)
    effect = (gold["loss_without_group"] - gold["loss_full"][..., None])[:, -1]
    assert np.abs(effect).min() > 0 and np.std(effect.mean(0), axis=-1).min() > 0
    # the methods scored the group members too (train = "left_out" adds them)
    scored = read_npz(result.out / "scores" / "grad_dot.npz")["train"]
    assert set(MEMBERS) <= set(scored.tolist())


def test_ft_lds_in_metrics_and_report_equals_a_direct_computation(grouped):
    result, _ = grouped
    gold = read_npz(result.out / "further" / "gold.npz")
    effect = (gold["loss_without_group"] - gold["loss_full"][..., None]).mean(0)  # (C, T, G)
    rows = _rows(result.out / "metrics" / "ft_lds.csv")
    page = (result.out / "report.html").read_text()
    assert "<h2 id='groups'>Groups: FT-LDS</h2>" in page
    for name in ("grad_dot", "grad_cos"):
        sc = read_npz(result.out / "scores" / f"{name}.npz")
        column = {int(i): k for k, i in enumerate(sc["train"])}
        sums = np.stack(
            [sc["scores"][:, [column[i] for i in g]].sum(1) for g in GROUPS], axis=-1
        )  # (T, G)
        for c in range(len(gold["steps"])):
            per_test = [spearmanr(sums[t], effect[c, t])[0] for t in range(len(sums))]
            row = next(r for r in rows if r["method"] == name and int(r["checkpoint"]) == c)
            assert float(row["mean"]) == pytest.approx(np.mean(per_test), abs=1e-12)
            sem = np.std(per_test, ddof=1) / np.sqrt(len(per_test))
            assert float(row["sem"]) == pytest.approx(sem, abs=1e-12)
            assert int(row["groups"]) == 4
        last = next(r for r in rows if r["method"] == name and int(r["checkpoint"]) == 3)
        assert f"{float(last['mean']):.3f} ± {float(last['sem']):.3f}" in page
    # the same numbers as evaluate.lds.ft_lds on the stored gold standard and scores
    stored = GoldStandard.load(result.out / "further" / "gold.npz")
    scores = {n: Scores.load(result.out / "scores" / f"{n}.npz") for n in ("grad_dot", "grad_cos")}
    direct = ft_lds(stored, scores)
    assert [float(r["mean"]) for r in rows] == [r["mean"] for r in direct]
    ceiling = _rows(result.out / "metrics" / "ft_lds_ceiling.csv")
    assert {r["estimate"] for r in ceiling} == {"split_half", "spearman_brown", "ceiling"}
    assert "noise ceiling" in page[page.index("id='groups'") :]


def test_group_attribution_sets_measured_beside_predicted(grouped):
    result, _ = grouped
    gold = read_npz(result.out / "further" / "gold.npz")
    per_seed = (gold["loss_without_group"] - gold["loss_full"][..., None]).mean(2)  # (S, C, G)
    effect = (gold["loss_without_group"] - gold["loss_full"][..., None]).mean(0)  # (C, T, G)
    rows = _rows(result.out / "metrics" / "group_attribution.csv")
    sc = read_npz(result.out / "scores" / "grad_dot.npz")
    column = {int(i): k for k, i in enumerate(sc["train"])}
    for g, members in enumerate(GROUPS):
        measured = next(
            r for r in rows if r["source"] == "gold" and int(r["group"]) == g
            and int(r["checkpoint"]) == 3
        )  # fmt: skip
        assert measured["name"] == f"group {g}" and int(measured["size"]) == len(members)
        assert float(measured["mean"]) == pytest.approx(effect[3, :, g].mean(), abs=1e-12)
        seed_sem = per_seed[:, 3, g].std(ddof=1) / np.sqrt(3)
        assert float(measured["seed_sem"]) == pytest.approx(seed_sem, abs=1e-12)
        predicted = next(
            r for r in rows if r["source"] == "grad_dot" and int(r["group"]) == g
            and int(r["checkpoint"]) == 3
        )  # fmt: skip
        sums = sc["scores"][:, [column[i] for i in members]].sum(1)
        assert float(predicted["mean"]) == pytest.approx(sums.mean(), rel=1e-12)
        assert float(predicted["sem"]) == pytest.approx(
            sums.std(ddof=1) / np.sqrt(len(sums)), rel=1e-12
        )
    page = (result.out / "report.html").read_text()
    assert "Group attribution at epoch 2" in page


def test_a_lost_group_shard_is_recomputed_alone_and_bit_for_bit(grouped, tmp_path):
    result, config = grouped
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    shards = out / "further" / "shards"
    lost = shards / "seed-00001_gr-00000-00004.npz"
    others = {p: p.stat().st_mtime_ns for p in shards.glob("*.npz") if p != lost}
    lost.unlink()
    again = run(config, out, quiet=True)
    assert lost.is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == others  # nothing else recomputed
    np.testing.assert_array_equal(again.gold.loss_without_group, result.gold.loss_without_group)
    np.testing.assert_array_equal(again.gold.loss_without, result.gold.loss_without)
    assert _rows(out / "metrics" / "ft_lds.csv") == _rows(result.out / "metrics" / "ft_lds.csv")


def test_other_groups_recompute_the_group_shards_alone(grouped, tmp_path):
    result, config = grouped
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    shards = out / "further" / "shards"
    singles = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("*_lo-*")}
    other = with_overrides(config, groups="random:5:0.01")
    changed = run(other, out, quiet=True)  # no --overwrite: the single runs do not change
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("*_lo-*")} == singles
    assert sorted(p.name for p in shards.glob("*_gr-*.npz")) == [
        f"seed-0000{s}_gr-00000-00005.npz" for s in range(3)
    ]  # the old group shards are gone, the new ones made
    assert len(changed.gold.groups) == 5 and changed.gold.groups.sizes().tolist() == [4] * 5
    # the same numbers as a run of these groups from scratch
    fresh = run(other, tmp_path / "fresh", quiet=True)
    np.testing.assert_array_equal(changed.gold.loss_without, fresh.gold.loss_without)
    np.testing.assert_array_equal(changed.gold.loss_without_group, fresh.gold.loss_without_group)
    np.testing.assert_array_equal(changed.gold.groups.members, fresh.gold.groups.members)
    for table in ("ft_lds", "ft_lds_ceiling", "group_attribution", "by_checkpoint"):
        assert _rows(out / "metrics" / f"{table}.csv") == _rows(
            tmp_path / "fresh" / "metrics" / f"{table}.csv"
        )
    # random groups have no names: no attribution table, FT-LDS as before
    assert _rows(out / "metrics" / "group_attribution.csv") == []
    assert len(_rows(out / "metrics" / "ft_lds.csv")) == 2 * 4
    # the single-instance gold standard keeps the fingerprint of a run without groups
    plain = run(from_dict(TINY), tmp_path / "plain", quiet=True)
    prints = [r.out / "manifest.json" for r in (changed, plain)]
    changed_fp, plain_fp = (json.loads(p.read_text())["fingerprints"] for p in prints)
    assert changed_fp["gold_standard"] == plain_fp["gold_standard"]
    assert "group_runs" in changed_fp and "group_runs" not in plain_fp
    # and a directory without groups takes the groups without recomputing its single runs
    plain_singles = {p: p.stat().st_mtime_ns for p in plain.out.glob("further/shards/*_lo-*")}
    regrouped = run(other, plain.out, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in plain_singles} == plain_singles
    np.testing.assert_array_equal(regrouped.gold.loss_without_group, fresh.gold.loss_without_group)


def test_report_and_compare_rebuild_the_group_tables(grouped, tmp_path):
    result, _ = grouped
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    tables = ("ft_lds", "ft_lds_ceiling", "group_attribution")
    before = {name: _rows(out / "metrics" / f"{name}.csv") for name in tables}
    for name in tables:
        (out / "metrics" / f"{name}.csv").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    assert {name: _rows(out / "metrics" / f"{name}.csv") for name in tables} == before
    # a matrix made elsewhere, over the whole training set, gets its FT-LDS too
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(8, 397))
    np.save(tmp_path / "outside.npy", matrix)
    code = main(["compare", str(out), "--scores", str(tmp_path / "outside.npy"), "--name",
                 "outside", "--orientation", "test,train", "--quiet"])  # fmt: skip
    assert code == 0
    gold = read_npz(out / "further" / "gold.npz")
    effect = (gold["loss_without_group"] - gold["loss_full"][..., None]).mean(0)[-1]  # (T, G)
    sums = np.stack([matrix[:, g].sum(1) for g in GROUPS], axis=-1)
    expected = np.mean([spearmanr(sums[t], effect[t])[0] for t in range(8)])
    rows = _rows(out / "metrics" / "ft_lds.csv")
    row = next(r for r in rows if r["method"] == "outside" and int(r["checkpoint"]) == 3)
    assert float(row["mean"]) == pytest.approx(expected, abs=1e-12)
    assert "outside" in {r["source"] for r in _rows(out / "metrics" / "group_attribution.csv")}
