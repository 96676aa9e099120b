"""The further-training gold standard: schedules, pure optimizers, the engine, the store.

Its names are imported when first used (``fimo.further.gold_standard``), so that importing a
torch-free part of it (or of fimo) does not load torch.
"""

import importlib

#: public name -> the module that defines it
_WHERE = {
    "FurtherSettings": "fimo.settings",
    "further_train_seed": "fimo.further.engine",
    "GoldStandard": "fimo.further.gold",
    "LocalExecutor": "fimo.further.runner",
    "RayExecutor": "fimo.further.runner",
    "gold_standard": "fimo.further.runner",
    "Shard": "fimo.further.store",
    "ShardStore": "fimo.further.store",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fimo.further' has no attribute {name!r}")


__all__ = sorted(_WHERE)
