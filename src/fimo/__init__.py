"""fimo: final-model-only training data attribution.

Further training from the final weights is the gold standard; Grad-Dot, Grad-Cos and the
other gradient-based methods are approximations of it, and fimo measures how good they are.

>>> import fimo
>>> # result = fimo.run("adult", out="runs/adult")   # the default experiment
>>> # result.rows[:2]                                  # agreement per method and checkpoint
"""

__version__ = "0.1.0"

from fimo import evaluate  # a package that can be called: fimo.evaluate(run_dir_or_gold, ...)
from fimo.data import ArrayDataset
from fimo.evaluate import agreement_by_checkpoint
from fimo.further import FurtherSettings, GoldStandard, gold_standard
from fimo.methods import grad_cos, grad_dot
from fimo.scores import Scores
from fimo.task import Task


def run(config="adult", out="runs/adult", overwrite=False, quiet=False, **overrides):
    """Run a preset name, a TOML path or a Config into ``out``; returns a RunResult.

    Overrides: seeds, left_out, epochs, optimizer, lr, methods, device, n_test, dtype.
    """
    from fimo.experiments import config as cfg
    from fimo.experiments.pipeline import run as run_pipeline

    conf = config if isinstance(config, cfg.Config) else cfg.load_config(config)
    conf = cfg.with_overrides(conf, **overrides)
    return run_pipeline(conf, out, overwrite=overwrite, quiet=quiet)


__all__ = [
    "ArrayDataset",
    "FurtherSettings",
    "GoldStandard",
    "Scores",
    "Task",
    "agreement_by_checkpoint",
    "evaluate",
    "gold_standard",
    "grad_cos",
    "grad_dot",
    "run",
]
