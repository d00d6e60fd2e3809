"""ASCP, soft cluster pruning with channel addition (Niu et al., 2022), one shot.

1. k-means of each group's filters into as many clusters as channels are kept, BatchNorm-aware: a
   conv (or Linear) followed by a BatchNorm is clustered on its folded weights, row * gamma / sigma and
   (bias - mean) * gamma / sigma + beta, so that two filters that compute the same normalised output
   count as equal. All groups go to `cluster.kmeans` in one call.
2. Reconstruction: every channel of a cluster is set to compute the cluster's centre. Each channel
   takes the BatchNorm statistics and scale of the cluster's representative (the channel nearest the
   centre) and weights chosen so the folded layer equals the centre; every producing tensor of the
   cluster's channels is then identical, so their activations are too.
3. Channel addition (`Plan.merge`): the representative stays, and each consuming layer's input slices
   of the cluster are summed into it (`ops.merge_channels_`): exact, since the removed channels carried
   the same activations.

Groups whose channels pass through a norm that mixes channels (LayerNorm, GroupNorm) cannot be merged
exactly; there the representative stays and the other channels are removed. Groups read in divisions
(a grouped conv, a GroupNorm with several groups: Group.divisions) stay whole, as locked ones: k-means
clusters would cross the divisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..allocation import Ladder, Limits, fraction_ladder
from ..cluster import kmeans
from ..graph import Group, Member
from ..graph import NORM_PARAMS, batchnorm_after, child, module_of
from ..plan import Plan
from .base import Criterion, channel_view, check_finite, member_tensors

__all__ = ["ASCP"]


@dataclass(frozen=True)
class _Unit:
    """A producing tensor of the group (rows = channels), with the bias and BatchNorm that follow it."""

    weight: Member
    bias: Optional[Member] = None
    bn: Optional[dict[str, Member]] = None  # running_mean, running_var, weight, bias
    eps: float = 0.0

    def members(self) -> list[Member]:
        return [self.weight] + ([self.bias] if self.bias else []) + (list(self.bn.values()) if self.bn else [])


def _batchnorm_after(graph) -> dict[str, tuple[dict[str, str], float]]:
    """weight name of a conv/Linear -> the BatchNorm that alone reads its output: its tensor names, eps."""
    out = {}
    for weight, node in batchnorm_after(graph.trace).items():
        names = {key: getattr(node.arg(i, key), "param", None) for i, key in NORM_PARAMS}
        if all(names.values()):
            out[weight] = (names, float(node.arg(7, "eps", 1e-5)))
    return out


class ASCP(Criterion):
    name = "ascp"
    allocations = ("ratio", "target_flops")
    options = {"niter": 25}
    divides = False

    def __init__(self, graph, groups, limits=Limits(), seed=0, niter: int = 25):
        super().__init__(graph, groups, limits, seed)
        if not isinstance(niter, int) or niter < 0:
            raise ValueError(f"prune: niter must be a non-negative int, got {niter!r}")
        self.niter = niter
        bn_after = _batchnorm_after(graph)
        self.units = [self._units(g, bn_after) for g in groups]
        self.features = self._timed("scores", lambda: [self._folded(g, u) for g, u in zip(groups, self.units)])
        for g, f in zip(groups, self.features):
            check_finite(self.tensors, g, f)

    def _units(self, group: Group, bn_after) -> list[_Unit]:
        """The group's producing tensors as units; per-channel tensors in no conv's unit are units of their own."""
        producers = [m for m, _ in member_tensors(self.tensors, group, "producer", params_only=False)]
        by_name = {m.name: m for m in producers if m.dim == 0 and m.block == 1 and m.offset == 0}
        units, used = [], set()
        for m in producers:
            if m.name not in by_name or self.tensors[m.name].dim() < 2:
                continue
            bias = by_name.get(child(module_of(m.name), "bias"))
            bn, eps = bn_after.get(m.name, (None, 0.0))
            bn = {k: by_name[n] for k, n in bn.items()} if bn and all(n in by_name for n in bn.values()) else None
            units.append(_Unit(m, bias, bn, eps))
            used.update(units[-1].members())
        return units + [_Unit(m) for m in producers if m not in used]

    def _rows(self, m: Member, channels: int) -> Tensor:
        return channel_view(self.tensors[m.name].detach(), m, channels).reshape(channels, -1).double()

    def _folded(self, group: Group, units: list[_Unit]) -> Tensor:
        """(channels, features): every unit's rows with its BatchNorm folded in, then its folded bias."""
        c, parts = group.channels, []
        for u in units:
            w = self._rows(u.weight, c)
            b = self._rows(u.bias, c)[:, 0] if u.bias else torch.zeros(c, dtype=torch.float64)
            if u.bn:
                bn = {k: self._rows(m, c)[:, 0] for k, m in u.bn.items()}
                scale = bn["weight"] / (bn["running_var"] + u.eps).sqrt()
                w, b = w * scale[:, None], (b - bn["running_mean"]) * scale + bn["bias"]
            parts += [w, b[:, None]] if (u.bias or u.bn) else [w]
        return torch.cat(parts, 1)

    def ladder(self) -> Ladder:
        return fraction_ladder(self.channels, self.limits)

    def decide(self, plan: Plan, widths: Tensor) -> None:
        ks = widths.tolist()
        todo = [i for i, (g, k) in enumerate(zip(self.groups, ks)) if k < g.channels]
        results = self._timed("clustering", kmeans, [self.features[i].float() for i in todo],
                              [ks[i] for i in todo], self.niter, "k-means++", self.seed) if todo else []
        written: dict[str, Tensor] = {}
        for i, res in zip(todo, results):
            g, f, k = self.groups[i], self.features[i], ks[i]
            labels = res.labels.cpu()
            members = torch.zeros(k, g.channels, dtype=f.dtype).scatter_(0, labels[None], 1.0)  # one-hot, (k, N)
            centres = (members @ f) / members.sum(1, keepdim=True).clamp_min(1)  # every cluster's mean
            order = torch.argsort((f - centres[labels]).norm(dim=1), stable=True)  # nearest its centre first
            first = torch.full((k,), g.channels, dtype=torch.long).scatter_reduce(
                0, labels[order], torch.arange(g.channels), "amin")  # each cluster's first place in that order
            rep = order[first]
            self._reconstruct(g, self.units[i], labels, rep, centres, written)
            if g.merges_exactly:  # no op mixes or counts these channels
                plan.merge(g, labels, rep)
            else:
                plan.keep(g, rep)
        for name, value in written.items():
            plan.write(name, value)

    def _reconstruct(self, group: Group, units: list[_Unit], labels: Tensor, rep: Tensor, centres: Tensor,
                     written: dict[str, Tensor]) -> None:
        """New tensor values (into `written`, by name) with which every channel computes its cluster's centre."""
        c = group.channels

        def put(m: Member, per_cluster: Tensor) -> None:  # (clusters, slice size), float64
            t = written.get(m.name)
            if t is None:
                t = written[m.name] = self.tensors[m.name].detach().clone()
            s = channel_view(t, m, c)
            s.copy_(per_cluster[labels].reshape(s.shape).to(t.dtype))

        col = 0
        for u in units:
            t = self.tensors[u.weight.name]
            width = t.numel() // t.shape[u.weight.dim] * u.weight.block
            wc, col = centres[:, col:col + width], col + width
            bc = None
            if u.bias or u.bn:
                bc, col = centres[:, col], col + 1
            if not u.bn:
                put(u.weight, wc)
                if u.bias:
                    put(u.bias, bc[:, None])
                continue
            # The representative's BatchNorm, weights scaled so that the folded unit equals the centre.
            bn = {k: self._rows(m, c)[rep, 0] for k, m in u.bn.items()}
            gamma = torch.where(bn["weight"].abs() > 1e-12, bn["weight"], torch.ones_like(bn["weight"]))
            sigma = (bn["running_var"] + u.eps).sqrt()
            bias = self._rows(u.bias, c)[rep, 0] if u.bias else torch.zeros_like(gamma)
            put(u.weight, wc * (sigma / gamma)[:, None])
            if u.bias:
                put(u.bias, bias[:, None])
            bn["weight"], bn["bias"] = gamma, bc - gamma * (bias - bn["running_mean"]) / sigma
            for key, m in u.bn.items():
                put(m, bn[key][:, None])
