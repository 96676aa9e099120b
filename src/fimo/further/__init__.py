"""The further-training gold standard: schedules, pure optimizers, the engine, the store."""

from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.further.gold import GoldStandard
from fimo.further.runner import LocalExecutor, RayExecutor, gold_standard
from fimo.further.store import Shard, ShardStore

__all__ = [
    "FurtherSettings",
    "GoldStandard",
    "LocalExecutor",
    "RayExecutor",
    "Shard",
    "ShardStore",
    "further_train_seed",
    "gold_standard",
]
