"""Pruning criteria, by name: `METHODS[name](graph, groups, limits, seed, **options)` is a Criterion
(see base.py) that allocates widths and fills a Plan."""

from __future__ import annotations

import torch

from ..graph import DependencyGraph, Group
from .ascp import ASCP
from .base import Criterion, Scored
from .bn_scale import BNScale
from .cup import CUP
from .fpgm import FPGM
from .kcp import KCP
from .magnitude import L1, L2
from .random import Random

__all__ = ["METHODS", "Criterion", "Scored", "scores"]

METHODS: dict[str, type[Criterion]] = {c.name: c for c in (L1, L2, Random, BNScale, FPGM, CUP, KCP, ASCP)}


def scores(method: str, graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """One score per channel of every group (higher = more important), for the scoring methods."""
    if method not in METHODS or not issubclass(METHODS[method], Scored):
        valid = ", ".join(n for n, c in METHODS.items() if issubclass(c, Scored))
        raise ValueError(f"unknown scoring method {method!r}; expected one of {valid}")
    return METHODS[method](graph, groups).scores
