"""Helpers for checking pruning on real models (used by the tests and benchmarks/coverage.py)."""

from __future__ import annotations

import torch
from torch import nn

from .graph import DependencyGraph, Group
from .surgery import positions

__all__ = ["kill_channels", "dead_channels_are_exact"]

# Norms that mix channels: removing even a dead channel changes what they compute.
_MIXING = (nn.LayerNorm, nn.GroupNorm)


def dead_channels_are_exact(graph: DependencyGraph, group: Group) -> bool:
    """Whether removing channels of `group` whose output is exactly zero must leave outputs unchanged:
    true unless a norm that mixes channels (LayerNorm, GroupNorm with several channels a group) sees them."""
    for name in group.modules:
        m = graph.model.get_submodule(name)
        if isinstance(m, _MIXING) and not (isinstance(m, nn.GroupNorm) and name in graph.per_channel_groupnorm):
            return False
    return True


@torch.no_grad()
def kill_channels(graph: DependencyGraph, group: Group, channels: torch.Tensor) -> None:
    """Zero every producing parameter of `channels` of `group` (weights, biases, norm scales and shifts),
    so that those channels carry exact zeros through the network."""
    params = dict(graph.model.named_parameters())
    for m in group.members:
        if m.role != "producer" or m.name not in params:
            continue
        t = params[m.name]
        t.index_fill_(m.dim, positions(channels, m.offset, m.block).to(t.device), 0.0)
