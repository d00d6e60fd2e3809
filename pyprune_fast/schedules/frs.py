"""FRS: gradual channel pruning while training by feature relevance scores (Aketi et al., 2020)."""

from __future__ import annotations

import numbers

from ..methods.frs import FRS as RelevanceScores
from ..plan import Plan
from .base import Schedule

__all__ = ["FRSSchedule"]


class FRSSchedule(Schedule):
    """At the end of every `every`-th epoch before epoch `until` (epochs count from 0: after epochs
    every - 1, 2 * every - 1, ...), score every channel by its LRP relevance (see
    `pyprune_fast.relevance`: alpha=2 beta=1 from the true label, class-weighted, L2-normalised per
    layer) over `batches` batches of `data`, and remove the `channels` lowest-scoring channels of the
    whole network (one global ranking; every group keeps at least one)."""

    name = "FRS"

    def __init__(self, model, example_inputs, data, every: int = 9, channels: int = 250, until: int = 50,
                 batches: int = 8, ignored_layers=(), **graph):
        for key, value in (("every", every), ("channels", channels), ("until", until), ("batches", batches)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FRS: {key} must be an int >= 1, got {value!r}")
        super().__init__(model, example_inputs, ignored_layers, **graph)
        self.data, self.every, self.channels, self.until, self.batches = data, every, channels, until, batches
        self.target = f"{channels} channels every {every} epochs before epoch {until}"

    def _step(self, epoch: int, optimizer) -> bool:
        if epoch >= self.until or (epoch + 1) % self.every:
            return False
        def make():
            graph = self._graph()
            crit = RelevanceScores(graph, graph.prunable_groups, data=self.data, batches=self.batches)
            ladder = crit.ladder()
            plan = Plan(graph)
            crit.decide(plan, ladder.widths(min(self.channels, ladder.steps - 1)))
            return plan, f"FRS, {self.channels} lowest-relevance channels", False

        return self._apply_plan(epoch, optimizer, make)
