"""L1 / L2 magnitude of each channel, summed over every tensor of its group (producers and consumers)."""

from __future__ import annotations

import torch

from ..graph import DependencyGraph, Group


def _norms(graph: DependencyGraph, groups: list[Group], p: int) -> list[torch.Tensor]:
    tensors = dict(graph.model.named_parameters())
    per_dim: dict[tuple[str, int], torch.Tensor] = {}  # |t|^p summed over every dim but one, computed once

    def along(name: str, dim: int) -> torch.Tensor:
        if (name, dim) not in per_dim:
            t = tensors[name].detach()
            other = [d for d in range(t.dim()) if d != dim]
            norm = torch.linalg.vector_norm(t, ord=p, dim=other) if other else t.abs()
            per_dim[(name, dim)] = norm.float().pow(p)
        return per_dim[(name, dim)]

    out = []
    with torch.no_grad():
        for g in groups:
            total = torch.zeros(g.channels, device=next(iter(tensors.values())).device)
            for m in g.members:
                t = tensors.get(m.name)
                if t is None or not t.is_floating_point():  # buffers (running statistics) carry no importance
                    continue
                total += along(m.name, m.dim).narrow(0, m.offset, g.channels * m.block).view(g.channels, m.block).sum(1)
            out.append((total if p == 1 else total.sqrt()).cpu())
    return out


def l1(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Sum of |w| over each channel's slice of every parameter in the group."""
    return _norms(graph, groups, 1)


def l2(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Euclidean norm of each channel's slices of every parameter in the group."""
    return _norms(graph, groups, 2)
