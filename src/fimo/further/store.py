"""The gold standard on disk: one shard per seed, written atomically, refused if foreign.

``further/fingerprint.json`` records the fingerprint of the weights, data and settings the
shards were made under; ``further/shards/seed-NNNNN.npz`` holds one seed's raw losses;
``further/gold.npz`` is assembled from the shards. A shard is only ever complete (written
under a temporary name, then renamed), so a run stopped at any moment resumes from the shards
it finished and ends with the same numbers as one never stopped (DESIGN.md ◆ Runs are data).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from fimo.errors import InputError
from fimo.further.engine import SeedResult
from fimo.further.gold import GoldStandard
from fimo.io import read_npz, write_json, write_npz


class ShardStore:
    """Shards of one gold standard, tied to one fingerprint."""

    def __init__(self, folder: Path, fingerprint: str, description: dict, overwrite=False):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        stamp = self.folder / "fingerprint.json"
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
        elif overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(stamp, {"fingerprint": fingerprint, **description})

    def path(self, seed: int) -> Path:
        return self.folder / "shards" / f"seed-{seed:05d}.npz"

    def load(self, seed: int) -> SeedResult | None:
        """The finished shard of ``seed``, or None if there is none (or it is unreadable)."""
        path = self.path(seed)
        if not path.exists():
            return None
        try:
            data = read_npz(path)
        except Exception:  # truncated or damaged: recompute rather than use
            return None
        if str(data.get("fingerprint")) != self.fingerprint:
            raise InputError(
                f"{path} was made under fingerprint {data.get('fingerprint')}, not "
                f"{self.fingerprint}; pass --overwrite to start afresh"
            )
        return SeedResult(data["loss_full"], data["loss_without"], data["steps"], data["epochs"])

    def save(self, seed: int, result: SeedResult) -> Path:
        return write_npz(
            self.path(seed),
            loss_full=result.loss_full,
            loss_without=result.loss_without,
            steps=result.steps,
            epochs=result.epochs,
            fingerprint=np.array(self.fingerprint),
        )

    def assemble(self, seeds, left_out, test, settings: dict) -> GoldStandard:
        results = [self.load(s) for s in seeds]
        missing = [s for s, r in zip(seeds, results, strict=True) if r is None]
        if missing:
            raise RuntimeError(f"cannot assemble the gold standard: seeds {missing} have no shard")
        gold = GoldStandard(
            loss_full=np.stack([r.loss_full for r in results]),
            loss_without=np.stack([r.loss_without for r in results]),
            steps=results[0].steps,
            epochs=results[0].epochs,
            left_out=left_out,
            test=test,
            seeds=np.asarray(seeds),
            settings=settings,
        )
        gold.save(self.folder / "gold.npz")
        return gold
