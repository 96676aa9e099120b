"""The gold standard on disk: shards of (seed, chunk of left-out instances).

``further/fingerprint.json`` records the fingerprint of the weights, data and settings the
shards were made under; ``further/shards/seed-SSSSS_lo-AAAAA-BBBBB.npz`` holds the raw losses
of one seed's full run and of its left-out runs ``left_out[AAAAA:BBBBB]``, and
``seed-SSSSS_gr-AAAAA-BBBBB.npz`` those of its runs without the groups ``groups[AAAAA:BBBBB]``;
``further/gold.npz`` is assembled from them. The group shards carry a fingerprint of their own
(the store's and the groups' member lists): other groups replace the group shards alone, and
the single-instance shards, which do not depend on the groups, are kept. A shard is only ever complete (written under a temporary name, then
renamed), so a run stopped at any moment resumes from the shards it finished and ends with the
same numbers as one never stopped (DESIGN.md ◆ Runs are data). A shard counts only with its
checksum file ``<shard>.npz.sha256`` (earlier versions kept it as ``<shard>.sha256``):
a shard cut short or altered is recomputed, never used.

Each shard recomputes its seed's full run (a cost of one run in ``1 + chunk``); the assembled
gold standard takes the full run of the seed's first chunk (the full run is the same in every
shard of a seed, bit for bit: the stack computes it alone until a left-out run departs).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.engine import SeedResult
from fimo.further.gold import GoldStandard
from fimo.further.plan import Groups
from fimo.io import (
    DamagedFileError,
    checksum_matches,
    checksum_path,
    read_npz,
    write_json,
    write_npz,
)

#: the files of a store's folder: its fingerprint, its shards and the assembled gold standard
FINGERPRINT, SHARDS, GOLD = "fingerprint.json", "shards", "gold.npz"


@dataclass(frozen=True, order=True)
class Shard:
    """One unit of work: seed ``seed``, left-out positions ``start:stop`` (in ``left_out``, or,
    for ``group=True``, in the groups).

    >>> sorted([Shard(seed=1, start=0, stop=2), Shard(seed=0, start=2, stop=4)])[0]
    Shard(seed=0, start=2, stop=4, group=False)
    """

    seed: int
    start: int
    stop: int
    group: bool = False

    @property
    def name(self) -> str:
        """The shard's file name without suffix: seed and left-out positions, zero-padded.

        >>> Shard(seed=3, start=0, stop=4).name, Shard(3, 0, 4, group=True).name
        ('seed-00003_lo-00000-00004', 'seed-00003_gr-00000-00004')
        """
        kind = "gr" if self.group else "lo"
        return f"seed-{self.seed:05d}_{kind}-{self.start:05d}-{self.stop:05d}"


def plan_shards(seeds, n_left_out: int, per_shard: int, n_groups: int = 0) -> list[Shard]:
    """Every (seed, chunk) pair, chunks of ``per_shard`` consecutive left-out positions, then
    of ``per_shard`` consecutive groups.

    >>> [(s.seed, s.start, s.stop) for s in plan_shards(seeds=[0, 1], n_left_out=3, per_shard=2)]
    [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 3)]
    >>> [s.name for s in plan_shards([0], n_left_out=1, per_shard=2, n_groups=2)]
    ['seed-00000_lo-00000-00001', 'seed-00000_gr-00000-00002']
    """
    if per_shard < 1:
        raise InputError(f"further.left_out_per_shard: got {per_shard}; must be ≥ 1")
    return [
        Shard(int(s), a, min(a + per_shard, count), group)
        for s in seeds
        for count, group in ((n_left_out, False), (n_groups, True))
        for a in range(0, count, per_shard)
    ]


def assemble(
    results: dict[Shard, SeedResult], seeds, left_out, test, settings, groups=None
) -> GoldStandard:
    """Stack shard results into a GoldStandard (full run from each seed's first chunk; the
    group shards' losses as ``loss_without_group`` when ``groups`` are given).

    Two seeds, three left-out instances in chunks of two; here a left-out run's loss is
    10 × seed + its position in ``left_out``:

    >>> from fimo.further.engine import SeedResult
    >>> def result(shard):
    ...     without = 10.0 * shard.seed + np.arange(shard.start, shard.stop)
    ...     return SeedResult(np.full((1, 1), 1.0 * shard.seed), without.reshape(1, 1, -1),
    ...                       np.array([5]), np.array([1.0]))
    >>> results = {shard: result(shard) for shard in plan_shards([0, 1], 3, per_shard=2)}
    >>> gold = assemble(results, seeds=[0, 1], left_out=[7, 8, 9], test=[0], settings={})
    >>> gold.loss_without[:, 0, 0].tolist(), gold.loss_full[:, 0, 0].tolist()
    ([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]], [0.0, 1.0])
    """
    seeds = [int(s) for s in seeds]
    groups = None if groups is None else Groups.of(groups)
    full, without, without_group, steps, epochs = [], [], [], None, None
    for seed in seeds:
        mine = sorted(sh for sh in results if sh.seed == seed)
        if not mine:
            raise RuntimeError(f"cannot assemble the gold standard: seed {seed} is incomplete")
        first = results[mine[0]]
        full.append(first.loss_full)
        steps, epochs = first.steps, first.epochs
        empty = np.zeros((*first.loss_full.shape, 0))
        without.append(_joined(results, [sh for sh in mine if not sh.group], len(left_out), empty))
        if groups is not None:
            chunks = [sh for sh in mine if sh.group]
            without_group.append(_joined(results, chunks, len(groups), empty, group=True))
    # C order, as when read back from disk: sums over a strided array may round differently,
    # and `fimo report` must give the metrics of the run to the last bit
    return GoldStandard(
        np.ascontiguousarray(np.stack(full)),
        np.ascontiguousarray(np.stack(without)),
        steps,
        epochs,
        left_out,
        test,
        np.asarray(seeds),
        settings,
        None if groups is None else np.ascontiguousarray(np.stack(without_group)),
        groups,
    )


def _joined(results, chunks: list[Shard], count: int, empty: np.ndarray, group=False):
    """The chunks' left-out (or group) losses side by side, (C, T, count); RuntimeError when
    they do not cover positions 0 to count."""
    if count == 0:
        return empty
    if not chunks or chunks[0].start != 0 or chunks[-1].stop != count:
        seed = chunks[0].seed if chunks else "?"
        raise RuntimeError(f"cannot assemble the gold standard: seed {seed} is incomplete")
    name = "loss_without_group" if group else "loss_without"
    return np.concatenate([getattr(results[sh], name) for sh in chunks], axis=-1)


class ShardStore:
    """Shards of one gold standard, tied to one fingerprint (and the group shards to
    ``group_fingerprint``, when there are groups).

    Other weights, data or settings (another ``fingerprint``) are refused, or with
    ``overwrite`` start the store afresh. Other groups (another ``group_fingerprint``, or none)
    only remove the group shards: the single-instance shards stay, and are reused.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> store = ShardStore(Path(folder.name), fingerprint="abc", description={"seeds": 2})
    >>> json.loads((store.folder / "fingerprint.json").read_text())
    {'fingerprint': 'abc', 'seeds': 2}
    >>> ShardStore(Path(folder.name), fingerprint="xyz", description={})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: ... other weights, data or settings (fingerprint abc, now xyz); ...
    >>> store = ShardStore(Path(folder.name), "abc", {}, group_fingerprint="g1")
    >>> json.loads((store.folder / "fingerprint.json").read_text())
    {'fingerprint': 'abc', 'group_fingerprint': 'g1'}
    >>> folder.cleanup()
    """

    def __init__(
        self,
        folder: Path,
        fingerprint: str,
        description: dict,
        overwrite=False,
        group_fingerprint: str | None = None,
    ):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.group_fingerprint = group_fingerprint
        stamp = self.folder / FINGERPRINT
        if stamp.exists():
            old = json.loads(stamp.read_text())
            if old.get("fingerprint") != fingerprint:
                if not overwrite:
                    raise InputError(
                        f"{self.folder} holds a gold standard made under other weights, data or "
                        f"settings (fingerprint {old.get('fingerprint')}, now {fingerprint}); "
                        "pass --overwrite to start it afresh, or --out to write elsewhere"
                    )
                shutil.rmtree(self.folder)
            elif old.get("group_fingerprint") != group_fingerprint:
                self._remove_group_shards()
        elif overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        grouped = {} if group_fingerprint is None else {"group_fingerprint": group_fingerprint}
        write_json(stamp, {"fingerprint": fingerprint, **grouped, **description})

    def _remove_group_shards(self) -> None:
        """Delete the group shards (and their checksum files): they were made for other
        groups. The single-instance shards are kept."""
        for path in sorted((self.folder / SHARDS).glob("seed-*_gr-*")):
            path.unlink()

    def fingerprint_of(self, shard: Shard) -> str:
        """The fingerprint ``shard`` is made under: the group fingerprint for a group shard
        (the store's when it has none: then the store's fingerprint covers the groups).

        >>> import tempfile
        >>> store = ShardStore(Path(tempfile.mkdtemp()), "abc", {}, group_fingerprint="g1")
        >>> store.fingerprint_of(Shard(0, 0, 2)), store.fingerprint_of(Shard(0, 0, 2, group=True))
        ('abc', 'g1')
        """
        if shard.group and self.group_fingerprint is not None:
            return self.group_fingerprint
        return self.fingerprint

    def path(self, shard: Shard) -> Path:
        """Where ``shard`` is kept: ``shards/<name>.npz`` in the store's folder.

        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> store = ShardStore(Path(folder.name), fingerprint="abc", description={})
        >>> store.path(Shard(0, 0, 2)).relative_to(folder.name).as_posix()
        'shards/seed-00000_lo-00000-00002.npz'
        >>> folder.cleanup()
        """
        return self.folder / SHARDS / f"{shard.name}.npz"

    def _checksum_path(self, shard: Shard) -> Path:
        return checksum_path(self.path(shard))

    def load(self, shard: Shard) -> SeedResult | None:
        """The finished shard, or None if there is none, or it is damaged.

        A shard counts only with its checksum file, written with it: a shard whose bytes no
        longer match (cut short, altered) is reported and recomputed, never used.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> losses = {"loss_full": np.array([[0.5]]), "loss_without": np.array([[[0.6, 0.4]]])}
        >>> result = SeedResult(**losses, steps=np.array([5]), epochs=np.array([1.0]))
        >>> folder = tempfile.TemporaryDirectory()
        >>> store = ShardStore(Path(folder.name), fingerprint="abc", description={"seeds": 1})
        >>> shard = Shard(0, 0, 2)
        >>> print(store.load(shard))  # not made yet
        None
        >>> path = store.save(shard, result)
        >>> store.load(shard).loss_without.tolist()
        [[[0.6, 0.4]]]
        >>> _ = path.write_bytes(path.read_bytes()[:-10])  # cut short: recomputed, never used
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     print(store.load(shard))
        None
        >>> folder.cleanup()
        """
        path = self.path(shard)
        if not path.exists():
            return None
        matches = checksum_matches(path)
        if matches is None:  # the checksum file of runs made before it was renamed
            matches = checksum_matches(path, self.folder / SHARDS / f"{shard.name}.sha256")
        if not matches:
            warnings.warn(
                f"{path} is damaged or incomplete (its checksum does not match); recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        try:
            data = read_npz(path, verify_checksum=False)
        except DamagedFileError as exc:  # unreadable despite its checksum: recompute, never use
            warnings.warn(f"{exc}; recomputing it", RuntimeWarning, stacklevel=2)
            return None
        if str(data.get("fingerprint")) != self.fingerprint_of(shard):
            raise InputError(
                f"{path} was made under fingerprint {data.get('fingerprint')}, not "
                f"{self.fingerprint_of(shard)}; pass --overwrite to start afresh"
            )
        group = data.get("loss_without_group")
        return SeedResult(
            data["loss_full"], data["loss_without"], data["steps"], data["epochs"], group
        )

    def save(self, shard: Shard, result: SeedResult) -> Path:
        """Write a shard and its checksum file (see :func:`fimo.io.atomic_write`).

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> losses = {"loss_full": np.array([[0.5]]), "loss_without": np.array([[[0.6, 0.4]]])}
        >>> result = SeedResult(**losses, steps=np.array([5]), epochs=np.array([1.0]))
        >>> folder = tempfile.TemporaryDirectory()
        >>> store = ShardStore(Path(folder.name), fingerprint="abc", description={"seeds": 1})
        >>> path = store.save(Shard(0, 0, 2), result)
        >>> sorted(p.name for p in path.parent.iterdir())
        ['seed-00000_lo-00000-00002.npz', 'seed-00000_lo-00000-00002.npz.sha256']
        >>> folder.cleanup()
        """
        legacy = self.folder / SHARDS / f"{shard.name}.sha256"
        legacy.unlink(missing_ok=True)  # a new shard must not be judged by an old checksum
        group = {}
        if result.loss_without_group is not None:
            group["loss_without_group"] = result.loss_without_group
        return write_npz(
            self.path(shard),
            loss_full=result.loss_full,
            loss_without=result.loss_without,
            steps=result.steps,
            epochs=result.epochs,
            fingerprint=np.array(self.fingerprint_of(shard)),
            **group,
        )

    def save_gold(self, gold: GoldStandard) -> Path:
        """Write the assembled gold standard as ``gold.npz`` in the store's folder.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> losses = {"loss_full": np.array([[0.5]]), "loss_without": np.array([[[0.6, 0.4]]])}
        >>> result = SeedResult(**losses, steps=np.array([5]), epochs=np.array([1.0]))
        >>> folder = tempfile.TemporaryDirectory()
        >>> store = ShardStore(Path(folder.name), fingerprint="abc", description={"seeds": 1})
        >>> gold = assemble({Shard(0, 0, 2): result}, [0], left_out=[7, 8], test=[0], settings={})
        >>> path = store.save_gold(gold)
        >>> path.name, GoldStandard.load(path).left_out.tolist()
        ('gold.npz', [7, 8])
        >>> folder.cleanup()
        """
        return gold.save(self.folder / GOLD)
