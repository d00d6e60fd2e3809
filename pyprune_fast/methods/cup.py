"""CUP, cluster pruning (Duggal et al., 2019): similar filters are redundant; cluster them, keep one each.

Features of channel i (the published `features='both'`): for every weight that produces the channel,
the L2 norm of each kernel slice W[i, c] (one per input channel c); for every weight that consumes it,
the L2 norm of W_next[o, i] (one per output o; a flatten into a Linear gives the norm over the
channel's block of columns). Residual groups lay the features of all their producers and consumers
side by side. No bias, no normalisation: the threshold is in absolute units.

Ward clustering of the feature rows, all groups in one batched call (distances in float32: merge
heights match scipy's float64 ones to float32 rounding, so only near-ties could cut differently); the tree is cut at one global
height `threshold` (scipy's fcluster "distance"), or into the number of clusters a ratio or MACs
target asks for ("maxclust"). In every cluster the channel whose feature row has the largest norm
stays; the others go (no merging).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..allocation import Ladder, Limits
from ..cluster import flat_clusters
from ..cluster.ward import _linkages
from ..plan import Plan
from .base import Criterion, check_finite, member_tensors

__all__ = ["CUP", "cup_features"]


def _slice_norms(t: Tensor, m, channels: int) -> Tensor:
    """(channels, other): the norm of each channel's slice per index of the tensor's other channel dim
    (dim 1 for a producer's rows, dim 0 for a consumer's columns), reduced in place, without copies."""
    s = t.narrow(m.dim, m.offset, channels * m.block).unflatten(m.dim, (channels, m.block))
    other = 2 if m.dim == 0 else 0
    n = torch.linalg.vector_norm(s, dim=[d for d in range(s.dim()) if d not in (m.dim, other)], dtype=torch.float32)
    return n if m.dim < other else n.T


def cup_features(tensors: dict[str, Tensor], group) -> Tensor:
    """(channels, features): incoming kernel-slice norms and outgoing norms, over the group's weights."""
    members = member_tensors(tensors, group, "producer", min_ndim=2) + member_tensors(tensors, group, "consumer", min_ndim=2)
    return torch.cat([_slice_norms(t, m, group.channels) for m, t in members], 1)


class CUP(Criterion):
    name = "cup"
    allocations = ("ratio", "global_ratio", "target_flops", "threshold")

    def __init__(self, graph, groups, limits=Limits(), seed=0):
        super().__init__(graph, groups, limits, seed)
        self.features = self._timed("scores", lambda: [cup_features(self.tensors, g) for g in groups])
        for g, f in zip(groups, self.features):
            check_finite(self.tensors, g, f)
        # the features were just checked: the trees without cluster.linkage's second pass over them
        self.trees = self._timed("clustering", _linkages, self.features, torch.float32)
        self.heights = [z[:, 2].contiguous() for z in self.trees]

    def at_threshold(self, threshold: float) -> Tensor:
        """Widths when every tree is cut at `threshold`: one channel per cluster."""
        merged = torch.tensor([int(torch.searchsorted(h, float(threshold), right=True)) for h in self.heights])
        return self.limits(self.channels - merged, self.channels)

    def ladder(self) -> Ladder:
        cuts = torch.cat([torch.tensor([-1.0], dtype=torch.float64)] + self.heights).unique()  # sorted
        return Ladder(cuts.numel(), lambda i: self.at_threshold(float(cuts[i])), lambda i: max(float(cuts[i]), 0.0), "threshold")

    def decide(self, plan: Plan, widths: Tensor) -> dict[str, Tensor]:
        for g, z, f, w in zip(self.groups, self.trees, self.features, widths.tolist()):
            if w >= g.channels:
                continue
            labels = flat_clusters(z, n_clusters=w, n=g.channels)
            by_norm = torch.argsort(f.norm(dim=1), descending=True, stable=True)
            first = torch.full((w,), g.channels, dtype=torch.long).scatter_reduce(
                0, labels[by_norm], torch.arange(g.channels), "amin")  # each cluster's largest-norm channel
            plan.keep(g, by_norm[first])
        return {}
