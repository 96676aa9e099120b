"""The further-training gold standard: schedules, pure optimizers, the engine, the store."""

from fimo.further.engine import FurtherSettings, further_train_seed, gold_standard
from fimo.further.gold import GoldStandard

__all__ = ["FurtherSettings", "GoldStandard", "further_train_seed", "gold_standard"]
