"""From a configuration to a Task: datasets, model, loss, trainable parameters.

Built-in datasets and models are looked up by name; a user's own come in as a Python factory
named ``package.module:function`` (code you trust: it is imported and called):

- ``data.factory``: ``fn() -> (train, test)``, two :class:`fimo.ArrayDataset`;
- ``model.factory``: ``fn(train, test) -> torch.nn.Module``.

``data.options`` are keyword arguments of a built-in dataset's loader (e.g. ``max_length``
of ``reviews``); ``model.trainable`` and ``training.trainable`` take parameter names or
shell-style patterns (:func:`fimo.task.select_parameters`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import fimo.data
from fimo.data import ArrayDataset
from fimo.errors import InputError, closest
from fimo.lora import with_lora
from fimo.models import mlp
from fimo.task import Task


def resolve_callable(spec: str, setting: str) -> Callable:
    """Import ``package.module:function``.

    >>> resolve_callable("math:sqrt", "data.factory")(4.0)
    2.0
    >>> resolve_callable("math", "data.factory")
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data.factory: got 'math'; expected 'package.module:function'
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"{setting}: got {spec!r}; expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{setting}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"{setting}: {module_name!r} has no function {attr!r}")
    return fn


def call_factory(spec: str, setting: str, *args):
    """Call the factory ``spec`` (``package.module:function``) with ``args``; an error it
    raises becomes one line that names the factory and quotes the error.

    >>> call_factory("math:sqrt", "data.factory", 4.0)
    2.0
    >>> call_factory("math:sqrt", "data.factory", -1.0)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data.factory: math:sqrt raised ValueError: math domain error
    """
    fn = resolve_callable(spec, setting)
    try:
        return fn(*args)
    except InputError:  # fimo's own check inside the factory (e.g. ArrayDataset's): as it is
        raise
    except Exception as exc:  # the user's code: its error, in one line, and whose it is
        reason = " ".join(str(exc).split())[:300]
        raise InputError(
            f"{setting}: {spec} raised {type(exc).__name__}" + (f": {reason}" if reason else "")
        ) from exc


def datasets() -> dict[str, Callable]:
    """Built-in datasets by name.

    >>> sorted(datasets())
    ['adult', 'concrete', 'credit', 'diabetes', 'fashion_mnist', 'mnist', 'reviews']
    """
    return dict(getattr(fimo.data, "DATASETS", {"adult": fimo.data.load_adult}))


def load_data(config) -> tuple[ArrayDataset, ArrayDataset]:
    """The configuration's (train, test) datasets (the first ``data.n_train`` training
    instances when that is set).

    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"data": {"dataset": "concrete", "n_train": 10},
    ...                     "model": {"hidden": [4]}})
    >>> train, test = load_data(config)  # Concrete ships with fimo
    >>> len(train), tuple(train.inputs.shape), len(test)
    (10, (10, 8), 103)
    """
    train, test = _load_data(config)
    n = config.data.n_train
    if n:
        if n > len(train):
            raise InputError(
                f"data.n_train: got {n}, but there are only {len(train)} training instances"
            )
        train = train[np.arange(n)]
    return train, test


def _load_data(config) -> tuple[ArrayDataset, ArrayDataset]:
    if config.data.factory:
        result = call_factory(config.data.factory, "data.factory")
        if not (isinstance(result, tuple) and len(result) == 2):
            raise InputError(
                f"data.factory: {config.data.factory} must return (train, test) ArrayDatasets; "
                f"got {type(result).__name__}"
            )
        return result
    available = datasets()
    name = config.data.dataset
    if name not in available:
        raise InputError(
            f"data.dataset: got {name!r}{closest(name, available)}; "
            f"available: {', '.join(sorted(available))} (or set data.factory)"
        )
    loader = available[name]
    options = dict(config.data.options)
    if options:
        accepted = _keywords(loader)
        for key in options:
            if key not in accepted:
                raise InputError(
                    f"data.options: dataset {name!r} has no option {key!r}"
                    f"{closest(key, accepted)}; allowed: {', '.join(accepted) or 'none'}"
                )
    try:
        return loader(**options)
    except TypeError as exc:  # a value of the wrong kind that the loader does not check
        raise InputError(f"data.options: {options} do not fit dataset {name!r}: {exc}") from exc


def _keywords(fn: Callable) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def loss_for(train: ArrayDataset) -> str:
    """Squared error for floating targets, cross-entropy for class indices.

    >>> loss_for(ArrayDataset(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 2.0])))
    'mse'
    >>> loss_for(ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 2, 1])))
    'cross_entropy'
    """
    return "mse" if train.targets.is_floating_point() else "cross_entropy"


def outputs_for(train: ArrayDataset) -> int:
    """The model's number of outputs: the target's width, or the number of classes.

    >>> outputs_for(ArrayDataset(torch.zeros(3, 2), torch.zeros(3, 2)))
    2
    >>> outputs_for(ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 2, 1])))
    3
    """
    if train.targets.is_floating_point():
        return 1 if train.targets.dim() == 1 else int(train.targets.shape[1])
    return int(train.targets.max()) + 1


