"""Models of the paper's experiments, in plain torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(d_in: int, d_out: int, hidden: Sequence[int] = (128, 128), seed: int = 0) -> nn.Sequential:
    """The paper's tabular model: Linear-ReLU blocks of widths ``hidden``, then Linear(d_out).

    Initial weights come from ``torch.manual_seed(seed)`` (as in the reference code), drawn
    inside a forked RNG so the caller's random state is untouched.

    >>> mlp(10, 2)(torch.zeros(4, 10)).shape
    torch.Size([4, 2])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = d_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, d_out))
        return nn.Sequential(*layers)
