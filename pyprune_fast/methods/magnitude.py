"""L1 / L2 magnitude of each channel, summed over every tensor of its group (producers and consumers)."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..graph import DependencyGraph, Group, named_tensors


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
            # sum over every dim after the last needed one in one pass; the rest is small
            last = max(dims)
            after = math.prod(t.shape[last + 1:])
            small = (a.view(-1, after) @ torch.ones(after, device=device)).view(t.shape[: last + 1]) if after > 1 else a
            if small.dim() == 2:  # rows and columns of (dim0, dim1) sums: matrix-vector products
                sums = {0: small @ torch.ones(small.shape[1], device=device),
                        1: torch.ones(small.shape[0], device=device) @ small}
            else:
                sums = {d: small.sum([i for i in range(small.dim()) if i != d]) if small.dim() > 1 else small for d in dims}
            for d in dims:
                along[(name, d)] = sums[d].to("cpu", copy=True)  # may view buf
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