def build_model(config, train: ArrayDataset, test: ArrayDataset) -> nn.Module:
    """The configuration's model, freshly initialised from ``model.seed``.

    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"data": {"dataset": "concrete", "n_train": 10},
    ...                     "model": {"hidden": [4]}})
    >>> model = build_model(config, *load_data(config))
    >>> [type(m).__name__ for m in model], model[0].in_features, model[-1].out_features
    (['Linear', 'ReLU', 'Linear'], 8, 1)
    """
    m = config.model
    if m.factory:
        model = call_factory(m.factory, "model.factory", train, test)
        if not isinstance(model, nn.Module):
            raise InputError(
                f"model.factory: {m.factory} must return a torch.nn.Module; "
                f"got {type(model).__name__}"
            )
        return model
    d_out = outputs_for(train)
    if m.kind == "minilm":
        from fimo.text import minilm_classifier

        if train.inputs.dim() != 2 or train.inputs.is_floating_point():
            raise InputError(
                f"model.kind 'minilm' needs token ids (n, length) of an integer dtype; got "
                f"{tuple(train.inputs.shape)} {train.inputs.dtype}"
            )
        return minilm_classifier(classes=d_out, seed=m.seed)
    if m.kind == "mlp":
        d_in = int(torch.tensor(train.inputs.shape[1:]).prod())
        if train.inputs.dim() != 2:
            raise InputError(
                f"model.kind 'mlp' needs tabular inputs (n, d); got {tuple(train.inputs.shape)}"
            )
        return mlp(d_in, d_out, m.hidden, m.seed)
    import fimo.models as models

    builder = getattr(models, m.kind, None)
    if builder is None:
        raise InputError(f"model.kind: got {m.kind!r}; available: mlp, resnet_small, minilm")
    return builder(in_channels=int(train.inputs.shape[1]), classes=d_out, seed=m.seed)


def build_task(config, train: ArrayDataset, test: ArrayDataset) -> Task:
    """The Task the configuration describes (untrained model).

    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"data": {"dataset": "concrete", "n_train": 10},
    ...                     "model": {"hidden": [4]}})
    >>> task = build_task(config, *load_data(config))
    >>> task.num_params, task.loss_name  # 8·4 + 4 + 4·1 + 1 parameters
    (41, 'mse')
    """
    model = build_model(config, train, test)
    trainable = list(config.model.trainable) or None
    return Task(model, train, test, loss=loss_for(train), trainable=trainable, name=config.name)


def final_training_task(config, task: Task, cached=None) -> Task:
    """The task final training works on: ``task`` itself, or the same model and data with
    ``training.trainable`` as its parameters when that is set (e.g. more layers fine-tuned in
    final training than further training updates).

    When final training leaves the whole of ``task``'s frozen trunk alone (its trainable
    parameters all lie after it, :meth:`Task.trunk_length`), the returned task is built on
    ``task``'s cached trunk (``cached(task)``, by default :meth:`Task.with_cached_trunk`), so
    that one trunk pass serves final training, further training and the methods.

    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"data": {"dataset": "concrete", "n_train": 10},
    ...                     "model": {"hidden": [4], "trainable": ["2.*"]},
    ...                     "training": {"trainable": ["0.bias", "2.*"]}})
    >>> task = build_task(config, *load_data(config))
    >>> task.trainable, final_training_task(config, task).trainable
    (('2.weight', '2.bias'), ('0.bias', '2.weight', '2.bias'))
    """
    cached = cached or Task.with_cached_trunk
    if not config.training.trainable:
        return task
    full = task.rebuilt(trainable=list(config.training.trainable))
    if task.trunk_length() == 0 or full.trunk_length() < task.trunk_length():
        return full  # final training changes the trunk further training keeps frozen
    return cached(task).rebuilt(trainable=full.trainable)


def further_task(config, task: Task) -> Task:
    """The task further training and the methods work on, from the final model's ``task``:
    ``task`` itself, or, when ``further.lora`` is set, a task whose θ is LoRA adapters on
    the named Linear layers (:func:`fimo.lora.with_lora`; the final model is left as it is).

    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"data": {"dataset": "concrete", "n_train": 10},
    ...                     "model": {"hidden": [4]},
    ...                     "further": {"lora": {"rank": 2, "targets": ["2"]}}})
    >>> task = build_task(config, *load_data(config))
    >>> further_task(config, task).trainable  # layer 2: Linear(4, 1)
    ('2.lora_A.weight', '2.lora_B.weight')
    """
    lora = config.gold.lora
    if not lora:
        return task
    return with_lora(
        task, lora["rank"], lora["targets"], alpha=lora.get("alpha"), seed=lora.get("seed", 0)
    )
