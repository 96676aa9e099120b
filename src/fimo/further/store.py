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
import zipfile
import zlib
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
    read_small_text,
    write_json,
    write_npz,
)

#: the files of a store's folder: its fingerprint, its shards and the assembled gold standard
FINGERPRINT, SHARDS, GOLD = "fingerprint.json", "shards", "gold.npz"
#: the stamp of ``gold.npz``: what it was assembled under, and the work its shards took
GOLD_STAMP = "gold.json"


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
    results: dict, seeds, left_out, test, settings, groups=None, load=None
) -> GoldStandard:
    """Stack shard results into a GoldStandard (full run from each seed's first chunk; the
    group shards' losses as ``loss_without_group`` when ``groups`` are given).

    ``results`` maps each shard to its SeedResult, or to None for a shard to read with
    ``load(shard)`` (:meth:`ShardStore.load`) when its turn comes: the arrays are filled a
    shard at a time, so assembling holds the gold standard and one shard, never every
    shard beside their stack.

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
    by_seed = {seed: sorted(sh for sh in results if sh.seed == seed) for seed in seeds}
    for seed, mine in by_seed.items():
        _check_covered(seed, [sh for sh in mine if not sh.group], len(left_out))
        if groups is not None:
            _check_covered(seed, [sh for sh in mine if sh.group], len(groups))

    def get(shard: Shard) -> SeedResult:
        found = results[shard] if results[shard] is not None else load(shard)
        if found is None:  # damaged since it was found whole
            raise RuntimeError(f"cannot assemble the gold standard: shard {shard.name} is lost")
        return found

    first = get(by_seed[seeds[0]][0])
    C, T = first.loss_full.shape
    # C order, as when read back from disk: sums over a strided array may round differently,
    # and `fimo report` must give the metrics of the run to the last bit
    full = np.empty((len(seeds), C, T), first.loss_full.dtype)
    counts = {"loss_without": len(left_out), "loss_without_group": len(groups or ())}
    filled: dict[str, np.ndarray] = {}  # made at the first chunk, in the chunks' dtype
    for s, seed in enumerate(seeds):
        for k, shard in enumerate(by_seed[seed]):
            found = first if (s, k) == (0, 0) else get(shard)
            if k == 0:
                full[s] = found.loss_full
            name = "loss_without_group" if shard.group else "loss_without"
            chunk = getattr(found, name)
            if name not in filled:
                filled[name] = np.empty((len(seeds), C, T, counts[name]), chunk.dtype)
            filled[name][s, ..., shard.start : shard.stop] = chunk
            del found, chunk
    for name, count in counts.items():  # nothing to fill: float64, as stacking nothing gave
        filled.setdefault(name, np.zeros((len(seeds), C, T, count)))
    return GoldStandard(
        full, filled["loss_without"], first.steps, first.epochs, left_out, test,
        np.asarray(seeds), settings, filled["loss_without_group"] if groups is not None else None,
        groups,
    )  # fmt: skip


def _check_covered(seed: int, chunks: list[Shard], count: int) -> None:
    """RuntimeError unless ``chunks`` (in order) cover the positions 0 to ``count`` end to
    end."""
    if count == 0:
        return
    ends = [0] + [sh.stop for sh in chunks]  # where each chunk must start, and the last end
    gaps = any(sh.start != end for sh, end in zip(chunks, ends[:-1], strict=True))
    if not chunks or gaps or ends[-1] != count:
        raise RuntimeError(f"cannot assemble the gold standard: seed {seed} is incomplete")


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
        #: each shard's work time as read or written here (None: not recorded)
        self.seconds: dict[Shard, dict | None] = {}
        self._finished: set[Shard] = set()  # shards found whole by :meth:`finished`
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

    def check(self, shard: Shard) -> bool:
        """Whether ``shard`` is on disk, whole and made under this store's fingerprint, as
        :meth:`load` judges it (a damaged shard is reported and counts as not made; another
        fingerprint raises InputError), reading only its fingerprint: a resumed run checks
        every shard first and reads their arrays once, when it assembles them.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> result = SeedResult(np.zeros((1, 1)), np.zeros((1, 1, 2)), np.array([5]), np.ones(1))
        >>> store = ShardStore(Path(tempfile.mkdtemp()), fingerprint="abc", description={})
        >>> store.check(Shard(0, 0, 2)), store.check(store.save(Shard(0, 0, 2), result)
        ...                                            and Shard(0, 0, 2))
        (False, True)
        """
        path = self.path(shard)
        if not path.exists():
            return False
        if not self.finished(shard):
            _report_damaged(path)
            return False
        try:
            with np.load(path, allow_pickle=False) as data:
                made_under = str(data["fingerprint"]) if "fingerprint" in data.files else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            warnings.warn(f"{path} cannot be read ({exc}); recomputing it", RuntimeWarning, 2)
            self._finished.discard(shard)
            return False
        self._check_fingerprint(shard, path, made_under)
        return True

    def _check_fingerprint(self, shard: Shard, path: Path, made_under) -> None:
        """InputError when the shard at ``path`` was made under another fingerprint."""
        if str(made_under) != self.fingerprint_of(shard):
            raise InputError(
                f"{path} was made under fingerprint {made_under}, not "
                f"{self.fingerprint_of(shard)}; pass --overwrite to start afresh"
            )

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
        if not self._checksum_matches(shard, path):
            _report_damaged(path)
            return None
        try:
            data = read_npz(path, verify_checksum=False)
        except DamagedFileError as exc:  # unreadable despite its checksum: recompute, never use
            warnings.warn(f"{exc}; recomputing it", RuntimeWarning, stacklevel=2)
            return None
        self._check_fingerprint(shard, path, data.get("fingerprint"))
        group = data.get("loss_without_group")
        seconds = None
        if "wall_seconds" in data:  # shards written before they recorded it have none
            seconds = {"wall": float(data["wall_seconds"]), "cpu": float(data["cpu_seconds"])}
        self.seconds[shard] = seconds
        return SeedResult(
            data["loss_full"], data["loss_without"], data["steps"], data["epochs"], group, seconds
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
        extra = {}
        if result.loss_without_group is not None:
            extra["loss_without_group"] = result.loss_without_group
        if result.seconds is not None:  # what computing it took, kept with it
            extra["wall_seconds"] = np.float64(result.seconds["wall"])
            extra["cpu_seconds"] = np.float64(result.seconds["cpu"])
        path = write_npz(
            self.path(shard),
            loss_full=result.loss_full,
            loss_without=result.loss_without,
            steps=result.steps,
            epochs=result.epochs,
            fingerprint=np.array(self.fingerprint_of(shard)),
            **extra,
        )
        self.seconds[shard] = result.seconds
        self._finished.add(shard)
        return path

    def finished(self, shard: Shard) -> bool:
        """Whether ``shard`` is on disk whole (its checksum matches), without reading its
        arrays; :meth:`load` still checks it when it is read.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> result = SeedResult(np.zeros((1, 1)), np.zeros((1, 1, 2)), np.array([5]), np.ones(1))
        >>> store = ShardStore(Path(tempfile.mkdtemp()), fingerprint="abc", description={})
        >>> store.finished(Shard(0, 0, 2)), store.finished(store.save(Shard(0, 0, 2), result)
        ...                                                 and Shard(0, 0, 2))
        (False, True)
        """
        if shard in self._finished:  # checked once: hashing every shard takes seconds
            return True
        path = self.path(shard)
        if not path.exists():
            return False
        matches = self._checksum_matches(shard, path)
        if matches:
            self._finished.add(shard)
        return matches

    def _checksum_matches(self, shard: Shard, path: Path) -> bool:
        """Whether ``path`` (the shard's file, which exists) matches its checksum, also under
        the checksum file's name of runs made before it was renamed."""
        matches = checksum_matches(path)
        if matches is None:
            matches = checksum_matches(path, self.folder / SHARDS / f"{shard.name}.sha256")
        return bool(matches)

    def work_seconds(self, shards) -> dict:
        """The work the shards took, summed over those that recorded it (:meth:`load` and
        :meth:`save` note each shard's record; :meth:`reuse_gold` all of them):
        ``{"wall", "cpu", "shards", "shards_without_time"}``.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> result = SeedResult(np.zeros((1, 1)), np.zeros((1, 1, 2)), np.array([5]), np.ones(1),
        ...                     seconds={"wall": 2.0, "cpu": 1.5})
        >>> store = ShardStore(Path(tempfile.mkdtemp()), fingerprint="abc", description={})
        >>> _ = store.save(Shard(0, 0, 2), result)
        >>> store.work_seconds([Shard(0, 0, 2), Shard(1, 0, 2)])  # the second: no record
        {'wall': 2.0, 'cpu': 1.5, 'shards': 2, 'shards_without_time': 1}
        """
        known = [self.seconds[sh] for sh in shards if self.seconds.get(sh) is not None]
        return {
            "wall": sum((t["wall"] for t in known), 0.0),
            "cpu": sum((t["cpu"] for t in known), 0.0),
            "shards": len(shards),
            "shards_without_time": len(shards) - len(known),
        }

    def save_gold(self, gold: GoldStandard, shards=()) -> Path:
        """Write the assembled gold standard as ``gold.npz`` in the store's folder, then its
        stamp ``gold.json``: the store's fingerprints, the checksum of that ``gold.npz`` and
        the work each of ``shards`` recorded (see :meth:`reuse_gold`).

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
        path = gold.save(self.folder / GOLD)
        write_json(
            self.folder / GOLD_STAMP,
            {
                "fingerprint": self.fingerprint,
                "group_fingerprint": self.group_fingerprint,
                "gold_sha256": _recorded_checksum(path),
                "shard_seconds": {sh.name: self.seconds.get(sh) for sh in shards},
            },
        )
        return path

    def gold_matches(self, seeds, left_out, test, groups=None) -> bool:
        """Whether ``gold.npz`` was assembled under this store's fingerprints (its stamp
        ``gold.json`` says so, for this very file) from exactly these seeds, left-out and
        test instances and groups; read from the stamp and the index arrays, not the losses
        (the checksum is checked when :meth:`reuse_gold` reads them).

        >>> import tempfile
        >>> store = ShardStore(Path(tempfile.mkdtemp()), fingerprint="abc", description={})
        >>> store.gold_matches([0], [7, 8], [0])  # no gold.npz yet
        False
        """
        stamp = self._gold_stamp()
        if stamp.get("fingerprint") != self.fingerprint:
            return False
        if stamp.get("group_fingerprint") != self.group_fingerprint:
            return False
        path = self.folder / GOLD
        if not path.is_file() or stamp.get("gold_sha256") != _recorded_checksum(path):
            return False
        found = _index_arrays(path)
        wanted = {"seeds": seeds, "left_out": left_out, "test": test}
        if groups is not None:
            groups = Groups.of(groups)
            wanted.update(group_members=groups.members, group_offsets=groups.offsets)
        if ("group_members" in found) != (groups is not None):
            return False
        return all(
            k in found and np.array_equal(found[k], np.asarray(v, dtype=np.int64))
            for k, v in wanted.items()
        )

    def _gold_stamp(self) -> dict:
        """``gold.json`` as a dict (empty when it is absent or damaged)."""
        try:
            stamp = json.loads(read_small_text(self.folder / GOLD_STAMP))
        except (OSError, ValueError):
            return {}
        return stamp if isinstance(stamp, dict) else {}

    def reuse_gold(self, shards, seeds, left_out, test, settings, groups=None):
        """The gold standard in ``gold.npz`` when :meth:`gold_matches` and every one of
        ``shards`` is on disk whole (:meth:`finished`: a shard lost or damaged is
        recomputed, as ever); then the work each recorded, kept in the stamp, is noted for
        :meth:`work_seconds`. Else None. A finished run started again reads this one file,
        not every shard's arrays.

        >>> import tempfile
        >>> from fimo.further.engine import SeedResult
        >>> result = SeedResult(np.zeros((1, 1)), np.ones((1, 1, 2)), np.array([5]), np.ones(1),
        ...                     seconds={"wall": 2.0, "cpu": 1.5})
        >>> store = ShardStore(Path(tempfile.mkdtemp()), fingerprint="abc", description={})
        >>> shards = [Shard(0, 0, 2)]
        >>> _ = store.save(shards[0], result)
        >>> _ = store.save_gold(assemble({shards[0]: result}, [0], [7, 8], [0], {}), shards)
        >>> again = ShardStore(store.folder, fingerprint="abc", description={})
        >>> again.reuse_gold(shards, [0], [7, 8], [0], {}).loss_without.tolist()
        [[[[1.0, 1.0]]]]
        >>> again.work_seconds(shards)["wall"], again.reuse_gold(shards, [0, 1], [7, 8], [0], {})
        (2.0, None)
        """
        if not self.gold_matches(seeds, left_out, test, groups):
            return None
        if not all(self.finished(shard) for shard in shards):
            return None
        try:
            gold = GoldStandard.from_arrays(read_npz(self.folder / GOLD), settings)
        except DamagedFileError:
            return None
        recorded = self._gold_stamp().get("shard_seconds") or {}
        for shard in shards:
            seconds = recorded.get(shard.name)
            self.seconds[shard] = seconds if isinstance(seconds, dict) else None
        return gold


def _recorded_checksum(path: Path) -> str | None:
    """The SHA-256 recorded beside ``path`` (None when there is none)."""
    try:
        return read_small_text(checksum_path(path)).split()[0]
    except (OSError, ValueError, IndexError):
        return None


#: the index arrays of ``gold.npz`` that say what it covers (:meth:`ShardStore.gold_matches`)
_INDEX = ("seeds", "left_out", "test", "group_members", "group_offsets")


def _index_arrays(path: Path) -> dict:
    """The arrays of :data:`_INDEX` that ``gold.npz`` holds, read without loading its
    losses; empty when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in _INDEX if k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return {}


def _report_damaged(path: Path) -> None:
    """Warn that the shard at ``path`` fails its checksum and will be recomputed."""
    warnings.warn(
        f"{path} is damaged or incomplete (its checksum does not match); recomputing it",
        RuntimeWarning,
        stacklevel=3,
    )
