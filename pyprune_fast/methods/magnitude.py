"""L1 / L2 magnitude of each channel, summed over every tensor of its group (producers and consumers)."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..graph import DependencyGraph, Group, named_tensors
from .base import Scored


def _norms(graph: DependencyGraph, groups: list[Group], p: int) -> list[torch.Tensor]:
    params = {n: t for n, t in named_tensors(graph.model).items() if isinstance(t, torch.nn.Parameter) and t.is_floating_point()}
    needed: dict[str, set[int]] = defaultdict(set)
    for g in groups:
        for m in g.members:
            if m.name in params:  # buffers (running statistics) carry no importance
                needed[m.name].add(m.dim)
    along: dict[tuple[str, int], torch.Tensor] = {}
    with torch.no_grad():
        # |t|^p goes into one reused float32 buffer (fresh large tensors cost page faults), and the
        # sums along each needed dim are matrix-vector products.
        device = next(iter(params.values())).device if params else torch.device("cpu")
        buf = torch.empty(max((params[n].numel() for n in needed), default=0), device=device)
        for name, dims in needed.items():
            t = params[name].detach()
            a = buf[: t.numel()].view(t.shape)
            if t.dtype == torch.float32 and p == 1:
                torch.abs(t, out=a)
            else:
                a.copy_(t)
                a.abs_() if p == 1 else a.mul_(a)
            for d in dims:  # one long matrix-vector product per dim, over the (before, size * after) view
                before, size, after = math.prod(t.shape[:d]), t.shape[d], math.prod(t.shape[d + 1:])
                if before == 1:
                    v = a.view(size, after) @ torch.ones(after, device=device)
                else:
                    v = (torch.ones(before, device=device) @ a.view(before, size * after)).view(size, after).sum(1)
                along[(name, d)] = v.to("cpu", copy=True)
    out = []
    for g in groups:
        total = torch.zeros(g.channels, dtype=torch.float32)
        for m in g.members:
            if m.name in params:
                total += along[(m.name, m.dim)].narrow(0, m.offset, g.channels * m.block).view(g.channels, m.block).sum(1)
        out.append(total if p == 1 else total.sqrt())
    return out


def l1(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Sum of |w| over each channel's slice of every parameter in the group."""
    return _norms(graph, groups, 1)


def l2(graph: DependencyGraph, groups: list[Group]) -> list[torch.Tensor]:
    """Euclidean norm of each channel's slices of every parameter in the group."""
    return _norms(graph, groups, 2)


class L1(Scored):
    """Filter norm (Li et al., "Pruning filters for efficient convnets"): sum of |w| over every
    parameter slice of the channel, producers and consumers of the group alike."""

    name = "l1"

    def score(self) -> list[torch.Tensor]:
        return l1(self.graph, self.groups)


class L2(Scored):
    """Euclidean norm over every parameter slice of the channel."""

    name = "l2"

    def score(self) -> list[torch.Tensor]:
        return l2(self.graph, self.groups)
