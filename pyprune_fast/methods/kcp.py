"""KCP, kernel cluster pruning (Yu, Wu, Chen, 2021), as a one-shot channel criterion.

Reading used (PAPERS.md marks it "to verify"): in every layer that consumes the group's channels, the
kernels reading input channel c (the k x k slices W[:, c]) form a cluster; its centre is their mean
kernel, and the layer's centre the mean of all its kernels. The cluster whose centre lies closest
to the layer's centre represents least of what the layer computes and goes first: removing it is
structured, it removes the input channel c, that is the output channel c of the producing layer.
A channel's score is that distance, summed over the group's consuming layers (a residual group has
several); a group no layer consumes is scored on its own filters' kernels the same way.
"""

from __future__ import annotations

import torch

from .base import Scored, channel_view, member_tensors

__all__ = ["KCP"]


def _centre_distances(view: torch.Tensor) -> torch.Tensor:
    """view (C, block, other, *kernel): distance of each channel's mean kernel to the mean kernel of all."""
    c = view.shape[0]
    centres = view.reshape(c, view.shape[1] * view.shape[2], -1).double().mean(1)  # (C, kernel size)
    return (centres - centres.mean(0)).norm(dim=1)


class KCP(Scored):
    name = "kcp"

    def score(self) -> list[torch.Tensor]:
        out = []
        for g in self.groups:
            members = member_tensors(self.tensors, g, "consumer", min_ndim=2) or \
                member_tensors(self.tensors, g, "producer", min_ndim=2)
            total = torch.zeros(g.channels, dtype=torch.float64)
            for m, t in members:
                total += _centre_distances(channel_view(t, m, g.channels))
            out.append(total.float())
        return out
