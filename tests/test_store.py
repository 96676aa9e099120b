"""The shard store: checksums, foreign fingerprints, damaged files."""

import numpy as np
import pytest

from fimo.errors import InputError
from fimo.further.engine import SeedResult
from fimo.further.store import Shard, ShardStore, assemble, plan_shards


def result(seed, chunk):
    rng = np.random.default_rng(seed)
    return SeedResult(rng.normal(size=(2, 3)), rng.normal(size=(2, 3, chunk)), np.array([5, 10]),
                      np.array([1.0, 2.0]))  # fmt: skip


def test_round_trip_and_assembly(tmp_path):
    store = ShardStore(tmp_path, "abc", {})
    shards = plan_shards([0, 1], 5, 2)
    assert [sh.name for sh in shards[:3]] == [
        "seed-00000_lo-00000-00002", "seed-00000_lo-00002-00004", "seed-00000_lo-00004-00005",
    ]  # fmt: skip
    made = {sh: result(sh.seed * 10 + sh.start, sh.stop - sh.start) for sh in shards}
    for sh, r in made.items():
        store.save(sh, r)
    loaded = {sh: store.load(sh) for sh in shards}
    gold = assemble(loaded, [0, 1], np.arange(5), np.arange(3), {})
    assert gold.loss_without.shape == (2, 2, 3, 5)
    np.testing.assert_array_equal(gold.loss_full[1], made[Shard(1, 0, 2)].loss_full)
    np.testing.assert_array_equal(gold.loss_without[0, ..., 2:4], made[Shard(0, 2, 4)].loss_without)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_checksum"])
def test_damaged_shards_are_reported_and_never_used(tmp_path, damage):
    store = ShardStore(tmp_path, "abc", {})
    shard = Shard(0, 0, 2)
    store.save(shard, result(0, 2))
    path = store.path(shard)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-10]))
    else:
        store._checksum_path(shard).unlink()
    with pytest.warns(RuntimeWarning, match="damaged or incomplete"):
        assert store.load(shard) is None
    with pytest.warns(RuntimeWarning, match="damaged or incomplete"):  # a resumed run's check
        assert ShardStore(tmp_path, "abc", {}).check(shard) is False


@pytest.mark.parametrize("read", ["load", "check"])
def test_a_shard_made_under_another_fingerprint_is_refused(tmp_path, read):
    store = ShardStore(tmp_path, "abc", {})
    store.fingerprint = "xyz"  # the shard's own record disagrees with the folder's stamp
    store.save(Shard(0, 0, 2), result(0, 2))
    with pytest.raises(InputError, match="made under fingerprint xyz, not abc; pass --overwrite"):
        getattr(ShardStore(tmp_path, "abc", {}), read)(Shard(0, 0, 2))


def test_a_resumed_gold_standard_reads_each_shard_once(tmp_path, monkeypatch):
    import torch

    from fimo import ArrayDataset, FurtherSettings, Task
    from fimo.further.runner import gold_standard

    x = torch.linspace(-1, 1, 24).reshape(12, 2)
    task = Task(torch.nn.Linear(2, 1), ArrayDataset(x, x.sum(1)), ArrayDataset(x, x.sum(1)),
                loss="mse")  # fmt: skip
    settings = FurtherSettings(lr=0.1, batch_size=4)
    args = (task, settings, [0, 1], [0, 3, 5, 7], [1, 2])
    first = gold_standard(*args, store=ShardStore(tmp_path, "abc", {}), left_out_per_shard=2)
    (tmp_path / "gold.npz").unlink()  # assembled anew from the four shards
    reads = []
    real = ShardStore.load
    monkeypatch.setattr(ShardStore, "load", lambda self, sh: reads.append(sh) or real(self, sh))
    again = gold_standard(*args, store=ShardStore(tmp_path, "abc", {}), left_out_per_shard=2)
    assert sorted(sh.name for sh in reads) == sorted(p.stem for p in tmp_path.glob("shards/*.npz"))
    assert len(reads) == 4
    np.testing.assert_array_equal(again.loss_without, first.loss_without)


def test_foreign_shards_are_refused_unless_overwritten(tmp_path):
    store = ShardStore(tmp_path, "abc", {})
    store.save(Shard(0, 0, 2), result(0, 2))
    with pytest.raises(InputError, match=r"fingerprint abc, now xyz.*--overwrite"):
        ShardStore(tmp_path, "xyz", {})
    assert store.load(Shard(0, 0, 2)) is not None  # the refusal touched nothing
    fresh = ShardStore(tmp_path, "xyz", {}, overwrite=True)
    assert fresh.load(Shard(0, 0, 2)) is None
