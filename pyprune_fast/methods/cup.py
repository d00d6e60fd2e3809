"""CUP, cluster pruning (Duggal et al., 2019): similar filters are redundant; cluster them, keep one each.

Features of channel i (the published `features='both'`): for every weight that produces the channel,
the L2 norm of each kernel slice W[i, c] (one per input channel c); for every weight that consumes it,
the L2 norm of W_next[o, i] (one per output o; a flatten into a Linear gives the norm over the
channel's block of columns). Residual groups lay the features of all their producers and consumers
side by side. No bias, no normalisation: the threshold is in absolute units.

Ward clustering of the feature rows, all groups in one batched call (distances in float32: merge
heights match scipy's float64 ones to float32 rounding, so only near-ties could cut differently). The
features are never laid side by side in memory: each weight's norms are one column block, and the
distances sum the blocks' Gram matrices (see ops.pairwise_distance). The tree is cut at one global
height `threshold` (scipy's fcluster "distance"), or into the number of clusters a ratio or MACs
target asks for ("maxclust"). In every cluster the channel whose feature row has the largest norm
stays; the others go (no merging).

A group read in d divisions (a grouped conv, a GroupNorm with several groups: Group.divisions) is
clustered by local position: the points are its n = channels / d local positions, each the features of
its d channels side by side; a cluster keeps one local position in every division, so divisions stay
equal and the same positions go from each (what a grouped conv's input needs; stricter than a GroupNorm
needs). Every merge of that tree gives up d channels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..allocation import Ladder, Limits
from ..cluster import flat_clusters, linkages, row_norms
from ..plan import Plan
from .base import Criterion, check_finite, member_tensors

__all__ = ["CUP", "cup_features", "feature_blocks"]


def _pair_norms(t: Tensor, a: int, b: int) -> Tensor:
    """(t.shape[a], t.shape[b]), a < b: the float32 norm over every other dim (a conv's kernels for 0, 1)."""
    rest = [d for d in range(t.dim()) if d not in (a, b)]
    if all(t.shape[d] == 1 for d in rest):  # a Linear's or a 1x1 conv's weight: |w| (a norm over one is slow)
        return t.reshape(t.shape[a], t.shape[b]).abs().float()
    wide = {} if t.dtype == torch.float64 else {"dtype": torch.float32}  # float64 cannot narrow inside the norm
    if rest == list(range(2, t.dim())):  # the common case, as one fast row reduction
        return torch.linalg.vector_norm(t.flatten(2), dim=2, **wide).float()
    return torch.linalg.vector_norm(t, dim=rest, **wide).float()


def _slice_norms(t: Tensor, m, channels: int, cache: dict) -> Tensor:
    """(channels, other): the norm of each channel's slice per index of the tensor's other channel dim
    (dim 1 for a producer's rows, dim 0 for a consumer's columns), a transposed view for consumers.
    `cache` keeps each tensor's norms for its other members (a conv is one group's producer and
    another's consumer)."""
    other = 1 if m.dim == 0 else 0
    a, b = min(m.dim, other), max(m.dim, other)
    norms = cache.get((m.name, a, b))
    if norms is None:
        norms = cache[(m.name, a, b)] = _pair_norms(t, a, b)
    at = 0 if m.dim == a else 1
    n = channels // m.divisions  # positions along the dim: fewer for a per-group local index (see Member)
    s = norms.narrow(at, m.offset, n * m.block)
    if m.block > 1:  # a channel spans `block` indices (a flatten into a Linear, a head)
        s = torch.linalg.vector_norm(s.unflatten(at, (n, m.block)), dim=at + 1)
    s = s if at == 0 else s.T
    if m.divisions > 1:  # channel j * n + a: column a of division j's rows
        s = s.reshape(n, m.divisions, -1).transpose(0, 1).reshape(channels, -1)
    return s


def feature_blocks(tensors: dict[str, Tensor], group, cache: Optional[dict] = None) -> tuple[Tensor, ...]:
    """The group's CUP features as column blocks, one per weight (see ops.pairwise_distance): incoming
    kernel-slice norms of its producers, outgoing norms of its consumers."""
    members = member_tensors(tensors, group, "producer", min_ndim=2) + member_tensors(tensors, group, "consumer", min_ndim=2)
    cache = {} if cache is None else cache
    return tuple(_slice_norms(t, m, group.channels, cache) for m, t in members)


def cup_features(tensors: dict[str, Tensor], group) -> Tensor:
    """(channels, features): incoming kernel-slice norms and outgoing norms, over the group's weights."""
    return torch.cat(feature_blocks(tensors, group), 1)


class CUP(Criterion):
    name = "cup"
    allocations = ("ratio", "global_ratio", "target_flops", "threshold")

    def __init__(self, graph, groups, limits=Limits(), seed=0):
        super().__init__(graph, groups, limits, seed)
        self.features, self.norms = self._timed("scores", self._features)
        # the features are checked (through their norms): the trees without cluster.linkage's second pass
        self.trees = self._timed("clustering", linkages, self.features, torch.float32)
        # a height for every channel given up: each merge of a divided group's tree gives up `divisions`
        self.heights = [z[:, 2].repeat_interleave(g.divisions).contiguous() for g, z in zip(groups, self.trees)]

    def _features(self) -> tuple[list[tuple[Tensor, ...]], list[Tensor]]:
        """Every group's feature blocks (each weight's kernel norms computed once) and row norms, by local
        position for a divided group (see the module's docstring)."""
        cache: dict = {}
        features = [tuple(b.reshape(g.divisions, g.channels // g.divisions, -1).transpose(0, 1).flatten(1)
                          for b in feature_blocks(self.tensors, g, cache)) for g in self.groups]
        norms = [row_norms(f) for f in features]
        for g, n in zip(self.groups, norms):
            check_finite(self.tensors, g, n)
        return features, norms

    def at_threshold(self, threshold: float) -> Tensor:
        """Widths when every tree is cut at `threshold`: one channel per cluster."""
        merged = torch.tensor([int(torch.searchsorted(h, float(threshold), right=True)) for h in self.heights])
        return self.limits(self.channels - merged, self.channels)

    def ladder(self) -> Ladder:
        cuts = torch.cat([torch.tensor([-1.0], dtype=torch.float64)] + self.heights).unique()  # sorted
        return Ladder(cuts.numel(), lambda i: self.at_threshold(float(cuts[i])), lambda i: max(float(cuts[i]), 0.0), "threshold")

    def decide(self, plan: Plan, widths: Tensor) -> None:
        for g, z, norms, w in zip(self.groups, self.trees, self.norms, widths.tolist()):
            if w >= g.channels:
                continue
            n, k = norms.numel(), w // g.divisions  # local positions, clusters of them
            labels = flat_clusters(z, n_clusters=k, n=n)
            by_norm = torch.argsort(norms, descending=True, stable=True)
            first = torch.full((k,), n, dtype=torch.long).scatter_reduce(
                0, labels[by_norm], torch.arange(n), "amin")  # each cluster's largest-norm position
            plan.keep(g, (torch.arange(g.divisions)[:, None] * n + by_norm[first]).flatten())
