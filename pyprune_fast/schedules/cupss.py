"""CUP-SS: cluster pruning in a single shot, during the initial training (Duggal et al., 2019)."""

from __future__ import annotations

import numbers

from .base import Schedule

__all__ = ["CUPSS"]


class CUPSS(Schedule):
    """At the end of every epoch, cluster the current model's channels (CUP) at the threshold
    `slope * (epoch - 1) + offset` and prune, until the MACs reach `target_flops` of the original:
    the step that would pass it prunes to the target exactly instead, and pruning stops.

    The paper's ResNet-50 setting is slope 0.03, offset 0.3, 3.81 GFLOPs (target_flops about 0.46).
    """

    name = "CUPSS"

    def __init__(self, model, example_inputs, slope: float = 0.03, offset: float = 0.3, target_flops: float = 0.46,
                 ignored_layers=()):
        for key, value in (("slope", slope), ("offset", offset), ("target_flops", target_flops)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"CUPSS: {key} must be a number, got {value!r}")
        if not 0 < target_flops <= 1:
            raise ValueError(f"CUPSS: target_flops must be in (0, 1], got {target_flops}")
        super().__init__(model, example_inputs, ignored_layers)
        self.slope, self.offset, self.target_flops = float(slope), float(offset), float(target_flops)

    def threshold(self, epoch: int) -> float:
        return max(self.slope * (epoch - 1) + self.offset, 0.0)

    def _step(self, epoch: int, optimizer) -> bool:
        if self.done:
            return False
        kept = self.macs_kept()

        def choose():
            d = self._decide("cup", threshold=self.threshold(epoch))
            if d.macs_predicted < self.target_flops * self.macs_before:  # would pass the target: land on it
                d = self._decide("cup", target_flops=min(self.target_flops / kept, 1.0))
            return d

        changed = kept > self.target_flops and self._prune(epoch, optimizer, choose)
        if changed:
            kept = self.events[-1]["macs_kept"]  # measured when the event was recorded
        self.done = kept <= self.target_flops * 1.02
        return changed
