"""`prune`: one-shot pruning of a model by a channel criterion, with a report of what happened."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn

from .flops import profile, profile_trace
from .graph import DependencyGraph
from .methods import scores
from .plan import Plan
from .surgery import apply

__all__ = ["PruneReport", "prune"]


@dataclass
class PruneReport:
    method: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    widths: list[tuple[str, int, int]] = field(default_factory=list)  # (group origin, before, after)
    groups: int = 0
    prunable_groups: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds

    def __str__(self) -> str:
        pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
        lines = [
            f"pyprune_fast.prune(method={self.method!r})",
            f"  MACs   {self.macs_before / 1e9:8.3f} G -> {self.macs_after / 1e9:8.3f} G  ({pct(self.macs_after, self.macs_before)} kept)",
            f"  params {self.params_before / 1e6:8.3f} M -> {self.params_after / 1e6:8.3f} M  ({pct(self.params_after, self.params_before)} kept)",
            f"  groups {self.groups}, prunable {self.prunable_groups}, pruned {sum(b != a for _, b, a in self.widths)}",
            "  time   " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timings.items()),
            "  widths (group: before -> after):",
        ]
        lines += [f"    {origin[:60]:<60} {b:>5} -> {a:<5}" for origin, b, a in self.widths]
        return "\n".join(lines)


def _check_fraction(name: str, value: Optional[float]) -> None:
    if value is not None and (not isinstance(value, (int, float)) or not 0 <= value < 1):
        raise ValueError(f"prune: {name} must be in [0, 1), got {value!r}")


def _uniform(groups, group_scores, ratio: float) -> dict[int, torch.Tensor]:
    removed = {}
    for g, s in zip(groups, group_scores):
        n = min(int(math.floor(ratio * g.channels)), g.channels - 1)
        removed[g.index] = torch.argsort(s, stable=True)[:n]
    return removed


def _global(groups, group_scores, ratio: float) -> dict[int, torch.Tensor]:
    """One ranking over all channels (scores divided by their group's mean), each group keeping one."""
    normalised = [s / s.mean().clamp_min(1e-12) for s in group_scores]
    flat = torch.cat(normalised)
    owner = torch.cat([torch.full((g.channels,), i) for i, g in enumerate(groups)])
    local = torch.cat([torch.arange(g.channels) for g in groups])
    budget = int(math.floor(ratio * flat.numel()))
    left = [g.channels for g in groups]
    chosen: dict[int, list[int]] = {g.index: [] for g in groups}
    for pos in torch.argsort(flat, stable=True).tolist():
        if budget == 0:
            break
        i = int(owner[pos])
        if left[i] > 1:
            left[i] -= 1
            chosen[groups[i].index].append(int(local[pos]))
            budget -= 1
    return {k: torch.tensor(v, dtype=torch.long) for k, v in chosen.items()}


def prune(model: nn.Module, example_inputs: Any, method: str = "l1", *, ratio: Optional[float] = None,
          global_ratio: Optional[float] = None, ignored_layers: Iterable[nn.Module] = (),
          optimizer: Optional[torch.optim.Optimizer] = None) -> PruneReport:
    """Prune `model` in place by `method` ("l1" or "l2") and return a PruneReport.

    ratio: remove this fraction of the channels of every prunable group. global_ratio: remove this
    fraction of all prunable channels, ranked together (each group keeps at least one). Exactly one
    of the two; both in [0, 1). The model's output dimension and `ignored_layers` are never pruned.
    """
    if (ratio is None) == (global_ratio is None):
        raise ValueError("prune: give exactly one of ratio= or global_ratio=")
    _check_fraction("ratio", ratio)
    _check_fraction("global_ratio", global_ratio)
    t0 = time.perf_counter()
    graph = DependencyGraph(model, example_inputs, ignored_layers)
    before = profile_trace(graph.trace, model)
    t1 = time.perf_counter()
    groups = graph.prunable_groups
    group_scores = scores(method, graph, groups)
    removed = _uniform(groups, group_scores, ratio) if ratio is not None else _global(groups, group_scores, global_ratio)
    t2 = time.perf_counter()
    plan = Plan(graph)
    for g in groups:
        plan.remove(g, removed[g.index])
    apply(plan, optimizer)
    t3 = time.perf_counter()
    after = profile(model, example_inputs)
    widths = [(g.origin, g.channels, g.channels - removed[g.index].numel()) for g in groups]
    return PruneReport(method, before.macs, after.macs, before.params, after.params, widths, len(graph.groups),
                       len(groups), {"trace": t1 - t0, "scores": t2 - t1, "surgery": t3 - t2})
