"""How many channels every group keeps: a uniform ratio, a global ranking, or a MACs target.

Every criterion offers a *ladder*: widths(i) for i = 0 .. steps - 1, keeping fewer channels as i
grows (a global ranking removes its i lowest channels; CUP raises its threshold to the i-th merge
height). A target, on the MACs or on the channel count, is met by bisection on the ladder: the rung
nearest to it. `Limits` (min_channels, round_to) apply to every rung, so the bisection sees
the widths that will really be kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["Limits", "Ladder", "uniform_widths", "ranking_ladder", "fraction_ladder", "bisect"]


@dataclass(frozen=True)
class Limits:
    """Every group keeps at least min(min_channels, its size) channels, rounded up to a multiple of round_to."""

    min_channels: int = 1
    round_to: int = 1

    def __call__(self, widths: Tensor, channels: Tensor) -> Tensor:
        w = torch.maximum(widths, channels.clamp_max(self.min_channels))
        w = torch.div(w + self.round_to - 1, self.round_to, rounding_mode="floor") * self.round_to
        return torch.minimum(w, channels)


@dataclass(frozen=True)
class Ladder:
    """widths(i) for i in [0, steps): non-increasing in i, widths(0) the least pruning. knob(i) is the
    method's own setting at rung i (channels removed, a ratio, a threshold), named knob_name."""

    steps: int
    widths: Callable[[int], Tensor]
    knob: Callable[[int], float]
    knob_name: str


def uniform_widths(channels: Tensor, ratio: float) -> Tensor:
    """Each group keeps all but floor(ratio * size) channels, and at least one."""
    return (channels - torch.floor(ratio * channels.double() + 1e-9).long()).clamp_min(1)


def ranking_ladder(scores: list[Tensor], channels: Tensor, limits: Limits) -> Ladder:
    """Rung i removes the i lowest channels of one ranking across groups (each score divided by its
    group's mean, so that groups of different scales compare); each group's best channel stays."""
    normalised = [s.double() / s.double().mean().clamp_min(1e-300) for s in scores]
    best = [int(torch.argmax(s)) for s in normalised]
    owner = torch.cat([torch.full((len(s) - 1,), i) for i, s in enumerate(normalised)])
    flat = torch.cat([torch.cat([s[:b], s[b + 1:]]) for s, b in zip(normalised, best)])
    order = owner[torch.argsort(flat, stable=True)]

    def widths(i: int) -> Tensor:
        removed = torch.bincount(order[:i], minlength=len(scores))
        return limits(channels - removed, channels)

    return Ladder(order.numel() + 1, widths, float, "channels removed by the global ranking")


def bisect(ladder: Ladder, measure: Callable[[Tensor], float], target: float) -> int:
    """The rung whose measure is nearest `target`: the first rung at most `target` (found by bisection,
    the last rung if none is), or the rung before it when that one is nearer."""
    lo, hi = 0, ladder.steps - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if measure(ladder.widths(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and measure(ladder.widths(lo - 1)) - target < target - measure(ladder.widths(lo)):
        return lo - 1
    return lo


def fraction_ladder(channels: Tensor, limits: Limits) -> Ladder:
    """Uniform ratios: rung i is the i-th distinct ratio at which some group's width changes."""
    ratios = sorted({j / n for n in channels.tolist() for j in range(n)})
    return Ladder(len(ratios), lambda i: limits(uniform_widths(channels, ratios[i]), channels), ratios.__getitem__, "ratio")

