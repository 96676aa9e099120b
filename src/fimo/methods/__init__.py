"""Attribution methods. Each returns `Scores` (n_test, n_train), positive = helpful.

Every method has the same signature::

    method(task, test, train, *, progress=None, **settings) -> Scores

``test`` and ``train`` are dataset indices; ``progress(k)`` is called as work is done;
``settings`` are keyword arguments with defaults, which are also the keys of the method's
table in a configuration (``[methods.lissa] depth = 5000``). The resolved settings (damping
actually used, iterations, convergence) are recorded in ``Scores.settings``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from fimo.errors import InputError, closest

#: Every name the contract reserves (DESIGN.md ◆ Method names), and where each lives.
REGISTRY = {
    "grad_dot": "fimo.methods.first_order:grad_dot",
    "grad_cos": "fimo.methods.first_order:grad_cos",
    "explicit": "fimo.methods.influence:explicit",
    "cg": "fimo.methods.influence:cg",
    "lissa": "fimo.methods.influence:lissa",
    "lissa_hessian": "fimo.methods.influence:lissa_hessian",
    "arnoldi": "fimo.methods.influence:arnoldi",
    "generalized": "fimo.methods.influence:generalized",
    "ekfac": "fimo.methods.ekfac:ekfac",
    "datainf": "fimo.methods.datainf:datainf",
    "trak": "fimo.methods.trak:trak",
    "unrolled": "fimo.methods.unrolled:unrolled",
    "unrolled_quadratic": "fimo.methods.unrolled_quadratic:unrolled_quadratic",
}
ALL_METHOD_NAMES = tuple(REGISTRY)


def get_method(name: str) -> Callable:
    """The method function registered under ``name``.

    >>> get_method("grad_dot").__module__
    'fimo.methods.first_order'
    """
    if name not in REGISTRY:
        raise InputError(
            f"method {name!r} is unknown{closest(name, REGISTRY)}; allowed: {', '.join(REGISTRY)}"
        )
    module, attr = REGISTRY[name].split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(
            f"method {name!r} is not available in this version of fimo; "
            f"available: {', '.join(available_methods())}"
        ) from exc


def available_methods() -> list[str]:
    """The registered methods that this installation implements.

    >>> available_methods()[:3]
    ['grad_dot', 'grad_cos', 'explicit']
    """
    out = []
    for name, target in REGISTRY.items():
        module, attr = target.split(":")
        try:
            if hasattr(importlib.import_module(module), attr):
                out.append(name)
        except ImportError:
            pass
    return out


def method_defaults(name: str) -> dict:
    """The settings a method accepts, with their defaults.

    >>> method_defaults("grad_dot")
    {'chunk_size': None, 'proj_dim': None, 'projection': 'rademacher', 'proj_seed': 0, 'ghost': 'auto'}
    """
    params = inspect.signature(get_method(name)).parameters
    return {
        k: p.default
        for k, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "progress"
    }


def __getattr__(name: str):
    if name == "METHODS":  # a live view: name -> function, for what is implemented
        return {n: get_method(n) for n in available_methods()}
    if name in REGISTRY:
        return get_method(name)
    raise AttributeError(name)


__all__ = ["ALL_METHOD_NAMES", "REGISTRY", "available_methods", "get_method", "method_defaults"]
