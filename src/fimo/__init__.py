"""fimo: final-model-only training data attribution.

Further training from the final weights is the gold standard; Grad-Dot, Grad-Cos and the
other gradient-based methods are approximations of it, and fimo measures how good they are.

>>> import fimo
>>> # result = fimo.run("adult", out="runs/adult")   # the default experiment
>>> # result.rows[:2]                                  # agreement per method and checkpoint
"""

from fimo import evaluate  # a package that can be called: fimo.evaluate(run_dir_or_gold, ...)
from fimo.data import ArrayDataset
from fimo.evaluate import agreement_by_checkpoint
from fimo.further import FurtherSettings, GoldStandard, gold_standard
from fimo.methods import grad_cos, grad_dot
from fimo.scores import Scores
from fimo.task import Task
from fimo.version import __version__ as __version__


def run(config="adult", out=None, overwrite=False, quiet=False, scale="quick", **overrides):
    """Run a preset name, a TOML path or a Config into ``out``; returns a RunResult.

    ``out`` defaults to ``runs/<name>`` (the configuration's name, e.g. ``runs/concrete`` or
    ``runs/concrete-paper`` for ``scale="paper"``), as ``fimo run`` does. ``scale`` is
    ``"quick"`` or ``"paper"`` for presets and files with a ``[scales.paper]`` table.
    Overrides: seeds, left_out, epochs, optimizer, lr, methods, device, n_test, dtype,
    executor, workers, address.

    >>> # result = fimo.run("concrete")                  # writes runs/concrete
    >>> # result = fimo.run("adult", seeds=4, quiet=True)
    """
    from fimo.experiments import config as cfg
    from fimo.experiments.pipeline import run as run_pipeline

    if isinstance(config, cfg.Config):
        conf = config
    else:
        conf = cfg.load_config(config, scale=scale)
    conf = cfg.with_overrides(conf, **overrides)
    out = cfg.default_run_dir(conf) if out is None else out
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
