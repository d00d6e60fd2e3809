"""Channel importance criteria, by name. Each maps (graph, groups) to one score per channel per group
(higher = more important)."""

from __future__ import annotations

from typing import Callable

import torch

from ..graph import DependencyGraph, Group
from .magnitude import l1, l2

__all__ = ["METHODS", "scores"]

METHODS: dict[str, Callable[[DependencyGraph, list[Group]], list[torch.Tensor]]] = {"l1": l1, "l2": l2}


def scores(method: str, graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(sorted(METHODS))}")
    return METHODS[method](graph, groups)
