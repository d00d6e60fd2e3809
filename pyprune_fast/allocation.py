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

__all__ = ["Limits", "Ladder", "uniform_widths", "ranking_ladder", "fraction_ladder", "bisect", "land"]


@dataclass(frozen=True)
class Limits:
    """Every group keeps at least min(min_channels, its size) channels, a multiple of its entry in `steps`
    (per group, in the order of the widths: its divisions, so that each keeps as many channels; the nearest
    multiple, at least one; a group's size keeps it whole; empty: 1 for every group), rounded up to a
    multiple of round_to."""

    min_channels: int = 1
    round_to: int = 1
    steps: tuple[int, ...] = ()

    def __call__(self, widths: Tensor, channels: Tensor) -> Tensor:
        least = channels.clamp_max(self.min_channels)
        w = torch.maximum(widths, least)
        step = torch.tensor(self.round_to)
        if self.steps:
            if len(self.steps) != len(widths):
                raise ValueError(f"Limits: {len(widths)} widths for {len(self.steps)} groups")
            steps = torch.tensor(self.steps, dtype=torch.long)
            nearest = torch.div(2 * w + steps, 2 * steps, rounding_mode="floor") * steps  # halves up
            w = torch.maximum(nearest, _up(least.clamp_min(1), steps))
            step = torch.lcm(steps, step)
        return torch.minimum(_up(w, step), channels)


def _up(w: Tensor, step: Tensor) -> Tensor:
    """w rounded up to a multiple of step."""
    return torch.div(w + step - 1, step, rounding_mode="floor") * step


@dataclass(frozen=True)
class Ladder:
    """widths(i) for i in [0, steps): non-increasing in i, widths(0) the least pruning. knob(i) is the
    method's own setting at rung i (channels removed, a ratio, a threshold), named knob_name."""

    steps: int
    widths: Callable[[int], Tensor]
    knob: Callable[[int], float]
    knob_name: str


def uniform_widths(channels: Tensor, ratio: float) -> Tensor:
    """Each group keeps all but round(ratio * size) channels (halves rounded up), and at least one.

    Rounding to the nearest count, not down, keeps the cut unbiased: floor would leave every group half
    a channel short of the ratio on average, which on narrow layers is several points of the MACs."""
    return (channels - torch.floor(ratio * channels.double() + (0.5 + 1e-9)).long()).clamp_min(1)


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


def _first_at_most(steps: int, measure: Callable[[int], float], target: float) -> int:
    """The first i in [0, steps) with measure(i) <= target (measure non-increasing), or steps - 1."""
    lo, hi = 0, steps - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if measure(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def bisect(ladder: Ladder, measure: Callable[[Tensor], float], target: float) -> int:
    """The rung whose measure is nearest `target`: the first rung at most `target` (found by bisection,
    the last rung if none is), or the rung before it when that one is nearer."""
    lo = _first_at_most(ladder.steps, lambda i: measure(ladder.widths(i)), target)
    if lo > 0 and measure(ladder.widths(lo - 1)) - target < target - measure(ladder.widths(lo)):
        return lo - 1
    return lo


def land(priorities: list[Tensor], channels: Tensor, limits: Limits, measure: Callable[[Tensor], float],
         target: float) -> Tensor:
    """The widths whose measure is nearest `target`, to one channel. Group g gives up its k-th channel
    at priority priorities[g][k] (non-decreasing in k; CUP: the k-th merge height of its tree).

    Channels go in priority order (a ladder of global cuts, by bisection) down to the last cut whose
    measure is >= target; then, in priority order, any next channel that keeps it >= target, skipping
    the groups whose next channel would not. The nearest of that state, it less any one group's next
    channel, and the first cut under the target is returned (the one >= target on a tie). So it is
    never farther than the nearest cut, and off by at most half the measure of the cheapest channel
    of the state it stopped at, where a cut can be off by half the dearest.
    """
    sizes = [len(p) for p in priorities]
    owner = torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(sizes)])
    order = owner[torch.argsort(torch.cat([p.double() for p in priorities]), stable=True)]

    def at(taken: Tensor) -> float:
        return measure(limits(channels - taken, channels))

    def cut(i: int) -> Tensor:
        return torch.bincount(order[:i], minlength=len(sizes))

    i = _first_at_most(order.numel() + 1, lambda i: at(cut(i)), target)
    taken = cut(i if i == 0 or at(cut(i)) >= target else i - 1)
    while True:  # the first next channel in priority order that keeps the measure >= target, until none
        nexts = sorted((float(priorities[g][t]), g) for g, t in enumerate(taken.tolist()) if t < sizes[g])
        steps = [taken + torch.nn.functional.one_hot(torch.tensor(g), len(sizes)) for _, g in nexts]
        better = next((t for t in steps if at(t) >= target), None)
        if better is None:
            break
        taken = better
    candidates = [taken, cut(i)] + steps
    measured = [at(t) for t in candidates]
    best = min(range(len(candidates)), key=lambda k: (abs(measured[k] - target), measured[k] < target))
    return limits(channels - candidates[best], channels)


def fraction_ladder(channels: Tensor, limits: Limits) -> Ladder:
    """Uniform ratios: rung i is the i-th distinct ratio at which some group's width changes (a group of
    n channels gives up its j-th at (j - 1/2) / n, see uniform_widths)."""
    ratios = sorted({0.0} | {(j - 0.5) / n for n in channels.tolist() for j in range(1, n)})
    return Ladder(len(ratios), lambda i: limits(uniform_widths(channels, ratios[i]), channels), ratios.__getitem__, "ratio")

