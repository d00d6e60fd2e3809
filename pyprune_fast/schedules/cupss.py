"""CUP-SS: cluster pruning in a single shot, during the initial training (Duggal et al., 2019)."""

from __future__ import annotations

import numbers

from ..allocation import land
from ..flops import MacsModel
from ..methods.cup import CUP
from ..plan import Plan
from .base import Schedule

__all__ = ["CUPSS"]


class CUPSS(Schedule):
    """At the end of every epoch (epochs count from 0), cluster the current model's channels (CUP) at
    the threshold `slope * epoch + offset` and prune, until the MACs reach `target_flops` of the
    original: the step whose threshold would reach or pass the target lands on it instead, and pruning
    stops (`done`).

    Landing: every group's Ward tree gives up merges in order of height down to the last global cut
    above the target, then the lowest next merge that stays above it (a group whose next channel
    would pass the target is skipped), and one more channel where that is nearer; so the MACs kept are
    off the target by at most half of the cheapest channel's MACs (by the MACs model, exact for CNNs).

    The paper's ResNet-50 setting is slope 0.03, offset 0.3, 3.81 GFLOPs (target_flops about 0.46).
    """

    name = "CUPSS"

    def __init__(self, model, example_inputs, slope: float = 0.03, offset: float = 0.3, target_flops: float = 0.46,
                 ignored_layers=(), **graph):
        for key, value in (("slope", slope), ("offset", offset), ("target_flops", target_flops)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"CUPSS: {key} must be a number, got {value!r}")
        if not 0 < target_flops <= 1:
            raise ValueError(f"CUPSS: target_flops must be in (0, 1], got {target_flops}")
        super().__init__(model, example_inputs, ignored_layers, **graph)
        self.slope, self.offset, self.target_flops = float(slope), float(offset), float(target_flops)
        self.target = f"target_flops={self.target_flops:g} of the original MACs"

    def threshold(self, epoch: int) -> float:
        """The Ward height at which the model is cut after `epoch` (0-based)."""
        return max(self.slope * self._epoch(epoch) + self.offset, 0.0)

    def _step(self, epoch: int, optimizer) -> bool:
        if self.done:
            return False
        target = self.target_flops * self.macs_before
        if self.macs_kept() <= self.target_flops:
            self.done = True
            return False

        def make():  # one trace and one clustering of the current model, for the cut and the landing
            graph = self._graph()
            crit = CUP(graph, graph.prunable_groups)
            macs = MacsModel(graph, crit.groups)
            t = self.threshold(epoch)
            widths = crit.at_threshold(t)
            landing = macs(widths) <= target  # the cut would reach or pass the target: land on it
            if landing:
                widths = land(crit.heights, crit.channels, crit.limits, macs, target)
            plan = Plan(graph)
            crit.decide(plan, widths)
            return plan, f"cup, landed on {self.target}" if landing else f"cup, threshold={t:g}", landing

        changed = self._apply_plan(epoch, optimizer, make)
        if self.done and not changed:
            self._record(epoch, f"cup, landed on {self.target}: nothing to prune")
        return changed
