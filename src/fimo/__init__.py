"""fimo: final-model-only training data attribution.

Further training from the final weights is the gold standard; Grad-Dot, Grad-Cos and the
other gradient-based methods are approximations of it, and fimo measures how good they are.

A whole experiment is ``fimo.run("adult")`` (writes ``runs/adult``); the parts work on their
own, here on a tiny linear model:

>>> import fimo, torch
>>> x = torch.linspace(-1, 1, 16).reshape(8, 2)
>>> task = fimo.Task(torch.nn.Linear(2, 1), fimo.ArrayDataset(x, x.sum(1)),
...                  fimo.ArrayDataset(x[:2], x[:2].sum(1)), loss="mse")
>>> gold = fimo.gold_standard(task, fimo.FurtherSettings(lr=0.1, batch_size=4),
...                           seeds=range(3), left_out=[0, 3, 5], test=[0, 1])
>>> scores = fimo.grad_dot(task, [0, 1], [0, 3, 5])
>>> rows = fimo.evaluate(gold, scores, frames=False)["by_checkpoint"]
>>> sorted({(r["method"], r["metric"]) for r in rows})[:2]
[('grad_dot', 'cosine'), ('grad_dot', 'pearson')]
"""

import importlib

from fimo.version import __version__ as __version__

#: public name -> the module that defines it; each is imported when first used, so that
#: ``fimo --help`` and a refused command answer without loading torch
_WHERE = {
    "ArrayDataset": "fimo.data",
    "FurtherSettings": "fimo.settings",
    "GoldStandard": "fimo.further.gold",
    "Scores": "fimo.scores",
    "Task": "fimo.task",
    "agreement_by_checkpoint": "fimo.evaluate",
    "gold_standard": "fimo.further.runner",
    "grad_cos": "fimo.methods.first_order",
    "grad_dot": "fimo.methods.first_order",
}


def __getattr__(name: str):
    """The public names, imported on first use (``fimo.evaluate``, a package that can be
    called, is imported as the submodule it is)."""
    if name == "evaluate":
        return importlib.import_module("fimo.evaluate")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fimo' has no attribute {name!r}")


def run(config="adult", out=None, overwrite=False, quiet=False, scale="quick", **overrides):
    """Run a preset name, a TOML path or a Config into ``out``; returns a RunResult.

    ``out`` defaults to ``runs/<name>`` (the configuration's name, e.g. ``runs/concrete`` or
    ``runs/concrete-paper`` for ``scale="paper"``), as ``fimo run`` does. ``scale`` is
    ``"quick"`` or ``"paper"`` for presets and files with a ``[scales.paper]`` table.
    Overrides: seeds, left_out, epochs, optimizer, lr, methods, device, n_test, dtype,
    executor, workers, address.

    Every setting is checked before any work starts:

    >>> import fimo
    >>> fimo.run("adult", seeds=0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: further.seeds: got 0; need at least 1 seed
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


def attribute(source, test, **options):
    """Score every training instance for test instances ``test``, from the final model alone.

    ``source``: a preset name, a TOML path or a Config (the final model is trained or reused
    as ``fimo.run`` does, in ``out``) or a ``fimo.Task`` holding the final model. Options:
    method (default ``"unrolled_quadratic"``), steps, seeds, top, out, further (for a Task),
    device, scale, overwrite, quiet (:func:`fimo.experiments.attribute.attribute`).

    >>> import fimo, torch
    >>> x = torch.linspace(-1, 1, 16).reshape(8, 2)
    >>> task = fimo.Task(torch.nn.Linear(2, 1), fimo.ArrayDataset(x, x.sum(1)),
    ...                  fimo.ArrayDataset(x, x.sum(1)), loss="mse")
    >>> result = fimo.attribute(task, [0, 7], further={"lr": 0.1, "batch_size": 4}, top=2)
    >>> result.scores.shape, result.helpful(0)
    ((2, 8), [0, 1])
    """
    from fimo.experiments.attribute import attribute as attribute_scores

    return attribute_scores(source, test, **options)


__all__ = [
    "ArrayDataset",
    "FurtherSettings",
    "GoldStandard",
    "Scores",
    "Task",
    "agreement_by_checkpoint",
    "attribute",
    "evaluate",
    "gold_standard",
    "grad_cos",
    "grad_dot",
    "run",
]
