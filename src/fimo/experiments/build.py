"""From a configuration to a Task: datasets, model, loss, trainable parameters.

Built-in datasets and models are looked up by name; a user's own come in as a Python factory
named ``package.module:function`` (code you trust: it is imported and called):

- ``data.factory``: ``fn() -> (train, test)``, two :class:`fimo.ArrayDataset`;
- ``model.factory``: ``fn(train, test) -> torch.nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

import fimo.data
from fimo.data import ArrayDataset
from fimo.errors import InputError, closest
from fimo.models import mlp
from fimo.task import Task


def resolve_callable(spec: str, setting: str) -> Callable:
    """Import ``package.module:function``."""
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


def datasets() -> dict[str, Callable]:
    """Built-in datasets by name."""
    return dict(getattr(fimo.data, "DATASETS", {"adult": fimo.data.load_adult}))


def load_data(config) -> tuple[ArrayDataset, ArrayDataset]:
    """The configuration's (train, test) datasets."""
    if config.data.factory:
        result = resolve_callable(config.data.factory, "data.factory")()
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
    return available[name]()


def loss_for(train: ArrayDataset) -> str:
    """Squared error for floating targets, cross-entropy for class indices."""
    return "mse" if train.targets.is_floating_point() else "cross_entropy"


def outputs_for(train: ArrayDataset) -> int:
    if train.targets.is_floating_point():
        return 1 if train.targets.dim() == 1 else int(train.targets.shape[1])
    return int(train.targets.max()) + 1


def build_model(config, train: ArrayDataset, test: ArrayDataset) -> nn.Module:
    """The configuration's model, freshly initialised from ``model.seed``."""
    m = config.model
    if m.factory:
        model = resolve_callable(m.factory, "model.factory")(train, test)
        if not isinstance(model, nn.Module):
            raise InputError(
                f"model.factory: {m.factory} must return a torch.nn.Module; "
                f"got {type(model).__name__}"
            )
        return model
    d_out = outputs_for(train)
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
        raise InputError(f"model.kind: got {m.kind!r}; available: mlp, resnet_small")
    return builder(in_channels=int(train.inputs.shape[1]), classes=d_out, seed=m.seed)


def build_task(config, train: ArrayDataset, test: ArrayDataset) -> Task:
    """The Task the configuration describes (untrained model)."""
    model = build_model(config, train, test)
    trainable = list(config.model.trainable) or None
    return Task(model, train, test, loss=loss_for(train), trainable=trainable, name=config.name)
