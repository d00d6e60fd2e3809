"""Questions about a group's channels, asked by criteria and schedules: which tensor positions hold a
channel, whether removing channels that are exactly zero ("dead") leaves outputs unchanged, and how to
make channels dead (zero what produces them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .tensors import named_tensors

if TYPE_CHECKING:
    from .dependency import DependencyGraph, Group

__all__ = ["dead_channels_are_exact", "kill_channels", "positions"]


def positions(channels: torch.Tensor, offset: int, block: int) -> torch.Tensor:
    """Positions along a member's dim that hold the given channels (see graph.Member); `channels` itself
    when they are the positions (so that the tensors of one group share one index tensor)."""
    if block == 1:
        return channels + offset if offset else channels
    return (channels[:, None] * block + torch.arange(block) + offset).reshape(-1)


def dead_channels_are_exact(graph: DependencyGraph, group: Group) -> bool:
    """Whether removing channels of `group` whose output is exactly zero must leave outputs unchanged:
    true unless an op mixes them (a mean, softmax or norm across channels) or reads them where they are no
    longer zero (after a sigmoid, say); `group.inexact` says which."""
    return group.inexact is None


@torch.no_grad()
def kill_channels(graph: DependencyGraph, group: Group, channels: torch.Tensor) -> None:
    """Zero every producing parameter and buffer of `channels` of `group` (weights, biases, norm scales and
    shifts, running statistics; frozen norms keep their scale and shift in buffers), so that those channels
    carry exact zeros through the network."""
    tensors = named_tensors(graph.model)
    for m in group.members:
        if m.role != "producer" or m.name not in tensors or not tensors[m.name].is_floating_point():
            continue
        t = tensors[m.name]
        t.index_fill_(m.dim, positions(channels, m.offset, m.block).to(t.device), 0.0)
