"""ASCP during training: asymptotic soft cluster pruning with channel addition (Niu et al., 2022)."""

from __future__ import annotations

import math
import numbers

import torch

from ..graph import named_tensors
from ..plan import Plan
from ..surgery import apply
from .base import Schedule

__all__ = ["ASCPSchedule", "DECAYS"]

# Fraction of the target rate reached at progress x in [0, 1]: the increments decay along the curve.
DECAYS = {
    "exp": lambda x: (1 - math.exp(-5 * x)) / (1 - math.exp(-5)),
    "linear": lambda x: x,
    "cos": lambda x: math.sin(math.pi * x / 2),
}


class ASCPSchedule(Schedule):
    """At the end of every epoch, k-means the filters of every group into (1 - P) * N clusters
    (BatchNorm-aware, see methods/ascp.py) and reconstruct every channel to its cluster's centre; the
    filters then train freely until the next epoch (soft). The rate P rises to `target_ratio` over
    `epochs` epochs along `decay` (epochs count from 0: the rate is target_ratio from epoch
    epochs - 1 on). `finalize()` removes the duplicates by exact channel addition.
    """

    name = "ASCP"

    def __init__(self, model, example_inputs, target_ratio: float = 0.4, epochs: int = 90, decay: str = "exp",
                 ignored_layers=(), niter: int = 25, seed: int = 0, **graph):
        if not isinstance(target_ratio, numbers.Real) or not 0 <= target_ratio < 1:
            raise ValueError(f"ASCP: target_ratio must be in [0, 1), got {target_ratio!r}")
        if not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"ASCP: epochs must be an int >= 1, got {epochs!r}")
        if decay not in DECAYS:
            raise ValueError(f"ASCP: decay must be one of {', '.join(DECAYS)}, got {decay!r}")
        super().__init__(model, example_inputs, ignored_layers, **graph)
        self.target_ratio, self.epochs, self.decay, self.niter, self.seed = float(target_ratio), int(epochs), decay, niter, seed
        self.target = f"target_ratio={self.target_ratio:g} of every group's channels from epoch {self.epochs - 1}"
        self.last_plan: dict = {}  # the latest reconstruction's clusters, as Plan.to_dict()
        self.reference: dict[str, torch.Tensor] = {}  # the tensors it wrote, as written

    def rate(self, epoch: int) -> float:
        """Pruning rate after `epoch` (0-based): target_ratio from epoch epochs - 1 on."""
        return self.target_ratio * DECAYS[self.decay](min((self._epoch(epoch) + 1) / self.epochs, 1.0))

    def _reconstruct(self, ratio: float) -> None:
        """Cluster (on rank 0) and write every channel's cluster centre; remember the clusters."""
        def make():
            d = self._decide("ascp", ratio=ratio, seed=self.seed, niter=self.niter)
            return Plan.from_dict(d.graph, {}, d.plan.writes), d.plan.to_dict()  # the writes now, the merges later

        plan, clusters = self._shared(make)
        if plan:
            apply(plan)
        self.last_plan = clusters
        now = named_tensors(self.model)
        self.reference = {k: now[k].detach().clone() for k in plan.writes}

    def _step(self, epoch: int, optimizer) -> bool:
        ratio = self.rate(epoch)
        self._reconstruct(ratio)
        self._record(epoch, f"reconstructed at rate {ratio:.3f}", rate=ratio)
        return False

    def _reconstruction_is_current(self) -> bool:
        now = named_tensors(self.model)
        return bool(self.last_plan) and all(torch.equal(now[k], v) for k, v in self.reference.items())

    def finalize(self, optimizer=None):
        """Merge every cluster into one channel by channel addition. Exact (outputs unchanged) when the
        weights are as the last step left them; otherwise the model is first reconstructed at the
        target rate."""
        if not self.done:
            if not self._reconstruction_is_current():
                self._reconstruct(self.target_ratio)
            graph = self._graph()
            plan = Plan.from_dict(graph, self.last_plan)
            apply(plan, optimizer)
            self.done = True
            self._record(self.last_epoch if self.last_epoch is not None else -1, "merged by channel addition")
        return self.report()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_plan": self.last_plan, "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.last_plan, self.reference = state.get("last_plan", {}), state.get("reference", {})
