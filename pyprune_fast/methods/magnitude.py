"""L1 / L2 magnitude of each channel, summed over every tensor of its group (producers and consumers)."""

from __future__ import annotations

import torch

from ..graph import DependencyGraph, Group


def _norms(graph: DependencyGraph, groups: list[Group], p: int) -> list[torch.Tensor]:
    tensors = dict(graph.model.named_parameters())
    out = []
    with torch.no_grad():
        for g in groups:
            total = None
            for m in g.members:
                t = tensors.get(m.name)
                if t is None or not t.is_floating_point():  # buffers (running stats) carry no importance
                    continue
                rows = t.narrow(m.dim, m.offset, g.channels * m.block).movedim(m.dim, 0).reshape(g.channels, -1)
                part = rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1)
                total = part.float() if total is None else total + part.float()
            total = total if total is not None else torch.zeros(g.channels)
            out.append((total if p == 1 else total.sqrt()).cpu())
    return out


def l1(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Sum of |w| over each channel's slice of every parameter in the group."""
    return _norms(graph, groups, 1)


def l2(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Euclidean norm of each channel's slices of every parameter in the group."""
    return _norms(graph, groups, 2)
