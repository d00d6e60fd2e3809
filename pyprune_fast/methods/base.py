"""What every pruning criterion shares: the groups it decides for, how widths are allocated, and
views of each channel's slice of the group's tensors."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..allocation import Ladder, Limits, ranking_ladder, uniform_widths
from ..graph import DependencyGraph, Group, Member, module_of, named_tensors
from ..plan import Plan

__all__ = ["Criterion", "Scored", "channel_view", "lowest", "member_tensors", "producer_rows", "check_finite",
           "check_producers_finite"]


def channel_view(t: Tensor, m: Member, channels: int) -> Tensor:
    """(channels, block, *other dims of t): each channel's slice of the member's tensor. For a per-group
    local index (m.divisions > 1: a grouped conv's input columns) dim 0 is cut to the channel's division's
    rows, and the result is a copy."""
    if m.divisions == 1:
        s = t.narrow(m.dim, m.offset, channels * m.block).movedim(m.dim, 0)
        return s.reshape(channels, m.block, *s.shape[1:])
    n = channels // m.divisions  # channel j * n + a: local position a, rows of division j
    s = t.narrow(m.dim, m.offset, n * m.block).movedim(m.dim, 0)  # (n * block, rows, ...)
    s = s.reshape(n, m.block, m.divisions, s.shape[1] // m.divisions, *s.shape[2:]).movedim(2, 0)
    return s.reshape(channels, m.block, *s.shape[3:])


def member_tensors(tensors: dict[str, Tensor], group: Group, role: str, min_ndim: int = 1,
                   params_only: bool = True) -> list[tuple[Member, Tensor]]:
    """The group's members of `role` ("producer"/"consumer") with their floating tensors (detached),
    from `tensors` (the model's, by name); buffers only when not params_only."""
    out = []
    for m in group.members:
        t = tensors.get(m.name)
        if m.role == role and t is not None and t.dim() >= min_ndim and t.is_floating_point() \
                and (isinstance(t, torch.nn.Parameter) or not params_only):
            out.append((m, t.detach()))
    return out


def producer_rows(tensors: dict[str, Tensor], group: Group) -> Tensor:
    """(channels, features): every producing weight's slice of each channel (conv filters), flattened
    and laid side by side over the group's producers (float32)."""
    # without a weight, the per-channel parameters (norm scales) are all there is
    members = member_tensors(tensors, group, "producer", min_ndim=2) or member_tensors(tensors, group, "producer")
    return torch.cat([channel_view(t, m, group.channels).reshape(group.channels, -1).float() for m, t in members], 1)


def check_finite(tensors: dict[str, Tensor], group: Group, values: Tensor) -> None:
    """ValueError naming the layer when `values` computed from the group's tensors are not finite."""
    if bool(torch.isfinite(values.sum())):  # NaN and Inf survive a sum; one reduction, no mask
        return
    for m, t in member_tensors(tensors, group, "producer", params_only=False) + member_tensors(tensors, group, "consumer"):
        if not bool(torch.isfinite(channel_view(t, m, group.channels)).all()):
            raise ValueError(f"prune: {module_of(m.name) or m.name} has NaN or Inf values in {m.name}")
    raise ValueError(f"prune: scores of group {group.index} ({group.origin}) are not finite")


def check_producers_finite(tensors: dict[str, Tensor], group: Group) -> None:
    """check_finite for a criterion whose scores do not read (all of) the group's producing tensors."""
    members = member_tensors(tensors, group, "producer", params_only=False)
    check_finite(tensors, group, torch.stack([t.sum() for _, t in members]) if members else torch.zeros(()))


class Criterion:
    """A pruning criterion prepared for the prunable groups of one graph.

    Subclasses compute what they need in __init__ (recording seconds in `timings`), then offer widths
    (`uniform`, `ladder`) and fill a Plan for chosen widths (`decide`).
    """

    name: ClassVar[str] = ""
    allocations: ClassVar[tuple[str, ...]] = ("ratio", "global_ratio", "target_flops")
    options: ClassVar[dict[str, Any]] = {}  # method-specific options with their defaults
    # whether decide chooses within a group's divisions (Group.divisions); a criterion that cannot keeps such
    # groups whole (its limits' step is their size), as it would locked ones
    divides: ClassVar[bool] = True

    def __init__(self, graph: DependencyGraph, groups: list[Group], limits: Limits = Limits(), seed: int = 0):
        self.graph, self.groups, self.seed = graph, groups, seed
        steps = tuple(g.divisions if self.divides or g.divisions == 1 else g.channels for g in groups)
        self.limits = replace(limits, steps=steps)
        self.channels = torch.tensor([g.channels for g in groups], dtype=torch.long)
        self.tensors = named_tensors(graph.model)
        self.timings: dict[str, float] = {}

    def _timed(self, what: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[what] = self.timings.get(what, 0.0) + time.perf_counter() - t0
        return out

    def uniform(self, ratio: float) -> Tensor:
        return self.limits(uniform_widths(self.channels, ratio), self.channels)

    def ladder(self) -> Ladder:
        raise NotImplementedError

    def decide(self, plan: Plan, widths: Tensor) -> None:
        """Put every group's change into `plan`, and (a method that reconstructs weights) the new values of
        the tensors to write first (`plan.write`)."""
        raise NotImplementedError


class Scored(Criterion):
    """A criterion that scores every channel (higher = more important): the lowest-scoring go."""

    def __init__(self, graph, groups, limits=Limits(), seed=0):
        super().__init__(graph, groups, limits, seed)
        self.scores = self._timed("scores", self.score)
        for g, s in zip(groups, self.scores):
            check_finite(self.tensors, g, s)

    def score(self) -> list[Tensor]:
        raise NotImplementedError

    def ladder(self) -> Ladder:
        return ranking_ladder(self.scores, self.channels, self.limits)

    def decide(self, plan: Plan, widths: Tensor) -> None:
        for g, s, w in zip(self.groups, self.scores, widths.tolist()):
            if w < g.channels:
                plan.remove(g, lowest(g, s, g.channels - w))


def lowest(group: Group, scores: Tensor, count: int) -> Tensor:
    """The `count` lowest-scoring channels of `group`, within its divisions (Group.divisions): count / divisions
    from each, and for a uniform group the same local positions in each (scores summed over the divisions)."""
    d = group.divisions
    if count % d:
        raise ValueError(f"prune: group {group.index} ({group.origin}) is read in {d} equal divisions; "
                         f"{count} channels to remove is not a multiple of {d}")
    if d == 1:
        return torch.argsort(scores, stable=True)[:count]
    per = scores.reshape(d, -1)
    starts = torch.arange(d, device=scores.device)[:, None] * per.shape[1]
    if group.uniform:
        local = torch.argsort(per.sum(0), stable=True)[: count // d]
        return (starts + local[None]).reshape(-1)
    return (starts + torch.argsort(per, dim=1, stable=True)[:, : count // d]).reshape(-1)

